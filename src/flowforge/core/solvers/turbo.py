r"""FlowTurbo's pseudo corrector: Heun's method at one field evaluation per step.

Example:
    >>> import torch
    >>> from flowforge.core.solvers import solve
    >>> out = solve(lambda x, t: -x, torch.ones(2, 1, dtype=torch.float64), PseudoCorrector(), 8)
    >>> out.nfe
    9
"""

from __future__ import annotations

from dataclasses import replace
from typing import final

from torch import Tensor

from flowforge.core.solvers.base import SolverState, Time, VelocityField, _call, _check_x

__all__ = ["PseudoCorrector"]


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
