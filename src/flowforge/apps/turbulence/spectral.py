r"""Fourier tools on the periodic square :math:`[0, 2\pi)^2`: wavenumbers, the 2/3 dealiasing mask,
streamfunction, velocity and vorticity, energy and enstrophy.

Fields are ``(..., n, n)`` real tensors sampled at :math:`x_j = 2\pi j / n`; the last axis is ``x``, the
one before it ``y``. Spectra use ``torch.fft.rfft2`` (so ``kx = 0..n/2`` and ``ky = -n/2..n/2-1``).
Sign conventions (vorticity form of 2-D incompressible flow):

.. math:: \omega = \partial_x v - \partial_y u = -\nabla^2\psi,\qquad u = \partial_y\psi,\quad v = -\partial_x\psi,

so :math:`\hat\psi = \hat\omega / |k|^2` (the mean mode set to 0) and :math:`\nabla\cdot u = 0` exactly.

Example:
    >>> import math, torch
    >>> n = 16
    >>> x = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    >>> w = 2 * torch.sin(x)[None, :] * torch.sin(x)[:, None]   # Taylor-Green vorticity
    >>> u = velocity(w)
    >>> u.shape, float(divergence(u).abs().max()) < 1e-12
    (torch.Size([2, 16, 16]), True)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "wavenumbers",
    "dealias_mask",
    "streamfunction_hat",
    "velocity",
    "vorticity",
    "divergence",
    "energy",
    "enstrophy",
    "spectral_derivative",
    "derivative_wavenumbers",
]


def _check(w: Tensor) -> int:
    if w.dim() < 2 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"expected square periodic fields (..., n, n), got shape {tuple(w.shape)}")
    if w.is_complex():
        raise ValueError("expected a real field in physical space; apply torch.fft.irfft2 first")
    return int(w.shape[-1])


def wavenumbers(
    n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Integer wavenumbers ``(kx, ky)`` on the ``rfft2`` grid, each of shape ``(n, n // 2 + 1)``."""
    if n < 2:
        raise ValueError(f"n must be >= 2 grid points, got {n}")
    ky = torch.fft.fftfreq(n, 1.0 / n, dtype=dtype, device=device)
    kx = torch.fft.rfftfreq(n, 1.0 / n, dtype=dtype, device=device)
    return kx[None, :].expand(n, -1), ky[:, None].expand(-1, n // 2 + 1)


def dealias_mask(n: int, *, device: torch.device | str | None = None) -> Tensor:
    r"""Orszag's 2/3 rule: ``True`` where :math:`|k_x|, |k_y| \le \lfloor n/3 \rfloor` (and the Nyquist row is
    dropped); products of two masked fields then alias only onto modes that are masked again."""
    kx, ky = wavenumbers(n, device=device)
    kmax = n // 3
    return (kx.abs() <= kmax) & (ky.abs() <= kmax)


def streamfunction_hat(w_hat: Tensor) -> Tensor:
    r""":math:`\hat\psi = \hat\omega / |k|^2` on the ``rfft2`` grid (``(..., n, n//2+1)`` complex), mean 0."""
    n = w_hat.shape[-2]
    kx, ky = wavenumbers(n, dtype=w_hat.real.dtype, device=w_hat.device)
    k2 = kx**2 + ky**2
    k2[0, 0] = 1.0
    psi = w_hat / k2
    psi[..., 0, 0] = 0.0
    return psi


def derivative_wavenumbers(
    n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """``(kx, ky)`` for first derivatives: :func:`wavenumbers` with the Nyquist row/column set to 0 (a real
    grid has no odd derivative there), so every derivative below is the same exact operator."""
    kx, ky = wavenumbers(n, dtype=dtype, device=device)
    kx, ky = kx.clone(), ky.clone()
    if n % 2 == 0:
        kx[:, -1] = 0.0
        ky[n // 2, :] = 0.0
    return kx, ky


def spectral_derivative(f: Tensor, axis: str) -> Tensor:
    """``d f / d axis`` (``axis`` ``"x"``: the last dim, ``"y"``: the one before) of periodic fields ``(..., n, n)``."""
    n = _check(f)
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    kx, ky = derivative_wavenumbers(n, dtype=f.dtype, device=f.device)
    return torch.fft.irfft2(1j * (kx if axis == "x" else ky) * torch.fft.rfft2(f), s=(n, n))


def velocity(w: Tensor) -> Tensor:
    r"""Velocity :math:`(u, v) = (\partial_y\psi, -\partial_x\psi)` of vorticity ``w: (..., n, n)`` as
    ``(..., 2, n, n)``."""
    n = _check(w)
    kx, ky = derivative_wavenumbers(n, dtype=w.dtype, device=w.device)
    psi = streamfunction_hat(torch.fft.rfft2(w))
    u = torch.fft.irfft2(1j * ky * psi, s=(n, n))
    v = torch.fft.irfft2(-1j * kx * psi, s=(n, n))
    return torch.stack([u, v], dim=-3)


def vorticity(u: Tensor) -> Tensor:
    r""":math:`\omega = \partial_x v - \partial_y u` of a velocity ``(..., 2, n, n)`` -> ``(..., n, n)``."""
    if u.dim() < 3 or u.shape[-3] != 2:
        raise ValueError(f"expected velocity (..., 2, n, n), got shape {tuple(u.shape)}")
    return spectral_derivative(u[..., 1, :, :], "x") - spectral_derivative(u[..., 0, :, :], "y")


def divergence(u: Tensor) -> Tensor:
    r""":math:`\partial_x u + \partial_y v` of a velocity ``(..., 2, n, n)`` -> ``(..., n, n)``."""
    if u.dim() < 3 or u.shape[-3] != 2:
        raise ValueError(f"expected velocity (..., 2, n, n), got shape {tuple(u.shape)}")
    return spectral_derivative(u[..., 0, :, :], "x") + spectral_derivative(u[..., 1, :, :], "y")


def energy(w: Tensor) -> Tensor:
    r"""Mean kinetic energy :math:`\tfrac12\langle u^2 + v^2\rangle` of vorticity ``(..., n, n)`` -> ``(...)``."""
    return 0.5 * velocity(w).square().sum(-3).mean((-2, -1))


def enstrophy(w: Tensor) -> Tensor:
    r"""Mean enstrophy :math:`\tfrac12\langle\omega^2\rangle` of vorticity ``(..., n, n)`` -> ``(...)``."""
    _check(w)
    return 0.5 * w.square().mean((-2, -1))
