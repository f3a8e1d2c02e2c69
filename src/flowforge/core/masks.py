r"""Inpainting masks and the network's extra input (Rombach et al., 2022, LDM; Dao et al., 2023, LFM).

An inpainting network sees the masked image and the mask as extra channels,
``extra = cat(x * m, m)`` of shape ``(B, C + 1, H, W)``, and is trained with masks drawn at random
(:func:`random_masks`); at sampling time the known pixels are pasted back (:func:`paste`).
Masks are float ``(B, 1, H, W)`` in ``{0., 1.}`` with **1 = known pixel**, 0 = hole. Images are in
``[-1, 1]``, so the holes of ``x * m`` read 0 (mid-grey); the mask channel tells them apart from
real grey pixels. (LFM's masks are ``{-1, +1}`` with +1 the hole; convert with ``m = (1 - m_lfm) / 2``.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["KINDS", "SIDES", "random_masks", "half_mask", "inpaint_extra", "paste"]

#: Mask families :func:`random_masks` draws from.
KINDS: tuple[str, ...] = ("box", "half", "strokes")
#: Which half :func:`half_mask` removes.
SIDES: tuple[str, ...] = ("left", "right", "top", "bottom")


def half_mask(
    n: int,
    height: int,
    width: int,
    side: str = "left",
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Masks whose hole is one half of the image (exactly 50% when the split size is even).

    Args:
        n: number of masks.
        height: image height ``H``.
        width: image width ``W``.
        side: the half that is missing: ``"left"``, ``"right"``, ``"top"`` or ``"bottom"``. For an odd
            size the hole is the smaller part (``W // 2`` columns or ``H // 2`` rows).
        device: where to put the masks.
        dtype: their dtype.

    Returns:
        ``(n, 1, H, W)`` in ``{0., 1.}``, 1 = known.

    Example:
        >>> half_mask(1, 2, 4, "left")[0, 0]
        tensor([[0., 0., 1., 1.],
                [0., 0., 1., 1.]])
    """
    _check_size(n, height, width)
    m = torch.ones(n, 1, height, width, device=device, dtype=dtype)
    _carve_half(m, side)
    return m


