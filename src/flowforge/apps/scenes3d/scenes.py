"""Random scenes of a few coloured 3-D Gaussians: the data of the 3-D latent recipe.

Each scene has ``k`` isotropic Gaussians with centres uniform in ``[-extent, extent]^3``, standard
deviations uniform in ``sigma_range``, colours uniform in ``[0.15, 1]^3`` and peak column densities
uniform in ``w_range``; rows as in :data:`flowforge.apps.scenes3d.render.SCENE_FIELDS`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sample_scenes"]


def sample_scenes(
    n: int,
    k: int = 3,
    *,
    extent: float = 0.5,
    sigma_range: tuple[float, float] = (0.1, 0.22),
    w_range: tuple[float, float] = (0.8, 2.0),
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``n`` scenes ``(n, k, 8)`` of ``k`` Gaussians each.

    Example:
        >>> s = sample_scenes(5, 3, generator=torch.Generator().manual_seed(0))
        >>> s.shape, bool((s[..., :3].abs() <= 0.5).all())
        (torch.Size([5, 3, 8]), True)
    """
    if n < 1 or k < 1:
        raise ValueError(f"sample_scenes needs n >= 1 scenes of k >= 1 Gaussians, got n={n}, k={k}")
    lo, hi = sigma_range
    if not 0 < lo <= hi:
        raise ValueError(f"sigma_range must be 0 < lo <= hi, got {sigma_range}")
    if not 0 < extent <= 1:
        raise ValueError(f"extent must be in (0, 1] (the views tile [-1, 1]), got {extent}")

    def u(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, dtype=dtype)

    mu = (2 * u(n, k, 3) - 1) * extent
    sigma = lo + (hi - lo) * u(n, k, 1)
    colour = 0.15 + 0.85 * u(n, k, 3)
    w = w_range[0] + (w_range[1] - w_range[0]) * u(n, k, 1)
    return torch.cat([mu, sigma, colour, w], -1)
