r"""An E(n)-equivariant augmented coupling flow for particle systems (a discrete Boltzmann generator).

Midgley, Stimper, Antorán, Mathieu, Schölkopf & Hernández-Lobato, *SE(3) equivariant augmented coupling
flows*, NeurIPS 2023 (arXiv 2308.10364), simplified to a per-particle affine map in an equivariant
local frame. ``N`` identical particles in ``d`` dimensions, ``x: (B, N*d)`` (particle ``i`` is
``x.view(B, N, d)[:, i]``). Coupling needs two halves, and splitting the particles would break permutation
symmetry, so each particle gets an **auxiliary** copy :math:`a_i \in \mathbb{R}^d` drawn from

.. math:: \pi(a \mid x) = \mathcal N(a;\, x,\, \eta^2 I_{Nd}),

and the flow is a bijection of the pair :math:`(x, a)`, alternating layers that move :math:`x` given
:math:`a` and :math:`a` given :math:`x`. A layer that moves :math:`x` given :math:`a` (the other is the
same with the roles swapped) computes with an :class:`~flowforge.nn.EGNN` on :math:`a` alone, per particle,
an invariant pair of log-scales :math:`(s_{i,1}, s_{i,2})`, an equivariant origin :math:`o_i = a_i + V_i`
and an equivariant axis :math:`e_i` (:math:`\lVert e_i\rVert < 1`), and maps

.. math::

    x_i' = o_i + M_i (x_i - o_i), \qquad M_i = e^{s_{i,2}} I_d + (e^{s_{i,1}} - e^{s_{i,2}})\, e_i e_i^\top,

    \log\lvert\det \partial x'/\partial x\rvert = \sum_i \Big[(d-1)\, s_{i,2}
        + \log\big(e^{s_{i,2}} (1 - \lVert e_i\rVert^2) + e^{s_{i,1}} \lVert e_i\rVert^2\big)\Big]

(a scale :math:`e^{s_1}` along the axis and :math:`e^{s_2}` across it; the inverse is Sherman-Morrison,
:math:`M^{-1} = e^{-s_2}(I - \beta e e^\top / (e^{s_2} + \beta\lVert e\rVert^2))`, :math:`\beta = e^{s_1} -
e^{s_2}`). Because :math:`s` is invariant and :math:`o, e` are equivariant, every layer commutes with
rotations, reflections and permutations of the particles (pairs :math:`(x_i, a_i)` move together).

**Centre of mass.** Translations are removed as in Midgley et al.: the state is kept with
:math:`\sum_i x_i = 0` (a point of :math:`U \times \mathbb{R}^{Nd}`, :math:`U` the CoM-free subspace of
dimension :math:`(N-1)d`, see :mod:`flowforge.core.mean_free`). A layer that moves :math:`x` first
translates both sets so that :math:`\sum_i a_i = 0` (then :math:`x` is free in :math:`\mathbb{R}^{Nd}`,
and the per-particle map has the determinant above), and afterwards translates them back so that
:math:`\sum_i x_i' = 0`. In orthonormal coordinates (CoM-free parts and the unit-norm CoM
:math:`c = \sqrt N \bar{\,\cdot\,}`) the change of frame is :math:`(Px, Pa, c_a) \mapsto (Px, Pa, -c_a)`,
Jacobian 1, so log-determinants add on the :math:`(N-1)d + Nd` dimensional state space. Inputs are
translated to :math:`\bar x = 0` first: the density is translation invariant.

**Base and likelihood.** :math:`p_0(x_0, a_0) = \mathcal N_U(x_0; 0, I)\,\mathcal N(a_0; x_0, \eta_0^2 I)`
(in units of ``scale``; :math:`\eta_0 = \eta/\text{scale}`), so the joint
:math:`q(x, a) = p_0(f(x, a))\,\lvert\det J_f\rvert` is exact and cheap (no ODE). The marginal of
:math:`x` is estimated by importance sampling over :math:`a` (Midgley et al., eq. 6):

.. math:: \log q(x) \approx \log \frac1M \sum_{m=1}^M \frac{q(x, a_m)}{\pi(a_m \mid x)}, \qquad
          a_m \sim \pi(\cdot \mid x),

a stochastic lower bound in expectation (Jensen), tight as :math:`M \to \infty`. Training maximises
:math:`E_{x \sim p, a \sim \pi}[\log q(x, a) - \log \pi(a \mid x)]` (:math:`M = 1`, an upper bound on the
NLL of :math:`x`). For importance sampling against a Boltzmann density :math:`e^{-E(x)}`, the weights are
taken on the joint, :math:`w = e^{-E(x)}\pi(a \mid x) / q(x, a)`, an unbiased estimator of :math:`Z`
(:meth:`AugmentedFlowGenerator.sample_and_log_prob` returns :math:`\log q(x, a) - \log\pi(a\mid x)` as the
proposal log-density for that reason).

This is a coupling flow, not a TARFlow: an autoregressive order over particles would break permutation
equivariance, the augmented coupling keeps it exactly.

Example:
    >>> import torch
    >>> flow = AugmentedEquivariantFlow(n_particles=4, spatial_dim=2, blocks=2, width=16, depth=1)
    >>> x = torch.randn(3, 8)
    >>> flow.loss(x).shape
    torch.Size([])
    >>> gen = flow.generator()
    >>> xs, log_w_q = gen.sample_and_log_prob(5, generator=torch.Generator().manual_seed(0))
    >>> xs.shape, log_w_q.shape, bool(xs.view(5, 4, 2).sum(1).abs().max() < 1e-5)
    (torch.Size([5, 8]), torch.Size([5]), True)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.batch import split_batch
from flowforge.nn.egnn import EGNN
from flowforge.normalizing.coupling import soft_clip

__all__ = ["AugmentedEquivariantFlow", "AugmentedFlowGenerator", "EquivariantCoupling"]

_COM = ("free", "gaussian")


def _check_joint(xa: Tensor, n: int, d: int, who: str) -> tuple[Tensor, Tensor]:
    """Split ``(B, 2*N*d)`` into ``x, a`` of shape ``(B, N, d)``, or raise a clear error."""
    if not isinstance(xa, Tensor) or xa.dim() != 2 or xa.shape[1] != 2 * n * d:
        got = tuple(xa.shape) if isinstance(xa, Tensor) else type(xa).__name__
        raise ValueError(
            f"{who} takes the augmented state (B, 2*N*d) = (B, {2 * n * d}) (particles x, then their auxiliary "
            f"copies a), got {got}; write torch.cat([x, a], 1) with x, a of shape (B, {n * d})"
        )
    b = xa.shape[0]
    return xa[:, : n * d].reshape(b, n, d), xa[:, n * d :].reshape(b, n, d)


class EquivariantCoupling(nn.Module):
    r"""One equivariant affine coupling layer on the augmented state ``(B, 2*N*d)`` (see the module docs).

    ``update="x"`` moves the particles given the auxiliary set (in the frame :math:`\bar a = 0`), ``"a"``
    the auxiliary set given the particles (in the frame :math:`\bar x = 0`). Input and output have
    :math:`\bar x = 0`; ``forward``/``inverse`` return ``(y, log|det|)`` on the
    :math:`(N-1)d + Nd`-dimensional state space.

    Args:
        n_particles: ``N`` (at least 2).
        spatial_dim: ``d``.
        update: ``"x"`` or ``"a"``.
        width: EGNN width.
        depth: EGNN layers.
        log_scale_bound: the log-scales are soft-clipped to ``(-c, c)``.

    Example:
        >>> layer = EquivariantCoupling(4, 2, update="a", width=8, depth=1)
        >>> xa = torch.randn(3, 16)
        >>> xa[:, :8] = xa[:, :8] - xa[:, :8].view(3, 4, 2).mean(1).repeat(1, 4)  # mean-free particles
        >>> y, ladj = layer(xa)
        >>> torch.allclose(layer.inverse(y)[0], xa, atol=1e-5), bool(torch.allclose(ladj, -layer.inverse(y)[1]))
        (True, True)
    """

    def __init__(
        self,
        n_particles: int,
        spatial_dim: int,
        *,
        update: str = "x",
        width: int = 32,
        depth: int = 2,
        log_scale_bound: float = 3.0,
    ) -> None:
        super().__init__()
        if update not in ("x", "a"):
            raise ValueError(f"update must be 'x' (particles given auxiliaries) or 'a', got {update!r}")
        if int(n_particles) < 2 or int(spatial_dim) < 1:
            raise ValueError(
                f"EquivariantCoupling needs n_particles >= 2 and spatial_dim >= 1, got {n_particles} and "
                f"{spatial_dim}; write e.g. EquivariantCoupling(4, 2)"
            )
        if not log_scale_bound > 0:
            raise ValueError(f"log_scale_bound must be > 0, got {log_scale_bound}")
        self.n, self.d, self.update = int(n_particles), int(spatial_dim), update
        self.bound = float(log_scale_bound)
        self.egnn = EGNN(self.n, self.d, width=width, depth=depth, n_freq=0, scale=1.0)
        w = width
        # invariant head: two log-scales per particle
        self.scales = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, 2))
        # equivariant head: two vectors per particle, sum_j (y_i - y_j) phi_k(h_i, h_j, |y_i - y_j|^2)
        self.edge_i = nn.Linear(w, w)
        self.edge_j = nn.Linear(w, w, bias=False)
        self.edge_d = nn.Linear(1, w, bias=False)
        self.edge = nn.Sequential(nn.SiLU(), nn.Linear(w, w), nn.SiLU(), nn.Linear(w, 2, bias=False))
        for last in (self.scales[-1], self.edge[-1]):  # near the identity, but off the s1 = s2, e = 0 saddle
            nn.init.normal_(last.weight, std=1e-3)
        nn.init.zeros_(self.scales[-1].bias)

    def _conditioner(self, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """From the conditioning set ``c: (B, N, d)``: log-scales ``(B, N, 1)`` x2, origin, axis ``(B, N, d)``."""
        n = self.n
        t = c.new_zeros(c.shape[0])
        _, h, y = self.egnn.features(c, t)
        s = soft_clip(self.scales(h), self.bound)
        r = y[:, :, None] - y[:, None, :]  # (B, N, N, d)
        d2 = r.square().sum(-1, keepdim=True)
        pre = self.edge_i(h)[:, :, None] + self.edge_j(h)[:, None, :] + self.edge_d(d2)
        off = (1.0 - torch.eye(n, dtype=c.dtype, device=c.device))[..., None]
        coef = self.edge(pre) * off / (torch.sqrt(d2 + 1e-8) + 1.0)  # (B, N, N, 2)
        vec = torch.einsum("bijd,bijk->bikd", r, coef) / (n - 1)  # (B, N, 2, d)
        origin = c + vec[:, :, 0]
        v = vec[:, :, 1]
        axis = v / torch.sqrt(1.0 + v.square().sum(-1, keepdim=True))  # |e| < 1
        return s[..., :1], s[..., 1:], origin, axis

    @staticmethod
    def _ladj(s1: Tensor, s2: Tensor, axis: Tensor, d: int) -> Tensor:
        r2 = axis.square().sum(-1, keepdim=True)
        per = (d - 1) * s2 + torch.log(torch.exp(s2) * (1 - r2) + torch.exp(s1) * r2)
        return per.sum((1, 2))

    def _frames(self, x: Tensor, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(moved, conditioning, shift)``: the set to move and the other, in the conditioning set's frame."""
        if self.update == "x":
            m = a.mean(1, keepdim=True)
            return x - m, a - m, m
        return a, x, torch.zeros_like(x[:, :1])

    def _back(self, moved: Tensor, cond: Tensor) -> Tensor:
        """Back to the frame with mean-free particles, as ``(B, 2*N*d)``."""
        b = moved.shape[0]
        if self.update == "x":
            m = moved.mean(1, keepdim=True)
            x, a = moved - m, cond - m
        else:
            x, a = cond, moved
        return torch.cat([x.reshape(b, -1), a.reshape(b, -1)], 1)

    def forward(self, xa: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, log|det dy/dxa|)`` for the augmented state ``xa: (B, 2*N*d)`` with mean-free particles."""
        x, a = _check_joint(xa, self.n, self.d, type(self).__name__)
        moved, cond, _ = self._frames(x, a)
        s1, s2, o, e = self._conditioner(cond)
        u = moved - o
        out = o + torch.exp(s2) * u + (torch.exp(s1) - torch.exp(s2)) * (u * e).sum(-1, keepdim=True) * e
        return self._back(out, cond), self._ladj(s1, s2, e, self.d)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(xa, log|det dxa/dy|)``: the exact inverse of :meth:`forward`."""
        x, a = _check_joint(y, self.n, self.d, type(self).__name__)
        moved, cond, _ = self._frames(x, a)
        s1, s2, o, e = self._conditioner(cond)
        v = moved - o
        alpha, beta = torch.exp(s2), torch.exp(s1) - torch.exp(s2)
        r2 = e.square().sum(-1, keepdim=True)
        u = (v - beta * (v * e).sum(-1, keepdim=True) * e / (alpha + beta * r2)) / alpha
        return self._back(o + u, cond), -self._ladj(s1, s2, e, self.d)


