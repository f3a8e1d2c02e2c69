r"""ODE and SDE solvers for velocity fields, one thin :func:`solve` loop, and time grids.

One method a file:

=================================================  =====================  =====  ============
method                                             file                   order  NFE / step
=================================================  =====================  =====  ============
:class:`SolverState`, :class:`Solver`, ``solve``   ``base.py``            --     --
:class:`ButcherTableau`, ``ExplicitRungeKutta``    ``runge_kutta.py``     table  stages
:class:`Euler`                                     ``runge_kutta.py``     1      1
:class:`Midpoint`                                  ``runge_kutta.py``     2      2
:class:`Heun`                                      ``runge_kutta.py``     2      2
:class:`Ralston`                                   ``runge_kutta.py``     2      2
:class:`SSPRK3`                                    ``runge_kutta.py``     3      3
:class:`RK4`                                       ``runge_kutta.py``     4      4
:class:`Dopri5` (adaptive 5(4))                    ``dopri5.py``          5      6 (FSAL)
:class:`PseudoCorrector` (FlowTurbo)               ``turbo.py``           2      1 (+1 once)
:class:`Projected` (any of these on a manifold)    ``riemannian.py``      inner  inner
:class:`EulerMaruyama`, ``constant_eps``,          ``sde.py``             0.5    1 or 2
``vanishing_eps``                                                         (weak 1)
``uniform_grid``, ``shifted_grid``, ``edm_grid``   ``grids.py``           --     --
=================================================  =====================  =====  ============

A new explicit Runge–Kutta method is one :class:`ButcherTableau` and a small class in
``runge_kutta.py`` plus one export line here; ``tests/test_solvers.py`` fits its convergence slope
against its declared order without being edited.

Conventions: time runs from 0 (source, noise) to 1 (data); a velocity field is ``f(x, t) -> v`` with
``x: (B, *event)``, ``t: (B,)`` and ``v`` shaped like ``x``. See :mod:`flowforge.core.solvers.base`.

Example:
    >>> import torch
    >>> f = lambda x, t: -x  # x(t) = x(0) exp(-t)
    >>> out = solve(f, torch.ones(3, 2, dtype=torch.float64), RK4(), 20)
    >>> bool(torch.allclose(out.x, torch.full((3, 2), torch.e**-1, dtype=torch.float64), atol=1e-8))
    True
    >>> out.nfe
    80
"""

from flowforge.core.solvers.base import Solver, SolveResult, SolverState, VelocityField, solve
from flowforge.core.solvers.dopri5 import Dopri5
from flowforge.core.solvers.grids import edm_grid, shifted_grid, uniform_grid
from flowforge.core.solvers.riemannian import Projected, projected_field
from flowforge.core.solvers.runge_kutta import (
    RK4,
    SSPRK3,
    ButcherTableau,
    Euler,
    ExplicitRungeKutta,
    Heun,
    Midpoint,
    Ralston,
)
from flowforge.core.solvers.sde import EulerMaruyama, constant_eps, vanishing_eps
from flowforge.core.solvers.turbo import PseudoCorrector

__all__ = [
    "RK4",
    "SSPRK3",
    "ButcherTableau",
    "Dopri5",
    "Euler",
    "EulerMaruyama",
    "ExplicitRungeKutta",
    "Heun",
    "Midpoint",
    "Projected",
    "PseudoCorrector",
    "Ralston",
    "SolveResult",
    "Solver",
    "SolverState",
    "VelocityField",
    "constant_eps",
    "edm_grid",
    "projected_field",
    "shifted_grid",
    "solve",
    "uniform_grid",
    "vanishing_eps",
]
