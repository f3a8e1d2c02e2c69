r"""STFT features of 8 kHz clips: log-magnitude spectrograms, their inverse with a given phase, Griffin-Lim.

With ``n_fft = 126`` (a periodic Hann window) and ``hop = 63`` (50 % overlap), a clip of
:data:`~flowforge.apps.audio.sources.CLIP_LENGTH` = 3969 samples has a ``64 x 64`` (frequency x frame)
spectrogram :math:`X = \mathrm{STFT}(x)`. Features are log magnitudes mapped affinely to ``[-1, 1]``,

.. math:: f = 2\,\frac{\log(|X| + \epsilon) - \log \epsilon}{\log m - \log \epsilon} - 1,
          \qquad \epsilon = 10^{-3},\ m = 300,

(clamped), the scale of :class:`~flowforge.latent.KLAutoencoder`'s images. A magnitude estimate
:math:`\hat A` is turned back into a waveform with the mixture's phase, :math:`\mathrm{iSTFT}(\hat A
e^{i \angle Y})`, or by Griffin & Lim (1984) iterations :math:`X \leftarrow \hat A e^{i\angle
\mathrm{STFT}(\mathrm{iSTFT}(X))}`.

Example:
    >>> import torch
    >>> x = torch.randn(2, 3969)
    >>> spec = stft(x)
    >>> spec.shape, torch.allclose(istft(spec, 3969), x, atol=1e-4)
    (torch.Size([2, 64, 64]), True)
    >>> f = log_features(spec.abs())
    >>> bool(f.min() >= -1) and bool(f.max() <= 1)
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["N_FFT", "HOP", "stft", "istft", "log_features", "feature_magnitude", "with_phase", "griffin_lim"]

N_FFT, HOP = 126, 63
EPS, TOP = 1e-3, 300.0
_LO, _HI = math.log(EPS), math.log(TOP)


def _window(like: Tensor) -> Tensor:
    return torch.hann_window(
        N_FFT, dtype=like.real.dtype if like.is_complex() else like.dtype, device=like.device
    )


def stft(x: Tensor) -> Tensor:
    """Complex STFT ``(B, N_FFT // 2 + 1, frames)`` of waveforms ``x: (B, L)`` (centred, Hann window)."""
    if x.dim() != 2:
        raise ValueError(f"waveforms must be (B, L), got {tuple(x.shape)}; add a batch axis with x[None]")
    return torch.stft(x, N_FFT, HOP, window=_window(x), center=True, return_complex=True)


def istft(spec: Tensor, length: int) -> Tensor:
    """Waveforms ``(B, length)`` from a complex STFT ``(B, F, T)`` (the exact inverse of :func:`stft`)."""
    if spec.dim() != 3 or not spec.is_complex():
        raise ValueError(f"expected a complex spectrogram (B, F, T), got {tuple(spec.shape)} {spec.dtype}")
    return torch.istft(spec, N_FFT, HOP, window=_window(spec), center=True, length=int(length))


def log_features(mag: Tensor) -> Tensor:
    """Magnitudes ``(B, ...)`` -> log features in ``[-1, 1]`` (see the module docstring)."""
    return (2 * (torch.log(mag + EPS) - _LO) / (_HI - _LO) - 1).clamp(-1.0, 1.0)


def feature_magnitude(f: Tensor) -> Tensor:
    """Inverse of :func:`log_features` (below the clamp): magnitudes ``>= 0`` from features."""
    return (torch.exp(_LO + (f.clamp(-1.0, 1.0) + 1) / 2 * (_HI - _LO)) - EPS).clamp_min(0.0)


def with_phase(mag: Tensor, reference: Tensor, length: int) -> Tensor:
    """Waveforms ``(B, length)`` from magnitudes ``(B, F, T)`` and the phase of ``reference`` (complex)."""
    if mag.shape != reference.shape:
        raise ValueError(f"magnitude {tuple(mag.shape)} and reference {tuple(reference.shape)} must match")
    return istft(torch.polar(mag, torch.angle(reference)), length)


def griffin_lim(
    mag: Tensor, length: int, *, iters: int = 32, init: Tensor | None = None, momentum: float = 0.99
) -> Tensor:
    """Waveforms ``(B, length)`` whose STFT magnitude approaches ``mag: (B, F, T)`` (fast Griffin-Lim).

    Args:
        mag: target magnitudes.
        length: number of samples.
        iters: iterations.
        init: complex STFT whose phase starts the iterations (default zero phase).
        momentum: the "fast Griffin-Lim" acceleration of Perraudin et al. (2013); 0 is the original.
    """
    if iters < 0 or not 0.0 <= momentum < 1.0:
        raise ValueError(f"need iters >= 0 and momentum in [0, 1), got {iters}, {momentum}")
    phase = torch.angle(init) if init is not None else torch.zeros_like(mag)
    spec = torch.polar(mag, phase)
    prev = spec
    for _ in range(int(iters)):
        proj = stft(istft(spec, length))
        acc = proj + momentum * (proj - prev) if momentum else proj
        prev = proj
        spec = torch.polar(mag, torch.angle(acc))
    return istft(spec, length)
