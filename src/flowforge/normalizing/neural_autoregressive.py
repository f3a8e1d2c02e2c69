r"""Neural autoregressive layers: a monotone neural transformer :math:`z_i = f(x_i; \theta_i(x_{<i}))`.

:class:`NeuralAutoregressive` (NAF; Huang, Krueger, Lacoste & Courville, 2018) with the deep sigmoidal
flow (DSF) transformer, :class:`UnconstrainedAutoregressive` (UMNN / UNAF; Wehenkel & Louppe, 2019) with
the integral of a positive network computed by Clenshaw-Curtis quadrature. Both take their per-dimension
parameters from a :class:`~flowforge.nn.made.MADE` conditioner, like
:mod:`flowforge.normalizing.autoregressive`; density evaluation (``forward``) is one MADE pass, sampling
(``inverse``) ``D`` passes, each inverting the scalar transformers by bisection (then one Newton step,
which also gives the inverse its exact implicit derivatives). Conventions as in
:mod:`flowforge.normalizing.coupling`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.nn.made import check_hidden
from flowforge.normalizing.autoregressive import _as_order
from flowforge.normalizing.coupling import _Conditioned
from flowforge.normalizing.flow import _check_points

__all__ = ["NeuralAutoregressive", "UnconstrainedAutoregressive", "clenshaw_curtis"]

_SOFTPLUS_INV_1 = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_INV_1) = 1: the DSF starts as the identity


def clenshaw_curtis(nodes: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    r"""Clenshaw-Curtis nodes and weights on :math:`[-1, 1]`: :math:`\int_{-1}^1 g \approx \sum_k w_k g(s_k)`.

    ``nodes = N + 1`` Chebyshev extreme points :math:`s_k = \cos(k\pi/N)`; exact for polynomials of
    degree ``N`` (Trefethen, *Spectral Methods in MATLAB*, ``clencurt``).

    Example:
        >>> s, w = clenshaw_curtis(5)
        >>> round(float(w.sum()), 12), round(float((w * s**2).sum()), 12)  # integrals of 1 and s^2
        (2.0, 0.666666666667)
    """
    if int(nodes) != nodes or nodes < 2:
        raise ValueError(f"clenshaw_curtis: nodes must be an integer >= 2, got {nodes!r}")
    n = int(nodes) - 1
    theta = math.pi * torch.arange(n + 1, dtype=torch.float64) / n
    s = torch.cos(theta)
    w = torch.zeros(n + 1, dtype=torch.float64)
    inner = theta[1:n]
    v = torch.ones(n - 1, dtype=torch.float64)
    if n % 2 == 0:
        w[0] = w[n] = 1.0 / (n * n - 1)
        for k in range(1, n // 2):
            v = v - 2.0 * torch.cos(2 * k * inner) / (4 * k * k - 1)
        v = v - torch.cos(n * inner) / (n * n - 1)
    else:
        w[0] = w[n] = 1.0 / (n * n)
        for k in range(1, (n - 1) // 2 + 1):
            v = v - 2.0 * torch.cos(2 * k * inner) / (4 * k * k - 1)
    w[1:n] = 2.0 * v / n
    return s.to(dtype), w.to(dtype)


def _bisect(f: Callable[[Tensor], Tensor], z: Tensor, who: str, max_iter: int = 300) -> Tensor:
    """Solve ``f(x) = z`` elementwise for an increasing ``f`` by bracketing and bisection (no gradients).

    Stops when every bracket is narrower than ``1e-10 (1 + |x|)`` in float64 (``1e-6 (1 + |x|)`` below).
    """
    if not torch.isfinite(z).all():
        raise ValueError(f"{who}.inverse: got non-finite values; the inverse needs finite points")
    with torch.no_grad():
        lo, hi = torch.full_like(z, -1.0), torch.full_like(z, 1.0)
        for _ in range(64):  # brackets up to 2^64
            low_too_high, high_too_low = f(lo) > z, f(hi) < z
            if not (low_too_high.any() or high_too_low.any()):
                break
            lo, hi = (
                torch.where(low_too_high, 2 * lo, torch.where(high_too_low, hi, lo)),
                torch.where(high_too_low, 2 * hi, torch.where(low_too_high, lo, hi)),
            )
        else:
            raise ValueError(f"{who}.inverse: could not bracket the solution (transformer not surjective?)")
        tol = 1e-10 if z.dtype == torch.float64 else 1e-6
        for _ in range(max_iter):
            mid = 0.5 * (lo + hi)
            up = f(mid) < z
            lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
            if ((hi - lo) <= tol * (1 + mid.abs())).all():
                break
        return 0.5 * (lo + hi)


def _solve(f: Callable[[Tensor], tuple[Tensor, Tensor]], z: Tensor, who: str) -> Tensor:
    """``x = f^{-1}(z)``, differentiable in ``z`` and in ``f``'s parameters.

    Bisection finds ``x*``; one Newton step ``x = x* - (f(x*) - z) / f'(x*)`` refines it and carries the
    implicit-function derivatives ``dx/dz = 1 / f'`` and ``dx/dθ = -(∂f/∂θ) / f'``.
    """
    x0 = _bisect(lambda x: f(x)[0], z, who)
    y, log_d = f(x0)
    return x0 - (y - z) / log_d.detach().exp()


class _NeuralConditioned(_Conditioned):
    """A fully autoregressive :class:`_Conditioned` whose scalar transformer is inverted numerically.

    ``_f(x, p) -> (z, log dz/dx)`` elementwise. The inverse takes one MADE pass per position of the
    order and solves only the dimensions whose conditioner inputs are final by then, so every scalar
    solve sees its true parameters.
    """

    def _f(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _map(self, x: Tensor, p: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        if inverse:  # not used by inverse() below; kept for the _Conditioned contract
            x = _solve(lambda t: self._f(t, p), x, self._who)
            return x, -self._f(x, p)[1]
        return self._f(x, p)

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(z, self.dim, self._who)
        if not torch.isfinite(z).all():
            raise ValueError(f"{self._who}.inverse: got non-finite values; the inverse needs finite points")
        context, y = cond.get("context"), cond.get("y")
        x = torch.zeros_like(z)
        for degree in torch.unique(self.net.degrees).tolist():
            idx = (self.net.degrees == degree).nonzero().flatten()
            p = self.net(x, context, y)[:, idx]
            x = x.index_copy(1, idx, _solve(lambda t, p=p: self._f(t, p), z[:, idx], self._who))
        _, log_d = self._f(x, self.net(x, context, y))
        return x, -log_d.sum(1)


def _check_positive_int(value: int, name: str, who: str, least: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < least:
        raise ValueError(f"{who}: {name} must be an integer >= {least}, got {value!r}")
    return int(value)


def _dsf(x: Tensor, p: Tensor, k: int) -> tuple[Tensor, Tensor]:
    r"""DSF :math:`z = \mathrm{logit}(\sum_j w_j \sigma(a_j x + b_j))` and :math:`\log dz/dx`, in log space."""
    a = F.softplus(p[..., :k] + _SOFTPLUS_INV_1)
    b, log_w = p[..., k : 2 * k], torch.log_softmax(p[..., 2 * k :], dim=-1)
    u = a * x[..., None] + b
    ls_pos, ls_neg = F.logsigmoid(u), F.logsigmoid(-u)
    log_y = torch.logsumexp(log_w + ls_pos, -1)  # log sum_j w_j sigmoid(u_j)
    log_1my = torch.logsumexp(log_w + ls_neg, -1)  # log (1 - y)
    log_dy = torch.logsumexp(log_w + torch.log(a) + ls_pos + ls_neg, -1)  # log dy/dx
    return log_y - log_1my, log_dy - log_y - log_1my


@final
class NeuralAutoregressive(_NeuralConditioned):
    r"""Neural autoregressive layer with the deep sigmoidal transformer (NAF-DSF; Huang et al., 2018).

    :math:`z_i = \sigma^{-1}\big(\sum_{j=1}^K w_{ij}\,\sigma(a_{ij} x_i + b_{ij})\big)` with
    :math:`a = \mathrm{softplus}(\cdot) > 0`, :math:`w = \mathrm{softmax}(\cdot)`, and
    :math:`(a_i, b_i, w_i)` from a :class:`MADE` on :math:`x_{<i}` (the order ``order``). Each
    transformer is strictly increasing and maps :math:`\mathbb{R}` onto :math:`\mathbb{R}`;
    :math:`\log|\det| = \sum_i \log \partial z_i / \partial x_i` by the chain rule, computed with
    log-sigmoids and log-sum-exps so that it stays finite far in the tails. Starts as the identity.
    ``inverse`` takes ``D`` MADE passes, each inverting the transformers by bisection.

    Args:
        dim: ``D``.
        hidden: MADE hidden sizes.
        order: a permutation of ``0..D-1`` (``order[i]`` = position of dimension ``i``); default ascending.
        components: number ``K`` of sigmoids per transformer.
        context: size of the ``context`` vector (0: none).
        num_classes: class-conditional on ``y`` when given.

    Shapes:
        ``x: (B, D) -> (z: (B, D), ladj: (B,))``.

    Example:
        >>> layer = NeuralAutoregressive(3, hidden=(16,), components=4)
        >>> x = torch.randn(5, 3)
        >>> torch.allclose(layer(x)[0], x, atol=1e-6)  # the identity at initialisation
        True
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        order: Tensor | Sequence[int] | None = None,
        *,
        components: int = 16,
        context: int = 0,
        num_classes: int | None = None,
    ) -> None:
        who = "NeuralAutoregressive"
        components = _check_positive_int(components, "components", who)
        order = _as_order(order, dim, who)
        super().__init__(
            dim, order, torch.ones(dim, dtype=torch.bool), 3 * components, hidden, context, num_classes, who
        )
        self.components = components

    def _f(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        return _dsf(x, p, self.components)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, components={self.components}"


@final
class UnconstrainedAutoregressive(_NeuralConditioned):
    r"""Unconstrained monotonic neural network layer (UMNN / UNAF; Wehenkel & Louppe, 2019).

    :math:`z_i = \int_0^{x_i} g(t; h_i)\,dt + \beta_i` with :math:`(h_i, \beta_i)` from a :class:`MADE` on
    :math:`x_{<i}` and a positive integrand :math:`g(t; h) = \mathrm{ELU}(\mathrm{MLP}(t, h)) + 1 > 0`
    (one MLP shared by the dimensions, as in the paper). The integral is computed by Clenshaw-Curtis
    quadrature with ``nodes`` fixed nodes; :math:`\partial z_i / \partial x_i = g(x_i; h_i)` exactly, so
    :math:`\log|\det| = \sum_i \log g(x_i; h_i)` and backpropagation through ``z`` uses :math:`g(x_i)`
    as the derivative in :math:`x_i` (the paper's choice; it differs from the derivative of the
    quadrature rule only by its error). Derivatives of ``z`` in :math:`h`, :math:`\beta` and the MLP are
    those of the quadrature rule. Only first derivatives are supported (no double backward through
    ``z``). The MLP's output layer starts at zero, so the layer starts as the identity. ``inverse``
    takes ``D`` MADE passes, each inverting the transformers by bisection.

    Args:
        dim: ``D``.
        hidden: MADE hidden sizes.
        order: a permutation of ``0..D-1``; default ascending.
        embedding: size of :math:`h_i`.
        integrand: hidden sizes of the integrand MLP (tanh activations).
        nodes: Clenshaw-Curtis nodes ``>= 2`` (exact for polynomials of degree ``nodes - 1``).
        context: size of the ``context`` vector (0: none).
        num_classes: class-conditional on ``y`` when given.

    Shapes:
        ``x: (B, D) -> (z: (B, D), ladj: (B,))``.

    Example:
        >>> layer = UnconstrainedAutoregressive(2, hidden=(16,), integrand=(8,), nodes=9)
        >>> z, ladj = layer(torch.randn(4, 2))
        >>> z.shape, ladj.shape
        (torch.Size([4, 2]), torch.Size([4]))
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        order: Tensor | Sequence[int] | None = None,
        *,
        embedding: int = 8,
        integrand: Sequence[int] = (32, 32),
        nodes: int = 33,
        context: int = 0,
        num_classes: int | None = None,
    ) -> None:
        who = "UnconstrainedAutoregressive"
        embedding = _check_positive_int(embedding, "embedding", who)
        nodes = _check_positive_int(nodes, "nodes", who, least=2)
        integrand = check_hidden(integrand, who)
        order = _as_order(order, dim, who)
        super().__init__(
            dim, order, torch.ones(dim, dtype=torch.bool), 1 + embedding, hidden, context, num_classes, who
        )
        self.embedding, self.integrand_hidden, self.nodes = embedding, integrand, nodes
        sizes = (1 + embedding, *integrand, 1)
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.integrand = nn.Sequential(*layers)
        s, w = clenshaw_curtis(nodes)
        self.register_buffer("cc_nodes", s, persistent=False)
        self.register_buffer("cc_weights", w, persistent=False)

    def g(self, t: Tensor, h: Tensor) -> Tensor:
        r"""The positive integrand :math:`g(t; h)`: ``t (..., M)``, ``h (..., E)`` -> ``(..., M)``."""
        inp = torch.cat([t[..., None], h[..., None, :].expand(*t.shape, h.shape[-1])], -1)
        return F.elu(self.integrand(inp).squeeze(-1)) + 1.0

    def integral(self, x: Tensor, h: Tensor) -> Tensor:
        r""":math:`\int_0^x g(t; h)\,dt` by Clenshaw-Curtis: :math:`\tfrac{x}{2}\sum_k w_k g(x (s_k + 1)/2; h)`."""
        s, w = self.cc_nodes.to(x.dtype), self.cc_weights.to(x.dtype)
        return 0.5 * x * (self.g(0.5 * x[..., None] * (s + 1), h) * w).sum(-1)

    def _f(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        beta, h = p[..., 0], p[..., 1:]
        xd = x.detach()
        gx = self.g(x[..., None], h).squeeze(-1)
        # value: quadrature of the integral; d/dx: g(x) exactly (the derivative of the true integral)
        z = self.integral(xd, h) + beta + gx.detach() * (x - xd)
        return z, torch.log(gx)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, embedding={self.embedding}, integrand={self.integrand_hidden}, "
            f"nodes={self.nodes}"
        )