def random_masks(
    n: int,
    height: int,
    width: int,
    *,
    generator: torch.Generator,
    kinds: Sequence[str] = KINDS,
    hole: tuple[float, float] = (0.1, 0.7),
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""Random inpainting masks for training: boxes, halves and brush strokes, in equal shares.

    Each mask picks a kind uniformly from ``kinds``:

    - ``"box"``: one rectangle hole of area :math:`f HW` with :math:`f \sim U(\text{hole})` and
      aspect ratio log-uniform in ``[1/2, 2]`` (clipped to the image), at a uniform position;
    - ``"half"``: :func:`half_mask` with a uniform side (50% hole);
    - ``"strokes"``: free-form brush strokes (random walks of line segments with a round brush of
      radius ``max(0.6, U(0.04, 0.09) min(H, W))`` pixels, segment length ``U(0.15, 0.4) max(H, W)``,
      turning by up to 90 degrees) painted one segment at a time until the hole reaches
      :math:`f \sim U(\text{hole})`; it overshoots by at most one segment.

    Args:
        n: number of masks.
        height: image height ``H``.
        width: image width ``W``.
        generator: the source of randomness (CPU); the same seed gives the same masks.
        kinds: which kinds to draw from (a subset of ``("box", "half", "strokes")``).
        hole: target range of the hole fraction for boxes and strokes, ``0 < lo <= hi < 1``.
        device: where to put the masks (they are drawn on the CPU).
        dtype: their dtype.

    Returns:
        ``(n, 1, H, W)`` in ``{0., 1.}``, 1 = known pixel.

    Example:
        >>> import torch
        >>> m = random_masks(4, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> m.shape, bool(((m == 0) | (m == 1)).all())
        (torch.Size([4, 1, 8, 8]), True)
    """
    _check_size(n, height, width)
    kinds = tuple(kinds)
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
    lo, hi = (float(h) for h in hole)
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(f"hole must be a range of hole fractions with 0 < lo <= hi < 1, got {hole}")
    m = torch.ones(n, 1, height, width)
    which = torch.randint(len(kinds), (n,), generator=generator).tolist()
    fracs = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    strokes = [i for i, k in enumerate(which) if kinds[k] == "strokes"]
    for i, k in enumerate(which):
        if kinds[k] == "half":
            _carve_half(m[i : i + 1], SIDES[_randint(len(SIDES), generator)])
        elif kinds[k] == "box":
            _carve_box(m[i, 0], float(fracs[i]), generator)
    if strokes:
        m[strokes] = _stroke_masks(fracs[strokes], height, width, generator)
    return m.to(device=device, dtype=dtype)


def inpaint_extra(x: Tensor, mask: Tensor) -> Tensor:
    """What an inpainting network gets as ``extra``: ``cat(x * mask, mask)``.

    Args:
        x: images ``(B, C, H, W)``.
        mask: ``(B, 1, H, W)``, 1 = known.

    Returns:
        ``(B, C + 1, H, W)``.

    Example:
        >>> import torch
        >>> inpaint_extra(torch.ones(2, 3, 4, 4), half_mask(2, 4, 4, "top")).shape
        torch.Size([2, 4, 4, 4])
    """
    _check_pair(x, mask)
    mask = mask.to(x.dtype)
    return torch.cat([x * mask, mask], dim=1)


def paste(x_generated: Tensor, x_known: Tensor, mask: Tensor) -> Tensor:
    """Keep the known pixels of ``x_known`` exactly and fill the holes from ``x_generated``.

    Args:
        x_generated: ``(B, C, H, W)``.
        x_known: ``(B, C, H, W)``.
        mask: ``(B, 1, H, W)``, 1 = known.

    Returns:
        ``(B, C, H, W)``.

    Example:
        >>> import torch
        >>> paste(torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1, 2), half_mask(1, 1, 2, "right"))
        tensor([[[[1., 0.]]]])
    """
    if x_generated.shape != x_known.shape:
        raise ValueError(
            f"paste needs x_generated and x_known of the same shape, got {tuple(x_generated.shape)} "
            f"and {tuple(x_known.shape)}"
        )
    _check_pair(x_known, mask)
    return torch.where(mask > 0.5, x_known, x_generated)


def _check_size(n: int, height: int, width: int) -> None:
    if n < 0 or height < 1 or width < 1:
        raise ValueError(f"masks need n >= 0, height >= 1 and width >= 1, got n={n}, {height}x{width}")


def _check_pair(x: Tensor, mask: Tensor) -> None:
    if x.dim() != 4 or mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(
            f"expected images (B, C, H, W) and a mask (B, 1, H, W), got {tuple(x.shape)} and {tuple(mask.shape)}"
        )
    if mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"the mask {tuple(mask.shape)} does not match the images {tuple(x.shape)}: "
            "make it (B, 1, H, W) with the images' B, H and W"
        )


def _carve_half(m: Tensor, side: str) -> None:
    h, w = m.shape[-2:]
    if side == "left":
        m[..., : w // 2] = 0.0
    elif side == "right":
        m[..., w - w // 2 :] = 0.0
    elif side == "top":
        m[..., : h // 2, :] = 0.0
    elif side == "bottom":
        m[..., h - h // 2 :, :] = 0.0
    else:
        raise ValueError(f"unknown side {side!r}; use one of {SIDES}")


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator, dtype=torch.float64))


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=generator))


def _carve_box(m: Tensor, frac: float, generator: torch.Generator) -> None:
    h, w = m.shape
    area = frac * h * w
    aspect = math.exp(math.log(2.0) * (2.0 * _uniform(generator) - 1.0))  # height / width
    bh = min(h, max(1, round(math.sqrt(area * aspect))))
    bw = min(w, max(1, round(area / bh)))
    top, left = _randint(h - bh + 1, generator), _randint(w - bw + 1, generator)
    m[top : top + bh, left : left + bw] = 0.0


def _stroke_masks(
    fracs: Tensor, h: int, w: int, generator: torch.Generator, max_strokes: int = 128
) -> Tensor:
    """Brush-stroke masks ``(M, 1, H, W)`` with hole fractions just above ``fracs: (M,)``, all at once."""
    pr = torch.arange(h, dtype=torch.float32).repeat_interleave(w)  # pixel centres, row-major (H W,)
    pc = torch.arange(w, dtype=torch.float32).repeat(h)
    hole = torch.zeros(len(fracs), h * w, dtype=torch.bool)
    target = (fracs * (h * w)).to(torch.float32)
    todo = torch.arange(len(fracs))  # masks still below their target
    cur = hole.clone()
    for _ in range(max_strokes):  # one stroke (a walk of 1-4 segments) for every unfinished mask
        u = torch.rand(13, len(todo), generator=generator)
        r2 = (min(h, w) * (0.04 + 0.05 * u[0])).clamp_min(0.6).square()[:, None]
        ar, ac = u[1] * (h - 1), u[2] * (w - 1)
        angle = 2.0 * math.pi * u[3]
        segments = (1 + (4 * u[4]).floor()).clamp_max(4)
        for j in range(4):
            length = (0.15 + 0.25 * u[5 + 2 * j]) * max(h, w)
            br = (ar + length * angle.sin()).clamp(0.0, h - 1.0)
            bc = (ac + length * angle.cos()).clamp(0.0, w - 1.0)
            cur |= (_segment_distance2(pr, pc, ar, ac, br, bc) <= r2) & (j < segments)[:, None]
            done = cur.sum(1) >= target[todo]
            if done.any():
                hole[todo[done]] = cur[done]
                keep = ~done
                todo, cur, u, r2, segments = todo[keep], cur[keep], u[:, keep], r2[keep], segments[keep]
                br, bc, angle = br[keep], bc[keep], angle[keep]
                if len(todo) == 0:
                    return (~hole).float().reshape(-1, 1, h, w)
            ar, ac, angle = br, bc, angle + math.pi * (u[6 + 2 * j] - 0.5)
    hole[todo] = cur
    return (~hole).float().reshape(-1, 1, h, w)


def _segment_distance2(pr: Tensor, pc: Tensor, ar: Tensor, ac: Tensor, br: Tensor, bc: Tensor) -> Tensor:
    """Squared distance of the pixels ``(pr, pc): (N,)`` to the segments ``[a, b]`` (``(...)`` each); ``(..., N)``."""
    dr, dc = (br - ar)[..., None], (bc - ac)[..., None]
    qr, qc = pr - ar[..., None], pc - ac[..., None]
    s = ((qr * dr + qc * dc) / (dr * dr + dc * dc).clamp_min(1e-12)).clamp(0.0, 1.0)
    return (qr - s * dr).square() + (qc - s * dc).square()
