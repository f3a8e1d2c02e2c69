"""Source noise: quasi-random normals have the normal law and a more even spread than i.i.d. draws."""

import math

import pytest
import torch

from flowforge.core.noise import standard_normal


def test_qmc_marginals_are_standard_normal():
    x = standard_normal((4096, 3), generator=torch.Generator().manual_seed(0), qmc=True, dtype=torch.float64)
    s, _ = x[:, 1].sort()
    cdf = 0.5 * (1 + torch.erf(s / math.sqrt(2)))
    emp = torch.arange(1, len(s) + 1, dtype=torch.float64) / len(s)
    assert float((emp - cdf).abs().max()) < 0.01


def test_qmc_batch_means_vary_far_less_than_iid():
    def spread(qmc):
        means = [
            float(
                standard_normal((1024, 2), generator=torch.Generator().manual_seed(k), qmc=qmc)[:, 0].mean()
            )
            for k in range(40)
        ]
        return torch.tensor(means).std().item()

    iid, qmc = spread(False), spread(True)
    assert iid == pytest.approx(1 / math.sqrt(1024), rel=0.35)
    assert qmc < iid / 5


def test_reproducible_from_the_generator_and_different_across_seeds():
    a = standard_normal((64, 2, 2), generator=torch.Generator().manual_seed(3), qmc=True)
    b = standard_normal((64, 2, 2), generator=torch.Generator().manual_seed(3), qmc=True)
    c = standard_normal((64, 2, 2), generator=torch.Generator().manual_seed(4), qmc=True)
    assert a.shape == (64, 2, 2) and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="at most"):
        standard_normal((2, 30_000), qmc=True)
