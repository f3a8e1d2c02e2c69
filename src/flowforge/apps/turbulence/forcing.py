r"""Forcings of 2-D turbulence in vorticity form, and random initial vorticity.

:class:`KolmogorovForcing` is the shear forcing :math:`f_u = A \sin(k_f y)\,\hat x` of the velocity, whose
curl forces the vorticity with :math:`f_\omega = -A k_f \cos(k_f y)` (Kolmogorov flow; Kochkov et al. 2021,
arXiv:2102.01010 use :math:`A = 1, k_f = 4` with linear drag 0.1). :class:`RingForcing` is a steady,
seeded, band-limited isotropic forcing: random phases on the shell :math:`k_f - 1/2 \le |k| < k_f + 1/2`,
scaled to an enstrophy injection amplitude. :func:`random_vorticity` draws an initial field with energy
spectrum :math:`E(k) \propto k^4 e^{-2 (k/k_0)^2}` (the decaying-turbulence start of McWilliams 1984 style).

Example:
    >>> import torch
    >>> f = KolmogorovForcing(amplitude=1.0, k=4)(32, torch.float64)
    >>> f.shape
    torch.Size([32, 32])
    >>> w0 = random_vorticity(2, 32, k_peak=4.0, energy=0.5, generator=torch.Generator().manual_seed(0))
    >>> w0.shape
    torch.Size([2, 32, 32])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flowforge.apps.turbulence.spectral import dealias_mask, energy, wavenumbers

__all__ = ["KolmogorovForcing", "RingForcing", "random_vorticity"]


@dataclass(frozen=True)
class KolmogorovForcing:
    r"""Vorticity forcing :math:`f_\omega(x, y) = -A k_f \cos(k_f y)` (velocity forcing :math:`A\sin(k_f y)\hat x`)."""

    amplitude: float = 1.0
    k: int = 4

    def __call__(
        self, n: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> Tensor:
        """The forcing field ``(n, n)``."""
        if not 1 <= self.k <= n // 3:
            raise ValueError(
                f"forcing wavenumber k={self.k} must be in 1..n//3={n // 3} (the dealiased band)"
            )
        y = torch.arange(n, dtype=dtype, device=device) * (2 * math.pi / n)
        return (-self.amplitude * self.k * torch.cos(self.k * y))[:, None].expand(n, n).clone()


@dataclass(frozen=True)
class RingForcing:
    r"""Steady isotropic forcing on the shell :math:`|k| \approx k_f` with seeded random phases, scaled to
    r.m.s. vorticity forcing ``amplitude``."""

    amplitude: float = 1.0
    k: float = 4.0
    seed: int = 0

    def __call__(
        self, n: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> Tensor:
        """The forcing field ``(n, n)``."""
        kx, ky = wavenumbers(n, dtype=dtype, device=device)
        shell = ((kx**2 + ky**2).sqrt() - self.k).abs() < 0.5
        if not bool(shell.any()) or self.k + 0.5 > n // 3:
            raise ValueError(f"forcing shell k={self.k} must lie inside the dealiased band |k| <= {n // 3}")
        g = torch.Generator().manual_seed(int(self.seed))
        phase = torch.rand(shell.shape, generator=g, dtype=dtype) * (2 * math.pi)
        f = torch.fft.irfft2(torch.polar(shell.to(dtype), phase).to(device), s=(n, n))
        return f * (self.amplitude / f.square().mean().sqrt())


def random_vorticity(
    batch: int,
    n: int,
    *,
    k_peak: float = 4.0,
    energy: float = 0.5,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    r"""``(batch, n, n)`` random vorticity with :math:`E(k) \propto k^4 e^{-2(k/k_0)^2}`, dealiased, each field
    scaled to mean kinetic energy ``energy``."""
    if batch < 1 or n < 4:
        raise ValueError(f"need batch >= 1 and n >= 4, got batch={batch}, n={n}")
    kx, ky = wavenumbers(n, dtype=dtype)
    k = (kx**2 + ky**2).sqrt()
    # |w_hat|^2 ~ k^2 E(k) / (2 pi k) ~ k^5 exp(-2 (k/k0)^2) / k
    amp = (k**4 * torch.exp(-2 * (k / k_peak) ** 2)).sqrt() * dealias_mask(n)
    z = torch.randn((batch, *k.shape), generator=generator, dtype=dtype) + 1j * torch.randn(
        (batch, *k.shape), generator=generator, dtype=dtype
    )
    w = torch.fft.irfft2(z * amp, s=(n, n))
    return w * (energy / _energy(w)).sqrt()[:, None, None]


def _energy(w: Tensor) -> Tensor:
    return energy(w)
