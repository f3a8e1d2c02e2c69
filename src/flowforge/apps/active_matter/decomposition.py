r"""Spatial decomposition of a per-particle quantity (e.g. the EPR density), binned by position.

Given per-particle values :math:`e_{b,i}` (sample :math:`b`, particle :math:`i`) at positions
:math:`x_{b,i}`, the spatial EPR map on a grid of cells :math:`C` is

.. math:: \sigma(C) = \frac{1}{B\,|C|}\sum_{b,i} e_{b,i}\,\mathbb{1}[x_{b,i} \in C],

a density per unit area whose integral over the domain is the total :math:`E\sum_i e_i`
(Boffi & Vanden-Eijnden: "spatial maps", verified reference §3.3). Also returned: the mean value per
particle found in each cell (``mean``; NaN where no particle fell) and the counts.

Example:
    >>> import torch
    >>> x = torch.tensor([[[-0.5, -0.5], [0.5, 0.5]]])  # one sample, two particles
    >>> e = torch.tensor([[1.0, 3.0]])
    >>> m = spatial_decomposition(x, e, extent=1.0, bins=2)
    >>> m.density  # per unit area: each cell has area 1
    tensor([[1., 0.],
            [0., 3.]])
    >>> float(m.density.sum() * m.cell_area)  # integrates to the total
    4.0
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SpatialMap", "spatial_decomposition"]


@dataclass(frozen=True)
class SpatialMap:
    """A 2-D map: ``density`` and ``mean`` ``(bins, bins)`` (first index: first coordinate), ``counts``,
    the cell ``edges`` ``(bins + 1,)`` shared by both axes and ``cell_area``."""

    density: Tensor
    mean: Tensor
    counts: Tensor
    edges: Tensor
    cell_area: float


def spatial_decomposition(positions: Tensor, values: Tensor, *, extent: float, bins: int = 16) -> SpatialMap:
    """Bin ``values`` ``(B, N)`` by ``positions`` ``(B, N, 2)`` on the square ``[-extent, extent]^2``.

    Use the box half-width as ``extent`` in a periodic box; in a trap pick a range that holds the particles
    (particles outside it are dropped, and say so in what you report).
    """
    if positions.dim() != 3 or positions.shape[-1] != 2:
        raise ValueError(f"positions must have shape (B, N, 2) (2-D maps only), got {tuple(positions.shape)}")
    if values.shape != positions.shape[:2]:
        raise ValueError(
            f"values must have shape (B, N) = {tuple(positions.shape[:2])} (one per particle), got {tuple(values.shape)}"
        )
    if not extent > 0 or bins < 1:
        raise ValueError(f"need extent > 0 and bins >= 1, got extent={extent}, bins={bins}")
    width = 2 * extent / bins
    idx = torch.floor((positions.detach() + extent) / width).long()
    inside = ((idx >= 0) & (idx < bins)).all(-1)
    flat = (idx[..., 0] * bins + idx[..., 1])[inside]
    vals = values.detach().to(torch.float64)[inside]
    sums = torch.zeros(bins * bins, dtype=torch.float64).index_add_(0, flat, vals)
    counts = torch.zeros(bins * bins, dtype=torch.float64).index_add_(0, flat, torch.ones_like(vals))
    area = width * width
    density = (sums / (positions.shape[0] * area)).reshape(bins, bins)
    mean = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
    edges = torch.linspace(-extent, extent, bins + 1, dtype=torch.float64)
    return SpatialMap(
        density.float() if values.dtype == torch.float32 else density,
        mean.reshape(bins, bins),
        counts.reshape(bins, bins),
        edges,
        area,
    )
