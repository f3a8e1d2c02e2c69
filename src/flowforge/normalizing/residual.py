r"""Residual flows: invertible residual blocks :math:`z = x + g(x)` with :math:`\mathrm{Lip}(g) < 1`.

i-ResNet (Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen, "Invertible Residual Networks", ICML 2019):
``g`` is an MLP whose linear layers are spectrally normalised to norm ``<= lipschitz < 1`` and whose
activations are 1-Lipschitz, so ``x -> x + g(x)`` is invertible and the inverse is the fixed point
of ``x = z - g(x)`` (Banach; the error shrinks by the factor ``lipschitz`` each iteration).

Residual Flows (Chen, Behrmann, Duvenaud & Jacobsen, "Residual Flows for Invertible Generative
Modeling", NeurIPS 2019): the log-determinant is the power series

.. math:: \log\det(I + J_g) = \sum_{k \ge 1} \frac{(-1)^{k+1}}{k}\,\mathrm{tr}(J_g^k),

estimated without bias by a Russian roulette over the number of terms (each term ``k`` reweighted
by ``1 / P(N >= k)``) and a Hutchinson probe ``tr(A) = E[v^T A v]``.

:class:`ResidualBlock` computes the log-determinant either ``"exact"`` (the ``D x D`` Jacobian by
autograd and ``slogdet``; for small ``D``, tests and 2-D) or ``"roulette"`` (the estimator; one draw
a point). :class:`ResidualFlow` stacks blocks with :class:`~flowforge.normalizing.linear.ActNorm`
between them. Points have shape ``(B, D)``; conditioning keywords are accepted and ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import final

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jacrev, vmap

from flowforge.normalizing.flow import Flow, _check_points
from flowforge.normalizing.linear import ActNorm

__all__ = ["LipSwish", "ResidualBlock", "ResidualFlow"]

LOGDET_MODES = ("exact", "roulette")


class LipSwish(nn.Module):
    r"""LipSwish (Chen et al., 2019): :math:`x\,\sigma(\beta x) / 1.1` with :math:`\beta = \mathrm{softplus}(b)`.

    1-Lipschitz for every ``beta > 0`` and smooth (the log-determinant's gradient needs second
    derivatives). ``b`` is learned, starting at ``beta = 1``.

    Example:
        >>> act = LipSwish()
        >>> round(float(act.beta.detach()), 6)
        1.0
    """

    def __init__(self) -> None:
        super().__init__()
        self.raw_beta = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))  # softplus^-1(1)

    @property
    def beta(self) -> Tensor:
        return F.softplus(self.raw_beta)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.beta * x) / 1.1


@final
class ResidualBlock(nn.Module):
    r"""An invertible residual block :math:`z = x + g(x)` (i-ResNet, Behrmann et al., 2019).

    ``g`` is ``Linear -> LipSwish -> ... -> Linear`` with every weight ``W`` used as
    :math:`W \min(1, c / \sigma(W))`, :math:`c` = ``lipschitz``, :math:`\sigma` its spectral norm, so
    :math:`\mathrm{Lip}(g) \le c^{L} \le c < 1`.

    Args:
        dim: ``D``.
        hidden: hidden sizes of ``g`` (an int for one hidden layer).
        lipschitz: ``c`` in ``(0, 1)``; closer to 1 is more expressive, slower to invert and a noisier
            roulette estimate.
        n_power_iterations: ``None`` (default): :math:`\sigma(W)` exactly (``torch.linalg.matrix_norm``,
            an SVD; deterministic, a guaranteed bound). An int ``k``: ``k`` power iterations from a
            persistent vector ``u`` (a buffer, saved with the ``state_dict``), which moves only in
            ``forward`` in training mode (as ``torch.nn.utils.spectral_norm``); cheaper for wide layers
            but :math:`\sigma` is under-estimated until ``u`` has converged, and a forward/inverse round
            trip in training mode uses slightly different weights: call ``eval()`` before inverting.
        logdet: ``"exact"`` (autograd Jacobian and ``slogdet``; cost ``D`` backward passes) or
            ``"roulette"`` (unbiased stochastic estimate, see below).
        n_exact_terms: roulette: series terms always computed before the roulette starts.
        geom_p: roulette: the number of further terms ``N`` is geometric, :math:`P(N \ge j) = (1-p)^j`
            (mean ``(1-p)/p``). The estimate's variance is finite when the spectral radius of ``J_g``
            squared is below ``1-p``.
        generator: draws the roulette's ``N`` and the Rademacher probe (default: torch's global one).
        atol: inverse: stop the fixed-point iteration when no coordinate moves more than ``atol``
            (default ``1e-12`` in float64, ``1e-6`` otherwise). The error then is at most
            ``atol * c / (1 - c)``.
        max_iter: inverse: at most this many iterations (a warning-free cap; ``c^max_iter`` bounds
            the contraction if ``atol`` is not reached).

    Inverse: ``x_{n+1} = z - g(x_n)`` from ``x_0 = z``, without autograd; the result is differentiable
    by the implicit-function theorem (one differentiable step at the fixed point and a backward hook
    that solves :math:`u = \bar x - J_g^\top u` by the same iteration), so ``sample_and_log_prob`` and
    ``autograd.functional.jacobian`` of the inverse are correct.

    Roulette ``forward``: ``ladj`` is an unbiased estimate of :math:`\log\det(I + J_g)`, one
    independent draw of ``N`` and of the probe ``v`` per point; ``inverse`` returns minus the
    estimate at ``x``. Gradients flow through the series (``create_graph`` while grad is enabled).

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> block = ResidualBlock(2, 16).double()
        >>> x = torch.randn(5, 2, dtype=torch.float64)
        >>> z, ladj = block(x)
        >>> x2, ladj_inv = block.inverse(z)
        >>> bool((x2 - x).abs().max() < 1e-10), bool((ladj + ladj_inv).abs().max() < 1e-10)
        (True, True)
    """

    def __init__(
        self,
        dim: int,
        hidden: int | Sequence[int] = (64,),
        *,
        lipschitz: float = 0.97,
        n_power_iterations: int | None = None,
        logdet: str = "exact",
        n_exact_terms: int = 2,
        geom_p: float = 0.5,
        generator: torch.Generator | None = None,
        atol: float | None = None,
        max_iter: int = 1000,
    ) -> None:
        super().__init__()
        if isinstance(dim, bool) or int(dim) != dim or dim < 1:
            raise ValueError(f"ResidualBlock: dim must be a positive integer, got {dim!r}")
        hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        if not hidden or any(int(h) != h or h < 1 for h in hidden):
            raise ValueError(f"ResidualBlock: hidden must be positive integers, got {hidden!r}")
        if not 0.0 < float(lipschitz) < 1.0:
            raise ValueError(
                f"ResidualBlock: lipschitz must be in (0, 1) for x + g(x) to be invertible, got {lipschitz!r}"
            )
        if n_power_iterations is not None and (
            int(n_power_iterations) != n_power_iterations or n_power_iterations < 1
        ):
            raise ValueError(
                f"ResidualBlock: n_power_iterations must be None or >= 1, got {n_power_iterations!r}"
            )
        if logdet not in LOGDET_MODES:
            raise ValueError(f"ResidualBlock: logdet must be one of {LOGDET_MODES}, got {logdet!r}")
        if int(n_exact_terms) != n_exact_terms or n_exact_terms < 0:
            raise ValueError(f"ResidualBlock: n_exact_terms must be an integer >= 0, got {n_exact_terms!r}")
        if not 0.0 < float(geom_p) < 1.0:
            raise ValueError(f"ResidualBlock: geom_p must be in (0, 1), got {geom_p!r}")
        if int(max_iter) != max_iter or max_iter < 1:
            raise ValueError(f"ResidualBlock: max_iter must be an integer >= 1, got {max_iter!r}")
        self.dim, self.hidden, self.lipschitz = int(dim), tuple(int(h) for h in hidden), float(lipschitz)
        self.n_power_iterations = None if n_power_iterations is None else int(n_power_iterations)
        self.logdet, self.n_exact_terms, self.geom_p = logdet, int(n_exact_terms), float(geom_p)
        self.generator, self.atol, self.max_iter = generator, atol, int(max_iter)
        sizes = (self.dim, *self.hidden, self.dim)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.acts = nn.ModuleList(LipSwish() for _ in self.hidden)
        with torch.no_grad():  # start near the identity: a small last layer
            self.linears[-1].weight.mul_(0.1)
            self.linears[-1].bias.zero_()
        if self.n_power_iterations is not None:
            for i, lin in enumerate(self.linears):
                u = F.normalize(torch.randn(lin.weight.shape[0]), dim=0)
                self.register_buffer(f"u{i}", u)

    # ------------------------------------------------------------------------------------------ g

    def spectral_norms(self) -> list[Tensor]:
        """The exact spectral norms of the normalised weights (each ``<= lipschitz``)."""
        return [torch.linalg.matrix_norm(w.detach(), ord=2) for w in self.weights()]

    def weights(self, update: bool = False) -> list[Tensor]:
        """The normalised weights :math:`W \\min(1, c/\\sigma(W))`; ``update`` moves the power-iteration ``u``."""
        out = []
        for i, lin in enumerate(self.linears):
            w = lin.weight
            if self.n_power_iterations is None:
                sigma = torch.linalg.matrix_norm(w, ord=2)
            else:
                u = getattr(self, f"u{i}").to(w)
                with torch.no_grad():
                    for _ in range(self.n_power_iterations):
                        v = F.normalize(w.T @ u, dim=0)
                        u = F.normalize(w @ v, dim=0)
                    if update:
                        getattr(self, f"u{i}").copy_(u)
                v = F.normalize(w.T @ u, dim=0).detach()
                sigma = u @ w @ v
            out.append(w * torch.clamp(self.lipschitz / sigma, max=1.0))
        return out

    def _g(self, x: Tensor, weights: Sequence[Tensor]) -> Tensor:
        h = x
        for i, (w, lin) in enumerate(zip(weights, self.linears)):
            h = F.linear(h, w, lin.bias)
            if i < len(self.acts):
                h = self.acts[i](h)
        return h

    def g(self, x: Tensor) -> Tensor:
        """The residual branch ``g(x)``, ``(B, D) -> (B, D)`` (no power-iteration update)."""
        return self._g(x, self.weights())

    # ------------------------------------------------------------------------------------- logdet

    def _exact_logdet(self, x: Tensor, weights: Sequence[Tensor]) -> Tensor:
        jac = vmap(jacrev(lambda xi: self._g(xi[None], weights)[0]))(x)  # (B, D, D)
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        return torch.linalg.slogdet(eye + jac)[1]

    def _roulette_logdet(self, x: Tensor, gx: Tensor) -> Tensor:
        """Unbiased estimate of log det(I + J_g(x)); ``gx = g(x)`` built with ``x`` requiring grad."""
        b, gen = x.shape[0], self.generator
        q = 1.0 - self.geom_p
        # N >= 0 extra terms, P(N >= j) = q^j (failures before the first success)
        uniform = torch.rand(b, generator=gen, dtype=torch.float64).clamp_min(1e-300)
        extra = torch.floor(torch.log(uniform) / math.log(q)).long()
        n_terms = self.n_exact_terms + extra  # (B,)
        v = (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1).to(x)  # Rademacher probe
        create = torch.is_grad_enabled()
        w, total = v, x.new_zeros(b)
        for k in range(1, int(n_terms.max()) + 1):
            (w,) = torch.autograd.grad(gx, x, w, create_graph=create, retain_graph=True)  # v^T J^k
            j = k - self.n_exact_terms
            weight = 1.0 if j <= 0 else q ** (-j)  # 1 / P(N >= j): the roulette reweighting
            term = (-1) ** (k + 1) / k * weight * (w * v).sum(1)
            total = total + torch.where(k <= n_terms.to(x.device), term, torch.zeros_like(term))
        return total

    def _forward_logdet(self, x: Tensor, weights: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``(g(x), log det(I + J_g(x)))``."""
        if self.logdet == "exact":
            return self._g(x, weights), self._exact_logdet(x, weights)
        grad_on = torch.is_grad_enabled()
        with torch.enable_grad():
            xr = x if x.requires_grad else x.detach().requires_grad_(True)
            gx = self._g(xr, weights)
            ladj = self._roulette_logdet(xr, gx)
        if not grad_on:
            gx, ladj = gx.detach(), ladj.detach()
        return gx, ladj

    # ------------------------------------------------------------------------------------ bijection

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(x, self.dim, "ResidualBlock")
        weights = self.weights(update=self.training and self.n_power_iterations is not None)
        gx, ladj = self._forward_logdet(x, weights)
        return x + gx, ladj

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(z, self.dim, "ResidualBlock")
        weights = self.weights()
        atol = self.atol if self.atol is not None else (1e-12 if z.dtype == torch.float64 else 1e-6)
        with torch.no_grad():
            wd = [w.detach() for w in weights]
            x = z.detach().clone()
            for _ in range(self.max_iter):
                x_new = z.detach() - self._g(x, wd)
                done = (x_new - x).abs().max() <= atol
                x = x_new
                if done:
                    break
        if torch.is_grad_enabled():
            x = self._implicit_step(x, z, weights, atol)
        gx, ladj = self._forward_logdet(x, weights)
        return x, -ladj

    def _implicit_step(self, x_star: Tensor, z: Tensor, weights: Sequence[Tensor], atol: float) -> Tensor:
        """``x = z - g(x*)`` with the gradient of the true inverse (implicit-function theorem)."""
        x = z - self._g(x_star, weights)
        if not x.requires_grad:
            return x
        x0 = x_star.detach().requires_grad_(True)
        with torch.enable_grad():
            g0 = self._g(x0, [w.detach() for w in weights])
        max_iter = self.max_iter

        def hook(grad: Tensor) -> Tensor:
            # solve u = grad - J_g^T u: u = (I + J_g)^{-T} grad
            u = grad
            for _ in range(max_iter):
                (jtu,) = torch.autograd.grad(g0, x0, u, retain_graph=True)
                u_new = grad - jtu
                done = (u_new - u).abs().max() <= atol * max(1.0, float(grad.abs().max()))
                u = u_new
                if done:
                    break
            return u

        x.register_hook(hook)
        return x

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, hidden={self.hidden}, lipschitz={self.lipschitz}, logdet={self.logdet!r}, "
            f"n_power_iterations={self.n_power_iterations}"
        )


