r"""ODE and SDE solvers for velocity fields, one thin ``solve`` loop, and time grids.

Conventions (see ``docs/CONTRACTS.md``): time runs from 0 (source, noise) to 1 (data). A velocity
field is any callable ``f(x, t) -> Tensor`` with ``x`` of shape ``(B, *event)`` and ``t`` of shape
``(B,)`` (same dtype and device as ``x``); it returns a tensor shaped like ``x``.

A solver is a small object with a declared convergence ``order`` and two methods,
``init(f, x, t) -> SolverState`` and ``step(f, state, t_next) -> SolverState``; the state is explicit
and immutable (every step returns a new one). :func:`solve` drives a solver along a 1-D grid of
times, which may increase (0 -> 1, sampling) or decrease (1 -> 0, inversion and likelihoods).
Nothing here wraps work in ``torch.no_grad()``: the caller decides whether gradients flow.

Example:
    >>> import torch
    >>> f = lambda x, t: -x  # x(t) = x(0) exp(-t)
    >>> out = solve(f, torch.ones(3, 2, dtype=torch.float64), RK4(), 20)
    >>> bool(torch.allclose(out.x, torch.full((3, 2), torch.e**-1, dtype=torch.float64), atol=1e-8))
    True
    >>> out.nfe
    80
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol, final, runtime_checkable

import torch
from torch import Tensor

from flowforge.core.time import resolution_shift

__all__ = [
    "RK4",
    "Dopri5",
    "Euler",
    "EulerMaruyama",
    "Heun",
    "Midpoint",
    "PseudoCorrector",
    "SolveResult",
    "Solver",
    "SolverState",
    "VelocityField",
    "constant_eps",
    "edm_grid",
    "shifted_grid",
    "solve",
    "uniform_grid",
    "vanishing_eps",
]

VelocityField = Callable[[Tensor, Tensor], Tensor]
"""``f(x, t) -> v`` with ``x: (B, *event)``, ``t: (B,)`` and ``v`` shaped like ``x``."""

Time = float | Tensor


# --------------------------------------------------------------------------------------------------
# State, protocol, helpers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SolverState:
    """Explicit state carried between solver steps.

    Attributes:
        x: current point, shape ``(B, *event)``.
        t: current time, a Python float or a 0-dim tensor.
        v: cached velocity (its meaning is the solver's: the FSAL stage for :class:`Dopri5`, the
            velocity at the last predicted point for :class:`PseudoCorrector`), or ``None``.
        nfe: number of evaluations of the field(s) so far.
        h: next signed step size to try (adaptive solvers only), or ``None``.
        err_prev: last accepted error norm, for the PI step-size controller (adaptive only).
        n_accepted: accepted steps so far (adaptive only).
        n_rejected: rejected steps so far (adaptive only).
    """

    x: Tensor
    t: Time
    v: Tensor | None = None
    nfe: int = 0
    h: float | None = None
    err_prev: float = 1e-4
    n_accepted: int = 0
    n_rejected: int = 0


@runtime_checkable
class Solver(Protocol):
    """What :func:`solve` needs from a solver.

    Attributes:
        order: declared convergence order (global error ``O(h^order)``; for SDE solvers the strong
            order, so it may be fractional).
        adaptive: ``True`` when the solver picks its own internal steps between grid points.
    """

    order: float
    adaptive: bool

    def init(self, f: VelocityField, x: Tensor, t: Time) -> SolverState:
        """Build the state at time ``t`` from the point ``x`` of shape ``(B, *event)``."""
        ...

    def step(self, f: VelocityField, state: SolverState, t_next: Time) -> SolverState:
        """Advance ``state`` to ``t_next`` (which may be earlier than ``state.t``)."""
        ...


def _tvec(t: Time, x: Tensor) -> Tensor:
    """Time as a ``(B,)`` tensor of ``x``'s dtype and device."""
    if isinstance(t, Tensor):
        return t.to(dtype=x.dtype, device=x.device).reshape(1).expand(x.shape[0]).contiguous()
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def _call(f: VelocityField, x: Tensor, t: Time) -> Tensor:
    """Evaluate ``f(x, t)`` with ``t`` broadcast to ``(B,)`` and check the returned shape."""
    v = f(x, _tvec(t, x))
    if not isinstance(v, Tensor) or v.shape != x.shape:
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(
            f"velocity returned shape {shape} for x of shape {tuple(x.shape)}; the field must return "
            "a tensor shaped like x, f(x, t) -> (B, *event)"
        )
    return v


