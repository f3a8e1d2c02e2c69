r"""Equivariant flow matching: an E(n)-equivariant continuous normalizing flow for particle systems.

Klein, Krämer & Noé, *Equivariant flow matching*, NeurIPS 2023 (EFM); Garcia Satorras, Hoogeboom, Fuchs,
Posner & Welling, *E(n) equivariant normalizing flows*, NeurIPS 2021. ``N`` identical particles in ``d``
dimensions, ``x: (B, N*d)``. The source is the mean-free standard normal
:math:`p_0` (:class:`~flowforge.core.mean_free.MeanFreeNormal`) on the centre-of-mass-free subspace
:math:`U` (dimension :math:`(N-1)d`), the velocity an equivariant, mean-free network (e.g.
:class:`~flowforge.nn.EGNN`), trained by conditional flow matching on the linear path

.. math:: x_t = t\,x_1 + (1-t)\,x_0, \qquad L = E\,\lVert v_\theta(x_t, t) - (x_1 - x_0)\rVert^2 / (Nd),

with :math:`x_1 = P x_\text{data}` (data projected onto :math:`U`) and, optionally, pairs :math:`(x_0, x_1)`
aligned by equivariant OT (:class:`~flowforge.core.equivariant_ot.EquivariantOT`). Because
:math:`p_0` and the field are invariant / equivariant under rotations and permutations, so is the model
density :math:`q`, and :math:`\log q(x_1) = \log p_0(x_0) - \int_0^1 \nabla\cdot v(x_t, t)\,dt` with the
exact divergence on :math:`U` (the field is evaluated as :math:`P v(Px)`, see
:mod:`flowforge.core.mean_free`).

**Centre of mass.** :class:`EquivariantFlowGenerator` with ``com="free"`` is the density on :math:`U`;
with ``com="gaussian"`` it is extended to :math:`\mathbb{R}^{Nd}` by a standard normal on the unit-norm
centre-of-mass coordinate :math:`c = \sqrt N\,\bar x \in \mathbb{R}^d` (an orthogonal change of coordinates,
Jacobian 1): :math:`\log q(x) = \log q_U(Px) + \log N(c; 0, I_d)`, which matches the ``com="gaussian"``
energies of :mod:`flowforge.data.energies`, so importance weights :math:`\log w = -E(x) - \log q(x)`
estimate their :math:`\log Z = \log Z_U + \tfrac d2 \log 2\pi`.

Example:
    >>> import torch
    >>> from flowforge.nn import EGNN
    >>> efm = EquivariantFlowMatching(EGNN(4, 2, width=16, depth=2), n_particles=4, spatial_dim=2)
    >>> loss = efm.loss(torch.randn(32, 8))
    >>> gen = efm.generator()
    >>> x, log_q = gen.sample_and_log_prob(5, steps=4, generator=torch.Generator().manual_seed(0))
    >>> x.shape, log_q.shape
    (torch.Size([5, 8]), torch.Size([5]))
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.continuous.generator import make_solver
from flowforge.core import solvers as S
from flowforge.core.batch import split_batch
from flowforge.core.equivariant_ot import EquivariantOT
from flowforge.core.likelihood import divergence as exact_divergence
from flowforge.core.likelihood import log_prob as cnf_log_prob
from flowforge.core.mean_free import MeanFreeNormal

__all__ = ["EquivariantFlowMatching", "EquivariantFlowGenerator"]

_COM = ("free", "gaussian")


class EquivariantFlowMatching(nn.Module):
    """Flow matching of an equivariant velocity from the mean-free normal to particle data.

    Args:
        net: the velocity network ``net(x, t)`` on ``(B, N*d)`` (mean-free, equivariant: e.g. ``EGNN``).
        n_particles: ``N``.
        spatial_dim: ``d``.
        coupling: ``None`` (independent pairs) or an :class:`~flowforge.core.equivariant_ot.EquivariantOT`.
    """

    def __init__(
        self,
        net: nn.Module,
        n_particles: int,
        spatial_dim: int,
        *,
        coupling: EquivariantOT | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.source = MeanFreeNormal(n_particles, spatial_dim)
        self.n_particles, self.spatial_dim = self.source.n, self.source.d
        if coupling is not None and (coupling.n_particles, coupling.spatial_dim) != (
            self.n_particles,
            self.spatial_dim,
        ):
            raise ValueError(
                f"the coupling is for ({coupling.n_particles}, {coupling.spatial_dim}) particles but the model "
                f"for ({self.n_particles}, {self.spatial_dim}); build EquivariantOT(n_particles, spatial_dim)"
            )
        self.coupling = coupling
        self.event_shape = (self.source.dim,)

    def loss(self, batch: Any) -> Tensor:
        """Flow-matching loss on data ``x1: (B, N*d)`` (projected to the CoM-free subspace); a scalar."""
        x1, _ = split_batch(batch)
        if x1.dim() != 2 or x1.shape[1] != self.source.dim:
            raise ValueError(
                f"data must have shape (B, N*d) = (B, {self.source.dim}) for {self.n_particles} particles in "
                f"{self.spatial_dim}-D, got {tuple(x1.shape)}"
            )
        x1 = self.source.project(x1)
        x0 = self.source.project(torch.randn_like(x1))
        if self.coupling is not None:
            x0, x1 = self.coupling(x0, x1)
        t = torch.rand(x1.shape[0], device=x1.device, dtype=x1.dtype)
        xt = t[:, None] * x1 + (1 - t[:, None]) * x0
        v = self.net(xt, t)
        return (v - (x1 - x0)).square().mean()

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        r""":math:`P\,v_\theta(Px, t)`, ``(B, N*d)``."""
        return self.source.project(self.net(self.source.project(x), t))

    def generator(self, com: str = "free") -> EquivariantFlowGenerator:
        """The model as an :class:`EquivariantFlowGenerator` (``com``: ``"free"`` or ``"gaussian"``)."""
        return EquivariantFlowGenerator(self.velocity, self.source, com=com, module=self)


class EquivariantFlowGenerator:
    """Samples and exact log-densities of an equivariant CNF on the CoM-free subspace (or extended, ``com``).

    Args:
        field: ``f(x, t) -> (B, N*d)``, mean-free.
        source: the :class:`~flowforge.core.mean_free.MeanFreeNormal`.
        com: ``"free"`` (density on the subspace) or ``"gaussian"`` (times :math:`N(c; 0, I_d)`).
        module: the ``nn.Module`` behind ``field`` (kept for reference).
    """

    def __init__(
        self, field: Any, source: MeanFreeNormal, *, com: str = "free", module: nn.Module | None = None
    ) -> None:
        if com not in _COM:
            raise ValueError(f"com must be 'free' or 'gaussian', got {com!r}")
        self.field, self.source, self.com, self.module = field, source, com, module
        self.dim = source.dim
        self.event_shape = (source.dim,)

    # centre of mass ---------------------------------------------------------------------------------

    def _com_log_prob(self, x: Tensor) -> Tensor:
        n, d = self.source.n, self.source.d
        c = x.reshape(x.shape[0], n, d).mean(1) * math.sqrt(n)
        return -0.5 * c.square().sum(1) - 0.5 * d * math.log(2 * math.pi)

    def _add_com(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        n, d = self.source.n, self.source.d
        c = torch.randn(x.shape[0], 1, d, generator=generator, device=x.device, dtype=x.dtype) / math.sqrt(n)
        return (x.reshape(x.shape[0], n, d) + c).reshape(x.shape)

    def _solver(self, solver: str | S.Solver, atol: float, rtol: float) -> S.Solver:
        if isinstance(solver, str) and solver == "dopri5":
            return S.Dopri5(atol=atol, rtol=rtol)
        return make_solver(solver)

    # sampling ---------------------------------------------------------------------------------------

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        solver: str | S.Solver = "rk4",
        steps: int = 20,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``(n, N*d)`` samples: integrate from the mean-free normal at t=0 to t=1."""
        x0 = self.source.sample(n, generator=generator, dtype=dtype, device=device)
        solver = self._solver(solver, atol, rtol)
        grid = S.uniform_grid(1 if isinstance(solver, S.Dopri5) else steps)
        with torch.no_grad():
            x = S.solve(self.field, x0, solver, grid.to(x0.dtype)).x
        return self._add_com(x, generator) if self.com == "gaussian" else x

    def sample_and_log_prob(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        solver: str | S.Solver = "rk4",
        steps: int = 20,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        r"""Samples ``(n, N*d)`` and :math:`\log q` ``(n,)`` in one forward solve of the augmented ODE.

        :math:`\frac{d}{dt}[x, \ell] = [v(x, t), -\nabla\cdot v(x, t)]` from :math:`(x_0, \log p_0(x_0))`
        (exact divergence, ``N*d`` vector-Jacobian products per evaluation).
        """
        x0 = self.source.sample(n, generator=generator, dtype=dtype, device=device)
        lp0 = self.source.log_prob(x0)
        dim = self.source.dim

        def augmented(z: Tensor, t: Tensor) -> Tensor:
            v, div = exact_divergence(self.field, z[:, :dim], t, "exact")
            return torch.cat([v, -div[:, None]], dim=1)

        solver = self._solver(solver, atol, rtol)
        grid = S.uniform_grid(1 if isinstance(solver, S.Dopri5) else steps)
        z0 = torch.cat([x0, lp0[:, None]], dim=1)
        with torch.no_grad():
            z1 = S.solve(augmented, z0, solver, grid.to(x0.dtype)).x
        x, log_q = z1[:, :dim], z1[:, dim]
        if self.com == "gaussian":
            x = self._add_com(x, generator)
            log_q = log_q + self._com_log_prob(x)
        return x, log_q

    def log_prob(
        self,
        x: Tensor,
        *,
        solver: str | S.Solver = "rk4",
        steps: int = 20,
        atol: float = 1e-5,
        rtol: float = 1e-5,
    ) -> Tensor:
        r"""Exact-model :math:`\log q(x)` of ``x: (B, N*d)`` (nats), integrating back from t=1 to t=0; ``(B,)``.

        ``com="free"``: ``x`` must be centre-of-mass free (density on the subspace); ``com="gaussian"``:
        any ``x``, :math:`\log q_U(Px) + \log N(\sqrt N \bar x; 0, I_d)`.
        """
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}) = (B, N*d), got {tuple(x.shape)}")
        extra = None
        if self.com == "gaussian":
            extra = self._com_log_prob(x)
            x = self.source.project(x)
        solver = self._solver(solver, atol, rtol)
        grid = S.uniform_grid(1 if isinstance(solver, S.Dopri5) else steps, 1.0, 0.0)
        lp = cnf_log_prob(
            self.field, x, self.source.log_prob, solver=solver, grid=grid.to(x.dtype), divergence="exact"
        ).detach()
        return lp + extra if extra is not None else lp
