r"""Pointwise error and rank correlation: relative L2 per field and Spearman's rho.

:func:`relative_l2` is :math:`\|\hat x - x\|_2 / \|x\|_2` per field. :func:`spearman` is Pearson's
correlation of the ranks (ties broken by order), used to check whether a no-reference score (the
discriminator's) orders decoded fields like their true error.

Example:
    >>> import torch
    >>> x = torch.ones(2, 1, 4, 4)
    >>> relative_l2(1.5 * x, x)
    tensor([0.5000, 0.5000])
    >>> round(float(spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 45]))), 6)
    1.0
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["relative_l2", "spearman"]


def relative_l2(pred: Tensor, true: Tensor) -> Tensor:
    """``||pred - true|| / ||true||`` per field: ``(B, ...) -> (B,)``."""
    if pred.shape != true.shape:
        raise ValueError(
            f"pred and true must have one shape, got {tuple(pred.shape)} and {tuple(true.shape)}"
        )
    b = true.shape[0]
    return (pred - true).reshape(b, -1).norm(dim=1) / true.reshape(b, -1).norm(dim=1)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rank correlation of two 1-D tensors of equal length (>= 2)."""
    if a.dim() != 1 or a.shape != b.shape or a.numel() < 2:
        raise ValueError(
            f"need two 1-D tensors of one length >= 2, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return (ra * rb).sum() / (ra.norm() * rb.norm())
