"""Training: the :func:`train` loop, :class:`TrainConfig`, :class:`Run` folders, EMA, safetensors checkpoints, DDP.

``flowforge.train`` is itself callable, so ``import flowforge.train as train; train(model, x, steps=...)``
and ``ff.train(...)`` work whether the package exports the module or the function.

Example:
    >>> import torch
    >>> from flowforge.train import train
    >>> class Center(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.mu = torch.nn.Parameter(torch.zeros(2))
    ...     def loss(self, x):
    ...         return ((x - self.mu) ** 2).mean()
    >>> run = train(Center(), torch.ones(100, 2), steps=20, batch_size=16, progress=False)
    >>> run.step
    20
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_safetensors,
    safetensors_metadata,
    save_checkpoint,
    save_safetensors,
)
from .config import TrainConfig
from .distributed import LossModule
from .ema import EMA
from .lock import RunLockedError
from .trainer import BatchRequest, Run, Trainer, lr_at, run_seeds, train

__all__ = [
    "EMA",
    "BatchRequest",
    "Checkpoint",
    "CheckpointError",
    "LossModule",
    "Run",
    "RunLockedError",
    "TrainConfig",
    "Trainer",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_safetensors",
    "lr_at",
    "run_seeds",
    "safetensors_metadata",
    "save_checkpoint",
    "save_safetensors",
    "train",
]


class _CallableModule(types.ModuleType):
    """Lets ``flowforge.train(...)`` call :func:`train` even where the name refers to this module."""

    def __call__(self, *args: Any, **kwargs: Any) -> Run:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