def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() < 1 or not x.is_floating_point():
        raise ValueError(
            "x must be a floating-point tensor of shape (B, *event); got "
            f"{type(x).__name__ if not isinstance(x, Tensor) else (tuple(x.shape), x.dtype)}"
        )


# --------------------------------------------------------------------------------------------------
# Fixed-step ODE solvers
# --------------------------------------------------------------------------------------------------


@final
class Euler:
    r"""Explicit Euler method (Euler, 1768; Hairer, Nørsett & Wanner, *Solving ODEs I*, §I.7).

    .. math:: x_{i+1} = x_i + h\, f(x_i, t_i), \qquad h = t_{i+1} - t_i.

    Order 1, 1 evaluation per step.
    """

    order: float = 1
    adaptive: bool = False

    def init(self, f: VelocityField, x: Tensor, t: Time) -> SolverState:
        """State at ``(x, t)``; evaluates nothing."""
        _check_x(x)
        return SolverState(x=x, t=t)

    def step(self, f: VelocityField, state: SolverState, t_next: Time) -> SolverState:
        """One Euler step from ``state.t`` to ``t_next``."""
        h = t_next - state.t
        v = _call(f, state.x, state.t)
        return replace(state, x=state.x + h * v, t=t_next, nfe=state.nfe + 1)


@final
class Midpoint:
    r"""Explicit midpoint rule (Runge, 1895; Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.1).

    .. math::
        k_1 = f(x_i, t_i), \quad
        k_2 = f(x_i + \tfrac{h}{2} k_1,\ t_i + \tfrac{h}{2}), \quad
        x_{i+1} = x_i + h\, k_2.

    Order 2, 2 evaluations per step.
    """

    order: float = 2
    adaptive: bool = False

    def init(self, f: VelocityField, x: Tensor, t: Time) -> SolverState:
        """State at ``(x, t)``; evaluates nothing."""
        _check_x(x)
        return SolverState(x=x, t=t)

    def step(self, f: VelocityField, state: SolverState, t_next: Time) -> SolverState:
        """One midpoint step from ``state.t`` to ``t_next``."""
        x, t = state.x, state.t
        h = t_next - t
        k1 = _call(f, x, t)
        k2 = _call(f, x + 0.5 * h * k1, t + 0.5 * h)
        return replace(state, x=x + h * k2, t=t_next, nfe=state.nfe + 2)


@final
class Heun:
    r"""Heun's method, the explicit trapezoidal rule (Heun, 1900; used as EDM's 2nd-order sampler,
    Karras et al., NeurIPS 2022, Alg. 1).

    .. math::
        d_i = f(x_i, t_i), \quad \tilde x = x_i + h\, d_i, \quad
        \tilde d = f(\tilde x, t_{i+1}), \quad x_{i+1} = x_i + \tfrac{h}{2}(d_i + \tilde d).

    Order 2, 2 evaluations per step.
    """

    order: float = 2
    adaptive: bool = False

    def init(self, f: VelocityField, x: Tensor, t: Time) -> SolverState:
        """State at ``(x, t)``; evaluates nothing."""
        _check_x(x)
        return SolverState(x=x, t=t)

    def step(self, f: VelocityField, state: SolverState, t_next: Time) -> SolverState:
        """One Heun step from ``state.t`` to ``t_next``."""
        x, t = state.x, state.t
        h = t_next - t
        d = _call(f, x, t)
        d_tilde = _call(f, x + h * d, t_next)
        return replace(state, x=x + 0.5 * h * (d + d_tilde), t=t_next, nfe=state.nfe + 2)


@final
class RK4:
    r"""Classical 4th-order Runge–Kutta method (Kutta, 1901; Hairer, Nørsett & Wanner, §II.1).

    .. math::
        k_1 = f(x_i, t_i),\ k_2 = f(x_i + \tfrac{h}{2}k_1, t_i + \tfrac{h}{2}),\
        k_3 = f(x_i + \tfrac{h}{2}k_2, t_i + \tfrac{h}{2}),\ k_4 = f(x_i + h k_3, t_i + h),

        x_{i+1} = x_i + \tfrac{h}{6}(k_1 + 2k_2 + 2k_3 + k_4).

    Order 4, 4 evaluations per step.
    """

    order: float = 4
    adaptive: bool = False

    def init(self, f: VelocityField, x: Tensor, t: Time) -> SolverState:
        """State at ``(x, t)``; evaluates nothing."""
        _check_x(x)
        return SolverState(x=x, t=t)

    def step(self, f: VelocityField, state: SolverState, t_next: Time) -> SolverState:
        """One RK4 step from ``state.t`` to ``t_next``."""
        x, t = state.x, state.t
        h = t_next - t
        k1 = _call(f, x, t)
        k2 = _call(f, x + 0.5 * h * k1, t + 0.5 * h)
        k3 = _call(f, x + 0.5 * h * k2, t + 0.5 * h)
        k4 = _call(f, x + h * k3, t_next)
        x_next = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        return replace(state, x=x_next, t=t_next, nfe=state.nfe + 4)


