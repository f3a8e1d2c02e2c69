r"""Straightness of a flow's ODE trajectories (Liu, Gong & Liu, 2022, arXiv:2209.03003, Def. 3.2).

For the trajectories :math:`Z_t` of :math:`\dot Z_t = v(Z_t, t)` started at source samples :math:`Z_0`,

.. math:: S(Z) = \int_0^1 E\,\big\|(Z_1 - Z_0) - \dot Z_t\big\|^2\, dt, \qquad \dot Z_t = v(Z_t, t).

:math:`S = 0` exactly when every trajectory is a straight line travelled at constant speed, in which case
one Euler step is exact. This is the paper's definition (a squared norm summed over the event, averaged
over samples). The rectified flow++ code (``sangyun884/rfpp:utils.py``, ``straightness``) reports the
same quantity divided by the event size ``d`` and sums finite differences of an Euler trajectory (a
left Riemann sum); ``per_dim=True`` gives its normalisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flowforge.core.solvers import Euler, Solver, solve, uniform_grid

__all__ = ["straightness"]


def straightness(
    velocity: Callable[..., Tensor],
    x0: Tensor,
    *,
    steps: int = 64,
    solver: Solver | None = None,
    cond: dict[str, Tensor] | None = None,
    per_dim: bool = False,
) -> float:
    r"""Liu et al.'s straightness :math:`S = \int_0^1 E\|(Z_1 - Z_0) - v(Z_t, t)\|^2 dt` along the model's ODE.

    The trajectory comes from ``solver`` on a uniform grid of ``steps`` intervals from ``x0`` at t=0;
    :math:`Z_1 - Z_0` is its end minus its start, and the integrand is evaluated at every grid point
    (``steps + 1`` extra velocity calls) and integrated by the trapezoidal rule, so a field whose
    trajectories are straight gives 0 for any ``steps``.

    Args:
        velocity: the field ``velocity(x, t, **cond)``, ``x: (B, *event)``, ``t: (B,)`` (e.g.
            ``FlowMatching.velocity`` or ``FlowGenerator.field``).
        x0: source samples :math:`Z_0`, ``(B, *event)``.
        steps: number of grid intervals ``K >= 1``.
        solver: the ODE solver (default :class:`~flowforge.core.solvers.Euler`, as in the paper).
        cond: conditions passed to ``velocity``, each ``(B, ...)``.
        per_dim: divide by the event size ``d`` (the rf++ code's normalisation).

    Returns:
        :math:`S` as a Python float (computed in float64, without gradients).

    Example:
        >>> import torch
        >>> m = torch.tensor([1.0, -2.0])
        >>> straightness(lambda x, t: m - x, torch.randn(128, 2), steps=8) > 0.1  # curved: x_t = m + e^-t (x0 - m)
        True
        >>> straightness(lambda x, t: torch.ones_like(x), torch.randn(128, 2), steps=8) < 1e-10  # straight
        True
    """
    if not isinstance(x0, Tensor) or x0.dim() < 1 or x0.shape[0] == 0 or not x0.is_floating_point():
        raise ValueError(
            "straightness needs source samples x0 as a non-empty floating tensor (B, *event); got "
            f"{tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__}; write e.g. torch.randn(1024, 2)"
        )
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"straightness needs an integer steps >= 1, got {steps!r}; write e.g. steps=64")
    cond = dict(cond or {})
    grid = uniform_grid(int(steps))

    def field(x: Tensor, t: Tensor) -> Tensor:
        return velocity(x, t, **cond)

    with torch.no_grad():
        traj = solve(
            field, x0, solver if solver is not None else Euler(), grid, return_trajectory=True
        ).trajectory
        assert traj is not None
        chord = (traj[-1] - traj[0]).double()
        total = torch.zeros((), dtype=torch.float64)
        ts = grid.tolist()
        for k, tk in enumerate(ts):
            t = torch.full((x0.shape[0],), tk, dtype=x0.dtype, device=x0.device)
            gap = (chord - field(traj[k], t).double()).square().flatten(1).sum(1).mean().cpu()
            weight = 0.5 * (ts[min(k + 1, len(ts) - 1)] - ts[max(k - 1, 0)])  # trapezoid weights
            total = total + weight * gap
    d = x0[0].numel()
    return float(total / d) if per_dim else float(total)
