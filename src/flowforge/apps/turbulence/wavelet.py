r"""Wavelet truncation (a DWT baseline; PyWavelets, the ``wavelets`` extra, imported lazily).

The field is transformed with ``pywt.wavedec2(..., level=L, mode="periodization")`` and only the coarsest
approximation coefficients are kept, ``(n / 2^L)^2`` numbers: compression :math:`4^L` (``factor = 2^L``,
16 for ``L = 2``, 64 for ``L = 3``), the same ratio as :func:`~flowforge.apps.turbulence.compression.downsample`.
Decoding sets every detail coefficient to zero and inverts. With the Haar wavelet this is the box average
decoded piecewise-constant; smoother wavelets (``db4``, ``bior4.4``) give smoother fields.

Example:
    >>> import torch
    >>> x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    >>> if wavelets_available():
    ...     y = wavelet_truncate(x, 4, wavelet="haar")
    ...     print(y.shape)
    ... else:
    ...     print(torch.Size([2, 1, 16, 16]))
    torch.Size([2, 1, 16, 16])
"""

from __future__ import annotations

import importlib.util
import math

import torch
from torch import Tensor

__all__ = ["wavelets_available", "wavelet_truncate"]

_MISSING = (
    "the wavelet decoder needs PyWavelets: pip install 'flowforge[wavelets]' (or pip install PyWavelets)"
)


def wavelets_available() -> bool:
    """Whether PyWavelets (``pywt``) can be imported."""
    return importlib.util.find_spec("pywt") is not None


def wavelet_truncate(x: Tensor, factor: int, *, wavelet: str = "db4") -> Tensor:
    """Keep the level-``log2(factor)`` approximation of ``x: (B, C, n, n)`` and reconstruct ``(B, C, n, n)``."""
    if not wavelets_available():
        raise ImportError(_MISSING)
    import pywt

    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"expected a field batch (B, C, n, n), got shape {tuple(x.shape)}")
    level = int(round(math.log2(factor)))
    if factor < 2 or 2**level != factor or x.shape[-1] % factor:
        raise ValueError(f"factor must be a power of 2 dividing n={x.shape[-1]}, got {factor}; e.g. 4 or 8")
    if wavelet not in pywt.wavelist(kind="discrete"):
        raise ValueError(f"unknown discrete wavelet {wavelet!r}; e.g. 'haar', 'db4', 'bior4.4'")
    a = x.detach().cpu().numpy()
    coeffs = pywt.wavedec2(a, wavelet, mode="periodization", level=level, axes=(-2, -1))
    kept = [coeffs[0]] + [tuple(0 * d for d in details) for details in coeffs[1:]]
    out = pywt.waverec2(kept, wavelet, mode="periodization", axes=(-2, -1))
    return torch.as_tensor(out, dtype=x.dtype, device=x.device)
