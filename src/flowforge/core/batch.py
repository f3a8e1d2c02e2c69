"""One way to read a training batch: ``x``, ``(x, y)``, ``(x,)`` or ``{"x": x, **cond}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = ["split_batch"]


def split_batch(batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """``x``, ``(x, y)``, ``(x,)`` or ``{"x": x, **cond}`` into ``(x, cond)``; ``x`` is ``(B, *event)``.

    Example:
        >>> import torch
        >>> x, cond = split_batch((torch.zeros(4, 2), torch.arange(4)))
        >>> tuple(x.shape), sorted(cond)
        ((4, 2), ['y'])
    """
    if isinstance(batch, Tensor):
        return batch, {}
    if isinstance(batch, Mapping):
        if "x" not in batch:
            raise ValueError(f"a dict batch needs an 'x' entry; got keys {sorted(batch)}")
        return batch["x"], {k: v for k, v in batch.items() if k != "x"}
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], {"y": batch[1]}
    if isinstance(batch, (tuple, list)) and len(batch) == 1:
        return batch[0], {}
    raise ValueError(
        f"a batch is x, (x, y) or {{'x': x, ...}}; got {type(batch).__name__}; pass a tensor (B, *event)"
    )