class _GlobalScale(nn.Module):
    """``x -> x e^{g_x}``, ``a -> a e^{g_a}`` (learned scalars); log-det ``(N-1)d g_x + Nd g_a``."""

    def __init__(self, n: int, d: int) -> None:
        super().__init__()
        self.n, self.d = n, d
        self.log_scale = nn.Parameter(torch.zeros(2))

    def forward(self, xa: Tensor) -> tuple[Tensor, Tensor]:
        nd = self.n * self.d
        g = self.log_scale.to(xa.dtype)
        y = torch.cat([xa[:, :nd] * g[0].exp(), xa[:, nd:] * g[1].exp()], 1)
        ladj = ((self.n - 1) * self.d * g[0] + nd * g[1]).expand(xa.shape[0])
        return y, ladj

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        nd = self.n * self.d
        g = self.log_scale.to(y.dtype)
        xa = torch.cat([y[:, :nd] * (-g[0]).exp(), y[:, nd:] * (-g[1]).exp()], 1)
        return xa, -((self.n - 1) * self.d * g[0] + nd * g[1]).expand(y.shape[0])


class AugmentedEquivariantFlow(nn.Module):
    r"""The augmented equivariant coupling flow (module docs): joint density exact, marginal by IS over ``a``.

    ``forward`` maps the augmented data state ``(B, 2*N*d)`` (data units) to base noise and returns
    ``(z, log|det|)``; the state is first translated so that :math:`\bar x = 0`.

    Args:
        n_particles: ``N``.
        spatial_dim: ``d``.
        blocks: number of ``(x given a, a given x)`` layer pairs.
        width: EGNN width of every conditioner.
        depth: EGNN layers of every conditioner.
        scale: length unit of the system (positions are divided by it first; e.g. 4 for DW-4, 1 for LJ-13).
        aug_scale: :math:`\eta_0`, the auxiliary noise in units of ``scale`` (:math:`\eta = \eta_0\,
            \text{scale}`), used by both :math:`\pi(a\mid x)` and the base.
        log_scale_bound: bound of each layer's per-particle log-scales.
    """

    #: exact (joint) likelihoods: keep fp32 and eager mode on CUDA unless told otherwise
    cuda_defaults = {"precision": "fp32", "compile": False}

    def __init__(
        self,
        n_particles: int,
        spatial_dim: int,
        *,
        blocks: int = 4,
        width: int = 32,
        depth: int = 2,
        scale: float = 1.0,
        aug_scale: float = 0.5,
        log_scale_bound: float = 3.0,
    ) -> None:
        super().__init__()
        if int(n_particles) < 2 or int(spatial_dim) < 1:
            raise ValueError(
                f"AugmentedEquivariantFlow needs n_particles >= 2 and spatial_dim >= 1, got {n_particles} and "
                f"{spatial_dim}; write e.g. AugmentedEquivariantFlow(4, 2)"
            )
        if int(blocks) < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks}")
        if not scale > 0 or not aug_scale > 0:
            raise ValueError(f"scale and aug_scale must be > 0, got {scale} and {aug_scale}")
        self.n, self.d = int(n_particles), int(spatial_dim)
        self.dim = self.n * self.d
        self.event_shape = (self.dim,)
        self.scale, self.aug_scale = float(scale), float(aug_scale)
        layers: list[nn.Module] = [_GlobalScale(self.n, self.d)]
        for _ in range(int(blocks)):
            for upd in ("x", "a"):
                layers.append(
                    EquivariantCoupling(
                        self.n, self.d, update=upd, width=width, depth=depth, log_scale_bound=log_scale_bound
                    )
                )
        self.layers = nn.ModuleList(layers)

    # densities ---------------------------------------------------------------------------------------

    def _centre(self, xa: Tensor) -> Tensor:
        b, nd = xa.shape[0], self.dim
        m = xa[:, :nd].reshape(b, self.n, self.d).mean(1, keepdim=True)
        return (xa.reshape(b, 2, self.n, self.d) - m[:, None]).reshape(b, 2 * nd)

    def forward(self, xa: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log|det dz/dxa|)`` for ``xa: (B, 2*N*d)`` in data units (translated to mean-free ``x`` first)."""
        _check_joint(xa, self.n, self.d, type(self).__name__)
        z = self._centre(xa) / self.scale
        ladj = xa.new_full((xa.shape[0],), -(2 * self.n - 1) * self.d * math.log(self.scale))
        for layer in self.layers:
            z, l = layer(z)
            ladj = ladj + l
        return z, ladj

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(xa, log|det dxa/dz|)``: base noise ``(B, 2*N*d)`` (mean-free ``x`` part) to data units."""
        _check_joint(z, self.n, self.d, type(self).__name__)
        ladj = z.new_full((z.shape[0],), (2 * self.n - 1) * self.d * math.log(self.scale))
        for layer in reversed(self.layers):
            z, l = layer.inverse(z)
            ladj = ladj + l
        return z * self.scale, ladj

    def base_log_prob(self, z: Tensor) -> Tensor:
        r""":math:`\log \mathcal N_U(z_x; 0, I) + \log \mathcal N(z_a; z_x, \eta_0^2 I)`, ``(B, 2*N*d) -> (B,)``."""
        nd = self.dim
        zx, za = z[:, :nd], z[:, nd:]
        lx = -0.5 * zx.square().sum(1) - 0.5 * (self.n - 1) * self.d * math.log(2 * math.pi)
        return lx + self._gauss(za - zx, self.aug_scale)

    @staticmethod
    def _gauss(r: Tensor, std: float) -> Tensor:
        k = r.shape[1]
        return -0.5 * (r / std).square().sum(1) - k * (math.log(std) + 0.5 * math.log(2 * math.pi))

    def sample_base(self, n: int, generator: torch.Generator | None = None, **like: Any) -> Tensor:
        """``n`` base draws ``(n, 2*N*d)``; ``like``: ``device`` / ``dtype``."""
        p = next(self.parameters())
        dev, dt = like.get("device", p.device), like.get("dtype", p.dtype)
        e = torch.randn(n, 2, self.n, self.d, generator=generator, device=dev, dtype=dt)
        zx = e[:, 0] - e[:, 0].mean(1, keepdim=True)
        za = zx + self.aug_scale * e[:, 1]
        return torch.cat([zx.reshape(n, -1), za.reshape(n, -1)], 1)

    def log_prob_joint(self, x: Tensor, a: Tensor) -> Tensor:
        r""":math:`\log q(x, a)` (nats, on :math:`U \times \mathbb{R}^{Nd}`) for ``x, a: (B, N*d)``; ``(B,)``."""
        z, ladj = self(torch.cat([x, a], 1))
        return self.base_log_prob(z) + ladj

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        r""":math:`a \sim \pi(\cdot\mid x) = \mathcal N(x, \eta^2 I)`, ``(B, N*d)``."""
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + self.aug_scale * self.scale * eps

    def aug_log_prob(self, a: Tensor, x: Tensor) -> Tensor:
        r""":math:`\log \pi(a \mid x)`, ``(B,)``."""
        return self._gauss(a - x, self.aug_scale * self.scale)

    def _points(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"x must have shape (B, N*d) = (B, {self.dim}) for {self.n} particles in {self.d}-D, got {got}"
            )
        b = x.shape[0]
        p = x.reshape(b, self.n, self.d)
        return (p - p.mean(1, keepdim=True)).reshape(b, self.dim)

    def loss(self, batch: Any) -> Tensor:
        r"""Mean of :math:`-\log q(x, a) + \log\pi(a \mid x)`, :math:`a \sim \pi(\cdot\mid x)`: an upper bound on the NLL."""
        x, _ = split_batch(batch)
        x = self._points(x)
        a = self.augment(x)
        return -(self.log_prob_joint(x, a) - self.aug_log_prob(a, x)).mean()

    def generator(self, com: str = "free", n_aug: int = 20) -> AugmentedFlowGenerator:
        """The model as an :class:`AugmentedFlowGenerator` (``com``: ``"free"`` or ``"gaussian"``)."""
        return AugmentedFlowGenerator(self, com=com, n_aug=n_aug)


