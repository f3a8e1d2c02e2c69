r"""Riemannian flow matching (Chen & Lipman, "Flow Matching on General Geometries", ICLR 2024).

On a manifold :math:`\mathcal M` with a source :math:`p_0` (default: uniform) and data :math:`q = p_1`,
the network :math:`v_\theta(x, t)` (an ambient vector projected onto :math:`T_x\mathcal M`) regresses the
velocity of the geodesic conditional path (:class:`~flowforge.core.geodesic.GeodesicPath`):

.. math::
    L(\theta) = E_{t \sim p(t),\, x_0 \sim p_0,\, x_1 \sim q}
    \big\| v_\theta(x_t, t) - \dot x_t \big\|^2,\qquad
    x_t = \exp_{x_0}\!\big(\kappa(t)\log_{x_0} x_1\big)

(Chen & Lipman, eq. 9 and §3.2, with the mean over ambient coordinates as in Meta's ``flow_matching``
examples; a constant factor off the squared Riemannian norm). Sampling integrates
:math:`\dot x = v_\theta(x, t)` from t=0 to 1 with a :class:`~flowforge.core.solvers.Projected` solver;
``log_prob`` is the Riemannian instantaneous change of variables
(:func:`~flowforge.core.likelihood.riemannian_log_prob`), densities w.r.t. the Riemannian volume.

Example:
    >>> import torch
    >>> from flowforge.core.manifolds import Sphere
    >>> from flowforge.nn import MLP
    >>> rfm = RiemannianFlowMatching(MLP(dim=3, width=32, depth=2), Sphere(2))
    >>> x1 = Sphere(2).random_uniform(64, generator=torch.Generator().manual_seed(0))
    >>> rfm.loss(x1).ndim
    0
    >>> gen = rfm.generator()
    >>> x = gen.sample(8, steps=4, generator=torch.Generator().manual_seed(0))
    >>> x.shape, float((x.norm(dim=1) - 1).abs().max()) < 1e-6, gen.log_prob(x, steps=4).shape
    (torch.Size([8, 3]), True, torch.Size([8]))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.continuous.generator import make_solver
from flowforge.core import solvers as S
from flowforge.core.batch import split_batch
from flowforge.core.geodesic import GeodesicPath
from flowforge.core.likelihood import riemannian_log_prob
from flowforge.core.manifolds import Manifold, UniformSource
from flowforge.core.schedules import Linear, Schedule
from flowforge.core.time import TimeSampler, Uniform

__all__ = ["RiemannianFlowMatching", "RiemannianGenerator", "TangentProjection"]


class TangentProjection(nn.Module):
    r"""A network made a tangent vector field: :math:`v(x, t) = P_x\, \mathrm{net}(\pi(x), t)`.

    Args:
        net: any ``net(x, t, **cond) -> (B, *event)`` (ambient output).
        manifold: gives ``proju`` (and ``projx``).
        project_input: evaluate the net at ``projx(x)`` (Meta's ``ProjectToTangent``). The projected
            solvers already evaluate fields on the manifold, so this only matters for a field called
            off the manifold; leave it off for SO(3), whose SVD projection has no gradient at a rotation.

    Example:
        >>> import torch
        >>> from flowforge.core.manifolds import Sphere
        >>> v = TangentProjection(lambda x, t: torch.ones_like(x), Sphere(2))
        >>> v(torch.tensor([[0.0, 0.0, 1.0]]), torch.zeros(1))
        tensor([[1., 1., 0.]])
    """

    def __init__(
        self, net: Callable[..., Tensor], manifold: Manifold, *, project_input: bool = False
    ) -> None:
        super().__init__()
        self.net, self.manifold, self.project_input = net, manifold, bool(project_input)

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        """``x: (B, *event)`` on the manifold, ``t: (B,)`` -> tangent vectors ``(B, *event)``."""
        if self.project_input:
            x = self.manifold.projx(x)
        return self.manifold.proju(x, self.net(x, t, **cond))


class RiemannianFlowMatching(nn.Module):
    """Riemannian conditional flow matching with interchangeable parts (see the module docstring).

    Args:
        net: the network ``net(x, t, **cond)`` on ambient coordinates ``(B, *event)``; its output is
            projected to the tangent space (:class:`TangentProjection`).
        manifold: a :class:`~flowforge.core.manifolds.Manifold` (``Sphere``, ``FlatTorus``, ``SO3``, ...).
        schedule: :math:`\\kappa(t)` as a schedule's ``alpha`` (default ``Linear``: constant speed).
        time: training-time sampler (default uniform, as ``FlowMatching``).
        source: the law at t=0, with ``sample(n, generator=, dtype=, device=)`` and ``log_prob(x)``
            (default :class:`~flowforge.core.manifolds.UniformSource`).
        project_input: see :class:`TangentProjection`.
        check_data: refuse training batches off the manifold (one cheap reduction a batch).
    """

    def __init__(
        self,
        net: nn.Module,
        manifold: Manifold,
        *,
        schedule: Schedule | None = None,
        time: TimeSampler | None = None,
        source: Any | None = None,
        project_input: bool = False,
        check_data: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(manifold, Manifold):
            raise TypeError(
                f"manifold must be a flowforge.core.manifolds.Manifold (Sphere(2), FlatTorus(2), SO3(), ...), "
                f"got {type(manifold).__name__}"
            )
        self.field = TangentProjection(net, manifold, project_input=project_input)
        self.manifold = manifold
        self.path = GeodesicPath(manifold, schedule if schedule is not None else Linear())
        self.time = time if time is not None else Uniform()
        self.source = source if source is not None else UniformSource(manifold)
        self.check_data = bool(check_data)
        self.event_shape = tuple(manifold.event_shape)

    @property
    def net(self) -> nn.Module:
        """The wrapped network."""
        return self.field.net

    def loss(self, batch: Any) -> Tensor:
        """Riemannian flow-matching loss on data ``x1: (B, *event)`` on the manifold; a scalar.

        Draws ``x0`` from the source, then ``t`` from the time sampler (global RNG, in that order).
        """
        x1, cond = split_batch(batch)
        if self.check_data:
            self.manifold.check_point(x1, name="the training batch")
        b = x1.shape[0]
        x0 = self.source.sample(b, dtype=x1.dtype, device=x1.device)
        t = self.time(b, device=x1.device, dtype=x1.dtype)
        ps = self.path.sample(x0, x1, t)
        return (self.field(ps.x_t, t, **cond) - ps.target).square().mean()

    def velocity(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        """The learned tangent velocity at ``(x, t)``; ``x: (B, *event)``, ``t: (B,)``."""
        return self.field(x, t, **cond)

    def generator(self) -> RiemannianGenerator:
        """The model as a :class:`RiemannianGenerator` (sampling on the manifold and likelihood)."""
        return RiemannianGenerator(self.field, self.manifold, self.source)


def _solver(solver: str | S.Solver, atol: float, rtol: float) -> S.Solver:
    if isinstance(solver, S.Projected):
        return solver.solver
    if solver == "dopri5":
        return S.Dopri5(atol=atol, rtol=rtol)
    if solver == "sde":
        raise ValueError(
            "Riemannian flows sample by an ODE; pick solver='euler', 'midpoint', 'rk4' or 'dopri5'"
        )
    return make_solver(solver)


class RiemannianGenerator:
    """A trained Riemannian flow: ``sample`` on the manifold, ``log_prob`` w.r.t. the Riemannian volume.

    Args:
        field: the tangent velocity ``v(x, t, **cond)``.
        manifold: the manifold.
        source: the law at t=0 (``sample`` and ``log_prob``).
    """

    def __init__(self, field: Callable[..., Tensor], manifold: Manifold, source: Any) -> None:
        self.field, self.manifold, self.source = field, manifold, source
        self.event_shape = tuple(manifold.event_shape)
        self.dim = self.event_shape[0] if len(self.event_shape) == 1 else None

    def sample(
        self,
        n: int,
        *,
        cond: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        solver: str | S.Solver = "midpoint",
        steps: int = 32,
        grid: Tensor | None = None,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        x0: Tensor | None = None,
        return_trajectory: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw ``n`` points on the manifold, ``(n, *event)`` (and the trajectory ``(K+1, n, *event)``).

        Args:
            n: number of samples.
            cond: conditions for the network, each ``(n, ...)``.
            generator: randomness of the source draw.
            solver: ``"euler"``, ``"midpoint"``, ``"heun"``, ``"rk4"``, ``"dopri5"``, ... or a solver
                object; it runs wrapped in :class:`~flowforge.core.solvers.Projected`.
            steps: uniform steps (ignored with ``grid`` or ``dopri5``).
            grid: explicit increasing time grid from 0 to 1.
            atol, rtol: tolerances of ``"dopri5"``.
            x0: start from these source points (checked to lie on the manifold).
        """
        if x0 is None:
            x0 = self.source.sample(n, generator=generator, dtype=dtype, device=device)
        else:
            self.manifold.check_point(x0, name="x0")
        inner = _solver(solver, atol, rtol)
        if grid is None:
            grid = S.uniform_grid(1 if isinstance(inner, S.Dopri5) else steps)
        cond = dict(cond or {})
        with torch.no_grad():
            res = S.solve(
                lambda x, t: self.field(x, t, **cond),
                x0,
                S.Projected(inner, self.manifold),
                grid,
                return_trajectory=return_trajectory,
            )
        return (res.x, res.trajectory) if return_trajectory else res.x

    def log_prob(
        self,
        x: Tensor,
        *,
        cond: dict[str, Tensor] | None = None,
        solver: str | S.Solver = "rk4",
        steps: int = 64,
        divergence: str = "exact",
        n_probes: int = 1,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        generator: torch.Generator | None = None,
        check_atol: float | None = None,
    ) -> Tensor:
        """``log p_1(x)`` (nats, w.r.t. the Riemannian volume) by the Riemannian change of variables; ``(B,)``.

        Args:
            x: ``(B, *event)`` points on the manifold (checked, within ``check_atol``).
            solver: ODE solver name or object (default RK4), run projected backwards from t=1 to 0.
            steps: uniform steps (ignored for ``dopri5``).
            divergence: ``"exact"``, ``"hutchinson-gaussian"`` or ``"hutchinson-rademacher"``.
            n_probes, generator: Hutchinson probes and their source.
        """
        inner = _solver(solver, atol, rtol)
        cond = dict(cond or {})
        grid = S.uniform_grid(1 if isinstance(inner, S.Dopri5) else steps, 1.0, 0.0)
        return riemannian_log_prob(
            lambda y, t: self.field(y, t, **cond),
            x,
            self.manifold,
            self.source.log_prob,
            solver=inner,
            grid=grid,
            divergence=divergence,  # type: ignore[arg-type]
            n_probes=n_probes,
            generator=generator,
            atol=check_atol,
        ).detach()
