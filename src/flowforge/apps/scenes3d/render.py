r"""A differentiable orthographic renderer of isotropic 3-D Gaussians (emission splatting) to two views.

A scene is ``K`` Gaussians, each a row ``(mu_x, mu_y, mu_z, sigma, r, g, b, w)`` of the tensor
``scene: (B, K, 8)``: centre :math:`\mu \in [-1, 1]^3`, standard deviation :math:`\sigma > 0`,
colour :math:`c \in [0, 1]^3` and peak column density :math:`w \ge 0`. The density of Gaussian ``k``
is :math:`w_k (2\pi\sigma_k^2)^{-1/2} \exp(-\lVert p - \mu_k\rVert^2 / 2\sigma_k^2)`, so its line
integral along a view axis peaks at :math:`w_k`. View 0 looks down the ``z`` axis (columns ``x``,
rows ``y``), view 1 down the ``x`` axis (columns ``z``, rows ``y``), each an ``H x H`` grid of
pixels tiling :math:`[-1, 1]^2`. The pixel value is the pixel-averaged column density (exact: an
integral of a separable Gaussian over a square, with :math:`\Phi` the normal CDF),

.. math::

    I_c(\text{pixel}) = \frac{1}{\Delta^2} \sum_k c_{k,c}\, w_k\, 2\pi\sigma_k^2\,
    \big[\Phi(\tfrac{u_1 - \mu_{k,u}}{\sigma_k}) - \Phi(\tfrac{u_0 - \mu_{k,u}}{\sigma_k})\big]
    \big[\Phi(\tfrac{v_1 - \mu_{k,v}}{\sigma_k}) - \Phi(\tfrac{v_0 - \mu_{k,v}}{\sigma_k})\big],

(``Delta = 2 / H``), tone-mapped to :math:`2(1 - e^{-I}) - 1 \in [-1, 1)`. No occlusion (emission
only, as in additive splatting); this is a synthetic stand-in for the Gaussian-splat renderers of
feed-forward 3-D reconstruction models (LGM, GS-LRM), not a reimplementation of them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["SCENE_FIELDS", "column_density", "render_views", "tone_map"]

#: The fields of one Gaussian's row in a scene tensor ``(B, K, 8)``.
SCENE_FIELDS = ("mu_x", "mu_y", "mu_z", "sigma", "r", "g", "b", "w")
_VIEW_AXES = ((0, 1), (2, 1))  # (column axis, row axis) of view 0 (looks down z) and view 1 (down x)


def _check_scene(scene: Tensor) -> None:
    if not isinstance(scene, Tensor) or scene.dim() != 3 or scene.shape[-1] != len(SCENE_FIELDS):
        got = tuple(scene.shape) if isinstance(scene, Tensor) else type(scene).__name__
        raise ValueError(
            f"a scene is a tensor (B, K, {len(SCENE_FIELDS)}) with rows {SCENE_FIELDS}, got {got}; "
            "make one with flowforge.apps.scenes3d.sample_scenes"
        )
    if not bool((scene[..., 3] > 0).all()):
        raise ValueError("every Gaussian needs sigma > 0 (column 3 of the scene)")


def _pixel_mass(mu: Tensor, sigma: Tensor, size: int) -> Tensor:
    """Normal mass of ``N(mu, sigma^2)`` in each of ``size`` bins tiling ``[-1, 1]``: ``(..., size)``."""
    edges = torch.linspace(-1.0, 1.0, size + 1, dtype=mu.dtype, device=mu.device)
    cdf = 0.5 * (1.0 + torch.erf((edges - mu[..., None]) / (sigma[..., None] * math.sqrt(2.0))))
    return cdf[..., 1:] - cdf[..., :-1]


def column_density(scene: Tensor, size: int = 16) -> Tensor:
    """Pixel-averaged column densities :math:`I` of both views, before tone mapping.

    Args:
        scene: ``(B, K, 8)`` Gaussians (see the module docstring).
        size: pixels ``H`` per side.

    Returns:
        ``(B, 2, 3, H, H)``: views, colour channels, rows (``y``), columns.

    Example:
        >>> s = torch.tensor([[[0.0, 0.0, 0.0, 0.2, 1.0, 1.0, 1.0, 1.0]]], dtype=torch.float64)
        >>> I = column_density(s, size=16)
        >>> I.shape, round(float(I[0, 0, 0].sum() * (2 / 16) ** 2), 6), round(2 * math.pi * 0.2**2, 6)
        (torch.Size([1, 2, 3, 16, 16]), 0.251327, 0.251327)
    """
    _check_scene(scene)
    if size < 1:
        raise ValueError(f"size must be >= 1 pixel, got {size}")
    mu, sigma, colour, w = scene[..., :3], scene[..., 3], scene[..., 4:7], scene[..., 7]
    area = (2.0 / size) ** 2
    amp = w * 2.0 * math.pi * sigma.square() / area  # (B, K)
    views = []
    for cu, cv in _VIEW_AXES:
        pu = _pixel_mass(mu[..., cu], sigma, size)  # (B, K, W)
        pv = _pixel_mass(mu[..., cv], sigma, size)  # (B, K, H)
        img = torch.einsum("bk,bkc,bkh,bkw->bchw", amp, colour, pv, pu)
        views.append(img)
    return torch.stack(views, 1)


def tone_map(density: Tensor) -> Tensor:
    """Column density ``I >= 0`` to pixels :math:`2(1 - e^{-I}) - 1` in ``[-1, 1)`` (same shape)."""
    return 1.0 - 2.0 * torch.exp(-density.clamp_min(0.0))


def render_views(scene: Tensor, size: int = 16) -> Tensor:
    """Two orthographic views ``(B, 2, 3, H, H)`` in ``[-1, 1]`` of Gaussian scenes ``(B, K, 8)``.

    Differentiable in every scene parameter.

    Example:
        >>> from flowforge.apps.scenes3d import sample_scenes
        >>> v = render_views(sample_scenes(4, generator=torch.Generator().manual_seed(0)), size=8)
        >>> v.shape, bool(v.min() >= -1) and bool(v.max() < 1)
        (torch.Size([4, 2, 3, 8, 8]), True)
    """
    return tone_map(column_density(scene, size))
