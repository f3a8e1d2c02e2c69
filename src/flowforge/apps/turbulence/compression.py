r"""Storage by downsampling and the fixed (untrained) decoders: bicubic, spectral, the exact low-pass.

A field ``(B, C, n, n)`` is stored as its ``factor x factor`` box averages ``(B, C, n/f, n/f)`` (area
averaging, like a top-hat LES filter), a compression ratio of :math:`f^2` (16 for ``f = 4``, 64 for
``f = 8``). Decoders map the stored field back to ``(B, C, n, n)``:

- :func:`bicubic_upsample`: ``torch.nn.functional.interpolate(mode="bicubic")`` on a circularly padded
  field (the domain is periodic), cropped;
- :func:`spectral_upsample`: zero-padding of the stored field's Fourier modes. The box average of a
  periodic field multiplies mode :math:`k` by :math:`H(k) = \prod_{i} \frac{\sin(k_i f \Delta/2)}
  {f \sin(k_i\Delta/2)}` and samples at cell centres, a shift of :math:`(f - 1)\Delta/2`;
  the decoder undoes both (``deconvolve=True``), so a field band-limited to the stored grid's modes is
  recovered exactly (the Nyquist modes are dropped);
- :func:`lowpass`: the truth with every mode outside the stored grid's band removed, the best that any
  decoder restoring only the stored band can do (a control, not a decoder: it reads the truth).

Example:
    >>> import torch
    >>> w = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    >>> low = downsample(w, 4)
    >>> low.shape, compression_ratio(4)
    (torch.Size([2, 1, 8, 8]), 16)
    >>> band = lowpass(w, 4)
    >>> float((spectral_upsample(downsample(band, 4), 4) - band).abs().max()) < 1e-12
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowforge.apps.turbulence.spectral import wavenumbers

__all__ = ["compression_ratio", "downsample", "bicubic_upsample", "spectral_upsample", "lowpass", "DECODERS"]


def _check(x: Tensor, factor: int, what: str = "field") -> None:
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"expected a {what} batch (B, C, n, n), got shape {tuple(x.shape)}; add axes with x[:, None]"
        )
    if factor < 1 or (what == "field" and x.shape[-1] % factor):
        raise ValueError(f"factor must be a positive divisor of n={x.shape[-1]}, got {factor}")


def compression_ratio(factor: int, dim: int = 2) -> int:
    """Stored fraction's inverse: ``factor ** dim`` (by area in 2-D)."""
    return int(factor) ** int(dim)


def downsample(x: Tensor, factor: int) -> Tensor:
    """Box averages over ``factor x factor`` cells: ``(B, C, n, n) -> (B, C, n/f, n/f)``."""
    _check(x, factor)
    return F.avg_pool2d(x, factor)


def bicubic_upsample(low: Tensor, factor: int) -> Tensor:
    """Periodic bicubic interpolation ``(B, C, m, m) -> (B, C, m f, m f)`` (cell-centred, like the box averages)."""
    _check(low, factor, "stored")
    p = 2
    padded = F.pad(low, (p, p, p, p), mode="circular")
    up = F.interpolate(padded, scale_factor=factor, mode="bicubic", align_corners=False)
    return up[..., p * factor : -p * factor, p * factor : -p * factor]


def _box_response(n: int, factor: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Transfer function of the f x f box average followed by the cell-centre shift, on the fine rfft2 grid."""
    kx, ky = wavenumbers(n, dtype=dtype, device=device)
    d = 2 * math.pi / n

    def h(k: Tensor) -> Tensor:
        den = factor * torch.sin(k * d / 2)
        return torch.where(
            k == 0, torch.ones_like(k), torch.sin(k * factor * d / 2) / torch.where(k == 0, 1.0, den)
        )

    shift = (factor - 1) * d / 2  # cell centres sit (f - 1)/2 fine cells after the coarse grid points
    return h(kx) * h(ky) * torch.exp(1j * (kx + ky) * shift)


def spectral_upsample(low: Tensor, factor: int, *, deconvolve: bool = True) -> Tensor:
    """Fourier zero-padding ``(B, C, m, m) -> (B, C, m f, m f)``, undoing the box filter and its shift."""
    _check(low, factor, "stored")
    m = low.shape[-1]
    n = m * factor
    lo = torch.fft.rfft2(low)  # (.., m, m//2+1)
    hi = torch.zeros((*low.shape[:-2], n, n // 2 + 1), dtype=lo.dtype, device=low.device)
    half = m // 2  # keep |k| < m/2: the stored grid's Nyquist mode is ambiguous
    hi[..., :half, :half] = lo[..., :half, :half]
    hi[..., n - half + 1 :, :half] = lo[..., m - half + 1 :, :half]
    hi = hi * factor**2
    if deconvolve:
        resp = _box_response(n, factor, low.dtype, low.device)
        keep = hi != 0
        hi = torch.where(keep, hi / torch.where(keep, resp, 1.0), hi)
    return torch.fft.irfft2(hi, s=(n, n))


def lowpass(x: Tensor, factor: int) -> Tensor:
    """The truth restricted to the stored grid's band ``|k_x|, |k_y| < n / (2 f)`` (a control)."""
    _check(x, factor)
    n = x.shape[-1]
    kx, ky = wavenumbers(n, dtype=x.dtype, device=x.device)
    half = n // factor // 2
    band = (kx.abs() < half) & (ky.abs() < half)
    return torch.fft.irfft2(torch.fft.rfft2(x) * band, s=(n, n))


#: the fixed decoders by name (the recipes' and the benchmark's table)
DECODERS = {"bicubic": bicubic_upsample, "spectral": spectral_upsample}