class AugmentedFlowGenerator:
    r"""Samples of :math:`x` and proposal log-densities of an :class:`AugmentedEquivariantFlow`.

    Args:
        flow: the flow.
        com: ``"free"`` (densities on the CoM-free subspace) or ``"gaussian"`` (extended to
            :math:`\mathbb{R}^{Nd}` by :math:`\mathcal N(\sqrt N \bar x; 0, I_d)`, as
            :class:`~flowforge.continuous.EquivariantFlowGenerator` does, matching the ``com="gaussian"``
            energies).
        n_aug: :math:`M`, auxiliary draws per point in :meth:`log_prob`.
    """

    def __init__(self, flow: AugmentedEquivariantFlow, *, com: str = "free", n_aug: int = 20) -> None:
        if com not in _COM:
            raise ValueError(f"com must be 'free' or 'gaussian', got {com!r}")
        if int(n_aug) < 1:
            raise ValueError(f"n_aug must be >= 1 (auxiliary draws per point), got {n_aug}")
        self.flow, self.com, self.n_aug = flow, com, int(n_aug)
        self.dim = flow.dim
        self.event_shape = (flow.dim,)

    def _com_log_prob(self, x: Tensor) -> Tensor:
        n, d = self.flow.n, self.flow.d
        c = x.reshape(x.shape[0], n, d).mean(1) * math.sqrt(n)
        return -0.5 * c.square().sum(1) - 0.5 * d * math.log(2 * math.pi)

    def _add_com(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        n, d = self.flow.n, self.flow.d
        c = torch.randn(x.shape[0], 1, d, generator=generator, device=x.device, dtype=x.dtype) / math.sqrt(n)
        return (x.reshape(x.shape[0], n, d) + c).reshape(x.shape)

    def sample_joint(
        self, n: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        r"""``(x, a, log q(x, a))``: ``n`` draws of the joint (mean-free ``x``), shapes ``(n, N*d)`` x2, ``(n,)``."""
        z = self.flow.sample_base(n, generator)
        xa, ladj = self.flow.inverse(z)
        nd = self.dim
        return xa[:, :nd], xa[:, nd:], self.flow.base_log_prob(z) - ladj

    def sample_and_log_prob(
        self, n: int, *, generator: torch.Generator | None = None, **_: Any
    ) -> tuple[Tensor, Tensor]:
        r"""``x: (n, N*d)`` and :math:`\log q(x, a) - \log\pi(a\mid x)` ``(n,)``: the joint importance weight's
        proposal term, so that :math:`-E(x) - (\cdot)` is the log of an unbiased weight for :math:`Z`."""
        x, a, lq = self.sample_joint(n, generator=generator)
        lq = lq - self.flow.aug_log_prob(a, x)
        if self.com == "gaussian":
            x = self._add_com(x, generator)
            lq = lq + self._com_log_prob(x)
        return x, lq

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, **_: Any) -> Tensor:
        """``n`` samples ``(n, N*d)``."""
        return self.sample_and_log_prob(n, generator=generator)[0]

    @torch.no_grad()
    def log_prob(
        self, x: Tensor, *, n_aug: int | None = None, generator: torch.Generator | None = None, **_: Any
    ) -> Tensor:
        r"""IS estimate :math:`\log \frac1M\sum_m q(x, a_m)/\pi(a_m\mid x)` of :math:`\log q(x)`, ``(B,)``.

        ``com="free"``: ``x`` must be centre-of-mass free; ``com="gaussian"``: any ``x`` (its CoM term added).
        """
        f = self.flow
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.dim}) = (B, N*d), got {got}")
        m = int(n_aug or self.n_aug)
        extra = self._com_log_prob(x) if self.com == "gaussian" else None
        if self.com == "free":
            com = x.reshape(x.shape[0], f.n, f.d).mean(1).abs().max() if len(x) else 0.0
            if float(com) > 1e-3 * f.scale:
                raise ValueError(
                    f"x is not centre-of-mass free (largest |mean over particles| = {float(com):.3g}); "
                    "subtract the mean over particles, or use generator(com='gaussian')"
                )
        xp = f._points(x)
        xr = xp.repeat_interleave(m, 0)
        a = f.augment(xr, generator)
        lw = (f.log_prob_joint(xr, a) - f.aug_log_prob(a, xr)).view(x.shape[0], m)
        lp = torch.logsumexp(lw, 1) - math.log(m)
        return lp + extra if extra is not None else lp
