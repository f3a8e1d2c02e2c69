r"""Latent traversals as potential flows constrained by the wave equation (Song et al., ICML 2023).

Song, Keller, Sebe & Welling, "Latent Traversals in Generative Models as Potential Flows", ICML 2023,
arXiv:2304.12944 (code: KingJamesSong/PDETraversal, ``lib/WavePDE.py``). Each of :math:`K` traversals is the
gradient flow of a learned scalar potential :math:`u_k(z, \tau)` (an MLP, a physics-informed network):

.. math::
    z_{t+1} = z_t + \nabla_z u_k(z_t, \tau_t), \qquad \tau_t = (t + 1)/T,

and the potential is pushed towards a solution of the wave equation with a learned speed :math:`c_k`,

.. math::
    \mathcal{L}_{\mathrm{PDE}} = E_{z,\tau}\big[(\partial_\tau^2 u_k - c_k^2 \Delta_z u_k)^2\big],\qquad
    \mathcal{L}_{\mathrm{IC}} = E_z\big[\lVert\nabla_z u_k(z, 0)\rVert^2\big],

on collocation points: the latent codes of the batch and :math:`\tau\sim U(0, 1)`. The Laplacian is the
divergence of :math:`\nabla_z u`, estimated with Hutchinson's trace estimator
:math:`\Delta u \approx \tfrac1P\sum_p \varepsilon_p^\top \nabla^2 u\, \varepsilon_p` (Rademacher
:math:`\varepsilon`; :func:`flowforge.core.likelihood.divergence`) or computed exactly (``D`` backward
passes). The reference code uses :math:`\partial_z\cdot(\sum_i \partial_{z_i} u)` (Hessian row sums), which
is not the Laplacian; the trace estimator is the faithful version. The rest of the objective (the pair
classifier that identifies :math:`k` and the change term :math:`-\lVert J_G \nabla u_k\rVert^2`) is the one
of :class:`~flowforge.apps.traversal.base.TraversalModel`:

.. math::
    \mathcal{L} = \lambda_{\mathrm{cls}}\mathrm{CE} - \lambda_{\mathrm{jvp}}\lVert J_G\nabla u_k\rVert^2
    + \lambda_{\mathrm{pde}}\mathcal{L}_{\mathrm{PDE}} + \lambda_{\mathrm{ic}}\mathcal{L}_{\mathrm{IC}}.

Unlike a global linear direction, :math:`\nabla_z u_k` changes with :math:`z` and :math:`t`, so a traversal
can follow a curved factor direction.

Example:
    >>> import torch
    >>> from flowforge.apps.traversal import BlobDecoder, PotentialFlowTraversal
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> dec = BlobDecoder(size=8, seed=0)
    >>> pf = PotentialFlowTraversal(dec, latent_dim=4, num_traversals=3, steps=4, width=16, max_step=0.5)
    >>> z = dec.sample_codes(6, generator=torch.Generator().manual_seed(0))
    >>> pf.traverse(1, z).shape
    torch.Size([6, 5, 4])
    >>> pf.loss(z).shape
    torch.Size([])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from flowforge.apps.traversal.base import TraversalModel, cap_norm
from flowforge.core.likelihood import divergence
from flowforge.nn import MLP

__all__ = ["PotentialFlowTraversal"]

_LAPLACIANS = ("hutchinson", "exact")


class PotentialFlowTraversal(TraversalModel):
    r"""``K`` wave-equation potentials :math:`u_k(z, \tau)` whose gradient flows are latent traversals.

    Args:
        decoder: the generator ``G: (B, D) -> (B, *image)``.
        latent_dim: ``D``.
        num_traversals: ``K``.
        steps: ``T``, steps of one traversal.
        width: hidden width of each potential MLP (:class:`~flowforge.nn.MLP`, SiLU, ``out_dim=1``).
        depth: hidden layers of each potential MLP.
        potentials: optional ``K`` modules ``u(z, tau) -> (B,)`` or ``(B, 1)`` used instead of the MLPs
            (analytic potentials in tests).
        c_init: initial wave speed :math:`c_k` (learned, one per potential).
        laplacian: ``"hutchinson"`` (Rademacher probes) or ``"exact"``.
        n_probes: Hutchinson probes per collocation point.
        pde_weight: :math:`\lambda_{\mathrm{pde}}`.
        ic_weight: :math:`\lambda_{\mathrm{ic}}`.
        max_step: cap on a step's latent norm (``None``: the raw gradient step of the paper).
        classifier_width: hidden width of the pair classifier.
        cls_weight: :math:`\lambda_{\mathrm{cls}}`.
        jvp_weight: :math:`\lambda_{\mathrm{jvp}}`.
    """

    def __init__(
        self,
        decoder: nn.Module,
        latent_dim: int,
        num_traversals: int,
        steps: int = 8,
        *,
        width: int = 64,
        depth: int = 2,
        potentials: Sequence[nn.Module] | None = None,
        c_init: float = 1.0,
        laplacian: str = "hutchinson",
        n_probes: int = 1,
        pde_weight: float = 1.0,
        ic_weight: float = 1.0,
        max_step: float | None = None,
        classifier_width: int = 128,
        cls_weight: float = 1.0,
        jvp_weight: float = 1.0,
    ) -> None:
        super().__init__(
            decoder,
            latent_dim,
            num_traversals,
            steps,
            max_step=max_step,
            classifier_width=classifier_width,
            cls_weight=cls_weight,
            jvp_weight=jvp_weight,
        )
        if laplacian not in _LAPLACIANS:
            raise ValueError(
                f"unknown laplacian {laplacian!r}; write laplacian='hutchinson' or laplacian='exact'"
            )
        if int(n_probes) < 1:
            raise ValueError(f"n_probes must be >= 1 Hutchinson probes, got {n_probes}")
        if potentials is None:
            potentials = [MLP(self.latent_dim, width, depth, out_dim=1) for _ in range(self.num_traversals)]
        elif len(potentials) != self.num_traversals:
            raise ValueError(
                f"give one potential per traversal: {self.num_traversals}, got {len(potentials)}"
            )
        self.potentials = nn.ModuleList(potentials)
        self.log_c = nn.Parameter(torch.full((self.num_traversals,), float(c_init)).log())
        self.laplacian_method, self.n_probes = laplacian, int(n_probes)
        self.pde_weight, self.ic_weight = float(pde_weight), float(ic_weight)

    @property
    def c(self) -> Tensor:
        """The wave speeds :math:`c_k > 0`, ``(K,)``."""
        return self.log_c.exp()

    # -- the potential and its derivatives
    def potential(self, k: int, z: Tensor, tau: Tensor) -> Tensor:
        r""":math:`u_k(z, \tau)`: ``(B, D), (B,) -> (B,)``."""
        u = self.potentials[self._check_k(k)](z, tau)
        return u.reshape(z.shape[0])

    def grad_potential(self, k: int, z: Tensor, tau: Tensor, *, create_graph: bool = False) -> Tensor:
        r""":math:`\nabla_z u_k(z, \tau)`, ``(B, D)`` (with its graph if ``create_graph``)."""
        with torch.enable_grad():
            if not (create_graph and z.requires_grad):
                z = z.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.potential(k, z, tau).sum(), z, create_graph=create_graph)
        return g

    def laplacian(
        self, k: int, z: Tensor, tau: Tensor, *, method: str = "exact", probes: Tensor | None = None
    ) -> Tensor:
        r""":math:`\Delta_z u_k(z, \tau)`, ``(B,)``, with its graph: exact, or Hutchinson with ``probes (P, B, D)``."""
        if method not in _LAPLACIANS:
            raise ValueError(f"unknown laplacian {method!r}; write method='hutchinson' or method='exact'")
        field: Callable[[Tensor, Tensor], Tensor] = lambda x, t: self.grad_potential(
            k, x, t, create_graph=True
        )  # noqa: E731
        z = z if z.requires_grad else z.detach().requires_grad_(True)
        div_method = "exact" if method == "exact" else "hutchinson-rademacher"
        _, lap = divergence(field, z, tau, div_method, probes, create_graph=True)
        return lap

    def wave_residual(
        self, k: int, z: Tensor, tau: Tensor, *, method: str = "exact", probes: Tensor | None = None
    ) -> Tensor:
        r"""The wave-equation residual :math:`\partial_\tau^2 u_k - c_k^2\Delta_z u_k`, ``(B,)``, with its graph."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            tau = tau.detach().requires_grad_(True)
            u = self.potential(k, z, tau)
            (u_t,) = torch.autograd.grad(u.sum(), tau, create_graph=True)
            (u_tt,) = torch.autograd.grad(u_t.sum(), tau, create_graph=True, allow_unused=True)
            if u_tt is None:
                u_tt = torch.zeros_like(tau)
            lap = self.laplacian(k, z, tau, method=method, probes=probes)
            return u_tt - self.c[k] ** 2 * lap

    def initial_condition(self, k: int, z: Tensor) -> Tensor:
        r"""The initial-condition loss :math:`E_z\lVert\nabla_z u_k(z, 0)\rVert^2` (a scalar, with its graph)."""
        g = self.grad_potential(k, z, z.new_zeros(z.shape[0]), create_graph=True)
        return g.square().sum(1).mean()

    # -- the traversal
    def step(self, k: int, z: Tensor, t: int, *, create_graph: bool = False) -> Tensor:
        r"""The gradient step :math:`\nabla_z u_k(z_t, \tau_t)` (capped at ``max_step``)."""
        tau = self.time_of(t, z.shape[0], z)
        return cap_norm(
            self.grad_potential(self._check_k(k), z, tau, create_graph=create_graph), self.max_step
        )

    def own_loss(self, k: int, z: Tensor) -> tuple[Tensor, dict[str, float]]:
        """PDE residual (Hutchinson or exact Laplacian) and initial condition on the chunk's codes."""
        z = z.detach()
        tau = torch.rand(z.shape[0], dtype=z.dtype, device=z.device)
        probes = None
        if self.laplacian_method == "hutchinson":
            probes = torch.randint(0, 2, (self.n_probes, *z.shape), device=z.device).to(z.dtype) * 2 - 1
        pde = self.wave_residual(k, z, tau, method=self.laplacian_method, probes=probes).square().mean()
        ic = self.initial_condition(k, z)
        own = self.pde_weight * pde + self.ic_weight * ic
        return own, {"pde": float(pde.detach()), "ic": float(ic.detach())}
