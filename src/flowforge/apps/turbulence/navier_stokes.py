r"""Pseudo-spectral solver of 2-D incompressible Navier-Stokes in vorticity form on :math:`[0, 2\pi)^2`.

.. math:: \partial_t\omega + u\cdot\nabla\omega = \nu\nabla^2\omega - \mu\,\omega + f,
          \qquad u = \nabla^\perp\psi,\ -\nabla^2\psi = \omega.

In Fourier space :math:`\partial_t\hat\omega = L\hat\omega + N(\hat\omega)` with the linear part
:math:`L = -\nu|k|^2 - \mu` and :math:`N = -\widehat{u\cdot\nabla\omega} + \hat f`. The nonlinear term is
evaluated in physical space with Orszag's 2/3 rule (the input and the product are truncated to
:math:`|k_x|, |k_y| \le n/3`), so the semi-discrete system is the Galerkin truncation, which conserves energy
and enstrophy exactly when :math:`\nu = \mu = f = 0`. Time stepping is the integrating-factor (Lawson)
Runge-Kutta 4: the viscous decay is exact and the nonlinear term is integrated to 4th order (Cox & Matthews
2002 discuss IF methods). With :math:`E = e^{L\Delta t/2}`:

.. math:: a = N(\hat\omega),\ b = N(E(\hat\omega + \tfrac{\Delta t}2 a)),\ c = N(E\hat\omega + \tfrac{\Delta t}2 b),\
          d = N(E^2\hat\omega + \Delta t E c),

.. math:: \hat\omega' = E^2\hat\omega + \tfrac{\Delta t}6 (E^2 a + 2E(b + c) + d).

A batch of independent flows ``(B, n, n)`` advances together.

Example:
    >>> import torch
    >>> ns = NavierStokes2D(32, nu=1e-2, forcing=KolmogorovForcing(1.0, 4), drag=0.1)
    >>> w0 = random_vorticity(2, 32, generator=torch.Generator().manual_seed(0))
    >>> w = ns.run(w0, t=0.5, dt=0.01)
    >>> w.shape, bool(torch.isfinite(w).all())
    (torch.Size([2, 32, 32]), True)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flowforge.apps.turbulence.forcing import KolmogorovForcing, random_vorticity  # noqa: F401 (the example)
from flowforge.apps.turbulence.spectral import (
    dealias_mask,
    derivative_wavenumbers,
    streamfunction_hat,
    wavenumbers,
)

__all__ = ["NavierStokes2D"]


class NavierStokes2D:
    r"""Forced or decaying 2-D Navier-Stokes, vorticity form, integrating-factor RK4 with 2/3 dealiasing.

    Args:
        n: grid points per side (even, >= 8).
        nu: kinematic viscosity :math:`\nu \ge 0` (the Reynolds number scales as :math:`1/\nu`).
        forcing: ``None`` (decaying) or a callable ``(n, dtype, device) -> (n, n)`` vorticity forcing, e.g.
            :class:`~flowforge.apps.turbulence.forcing.KolmogorovForcing`.
        drag: linear (Ekman) drag :math:`\mu \ge 0`, which removes the energy of the inverse cascade.
        dealias: apply the 2/3 rule (turn off only to show aliasing).
        dtype: float64 (default) or float32.
    """

    def __init__(
        self,
        n: int,
        nu: float,
        *,
        forcing: Callable[..., Tensor] | None = None,
        drag: float = 0.0,
        dealias: bool = True,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        if n < 8 or n % 2:
            raise ValueError(f"n must be an even number of grid points >= 8, got {n}")
        if nu < 0 or drag < 0:
            raise ValueError(f"nu and drag must be >= 0, got nu={nu}, drag={drag}")
        self.n, self.nu, self.drag, self.dtype, self.device = n, float(nu), float(drag), dtype, device
        kx, ky = wavenumbers(n, dtype=dtype, device=device)
        self.lin = -self.nu * (kx**2 + ky**2) - self.drag
        self.ikx, self.iky = (1j * k for k in derivative_wavenumbers(n, dtype=dtype, device=device))
        self.mask = dealias_mask(n, device=device) if dealias else torch.ones_like(self.lin, dtype=torch.bool)
        self.forcing = forcing
        self.f_hat = torch.fft.rfft2(forcing(n, dtype, device)) * self.mask if forcing is not None else None

    def nonlinear(self, w_hat: Tensor) -> Tensor:
        r""":math:`N(\hat\omega) = -P\,\mathcal F[u\cdot\nabla\omega] + \hat f` (``P``: the dealiasing projection)."""
        n = self.n
        w_hat = w_hat * self.mask
        psi = streamfunction_hat(w_hat)
        u = torch.fft.irfft2(self.iky * psi, s=(n, n))
        v = torch.fft.irfft2(-self.ikx * psi, s=(n, n))
        wx = torch.fft.irfft2(self.ikx * w_hat, s=(n, n))
        wy = torch.fft.irfft2(self.iky * w_hat, s=(n, n))
        out = -torch.fft.rfft2(u * wx + v * wy) * self.mask
        return out + self.f_hat if self.f_hat is not None else out

    def step_hat(self, w_hat: Tensor, dt: float) -> Tensor:
        """One integrating-factor RK4 step of ``dt`` on Fourier coefficients ``(B, n, n//2+1)``."""
        e = torch.exp(self.lin * (dt / 2))
        e2 = e * e
        a = self.nonlinear(w_hat)
        b = self.nonlinear(e * (w_hat + (dt / 2) * a))
        c = self.nonlinear(e * w_hat + (dt / 2) * b)
        d = self.nonlinear(e2 * w_hat + dt * e * c)
        return e2 * w_hat + (dt / 6) * (e2 * a + 2 * e * (b + c) + d)

    def _check(self, w: Tensor, t: float, dt: float) -> Tensor:
        if w.dim() < 2 or tuple(w.shape[-2:]) != (self.n, self.n):
            raise ValueError(f"expected vorticity (B, {self.n}, {self.n}), got {tuple(w.shape)}")
        if dt <= 0 or t < 0:
            raise ValueError(f"need dt > 0 and t >= 0, got dt={dt}, t={t}")
        return w.to(self.dtype)

    def run(self, w: Tensor, t: float, dt: float) -> Tensor:
        """Advance vorticity ``(B, n, n)`` by time ``t`` in ``round(t / dt)`` steps (at least 1 when t > 0)."""
        w = self._check(w, t, dt)
        steps = max(1, round(t / dt)) if t > 0 else 0
        h = t / steps if steps else dt
        w_hat = torch.fft.rfft2(w) * self.mask
        for _ in range(steps):
            w_hat = self.step_hat(w_hat, h)
        return torch.fft.irfft2(w_hat, s=(self.n, self.n))

    def trajectory(
        self, w: Tensor, *, snapshots: int, every: float, dt: float, burn_in: float = 0.0
    ) -> Tensor:
        """``(B, snapshots, n, n)``: after ``burn_in``, a snapshot every ``every`` time units (the first at the
        end of the burn-in)."""
        if snapshots < 1 or every <= 0:
            raise ValueError(f"need snapshots >= 1 and every > 0, got snapshots={snapshots}, every={every}")
        w = self.run(w, burn_in, dt) if burn_in > 0 else self._check(w, 0.0, dt)
        out = [w]
        for _ in range(snapshots - 1):
            w = self.run(w, every, dt)
            out.append(w)
        return torch.stack(out, dim=1)
