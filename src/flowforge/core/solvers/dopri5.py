r"""Adaptive Dormand–Prince 5(4) with Hairer's PI step-size control.

Example:
    >>> import torch
    >>> from flowforge.core.solvers import solve
    >>> out = solve(lambda x, t: -x, torch.ones(2, 1, dtype=torch.float64), Dopri5(1e-8, 1e-8), 1)
    >>> abs(out.x[0, 0].item() - torch.e**-1) < 1e-7
    True
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import final

import torch
from torch import Tensor

from flowforge.core.solvers.base import SolverState, Time, VelocityField, _call, _check_x
from flowforge.core.solvers.runge_kutta import ButcherTableau

__all__ = ["Dopri5"]

# Butcher tableau of Dormand & Prince (1980), Table 2 (DOPRI5): six stages and the 5th-order weights
# b; the seventh (FSAL) stage is f at the new point, the first stage of the next step.
_DP = ButcherTableau(
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0),
    order=5,
)
# e = b (5th order) - b* (embedded 4th order), for the 7 stages (FSAL).
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


@final
class Dopri5:
    r"""Adaptive Dormand–Prince 5(4) Runge–Kutta method (Dormand & Prince, *J. Comput. Appl. Math.*
    6, 1980; step-size control as in Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.4 and their
    ``DOPRI5`` code).

    Seven stages :math:`k_s = f(x_i + h\sum_j a_{sj} k_j,\ t_i + c_s h)`; the 5th-order solution
    :math:`x_{i+1} = x_i + h\sum_s b_s k_s` is propagated (local extrapolation) and the last stage is
    the first stage of the next step (FSAL). The error estimate
    :math:`\mathrm{err} = h\sum_s (b_s - \hat b_s) k_s` is measured by the RMS norm

    .. math::
        \|\mathrm{err}\| = \sqrt{\tfrac1N \textstyle\sum_n
        \big(\mathrm{err}_n / (\mathrm{atol} + \mathrm{rtol}\max(|x_n|, |x_{\mathrm{new},n}|))\big)^2}

    over all ``N`` entries of the batch. A step is accepted when the norm is ``<= 1``; the next step is
    :math:`h_{\rm new} = h \cdot \mathrm{clip}(0.9\,\|\mathrm{err}\|^{-(0.2 - 0.75\beta)}
    \|\mathrm{err}_{\rm prev}\|^{\beta},\ 0.2,\ 10)` (Hairer's PI controller, :math:`\beta = 0.04`;
    after a rejection the factor is capped at 1 and the I-controller is used). The initial step, when
    ``first_step`` is ``None``, follows Hairer's ``hinit`` heuristic (1 extra evaluation).

    ``step`` integrates adaptively from ``state.t`` to ``t_next`` (landing exactly on it), so
    :func:`solve` with the grid ``[0, 1]`` makes a single call. Step-size control uses detached
    values, so gradients (if the caller enables them) flow through the accepted steps only.

    ``Dopri5.tableau`` is the propagated 5th-order method as a
    :class:`~flowforge.core.solvers.runge_kutta.ButcherTableau` (six stages; with
    :class:`~flowforge.core.solvers.runge_kutta.ExplicitRungeKutta` it is a fixed-step 5th-order method).

    Args:
        atol: absolute tolerance, ``> 0``.
        rtol: relative tolerance, ``> 0``.
        max_steps: most attempted steps per call to ``step`` before raising.
        first_step: initial step size magnitude, or ``None`` for the heuristic.
    """

    tableau = _DP
    order: float = 5
    adaptive: bool = True
    _safety: float = 0.9
    _beta: float = 0.04
    _fac_min: float = 0.2
    _fac_max: float = 10.0

    def __init__(
        self, atol: float = 1e-5, rtol: float = 1e-5, max_steps: int = 10_000, first_step: float | None = None
    ) -> None:
        if not (atol > 0 and rtol > 0):
            raise ValueError(
                f"Dopri5 needs atol > 0 and rtol > 0, got atol={atol}, rtol={rtol}; write e.g. "
                "Dopri5(atol=1e-5, rtol=1e-5)"
            )
        if int(max_steps) != max_steps or max_steps < 1:
            raise ValueError(
                f"Dopri5 needs an integer max_steps >= 1, got {max_steps}; e.g. max_steps=10_000"
            )
        if first_step is not None and not first_step > 0:
            raise ValueError(
                f"Dopri5 needs first_step > 0 (its magnitude; the direction comes from the grid) or None, "
                f"got {first_step}"
            )
        self.atol = float(atol)
        self.rtol = float(rtol)
        self.max_steps = int(max_steps)
        self.first_step = None if first_step is None else float(first_step)

    def __repr__(self) -> str:
        return (
            f"Dopri5(atol={self.atol}, rtol={self.rtol}, max_steps={self.max_steps}, "
            f"first_step={self.first_step})"
        )

    def _norm(self, e: Tensor, x: Tensor, x_new: Tensor | None = None) -> float:
        e, x = e.detach(), x.detach()
        ref = x.abs() if x_new is None else torch.maximum(x.abs(), x_new.detach().abs())
        return float(torch.sqrt(torch.mean((e / (self.atol + self.rtol * ref)) ** 2)))

    def init(self, f: VelocityField, x: Tensor, t: Time) -> SolverState:
        """State at ``(x, t)`` with the FSAL stage ``f(x, t)`` cached (1 evaluation)."""
        _check_x(x)
        return SolverState(x=x, t=t, v=_call(f, x, t), nfe=1)

    def _initial_step(self, f: VelocityField, x: Tensor, t: Time, v: Tensor, direction: float) -> float:
        """Hairer's ``hinit``: a step size magnitude from two velocity evaluations (1 new)."""
        d0 = self._norm(x, x)
        d1 = self._norm(v, x)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        v1 = _call(f, x + direction * h0 * v, t + direction * h0)
        d2 = self._norm(v1 - v, x) / h0
        dmax = max(d1, d2)
        h1 = max(1e-6, h0 * 1e-3) if dmax <= 1e-15 else (0.01 / dmax) ** (1.0 / (self.order))
        return min(100.0 * h0, h1)

    def step(self, f: VelocityField, state: SolverState, t_next: Time) -> SolverState:
        """Integrate adaptively from ``state.t`` to exactly ``t_next``."""
        t_end = float(t_next)
        t = float(state.t)
        x, k1, nfe = state.x, state.v, state.nfe
        if k1 is None:
            k1 = _call(f, x, t)
            nfe += 1
        span = t_end - t
        if span == 0.0:
            return replace(state, t=t_next, v=k1, nfe=nfe)
        direction = 1.0 if span > 0 else -1.0
        if state.h is not None and state.h * direction > 0:
            h_abs = abs(state.h)
        elif self.first_step is not None:
            h_abs = self.first_step
        else:
            h_abs = self._initial_step(f, x, t, k1, direction)
            nfe += 1
        err_prev = state.err_prev
        n_acc, n_rej = state.n_accepted, state.n_rejected
        expo = 1.0 / self.order - 0.75 * self._beta
        h_next = h_abs
        for _ in range(self.max_steps):
            remaining = abs(t_end - t)
            last = h_abs >= remaining * (1.0 - 1e-12)
            h_used = remaining if last else h_abs
            h = direction * h_used
            t_new = t_end if last else t + h
            ks = [k1]
            for s in range(1, 6):
                dx = sum(a * k for a, k in zip(_DP.a[s], ks) if a != 0.0)
                ks.append(_call(f, x + h * dx, t_new if s == 5 else t + _DP.c[s] * h))
            x_new = x + h * sum(b * k for b, k in zip(_DP.b, ks) if b != 0.0)
            ks.append(_call(f, x_new, t_new))  # FSAL: the first stage of the next step
            nfe += 6
            err_vec = h * sum(e * k for e, k in zip(_DP_E, ks) if e != 0.0)
            err = self._norm(err_vec, x, x_new)
            if not math.isfinite(err):
                err = math.inf
            if err <= 1.0:
                fac = self._safety * max(err, 1e-10) ** (-expo) * err_prev**self._beta
                fac = min(self._fac_max, max(self._fac_min, fac))
                h_next = h_used * fac if not last else max(h_abs, h_used * fac)
                err_prev = max(err, 1e-4)
                x, k1, t, n_acc = x_new, ks[6], t_new, n_acc + 1
                if last:
                    return replace(
                        state,
                        x=x,
                        t=t_next,
                        v=k1,
                        nfe=nfe,
                        h=direction * h_next,
                        err_prev=err_prev,
                        n_accepted=n_acc,
                        n_rejected=n_rej,
                    )
                h_abs = h_next
            else:
                fac = 1.0 if not math.isfinite(err) else self._safety * err ** (-expo)
                h_abs = h_used * min(1.0, max(self._fac_min, fac))
                n_rej += 1
            if h_abs <= 1e-14 * max(1.0, abs(t)):
                raise RuntimeError(
                    f"Dopri5 step size underflow at t={t:.6g} (h={h_abs:.3g}); the field may be stiff or "
                    "non-finite there. Loosen atol/rtol or use a fixed-step solver with a finer grid."
                )
        raise RuntimeError(
            f"Dopri5 took more than max_steps={self.max_steps} steps between t={float(state.t):.6g} and "
            f"t={t_end:.6g} (reached t={t:.6g}); raise max_steps or loosen atol/rtol "
            f"(atol={self.atol}, rtol={self.rtol})"
        )
