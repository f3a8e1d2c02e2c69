"""Two-dimensional toy distributions, sampled on the fly in torch.

Every set is an i.i.d. sample: each row is drawn independently from the same mixture, so two calls
with different seeds are two independent samples of one distribution (unlike sklearn's
``make_moons`` / ``make_circles``, which place the angles on a ``linspace``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from flowforge.core.choices import unknown_choice

__all__ = ["TOY2D_NAMES", "toy2d"]


def _moons(n: int, noise: float, g: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    # sklearn.datasets.make_moons geometry; theta uniform instead of linspace, moon chosen per point.
    theta = torch.rand(n, generator=g, dtype=dtype) * math.pi
    inner = torch.rand(n, generator=g, dtype=dtype) < 0.5
    c, s = torch.cos(theta), torch.sin(theta)
    x = torch.where(inner, 1.0 - c, c)
    y = torch.where(inner, 1.0 - s - 0.5, s)
    return torch.stack([x, y], dim=1)


def _eight_gaussians(n: int, noise: float, g: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    # Centres at radius 2, angles k * pi / 4; the component std is ``noise`` (default 0.1).
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.to(dtype) * (math.pi / 4)
    return 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)


def _checkerboard(n: int, noise: float, g: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    # 4x4 unit squares on [-2, 2]^2; the 8 squares with floor(x) + floor(y) even are filled uniformly.
    # FFJORD's generator produces the same pattern and then multiplies by 2 (giving [-4, 4]^2).
    x = torch.rand(n, generator=g, dtype=dtype) * 4.0 - 2.0
    col = torch.floor(x)
    row = torch.randint(0, 2, (n,), generator=g).to(dtype) * 2.0 - 2.0  # -2 or 0
    y = row + torch.remainder(col, 2.0) + torch.rand(n, generator=g, dtype=dtype)
    return torch.stack([x, y], dim=1)


def _spirals(n: int, noise: float, g: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    # Two interleaved Archimedean spirals r = phi, phi in [0, 3 pi] with density ~ sqrt(u), scaled by 1/3
    # (FFJORD's "2spirals" geometry without its extra uniform jitter); the second is the first rotated by pi.
    phi = torch.sqrt(torch.rand(n, generator=g, dtype=dtype)) * (3.0 * math.pi)
    sign = torch.where(torch.rand(n, generator=g, dtype=dtype) < 0.5, -1.0, 1.0).to(dtype)
    pts = torch.stack([-torch.cos(phi) * phi, torch.sin(phi) * phi], dim=1) / 3.0
    return pts * sign[:, None]


def _circles(n: int, noise: float, g: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    # sklearn.datasets.make_circles geometry with factor 0.5: unit circle and circle of radius 0.5.
    theta = torch.rand(n, generator=g, dtype=dtype) * (2.0 * math.pi)
    radius = torch.where(torch.rand(n, generator=g, dtype=dtype) < 0.5, 0.5, 1.0).to(dtype)
    return radius[:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)


_Sampler = Callable[[int, float, "torch.Generator | None", torch.dtype], Tensor]

# name -> (sampler, default Gaussian noise std)
_TOYS: dict[str, tuple[_Sampler, float]] = {
    "moons": (_moons, 0.05),
    "eight-gaussians": (_eight_gaussians, 0.1),
    "checkerboard": (_checkerboard, 0.0),
    "spirals": (_spirals, 0.1),
    "circles": (_circles, 0.05),
}

TOY2D_NAMES: tuple[str, ...] = tuple(_TOYS)
"""The names :func:`toy2d` accepts."""


def toy2d(
    name: str,
    n: int,
    *,
    noise: float | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw ``n`` i.i.d. points from a named 2-D toy distribution.

    Distributions (``noise`` is the std of isotropic Gaussian noise added to every point):

    - ``"moons"``: sklearn ``make_moons`` geometry. Outer half circle ``(cos t, sin t)``, inner
      ``(1 - cos t, 1 - sin t - 0.5)``, ``t ~ U[0, pi]``, each moon with probability 1/2. Noise 0.05.
    - ``"eight-gaussians"``: mixture of 8 equal Gaussians centred at ``2 (cos(k pi/4), sin(k pi/4))``,
      component std = ``noise`` (default 0.1). torchcfm uses radius 5 and std ``sqrt(0.1)``; FFJORD
      radius ``2 sqrt(2)`` and std ``0.5 / sqrt(2)``.
    - ``"checkerboard"``: uniform on the 8 filled cells of a 4x4 checkerboard on ``[-2, 2]^2`` (cells
      with ``floor(x) + floor(y)`` even), the FFJORD pattern before its factor-2 scaling. Noise 0.
    - ``"spirals"``: two interleaved spirals ``(-phi cos phi, phi sin phi) / 3`` and its negative,
      ``phi = 3 pi sqrt(u)``, ``u ~ U[0, 1]`` (FFJORD's "2spirals" geometry). Noise 0.1.
    - ``"circles"``: sklearn ``make_circles`` geometry with ``factor=0.5``: unit circle and radius
      0.5, uniform angle, each circle with probability 1/2. Noise 0.05.

    Args:
        name: one of :data:`TOY2D_NAMES`.
        n: number of points (``n >= 0``).
        noise: Gaussian noise std; ``None`` uses the per-set default above.
        generator: source of randomness. Give at most one of ``generator`` and ``seed``; with
            neither, torch's default generator is used.
        seed: builds a fresh ``torch.Generator`` seeded with this value.
        dtype: floating dtype of the result.

    Returns:
        Tensor of shape ``(n, 2)`` and dtype ``dtype`` on the CPU.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid names), negative or non-integer ``n``,
            negative or non-finite ``noise``, or both ``generator`` and ``seed`` given.

    Example:
        >>> x = toy2d("moons", 1000, seed=0)
        >>> x.shape, x.dtype
        (torch.Size([1000, 2]), torch.float32)
        >>> torch.equal(x, toy2d("moons", 1000, seed=0))
        True
    """
    if name not in _TOYS:
        raise unknown_choice("toy2d name", name, TOY2D_NAMES)
    if isinstance(n, bool) or not isinstance(n, (int, float)) or int(n) != n or n < 0:
        raise ValueError(f"toy2d needs an integer n >= 0, got {n!r}; write e.g. n=10_000")
    if generator is not None and seed is not None:
        raise ValueError("toy2d takes either generator= or seed=, not both; pass one of them")
    if not dtype.is_floating_point:
        raise ValueError(f"toy2d needs a floating dtype, got {dtype}; use e.g. torch.float32")
    sampler, default_noise = _TOYS[name]
    noise = default_noise if noise is None else float(noise)
    if not math.isfinite(noise) or noise < 0:
        raise ValueError(
            f"toy2d noise is the standard deviation of the added Gaussian noise and must be a finite number "
            f">= 0, got {noise}; write e.g. noise={default_noise} (the {name} default) or noise=0"
        )
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    n = int(n)
    x = sampler(n, noise, generator, dtype)
    if noise > 0:
        x = x + noise * torch.randn(n, 2, generator=generator, dtype=dtype)
    return x
