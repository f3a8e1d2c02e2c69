"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # small tensors: one thread avoids OpenMP spin-waits when the machine's cores are shared (pytest -n 2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
