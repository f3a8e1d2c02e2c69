r"""Procedural sound sources at 8 kHz and their two-source mixtures (the toy data of FlowSep's task).

Three classes, each with random parameters drawn from an explicit ``torch.Generator``:

- ``harmonic``: a harmonic stack :math:`\sum_{k=1}^{K} k^{-\rho} \sin(2\pi k f_0 t + \phi_k)` with
  :math:`f_0 \sim U[120, 400]` Hz, :math:`K \in \{3..8\}` (harmonics below 3.8 kHz), roll-off
  :math:`\rho \sim U[0.5, 1.5]`, a 5 Hz vibrato of depth up to 1 %;
- ``chirp``: a rising exponential sweep :math:`\sin\big(2\pi f_a T \frac{(f_b/f_a)^{t/T} - 1}{\ln(f_b/f_a)}\big)`
  from :math:`f_a \sim U[200, 800]` Hz to :math:`f_b = f_a \cdot U[2, 5]` (at most 3.5 kHz);
- ``noise``: a white-noise burst band-passed (in the Fourier domain) around :math:`f_c \sim U[500, 3000]`
  Hz with bandwidth :math:`U[200, 1200]` Hz, lasting 0.08-0.25 s.

Every source has a raised-cosine envelope (10 ms fades) and unit RMS. A mixture (Kong et al. style
language-queried separation; FlowSep, Yuan et al. 2024, arXiv:2409.07614) adds a target of one class and an
interferer of another at a target-to-interferer ratio :math:`U[-5, 5]` dB, and is rescaled (with its target)
to unit RMS.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> make_source("chirp", 3969, generator=g).shape
    torch.Size([3969])
    >>> mix = make_mixtures(4, seed=0)
    >>> sorted(mix), tuple(mix["mixture"].shape)
    (['interferer', 'interferer_class', 'mixture', 'source', 'target_class'], (4, 3969))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowforge.core.choices import unknown_choice

__all__ = ["SOURCE_CLASSES", "SAMPLE_RATE", "CLIP_LENGTH", "make_source", "make_mixtures"]

SOURCE_CLASSES = ("harmonic", "chirp", "noise")
SAMPLE_RATE = 8_000
CLIP_LENGTH = 3_969  # 63 * 63 samples (0.496 s): 64 STFT frames with n_fft=126, hop=63


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _envelope(n: int, sr: int, onset: float, duration: float) -> Tensor:
    t = torch.arange(n, dtype=torch.float64) / sr
    fade = 0.01
    rise = ((t - onset) / fade).clamp(0, 1)
    fall = ((onset + duration - t) / fade).clamp(0, 1)
    return (0.5 - 0.5 * torch.cos(math.pi * rise)) * (0.5 - 0.5 * torch.cos(math.pi * fall))


def _harmonic(n: int, sr: int, g: torch.Generator) -> Tensor:
    t = torch.arange(n, dtype=torch.float64) / sr
    f0, rho = _u(g, 120.0, 400.0), _u(g, 0.5, 1.5)
    k_max = int(torch.randint(3, 9, (), generator=g))
    depth, rate = _u(g, 0.0, 0.01), 5.0
    inst = 2 * math.pi * f0 * (t - depth / (2 * math.pi * rate) * torch.cos(2 * math.pi * rate * t))
    out = torch.zeros(n, dtype=torch.float64)
    for k in range(1, k_max + 1):
        if k * f0 * (1 + depth) >= 3_800.0:
            break
        out += k**-rho * torch.sin(k * inst + _u(g, 0.0, 2 * math.pi))
    onset = _u(g, 0.0, 0.1)
    return out * _envelope(n, sr, onset, _u(g, 0.25, 0.45))


def _chirp(n: int, sr: int, g: torch.Generator) -> Tensor:
    fa = _u(g, 200.0, 800.0)
    fb = min(fa * _u(g, 2.0, 5.0), 3_500.0)
    onset, dur = _u(g, 0.0, 0.2), _u(g, 0.2, 0.45)
    tau = (torch.arange(n, dtype=torch.float64) / sr - onset).clamp(0, dur)
    ratio = math.log(fb / fa)
    phase = 2 * math.pi * fa * dur * (torch.exp(ratio * tau / dur) - 1) / ratio
    return torch.sin(phase + _u(g, 0.0, 2 * math.pi)) * _envelope(n, sr, onset, dur)


def _noise(n: int, sr: int, g: torch.Generator) -> Tensor:
    white = torch.randn(n, generator=g, dtype=torch.float64)
    fc, bw = _u(g, 500.0, 3_000.0), _u(g, 200.0, 1_200.0)
    f = torch.fft.rfftfreq(n, 1.0 / sr, dtype=torch.float64)
    band = torch.exp(-0.5 * ((f - fc) / (bw / 2)) ** 4)  # a flat-topped band around fc
    out = torch.fft.irfft(torch.fft.rfft(white) * band, n)
    dur = _u(g, 0.08, 0.25)
    return out * _envelope(n, sr, _u(g, 0.0, n / sr - dur), dur)


_MAKERS = {"harmonic": _harmonic, "chirp": _chirp, "noise": _noise}


def make_source(
    kind: str | int, length: int = CLIP_LENGTH, *, sr: int = SAMPLE_RATE, generator: torch.Generator
) -> Tensor:
    """One source waveform ``(length,)`` (float64, unit RMS) of class ``kind`` (a name or its index).

    Args:
        kind: one of :data:`SOURCE_CLASSES` or its index.
        length: number of samples.
        sr: sample rate in Hz.
        generator: the source of every random parameter.
    """
    if isinstance(kind, int):
        if not 0 <= kind < len(SOURCE_CLASSES):
            raise ValueError(f"class index must be in 0..{len(SOURCE_CLASSES) - 1}, got {kind}")
        kind = SOURCE_CLASSES[kind]
    if kind not in _MAKERS:
        raise unknown_choice("source class", kind, SOURCE_CLASSES)
    x = _MAKERS[kind](int(length), int(sr), generator)
    return x / x.square().mean().sqrt().clamp_min(1e-12)


def make_mixtures(
    n: int, *, seed: int, length: int = CLIP_LENGTH, sr: int = SAMPLE_RATE, tir_db: float = 5.0
) -> dict[str, Tensor]:
    """``n`` two-source mixtures (float32), reproducible from ``seed``.

    Returns:
        ``source`` ``(n, L)`` (the target, in the mixture's scale), ``interferer`` ``(n, L)``,
        ``mixture = source + interferer`` ``(n, L)`` with unit RMS, and ``target_class`` /
        ``interferer_class`` ``(n,)`` (indices into :data:`SOURCE_CLASSES`, always different).
        The target-to-interferer ratio is uniform in ``[-tir_db, tir_db]`` dB.
    """
    if n < 1 or length < 64 or tir_db < 0:
        raise ValueError(
            f"need n >= 1, length >= 64 and tir_db >= 0; got n={n}, length={length}, tir_db={tir_db}"
        )
    g = torch.Generator().manual_seed(int(seed))
    k = len(SOURCE_CLASSES)
    tc = torch.randint(k, (n,), generator=g)
    ic = (tc + torch.randint(1, k, (n,), generator=g)) % k
    src, itf = torch.empty(n, length, dtype=torch.float64), torch.empty(n, length, dtype=torch.float64)
    for i in range(n):
        src[i] = make_source(int(tc[i]), length, sr=sr, generator=g)
        gain = 10 ** (-_u(g, -tir_db, tir_db) / 20)
        itf[i] = gain * make_source(int(ic[i]), length, sr=sr, generator=g)
    mix = src + itf
    scale = mix.square().mean(1, keepdim=True).sqrt().clamp_min(1e-12)
    return {
        "source": (src / scale).float(),
        "interferer": (itf / scale).float(),
        "mixture": (mix / scale).float(),
        "target_class": tc,
        "interferer_class": ic,
    }
