r"""How disentangled a set of latent traversals is, measured against known factors.

For a traversal path :math:`z_0, \dots, z_T` and true (normalised) factors :math:`f(z)\in\mathbb{R}^F`, the
factor changes per step are :math:`\Delta_{t,i} = f_i(z_{t+1}) - f_i(z_t)` and the change energy per factor
is :math:`E_i = \sum_t \Delta_{t,i}^2`. Then

- **purity** of a traversal (the share of its change that lands in one factor):
  :math:`\pi = \max_i E_i / \sum_i E_i` (1: one factor moves alone; :math:`\approx 1/F` for a uniform mix),
  averaged over start points and traversals;
- **shares** :math:`R_{k,i} = E_{z_0}[E_i/\sum_j E_j]` of traversal :math:`k`;
- **factor gap** (a mutual-information-gap-like score, after the MIG of Chen et al., NeurIPS 2018, with
  change shares in place of mutual information): for each factor, the gap between the largest and the
  second-largest share any traversal gives it, averaged over factors (1: every factor owned by one
  traversal; 0: shared or unowned);
- **coverage**: the number of distinct factors that are some traversal's main factor, over
  :math:`\min(K, F)`.

Example:
    >>> import torch
    >>> from flowforge.apps.traversal import traversal_purity, factor_gap
    >>> d = torch.zeros(2, 3, 4); d[0, :, 1] = 0.1; d[1, :, :2] = 0.1
    >>> traversal_purity(d)
    tensor([1.0000, 0.5000])
    >>> factor_gap(torch.eye(4))
    1.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["evaluate_traversals", "factor_changes", "factor_gap", "factor_shares", "traversal_purity"]


def factor_changes(factors: Callable[[Tensor], Tensor], path: Tensor) -> Tensor:
    """Per-step factor changes ``(B, T, F)`` along paths ``(B, T + 1, D)``."""
    if path.dim() != 3 or path.shape[1] < 2:
        raise ValueError(f"paths must have shape (B, T + 1, D) with T >= 1, got {tuple(path.shape)}")
    b, n, d = path.shape
    f = factors(path.reshape(b * n, d)).reshape(b, n, -1)
    return f[:, 1:] - f[:, :-1]


def factor_shares(deltas: Tensor, eps: float = 1e-20) -> Tensor:
    r"""Shares ``(B, F)`` of the change energy :math:`E_i/\sum_j E_j` of each path."""
    energy = deltas.square().sum(1)
    return energy / energy.sum(1, keepdim=True).clamp_min(eps)


def traversal_purity(deltas: Tensor) -> Tensor:
    r"""Purity :math:`\max_i E_i/\sum_i E_i` of each path, ``(B,)``, from factor changes ``(B, T, F)``."""
    if deltas.dim() != 3:
        raise ValueError(f"factor changes must have shape (B, T, F), got {tuple(deltas.shape)}")
    return factor_shares(deltas).max(1).values


def factor_gap(shares: Tensor) -> float:
    """Mean over factors of (largest - second-largest) share over traversals; ``shares (K, F)``."""
    if shares.dim() != 2:
        raise ValueError(f"shares must have shape (K, F), got {tuple(shares.shape)}")
    if shares.shape[0] == 1:
        return float(shares[0].mean())
    top = shares.topk(2, dim=0).values
    return float((top[0] - top[1]).mean())


@torch.no_grad()
def evaluate_traversals(traversal: Any, factors: Callable[[Tensor], Tensor], codes: Tensor) -> dict[str, Any]:
    """Purity, factor gap, coverage and step statistics of every traversal of ``traversal`` from ``codes``.

    Args:
        traversal: anything with ``num_traversals`` and ``traverse(k, z) -> (B, T + 1, D)``.
        factors: the true normalised factors ``f: (N, D) -> (N, F)``.
        codes: start points ``(B, D)``.

    Returns:
        ``purity`` (mean), ``purity_per_traversal`` (list), ``factor_gap``, ``coverage``, ``shares`` (K x F list),
        ``step_norm`` (mean latent step), ``factor_change`` (mean RMS factor change per step).
    """
    purities, shares, steps, changes = [], [], [], []
    for k in range(traversal.num_traversals):
        with torch.enable_grad():
            path = traversal.traverse(k, codes)
        deltas = factor_changes(factors, path.detach())
        purities.append(traversal_purity(deltas).mean())
        shares.append(factor_shares(deltas).mean(0))
        steps.append((path[:, 1:] - path[:, :-1]).norm(dim=2).mean())
        changes.append(deltas.square().sum(2).sqrt().mean())
    r = torch.stack(shares)
    owners = set(r.argmax(1).tolist())
    return {
        "purity": float(torch.stack(purities).mean()),
        "purity_per_traversal": [float(p) for p in purities],
        "factor_gap": factor_gap(r),
        "coverage": len(owners) / min(r.shape),
        "shares": [[round(float(v), 4) for v in row] for row in r],
        "step_norm": float(torch.stack(steps).mean()),
        "factor_change": float(torch.stack(changes).mean()),
    }
