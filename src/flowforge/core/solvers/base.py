r"""The solver contract: :class:`SolverState`, the :class:`Solver` protocol, the :func:`solve` loop.

Conventions (see ``DESIGN.md``): time runs from 0 (source, noise) to 1 (data). A velocity field is
any callable ``f(x, t) -> Tensor`` with ``x`` of shape ``(B, *event)`` and ``t`` of shape ``(B,)``
(same dtype and device as ``x``); it returns a tensor shaped like ``x``.

A solver is a small object with a declared convergence ``order`` and two methods,
``init(f, x, t) -> SolverState`` and ``step(f, state, t_next) -> SolverState``; the state is explicit
and immutable (every step returns a new one). :func:`solve` drives a solver along a 1-D grid of
times, which may increase (0 -> 1, sampling) or decrease (1 -> 0, inversion and likelihoods).
Nothing here wraps work in ``torch.no_grad()``: the caller decides whether gradients flow.

Example:
    >>> import torch
    >>> from flowforge.core.solvers import RK4
    >>> f = lambda x, t: -x  # x(t) = x(0) exp(-t)
    >>> out = solve(f, torch.ones(3, 2, dtype=torch.float64), RK4(), 20)
    >>> bool(torch.allclose(out.x, torch.full((3, 2), torch.e**-1, dtype=torch.float64), atol=1e-8))
    True
    >>> out.nfe
    80
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from flowforge.core.solvers.grids import uniform_grid

__all__ = ["SolveResult", "Solver", "SolverState", "Time", "VelocityField", "solve"]

VelocityField = Callable[[Tensor, Tensor], Tensor]
"""``f(x, t) -> v`` with ``x: (B, *event)``, ``t: (B,)`` and ``v`` shaped like ``x``."""

Time = float | Tensor
"""A time: a Python float or a 0-dim tensor."""


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
        >>> from flowforge.core.solvers import Euler
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
