r"""Periodic boxes: wrapping positions and minimum-image displacements.

The box is :math:`[-L, L]^d` (``L`` is the *half*-width, as in Boffi & Vanden-Eijnden's code,
``py/common/drifts.py``). A displacement :math:`r = x_i - x_j` is mapped to its nearest periodic image,

.. math:: r \mapsto r - 2L\,\operatorname{round}\!\big(r / (2L)\big),

so each component lies in :math:`[-L, L]`. ``box=None`` means the unbounded plane (nothing is wrapped).

Example:
    >>> import torch
    >>> minimum_image(torch.tensor([1.5, -1.9, 0.3]), 1.0)
    tensor([-0.5000,  0.1000,  0.3000])
    >>> wrap(torch.tensor([1.5, -1.2]), 1.0)
    tensor([-0.5000,  0.8000])
    >>> round(box_half_width(16, 0.4), 4)
    5.605
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["box_half_width", "minimum_image", "wrap", "pair_displacements"]


def _check_box(box: float | None) -> None:
    if box is not None and not (isinstance(box, int | float) and math.isfinite(box) and box > 0):
        raise ValueError(f"box is the half-width L > 0 of the periodic box [-L, L]^d (or None), got {box!r}")


def box_half_width(n_particles: int, phi: float, radius: float = 1.0, dim: int = 2) -> float:
    r"""Half-width :math:`L` of the periodic box that holds ``n_particles`` disks of ``radius`` at packing
    fraction :math:`\phi`: :math:`(2L)^d = N\,\pi r^2/\phi` in 2-D (the reference code's
    :math:`L = \sqrt{N\pi/\phi}/2` for :math:`r = 1`)."""
    if n_particles < 1 or not 0 < phi < 1 or radius <= 0:
        raise ValueError(
            f"need n_particles >= 1, 0 < phi < 1 and radius > 0; got {n_particles}, {phi}, {radius}"
        )
    if dim != 2:
        raise ValueError(f"box_half_width uses the area of a disk and is for dim=2, got dim={dim}")
    return math.sqrt(n_particles * math.pi * radius**2 / phi) / 2


def minimum_image(r: Tensor, box: float | None) -> Tensor:
    """Each component of the displacement ``r`` (any shape) mapped to ``[-L, L]``; unchanged if ``box=None``."""
    _check_box(box)
    if box is None:
        return r
    return r - 2 * box * torch.round(r / (2 * box))


def wrap(x: Tensor, box: float | None) -> Tensor:
    """Positions ``x`` (any shape) folded back into ``[-L, L)``; unchanged if ``box=None``."""
    _check_box(box)
    if box is None:
        return x
    return torch.remainder(x + box, 2 * box) - box


def pair_displacements(x: Tensor, box: float | None) -> Tensor:
    r"""Minimum-image displacements :math:`r_{ij} = x_i - x_j`, ``(B, N, d) -> (B, N, N, d)``."""
    if x.dim() != 3:
        raise ValueError(f"positions must have shape (B, N, d), got {tuple(x.shape)}")
    return minimum_image(x[:, :, None, :] - x[:, None, :, :], box)