@final
class PseudoCorrector:
    r"""FlowTurbo's pseudo corrector (Zhao, Shi et al., *FlowTurbo*, NeurIPS 2024, §3.2).

    Heun's method in which the velocity evaluated at the predicted point :math:`\tilde x_{i+1}` is
    cached and reused as :math:`d_{i+1}` in the next step, so only the very first step evaluates the
    field at :math:`x_0`:

    .. math::
        d_i = \text{cache} \ (\text{evaluated as } f(x_0, t_0) \text{ at the first step only}),\quad
        \tilde x = x_i + \Delta\, d_i,\quad \tilde d = f(\tilde x, t_{i+1}),

        x_{i+1} = x_i + \tfrac{\Delta}{2}(d_i + \tilde d),\quad \text{cache} \leftarrow \tilde d.

    Since :math:`\tilde x_{i+1} - x_{i+1} = O(\Delta^2)`, the reused velocity is off by
    :math:`O(\Delta^2)` and the local error stays :math:`O(\Delta^3)`: declared order 2, at
    1 evaluation per step (``K + 1`` for ``K`` steps).
    """

    order: float = 2
    adaptive: bool = False

    def init(self, f: VelocityField, x: Tensor, t: Time) -> SolverState:
        """State at ``(x, t)`` with an empty cache; evaluates nothing."""
        _check_x(x)
        return SolverState(x=x, t=t)

    def step(self, f: VelocityField, state: SolverState, t_next: Time) -> SolverState:
        """One pseudo-corrector step from ``state.t`` to ``t_next``."""
        x, t, nfe = state.x, state.t, state.nfe
        h = t_next - t
        d = state.v
        if d is None:
            d = _call(f, x, t)
            nfe += 1
        d_tilde = _call(f, x + h * d, t_next)
        return replace(state, x=x + 0.5 * h * (d + d_tilde), t=t_next, v=d_tilde, nfe=nfe + 1)


# --------------------------------------------------------------------------------------------------
# Adaptive Dormand–Prince 5(4)
# --------------------------------------------------------------------------------------------------

