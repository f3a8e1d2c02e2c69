r"""Projected ODE solvers that stay on a manifold: any solver of this package, made Riemannian.

For an embedded manifold :math:`\mathcal M \subset \mathbb R^n` and a field :math:`f(x, t)`,
:class:`Projected` runs the wrapped solver in the ambient space on the extended tangent field

.. math:: F(y, t) = P_{\pi(y)}\, f(\pi(y), t),\qquad \pi = \texttt{projx},\ P_x = \texttt{proju}(x, \cdot),

and projects every accepted step back, :math:`x_{i+1} = \pi(\tilde x_{i+1})` (the projection methods of
Hairer, Lubich & Wanner, *Geometric Numerical Integration*, §IV.4; the stage projections of Meta's
``RiemannianODESolver``, Chen & Lipman, ICLR 2024). Because :math:`F` is tangent to :math:`\mathcal M`
on :math:`\mathcal M`, the ambient flow of :math:`F` started on the manifold stays there and the final
projection moves the point by no more than the local error: the method keeps the wrapped solver's
order (Hairer et al., Thm. IV.4.1). :math:`F(y) = F(\pi(y))` also keeps cached stages (Dopri5's FSAL)
valid after the projection. The state is on the manifold after every step, to rounding error.

Example:
    >>> import torch
    >>> from flowforge.core.manifolds import Sphere
    >>> from flowforge.core.solvers import RK4, solve
    >>> w = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    >>> f = lambda x, t: torch.linalg.cross(w.expand_as(x), x, dim=-1)  # rotation about the z axis
    >>> x0 = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    >>> x1 = solve(f, x0, Projected(RK4(), Sphere(2)), 20).x
    >>> bool(torch.allclose(x1, torch.tensor([[torch.cos(torch.tensor(1.0)), torch.sin(torch.tensor(1.0)), 0.0]],
    ...                                      dtype=torch.float64), atol=1e-8)), float((x1.norm() - 1).abs()) < 1e-14
    (True, True)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, final

from torch import Tensor

from flowforge.core.manifolds import Manifold
from flowforge.core.solvers.base import Solver, SolverState, Time, VelocityField
from flowforge.core.solvers.sde import EulerMaruyama

__all__ = ["Projected", "projected_field"]


def projected_field(f: VelocityField, manifold: Any) -> VelocityField:
    r"""The extended tangent field :math:`F(y, t) = P_{\pi(y)} f(\pi(y), t)` of a field on ``manifold``.

    ``manifold`` needs only ``projx`` and ``proju``.

    Example:
        >>> import torch
        >>> from flowforge.core.manifolds import Sphere
        >>> F = projected_field(lambda x, t: torch.ones_like(x), Sphere(2))
        >>> F(torch.tensor([[0.0, 0.0, 2.0]]), torch.zeros(1))  # evaluated at (0, 0, 1), z part removed
        tensor([[1., 1., 0.]])
    """

    def field(y: Tensor, t: Tensor) -> Tensor:
        x = manifold.projx(y)
        return manifold.proju(x, f(x, t))

    return field


@final
class Projected:
    """A solver of :mod:`flowforge.core.solvers` run on a manifold by projection (see the module docstring).

    Args:
        solver: the ambient solver, e.g. ``Euler()``, ``Midpoint()``, ``RK4()``, ``Dopri5(...)``
            (not an SDE solver).
        manifold: anything with ``projx(x)`` and ``proju(x, u)``, e.g. a
            :class:`~flowforge.core.manifolds.Manifold`.

    Attributes:
        order: the wrapped solver's order (kept by the projection).
        adaptive: the wrapped solver's.
    """

    def __init__(self, solver: Solver, manifold: Manifold | Any) -> None:
        if isinstance(solver, Projected):
            raise TypeError(
                "the solver is already Projected; wrap the plain solver, e.g. Projected(RK4(), m)"
            )
        if isinstance(solver, EulerMaruyama):
            raise TypeError(
                "Projected integrates ODEs on a manifold; pass an ODE solver such as Euler(), Midpoint() or "
                "RK4(), not EulerMaruyama"
            )
        if not (hasattr(solver, "init") and hasattr(solver, "step") and hasattr(solver, "order")):
            raise TypeError(f"Projected needs a solver with init/step/order, e.g. RK4(); got {solver!r}")
        if not (hasattr(manifold, "projx") and hasattr(manifold, "proju")):
            raise TypeError(
                f"Projected needs a manifold with projx and proju, e.g. Sphere(2); got {type(manifold).__name__}"
            )
        self.solver, self.manifold = solver, manifold
        self.order: float = solver.order
        self.adaptive: bool = bool(getattr(solver, "adaptive", False))

    def __repr__(self) -> str:
        return f"Projected({self.solver!r}, {self.manifold!r})"

    def init(self, f: VelocityField, x: Tensor, t: Time) -> SolverState:
        """The wrapped solver's state at ``projx(x)``."""
        return self.solver.init(projected_field(f, self.manifold), self.manifold.projx(x), t)

    def step(self, f: VelocityField, state: SolverState, t_next: Time) -> SolverState:
        """One ambient step on the tangent field, then ``projx``."""
        out = self.solver.step(projected_field(f, self.manifold), state, t_next)
        return replace(out, x=self.manifold.projx(out.x))