@final
class ResidualFlow(Flow):
    r"""Residual flow (Chen, Behrmann, Duvenaud & Jacobsen, "Residual Flows for Invertible Generative Modeling", NeurIPS 2019).

    ``blocks`` :class:`ResidualBlock` s, each followed by an :class:`~flowforge.normalizing.linear.ActNorm`
    when ``actnorm=True`` (i-ResNet, Behrmann et al., 2019, uses ActNorm between blocks), and a standard
    normal base. With ``logdet="roulette"`` ``log_prob`` is an unbiased *estimate* (use it for training;
    evaluate with ``"exact"`` in low dimension).

    Args:
        dim: ``D``.
        blocks: number of residual blocks.
        hidden: hidden sizes of each block's ``g``.
        actnorm: put an :class:`ActNorm` after every block.
        **block_kwargs: passed to every :class:`ResidualBlock` (``lipschitz``, ``logdet``,
            ``n_power_iterations``, ``generator``, ...).

    Attributes:
        dim, blocks, hidden, actnorm, logdet, lipschitz: the constructor arguments.

    Example:
        >>> flow = ResidualFlow(2, blocks=2, hidden=(16,))
        >>> flow.log_prob(torch.randn(3, 2)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        dim: int,
        blocks: int = 4,
        hidden: int | Sequence[int] = (64, 64),
        *,
        actnorm: bool = True,
        **block_kwargs: object,
    ) -> None:
        if isinstance(blocks, bool) or int(blocks) != blocks or blocks < 1:
            raise ValueError(f"ResidualFlow: blocks must be an integer >= 1, got {blocks!r}")
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers.append(ResidualBlock(dim, hidden, **block_kwargs))  # type: ignore[arg-type]
            if actnorm:
                layers.append(ActNorm(dim))
        super().__init__(layers, event_shape=(dim,))
        first = layers[0]
        self.dim, self.blocks, self.hidden, self.actnorm = int(dim), int(blocks), first.hidden, bool(actnorm)
        self.logdet, self.lipschitz = first.logdet, first.lipschitz

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, blocks={self.blocks}, hidden={self.hidden}, actnorm={self.actnorm}, "
            f"logdet={self.logdet!r}, lipschitz={self.lipschitz}"
        )