# Butcher tableau of Dormand & Prince (1980), Table 2 (DOPRI5).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
# e = b (5th order, = last row of A) - b* (embedded 4th order), for the 7 stages (FSAL).
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

    Args:
        atol: absolute tolerance, ``> 0``.
        rtol: relative tolerance, ``> 0``.
        max_steps: most attempted steps per call to ``step`` before raising.
        first_step: initial step size magnitude, or ``None`` for the heuristic.
    """

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
                dx = sum(a * k for a, k in zip(_DP_A[s], ks) if a != 0.0)
                ks.append(_call(f, x + h * dx, t_new if s == 5 else t + _DP_C[s] * h))
            x_new = x + h * sum(a * k for a, k in zip(_DP_A[6], ks) if a != 0.0)
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


# --------------------------------------------------------------------------------------------------
# SDE: Euler–Maruyama for stochastic interpolants
# --------------------------------------------------------------------------------------------------


def constant_eps(e0: float) -> Callable[[Tensor], Tensor]:
    r"""Constant diffusion level :math:`\epsilon(t) = e_0`.

    Args:
        e0: the level, ``>= 0``.

    Returns:
        ``eps(t) -> (B,)`` for ``t`` of shape ``(B,)``.
    """
    if not e0 >= 0:
        raise ValueError(f"constant_eps needs e0 >= 0, got {e0}; use constant_eps(0.0) for the ODE")
    return lambda t: torch.full_like(t, float(e0))


def vanishing_eps(e0: float) -> Callable[[Tensor], Tensor]:
    r"""Diffusion level that vanishes at both ends: :math:`\epsilon(t) = 4 e_0\, t (1 - t)`.

    It peaks at :math:`e_0` at :math:`t = 1/2` and is 0 at :math:`t = 0, 1`, where learned scores are
    singular (the advice of Albergo, Boffi & Vanden-Eijnden, 2023, §2.3 / §6).

    Args:
        e0: peak level, ``>= 0``.

    Returns:
        ``eps(t) -> (B,)`` for ``t`` of shape ``(B,)``.
    """
    if not e0 >= 0:
        raise ValueError(f"vanishing_eps needs e0 >= 0, got {e0}; use vanishing_eps(0.0) for the ODE")
    return lambda t: (4.0 * float(e0)) * t * (1.0 - t)


@final
class EulerMaruyama:
    r"""Euler–Maruyama sampler for the SDEs of stochastic interpolants (Albergo, Boffi &
    Vanden-Eijnden, *Stochastic Interpolants: A Unifying Framework for Flows and Diffusions*, 2023,
    Thm. 2.21 / eq. 2.32; Kloeden & Platen 1992 for the scheme).

    Forward in time (:math:`\rho_0 \to \rho_1`) the SDE with the same marginals as the interpolant is

    .. math:: dX_t = [\,b(X_t, t) + \epsilon(t)\, s(X_t, t)\,]\,dt + \sqrt{2\epsilon(t)}\, dW_t,

    and backward in time it is :math:`dX_t = [b - \epsilon s]\,dt + \sqrt{2\epsilon}\,d\bar W_t`.
    One step from :math:`t_i` to :math:`t_{i+1}`, :math:`h = t_{i+1} - t_i` of either sign:

    .. math::
        x_{i+1} = x_i + h\,[\,b(x_i, t_i) + \mathrm{sign}(h)\,\epsilon(t_i)\, s(x_i, t_i)\,]
        + \sqrt{2\epsilon(t_i)\,|h|}\; z_i, \qquad z_i \sim \mathcal N(0, I).

    Here ``b`` is the velocity field given to :meth:`step` and ``s = score(x, t)``. A step that lands
    on the end of the time interval (``t_{i+1} = 1`` going forward, ``0`` going backward) is taken
    without noise (its drift is kept), so the last sample is not blurred by a final kick. When
    :math:`\epsilon(t_i) = 0` for the whole batch the score is not evaluated and the step is exactly
    an Euler step (so ``eps = 0`` reproduces :class:`Euler` and a vanishing ``eps`` never calls the
    score at the ends). ``nfe`` counts evaluations of ``b`` and of ``score``.

    Declared order 0.5 (strong); the weak order (error of expectations) is 1.

    Args:
        score: ``score(x, t) -> (B, *event)``, the score :math:`\nabla\log\rho_t` at ``x``.
        eps: ``eps(t) -> (B,)`` diffusion level for ``t`` of shape ``(B,)`` (see :func:`constant_eps`,
            :func:`vanishing_eps`), or a float for a constant level.
        generator: the ``torch.Generator`` the Gaussian noise is drawn from.
        noise: alternatively, ``noise(x) -> Tensor`` returning standard-normal noise shaped like ``x``.
    """

    order: float = 0.5
    adaptive: bool = False

    def __init__(
        self,
        score: VelocityField,
        eps: Callable[[Tensor], Tensor] | float,
        generator: torch.Generator | None = None,
        noise: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if generator is None and noise is None:
            raise ValueError(
                "EulerMaruyama needs an explicit source of randomness: pass "
                "generator=torch.Generator().manual_seed(0) or noise=lambda x: torch.randn_like(x)"
            )
        if generator is not None and noise is not None:
            raise ValueError("EulerMaruyama takes generator= or noise=, not both")
        self.score = score
        self.eps = constant_eps(eps) if isinstance(eps, (int, float)) else eps
        self.generator = generator
        self.noise = noise

    def _draw(self, x: Tensor) -> Tensor:
        if self.noise is not None:
            z = self.noise(x)
            if not isinstance(z, Tensor) or z.shape != x.shape:
                shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
                raise ValueError(
                    f"noise returned shape {shape} for x of shape {tuple(x.shape)}; it must return "
                    "standard-normal noise shaped like x"
                )
            return z
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)

    def init(self, f: VelocityField, x: Tensor, t: Time) -> SolverState:
        """State at ``(x, t)``; evaluates nothing."""
        _check_x(x)
        return SolverState(x=x, t=t)

    def step(self, f: VelocityField, state: SolverState, t_next: Time) -> SolverState:
        """One Euler–Maruyama step from ``state.t`` to ``t_next`` (either direction)."""
        x, t, nfe = state.x, state.t, state.nfe
        h = t_next - t
        forward = float(h) > 0
        drift = _call(f, x, t)
        nfe += 1
        e = self.eps(_tvec(t, x))
        if not isinstance(e, Tensor) or e.shape != (x.shape[0],):
            shape = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
            raise ValueError(f"eps(t) returned shape {shape} for t of shape ({x.shape[0]},); return (B,)")
        if bool((e < 0).any()):
            raise ValueError("eps(t) must be >= 0; got a negative diffusion level")
        if bool((e != 0).any()):
            e = e.reshape((-1,) + (1,) * (x.dim() - 1))
            s = _call(self.score, x, t)
            nfe += 1
            drift = drift + (e * s if forward else -(e * s))
        x_next = x + h * drift
        at_end = abs(float(t_next) - (1.0 if forward else 0.0)) < 1e-12
        if not at_end and bool((e != 0).any()):
            x_next = x_next + torch.sqrt(2.0 * e * abs(float(h))) * self._draw(x)
        return replace(state, x=x_next, t=t_next, nfe=nfe)


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


class SolveResult(NamedTuple):
    """Output of :func:`solve`.

    Attributes:
        x: the final point, ``(B, *event)``.
        trajectory: ``(K + 1, B, *event)`` points at every grid time (the start included) when asked,
            else ``None``.
        nfe: total evaluations of the field(s).
        times: the grid used, float64 of shape ``(K + 1,)``.
    """

    x: Tensor
    trajectory: Tensor | None
    nfe: int
    times: Tensor


def _as_grid(grid: Tensor | int) -> Tensor:
    if isinstance(grid, bool) or not isinstance(grid, (int, Tensor)):
        raise TypeError(
            "grid must be an int number of uniform steps or a 1-D tensor of times, got "
            f"{type(grid).__name__}; write e.g. grid=20 or grid=uniform_grid(20)"
        )
    if isinstance(grid, int):
        return uniform_grid(grid)
    times = grid.detach().to(dtype=torch.float64, device="cpu")
    if times.dim() != 1 or times.numel() < 2:
        raise ValueError(
            f"grid must be 1-D with at least 2 times, got shape {tuple(grid.shape)}; write e.g. "
            "uniform_grid(20) or torch.tensor([0.0, 1.0])"
        )
    if not bool(torch.isfinite(times).all()):
        raise ValueError("grid contains non-finite times; use e.g. uniform_grid(20)")
    d = times.diff()
    if not (bool((d > 0).all()) or bool((d < 0).all())):
        raise ValueError(
            f"grid must be strictly monotone: increasing (sampling, e.g. uniform_grid(20)) or decreasing "
            f"(inversion/likelihood, e.g. uniform_grid(20, 1.0, 0.0)); got {times.tolist()[:8]}"
            f"{'...' if times.numel() > 8 else ''}"
        )
    return times


def solve(
    f: VelocityField,
    x: Tensor,
    solver: Solver,
    grid: Tensor | int,
    *,
    callback: Callable[[SolverState], None] | None = None,
    return_trajectory: bool = False,
) -> SolveResult:
    r"""Integrate ``dx/dt = f(x, t)`` (or the solver's SDE) from ``grid[0]`` to ``grid[-1]``.

    The solver takes one ``step`` per grid interval (an adaptive solver integrates each interval
    internally). Gradients flow through the steps if the caller has gradient mode on.

    Args:
        f: velocity field ``f(x, t)``, ``x: (B, *event)``, ``t: (B,)``.
        x: the starting point at ``grid[0]``, shape ``(B, *event)``.
        solver: e.g. ``Euler()``, ``Heun()``, ``RK4()``, ``Dopri5(atol=1e-5, rtol=1e-5)``.
        grid: strictly monotone 1-D tensor of times (increasing 0 -> 1 to sample, decreasing
            1 -> 0 to invert), read as Python floats; or an int ``K`` for ``uniform_grid(K)`` (0 -> 1).
        callback: called as ``callback(state)`` after every step.
        return_trajectory: also return the points at every grid time.

    Returns:
        :class:`SolveResult` ``(x, trajectory, nfe, times)``.

    Example:
        >>> import torch
        >>> out = solve(lambda x, t: torch.ones_like(x), torch.zeros(2, 3), Euler(), 4,
        ...             return_trajectory=True)
        >>> tuple(out.trajectory.shape), out.nfe, out.x[0, 0].item()
        ((5, 2, 3), 4, 1.0)
    """
    _check_x(x)
    times = _as_grid(grid)
    ts = times.tolist()
    state = solver.init(f, x, ts[0])
    traj = [x] if return_trajectory else None
    for t_next in ts[1:]:
        state = solver.step(f, state, t_next)
        if callback is not None:
            callback(state)
        if traj is not None:
            traj.append(state.x)
    trajectory = torch.stack(traj) if traj is not None else None
    return SolveResult(x=state.x, trajectory=trajectory, nfe=state.nfe, times=times)


# --------------------------------------------------------------------------------------------------
# Time grids
# --------------------------------------------------------------------------------------------------


def _check_steps(steps: int, name: str) -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"{name} needs an integer steps >= 1, got {steps!r}; write e.g. {name}(20)")
    return int(steps)


def uniform_grid(steps: int, t0: float = 0.0, t1: float = 1.0) -> Tensor:
    """Uniform grid of ``steps`` intervals from ``t0`` to ``t1`` (either direction).

    Args:
        steps: number of steps ``K >= 1``.
        t0: first time (0 to sample; 1 to go backwards).
        t1: last time, ``!= t0``.

    Returns:
        float64 tensor of shape ``(K + 1,)``, ``t0`` and ``t1`` included exactly.
    """
    steps = _check_steps(steps, "uniform_grid")
    if t0 == t1:
        raise ValueError(f"uniform_grid needs t0 != t1, got t0 = t1 = {t0}; e.g. uniform_grid(20, 0.0, 1.0)")
    g = torch.linspace(float(t0), float(t1), steps + 1, dtype=torch.float64)
    g[0], g[-1] = float(t0), float(t1)
    return g


def shifted_grid(steps: int, shift: float) -> Tensor:
    r"""Uniform grid on ``[0, 1]`` passed through SD3's resolution shift (Esser et al., 2024, eq. 23),
    :math:`t' = t / (a - (a - 1) t)`; ``shift = a > 1`` spends more steps near the noise (t=0).

    Args:
        steps: number of steps ``K >= 1``.
        shift: the factor ``a > 0`` (1.0 gives :func:`uniform_grid`).

    Returns:
        float64 tensor of shape ``(K + 1,)`` from 0 to 1.
    """
    return resolution_shift(uniform_grid(_check_steps(steps, "shifted_grid")), shift)


def edm_grid(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    r"""EDM's noise levels (Karras et al., NeurIPS 2022, eq. 5) as flowforge times on the linear path.

    Karras et al. take, for :math:`i = 0, \dots, N-1` with :math:`N` = ``steps``,

    .. math::
        \sigma_i = \big(\sigma_{\max}^{1/\rho} + \tfrac{i}{N-1}(\sigma_{\min}^{1/\rho}
        - \sigma_{\max}^{1/\rho})\big)^{\rho},\qquad \sigma_N = 0.

    On the linear path :math:`x_t = t x_1 + (1 - t) x_0`, :math:`x_t / t` is EDM's
    :math:`x_1 + \sigma x_0` with :math:`\sigma = (1 - t)/t`, i.e. :math:`t = 1/(1 + \sigma)`. The grid
    starts at :math:`t_0 = 1/(1+\sigma_{\max})` (about 0.0123, not 0: start from
    ``(1 - t0) * noise``, or plain noise, whose mismatch is ``O(t0)``) and ends at exactly ``1.0``
    (:math:`\sigma_N = 0`). With ``steps = 1`` it is ``[1/(1+sigma_max), 1]``.

    Args:
        steps: number of steps ``N >= 1``.
        sigma_min: smallest positive noise level, ``> 0``.
        sigma_max: largest noise level, ``> sigma_min``.
        rho: the warping exponent, ``> 0`` (7 in EDM).

    Returns:
        float64 tensor of shape ``(N + 1,)``, increasing, ending at 1.0.
    """
    steps = _check_steps(steps, "edm_grid")
    if not (0 < sigma_min < sigma_max) or not rho > 0:
        raise ValueError(
            f"edm_grid needs 0 < sigma_min < sigma_max and rho > 0, got sigma_min={sigma_min}, "
            f"sigma_max={sigma_max}, rho={rho}; EDM uses edm_grid(steps, 0.002, 80.0, 7.0)"
        )
    if steps == 1:
        sigma = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
        lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
        sigma = (hi + ramp * (lo - hi)) ** rho
    t = 1.0 / (1.0 + sigma)
    return torch.cat([t, torch.ones(1, dtype=torch.float64)])
