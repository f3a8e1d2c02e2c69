r"""Synthetic videos of bouncing Gaussian sprites on a small canvas (seeded).

A video has ``F`` frames of one ``size x size`` channel in ``[-1, 1]``. Each of 1 to ``max_sprites`` sprites
(the count is uniform per video) starts at a uniform position inside the canvas with a velocity of uniform
direction and speed in ``speed = (lo, hi)`` pixels per frame, moves ballistically and bounces elastically
off the walls ``[0, size - 1]`` (a reflection of position and velocity). Frame ``f`` renders

.. math::

    I_f(p) = \max_k \exp\!\left(-\frac{\|p - c_k(f)\|^2}{2 r^2}\right), \qquad x_f = 2 I_f - 1,

so the data live on a low-dimensional manifold (4 numbers a sprite) and every frame is determined by the
first one and the velocities: a model that gets the dynamics wrong blurs or duplicates sprites.

Example:
    >>> v = moving_sprites(3, frames=4, size=8, seed=0)
    >>> v.shape, bool(v.min() >= -1.0), bool(v.max() <= 1.0)
    (torch.Size([3, 4, 1, 8, 8]), True, True)
    >>> torch.equal(v, moving_sprites(3, frames=4, size=8, seed=0))
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["moving_sprites", "sprite_trajectories"]


def _check(
    n: int, frames: int, size: int, max_sprites: int, radius: float, speed: tuple[float, float]
) -> None:
    if n < 0 or frames < 1 or size < 2:
        raise ValueError(f"moving_sprites needs n >= 0, frames >= 1, size >= 2; got {n}, {frames}, {size}")
    if max_sprites < 1:
        raise ValueError(f"max_sprites must be >= 1, got {max_sprites}")
    if radius <= 0:
        raise ValueError(f"radius (the sprite's Gaussian width in pixels) must be positive, got {radius}")
    lo, hi = speed
    if not 0 <= lo <= hi:
        raise ValueError(f"speed must be a range (lo, hi) with 0 <= lo <= hi pixels a frame, got {speed}")


def sprite_trajectories(
    n: int,
    *,
    frames: int = 8,
    size: int = 8,
    max_sprites: int = 2,
    speed: tuple[float, float] = (0.5, 1.5),
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sprite centres ``(n, frames, max_sprites, 2)`` (pixels) and a visibility mask ``(n, max_sprites)``.

    Example:
        >>> c, on = sprite_trajectories(2, frames=3, generator=torch.Generator().manual_seed(0))
        >>> c.shape, on.shape, bool(on[:, 0].all())
        (torch.Size([2, 3, 2, 2]), torch.Size([2, 2]), True)
    """
    _check(n, frames, size, max_sprites, 1.0, speed)
    hi_wall = float(size - 1)
    pos = torch.rand(n, max_sprites, 2, generator=generator, dtype=torch.float64) * hi_wall
    angle = torch.rand(n, max_sprites, generator=generator, dtype=torch.float64) * 2 * math.pi
    lo, hi = speed
    mag = lo + (hi - lo) * torch.rand(n, max_sprites, generator=generator, dtype=torch.float64)
    vel = torch.stack([torch.cos(angle), torch.sin(angle)], -1) * mag[..., None]
    count = torch.randint(1, max_sprites + 1, (n,), generator=generator)
    visible = torch.arange(max_sprites)[None] < count[:, None]
    out = []
    for _ in range(frames):
        out.append(pos.clone())
        pos = pos + vel
        for _bounce in range(4):  # fast sprites may cross a wall twice in a step on a tiny canvas
            low, high = pos < 0, pos > hi_wall
            pos = torch.where(low, -pos, torch.where(high, 2 * hi_wall - pos, pos))
            vel = torch.where(low | high, -vel, vel)
    return torch.stack(out, 1), visible


def moving_sprites(
    n: int,
    *,
    frames: int = 8,
    size: int = 8,
    max_sprites: int = 2,
    radius: float = 0.8,
    speed: tuple[float, float] = (0.5, 1.5),
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``n`` videos ``(n, frames, 1, size, size)`` of bouncing Gaussian sprites, values in ``[-1, 1]``.

    Args:
        n: number of videos.
        frames: frames a video ``F``.
        size: canvas side in pixels.
        max_sprites: at most this many sprites (1 to ``max_sprites``, uniform per video).
        radius: Gaussian width ``r`` of a sprite in pixels.
        speed: range of speeds in pixels a frame.
        seed: seed of a fresh generator (give this or ``generator``).
        generator: the random source.
        dtype: dtype of the videos.
    """
    _check(n, frames, size, max_sprites, radius, speed)
    if seed is not None and generator is not None:
        raise ValueError("give seed=... or generator=..., not both")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    centres, visible = sprite_trajectories(
        n, frames=frames, size=size, max_sprites=max_sprites, speed=speed, generator=generator
    )
    grid = torch.arange(size, dtype=torch.float64)
    dy = (grid.view(1, 1, 1, size, 1) - centres[..., 0, None, None]) ** 2  # (n, F, S, size, 1)
    dx = (grid.view(1, 1, 1, 1, size) - centres[..., 1, None, None]) ** 2  # (n, F, S, 1, size)
    blobs = torch.exp(-(dy + dx) / (2 * radius**2)) * visible[:, None, :, None, None]
    return (2 * blobs.amax(2) - 1).unsqueeze(2).to(dtype)
