r"""Bijections for normalizing flows: coupling, autoregressive, spline, permutation and normalisation layers.

Every bijection maps data to noise (DESIGN.md): ``forward(x, **cond) -> (z, ladj)`` with
``ladj = log|det dz/dx|`` of shape ``(B,)``, and ``inverse(z, **cond) -> (x, ladj)`` with
``ladj = log|det dx/dz|``. Points have shape ``(B, D)``. Conditioning arrives as keyword tensors:
``y`` (class labels, ``(B,)`` long) and ``context`` (``(B, C)`` features); layers built without
conditioning accept and ignore them.

Parts:

- :class:`MADE`: masked MLP hyper-network producing a parameter vector per dimension.
- :class:`AffineCoupling` (RealNVP), :class:`MaskedAutoregressive` (MAF): soft-clipped affine maps
  :math:`z_i = x_i e^{s_i} + t_i`.
- :func:`rq_spline`, :class:`SplineCoupling`, :class:`SplineAutoregressive` (NSF): monotonic
  rational-quadratic splines with identity tails.
- :class:`Permutation`, :class:`Reverse`, :func:`RandomPermutation`, :class:`ActNorm`,
  :class:`LULinear`: volume-preserving shuffles and Glow's linear layers.
- Named flows (recipes of the parts above): :func:`NSF`, :func:`MAF`, :func:`RealNVP`.

Example:
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> flow = NSF(2, transforms=2, hidden=(16, 16))
    >>> x = torch.randn(8, 2)
    >>> flow.log_prob(x).shape
    torch.Size([8])
    >>> z, ladj = flow(x)
    >>> torch.allclose(flow.inverse(z)[0], x, atol=1e-5)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.normalizing.flow import Flow

__all__ = [
    "MADE",
    "MAF",
    "NSF",
    "ActNorm",
    "AffineCoupling",
    "LULinear",
    "MaskedAutoregressive",
    "Permutation",
    "RandomPermutation",
    "RealNVP",
    "Reverse",
    "SplineAutoregressive",
    "SplineCoupling",
    "rq_spline",
    "soft_clip",
]

LOG_SCALE_BOUND = math.log(1e3)
"""Default bound ``c`` of the affine log-scale: ``s in (-c, c)``, i.e. the per-layer scale lies in
``(1e-3, 1e3)`` (zuko's ``slope=1e-3``)."""


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def soft_clip(a: Tensor, bound: float = LOG_SCALE_BOUND) -> Tensor:
    r"""Smoothly squash ``a`` into ``(-bound, bound)``: :math:`a / (1 + |a| / c)`.

    Identity near zero (slope 1 at the origin), monotone, and saturating at :math:`\pm c`. Used for
    the log-scale of affine layers so that a single layer cannot blow up or collapse a dimension
    (zuko writes the same map with ``c = -log(slope)``).

    Example:
        >>> soft_clip(torch.tensor([0.0, 1.0, 1e6]), bound=2.0)
        tensor([0.0000, 0.6667, 2.0000])
    """
    return a / (1 + a.abs() / bound)


def _check_points(x: Tensor, dim: int | None, who: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or (dim is not None and x.shape[1] != dim):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        want = f"(B, {dim})" if dim is not None else "(B, D)"
        raise ValueError(
            f"{who} expects points of shape {want}, got {got}; flatten events with x.flatten(1)"
            + (
                f" or build the layer with dim={x.shape[-1]}"
                if isinstance(x, Tensor) and x.dim() == 2
                else ""
            )
        )


def _as_order(order: Tensor | Sequence[int] | None, dim: int, who: str) -> Tensor:
    """A permutation of ``range(dim)`` as a long tensor (``None``: ascending)."""
    if order is None:
        return torch.arange(dim)
    order = torch.as_tensor(order).long().flatten()
    if order.numel() != dim or not torch.equal(order.sort().values, torch.arange(dim)):
        raise ValueError(
            f"{who}: order must be a permutation of 0..{dim - 1} (order[i] = position of dimension i in "
            f"the autoregressive order), got {order.tolist()}; e.g. order=torch.arange({dim}).flip(0)"
        )
    return order


def _check_hidden(hidden: Sequence[int], who: str) -> tuple[int, ...]:
    hidden = tuple(int(h) for h in hidden)
    if len(hidden) == 0 or min(hidden) < 1:
        raise ValueError(
            f"{who}: hidden must be a non-empty sequence of positive sizes, e.g. (64, 64); got {hidden}"
        )
    return hidden


# --------------------------------------------------------------------------------------------------
# MADE
# --------------------------------------------------------------------------------------------------


class _MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 mask (a buffer) on every call."""

    def __init__(self, mask: Tensor, bias: bool = True) -> None:
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


@final
class MADE(nn.Module):
    r"""Masked autoencoder for distribution estimation (Germain et al., 2015), as a hyper-network.

    An MLP ``x -> theta`` whose weight masks make output ``theta_i`` (a vector of ``params`` numbers)
    depend only on the inputs ``x_j`` with ``order[j] < order[i]``, so
    :math:`\partial \theta_i / \partial x_j = 0` unless ``j`` precedes ``i``. ``order`` may contain
    ties (degrees): a two-level order ``[0, 1, 0, 1]`` gives a coupling conditioner. Hidden unit
    degrees cycle through ``0 .. R-2`` (``R`` distinct degrees), the usual deterministic assignment.
    Context features and a class embedding enter the first hidden layer unmasked (every output may
    depend on them).

    The output layer starts at zero (weights and bias), so a transform built on it starts as the
    identity when its parameterisation maps zeros to the identity.

    Args:
        features: ``D``, size of the input.
        params: number of outputs per dimension.
        hidden: hidden layer sizes.
        order: ``(D,)`` integer degrees (default ``0..D-1``); only their ranking matters.
        context: size ``C`` of the context vector (0: none).
        num_classes: number of classes for a learned label embedding (``None``: none).
        activation: factory of the hidden activation module.

    Shapes:
        ``x: (B, D)``, ``context: (B, C)``, ``y: (B,)`` long -> ``(B, D, params)``.

    Example:
        >>> net = MADE(3, params=2, hidden=(8,))
        >>> net(torch.randn(4, 3)).shape
        torch.Size([4, 3, 2])
    """

    def __init__(
        self,
        features: int,
        params: int = 1,
        hidden: Sequence[int] = (64, 64),
        *,
        order: Tensor | Sequence[int] | None = None,
        context: int = 0,
        num_classes: int | None = None,
        activation: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if features < 1 or params < 1 or context < 0:
            raise ValueError(
                f"MADE needs features >= 1, params >= 1, context >= 0; got {features}, {params}, {context}"
            )
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"MADE: num_classes must be >= 1 or None, got {num_classes}")
        hidden = _check_hidden(hidden, "MADE")
        deg = torch.arange(features) if order is None else torch.as_tensor(order).long().flatten()
        if deg.numel() != features:
            raise ValueError(f"MADE: order needs {features} entries (one per feature), got {deg.numel()}")
        deg = torch.unique(deg, return_inverse=True)[1]  # ranks 0..R-1
        self.features, self.params, self.context, self.num_classes = features, params, context, num_classes
        self.register_buffer("degrees", deg)
        r = int(deg.max()) + 1

        layers, prev = [], deg
        for h in hidden:
            d = torch.arange(h) % max(r - 1, 1)
            layers.append(_MaskedLinear(d[:, None] >= prev[None, :]))
            prev = d
        out_deg = deg.repeat_interleave(params)  # output i * params + p belongs to dimension i
        self.output = _MaskedLinear(out_deg[:, None] > prev[None, :])
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        self.layers = nn.ModuleList(layers)
        self.act = activation()
        self.ctx = nn.Linear(context, hidden[0], bias=False) if context > 0 else None
        self.label = nn.Embedding(num_classes, hidden[0]) if num_classes else None

    def forward(self, x: Tensor, context: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        """``x: (B, D)`` (and ``context: (B, C)``, ``y: (B,)``) -> ``(B, D, params)``."""
        h = self.layers[0](x)
        if self.ctx is not None:
            if context is None or context.dim() != 2 or context.shape != (x.shape[0], self.context):
                got = None if context is None else tuple(context.shape)
                raise ValueError(
                    f"this layer is conditional on a context: pass context=(B, {self.context}) with "
                    f"B={x.shape[0]}, got {got}"
                )
            h = h + self.ctx(context.to(h.dtype))
        if self.label is not None:
            if y is None or y.shape != (x.shape[0],):
                got = None if y is None else tuple(y.shape)
                raise ValueError(
                    f"this layer is class-conditional: pass y=(B,) class indices in 0..{self.num_classes - 1} "
                    f"with B={x.shape[0]}, got {got}"
                )
            h = h + self.label(y.long())
        h = self.act(h)
        for layer in self.layers[1:]:
            h = self.act(layer(h))
        return self.output(h).unflatten(1, (self.features, self.params))


# --------------------------------------------------------------------------------------------------
# Elementwise maps
# --------------------------------------------------------------------------------------------------


def _affine(x: Tensor, p: Tensor, inverse: bool, bound: float) -> tuple[Tensor, Tensor]:
    """``z = x exp(s) + t`` with ``s = soft_clip(p[..., 1])``, ``t = p[..., 0]``; per-element ladj."""
    shift, s = p[..., 0], soft_clip(p[..., 1], bound)
    if inverse:
        return (x - shift) * torch.exp(-s), -s
    return x * torch.exp(s) + shift, s


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


def rq_spline(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    bound: float = 5.0,
    inverse: bool = False,
    *,
    min_width: float = 1e-3,
    min_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    r"""Monotonic rational-quadratic spline with identity tails (Durkan et al., 2019, "Neural Spline Flows").

    On :math:`[-B, B]` the map has ``K`` bins with knots :math:`(x^k, y^k)`, ``k = 0..K``, from
    :math:`(-B, -B)` to :math:`(B, B)`, and knot derivatives :math:`\delta^k > 0` with
    :math:`\delta^0 = \delta^K = 1`; outside it is the identity, so the map is :math:`C^1` on all of
    :math:`\mathbb{R}`. In bin ``k``, with :math:`w = x^{k+1} - x^k`, :math:`h = y^{k+1} - y^k`,
    :math:`s = h / w` and :math:`\xi = (x - x^k) / w \in [0, 1]`,

    .. math::
        y = y^k + \frac{h\,[s \xi^2 + \delta^k \xi (1 - \xi)]}{s + (\delta^{k+1} + \delta^k - 2 s)\,\xi (1 - \xi)},
        \qquad
        \frac{dy}{dx} = \frac{s^2 [\delta^{k+1} \xi^2 + 2 s \xi (1 - \xi) + \delta^k (1 - \xi)^2]}
        {[s + (\delta^{k+1} + \delta^k - 2 s)\,\xi (1 - \xi)]^2}.

    The inverse solves the quadratic :math:`a \xi^2 + b \xi + c = 0` for its root in :math:`[0, 1]`,
    :math:`\xi = 2c / (-b - \sqrt{b^2 - 4ac})` when :math:`b \ge 0` (Durkan et al.'s form) and the
    equal :math:`(-b + \sqrt{b^2 - 4ac}) / 2a` when :math:`b < 0`, where the first form cancels
    catastrophically (in float32 it loses most digits in strongly curved bins).

    Parameterisation of the unconstrained inputs: bin widths are
    ``2B * (min_width + (1 - K min_width) softmax(widths))`` (same for heights), interior derivatives
    ``min_derivative + softplus(derivatives + c)`` with ``c`` chosen so that ``0`` gives derivative 1.
    All-zero parameters therefore give the identity.

    Args:
        x: input of any shape ``(*)``; it and the parameters' leading shapes broadcast together.
        widths: ``(*, K)`` unconstrained bin widths.
        heights: ``(*, K)`` unconstrained bin heights.
        derivatives: ``(*, K - 1)`` unconstrained interior knot derivatives.
        bound: half-width ``B > 0`` of the spline's interval.
        inverse: evaluate the inverse map instead.
        min_width, min_height, min_derivative: lower limits (keep bins and slopes from collapsing).

    Returns:
        ``(y, ladj)`` both of the broadcast shape ``(*)``; ``ladj = log|dy/dx|`` per element (of the map applied,
        i.e. of the inverse when ``inverse=True``).

    Example:
        >>> x = torch.linspace(-6, 6, 5)
        >>> w, h, d = torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 7)
        >>> y, ladj = rq_spline(x, w, h, d, bound=5.0)
        >>> y[0].item(), y[-1].item()  # identity outside [-5, 5]
        (-6.0, 6.0)
        >>> torch.allclose(rq_spline(y, w, h, d, bound=5.0, inverse=True)[0], x, atol=1e-5)
        True
    """
    k = widths.shape[-1]
    if k < 1 or heights.shape[-1] != k or derivatives.shape[-1] != k - 1:
        raise ValueError(
            "rq_spline needs widths (*, K), heights (*, K) and derivatives (*, K-1) with K >= 1; got "
            f"{tuple(widths.shape)}, {tuple(heights.shape)}, {tuple(derivatives.shape)}"
        )
    if not bound > 0:
        raise ValueError(f"rq_spline: bound must be > 0 (the spline acts on [-bound, bound]), got {bound}")
    if min_width * k >= 1 or min_height * k >= 1:
        raise ValueError(f"rq_spline: min_width and min_height must be < 1/bins = {1 / k}")
    if not min_derivative > 0 or min_derivative >= 1:
        raise ValueError(f"rq_spline: min_derivative must be in (0, 1), got {min_derivative}")

    try:
        shape = torch.broadcast_shapes(x.shape, widths.shape[:-1], heights.shape[:-1], derivatives.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"rq_spline: x {tuple(x.shape)} and the parameters' leading shapes {tuple(widths.shape[:-1])}, "
            f"{tuple(heights.shape[:-1])}, {tuple(derivatives.shape[:-1])} do not broadcast"
        ) from None
    x = x.expand(shape)
    widths, heights = widths.expand(*shape, k), heights.expand(*shape, k)
    derivatives = derivatives.expand(*shape, k - 1)

    def knots(u: Tensor, lo: float) -> Tensor:
        # softmax written out: torch's kernel is several times slower for a short last axis on CPU;
        # the shift is detached (softmax is shift-invariant, so the gradient is unchanged)
        e = torch.exp(u - u.amax(dim=-1, keepdim=True).detach())
        frac = lo + (1 - lo * k) * (e / e.sum(dim=-1, keepdim=True))
        cum = F.pad(torch.cumsum(frac, dim=-1), (1, 0))
        kn = 2 * bound * cum - bound
        # pin the ends exactly (cumsum rounding) so the map is continuous with the tails
        return torch.cat(
            [torch.full_like(kn[..., :1], -bound), kn[..., 1:-1], torch.full_like(kn[..., :1], bound)], -1
        )

    xk, yk = knots(widths, min_width), knots(heights, min_height)
    inner = min_derivative + F.softplus(derivatives + _inverse_softplus(1 - min_derivative))
    one = inner.new_ones((*inner.shape[:-1], 1))
    dk = torch.cat([one, inner, one], dim=-1)

    inside = (x >= -bound) & (x <= bound)
    xc = x.clamp(-bound, bound)  # finite values (and gradients) everywhere; tails are masked below
    src = yk if inverse else xk
    idx = torch.searchsorted(src[..., 1:-1].contiguous(), xc[..., None].contiguous(), right=True)
    idx = idx.clamp(0, k - 1)

    def at(t: Tensor, j: Tensor) -> Tensor:
        return t.gather(-1, j).squeeze(-1)

    x0, x1, y0, y1 = at(xk, idx), at(xk, idx + 1), at(yk, idx), at(yk, idx + 1)
    d0, d1 = at(dk, idx), at(dk, idx + 1)
    w, h = x1 - x0, y1 - y0
    s = h / w
    if inverse:
        dy = xc - y0
        a = h * (s - d0) + dy * (d0 + d1 - 2 * s)
        b = h * d0 - dy * (d0 + d1 - 2 * s)
        c = -s * dy
        sq = (b * b - 4 * a * c).clamp_min(0).sqrt()
        # the root in [0, 1] is 2c / (-b - sq) = (-b + sq) / 2a; take the form without cancellation
        # (the first one alone loses most digits in float32 when b < 0, in strongly curved bins)
        pos = b >= 0
        xi = torch.where(
            pos, 2 * c / torch.where(pos, -b - sq, -1.0), (-b + sq) / torch.where(pos, 1.0, 2 * a)
        ).clamp(0, 1)
    else:
        xi = ((xc - x0) / w).clamp(0, 1)
    om = xi * (1 - xi)
    den = s + (d0 + d1 - 2 * s) * om
    log_deriv = (
        2 * torch.log(s) + torch.log(d1 * xi**2 + 2 * s * om + d0 * (1 - xi) ** 2) - 2 * torch.log(den)
    )
    if inverse:
        out, ladj = x0 + xi * w, -log_deriv
    else:
        out, ladj = y0 + h * (s * xi**2 + d0 * om) / den, log_deriv
    return torch.where(inside, out, x), torch.where(inside, ladj, torch.zeros_like(ladj))


# --------------------------------------------------------------------------------------------------
# Coupling and autoregressive layers (one engine: an elementwise map whose parameters come from MADE)
# --------------------------------------------------------------------------------------------------


class _Conditioned(nn.Module):
    """``z_i = f(x_i; theta_i)`` with ``theta = MADE(x, cond)``; dimensions outside ``active`` pass through.

    The inverse makes one MADE pass per distinct degree among the active dimensions (``D`` for a
    fully autoregressive layer, 1 for a coupling layer).
    """

    def __init__(
        self,
        dim: int,
        degrees: Tensor,
        active: Tensor,
        params: int,
        hidden: Sequence[int],
        context: int,
        num_classes: int | None,
        who: str,
    ) -> None:
        super().__init__()
        if int(dim) != dim or dim < 1:
            raise ValueError(f"{who}: dim must be a positive integer, got {dim!r}")
        self.dim, self._who = dim, who
        self.net = MADE(
            dim, params, _check_hidden(hidden, who), order=degrees, context=context, num_classes=num_classes
        )
        self.register_buffer("active", active.bool())
        self.passes = int(torch.unique(self.net.degrees[active.bool()]).numel())

    def _map(self, x: Tensor, p: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(x, self.dim, self._who)
        p = self.net(x, cond.get("context"), cond.get("y"))
        z, ladj = self._map(x, p, False)
        z = torch.where(self.active, z, x)
        return z, torch.where(self.active, ladj, torch.zeros_like(ladj)).sum(1)

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(z, self.dim, self._who)
        x, ladj = z, z.new_zeros(z.shape)
        for _ in range(self.passes):
            p = self.net(x, cond.get("context"), cond.get("y"))
            x, ladj = self._map(z, p, True)
            x = torch.where(self.active, x, z)
        return x, torch.where(self.active, ladj, torch.zeros_like(ladj)).sum(1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, passes={self.passes}"


def _coupling_mask(dim: int, mask: Tensor | str | None, who: str) -> Tensor:
    """Boolean ``(dim,)``: ``True`` = transformed, ``False`` = passed through and conditioned on."""
    if dim < 2:
        raise ValueError(f"{who} needs dim >= 2 (one half conditions the other), got dim={dim}")
    if mask is None or (isinstance(mask, str) and mask == "alternate"):
        return torch.arange(dim) % 2 == 1
    if isinstance(mask, str):
        raise ValueError(
            f"{who}: mask must be None, 'alternate' or a bool tensor of shape ({dim},), got {mask!r}"
        )
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool or mask.shape != (dim,):
        raise ValueError(
            f"{who}: mask must be a bool tensor of shape ({dim},) (True = transformed), got "
            f"{mask.dtype} {tuple(mask.shape)}"
        )
    if mask.all() or not mask.any():
        raise ValueError(f"{who}: mask must have both True (transformed) and False (conditioning) entries")
    return mask


def _spline_args(bins: int, bound: float, who: str) -> None:
    if int(bins) != bins or bins < 1:
        raise ValueError(f"{who}: bins must be an integer >= 1 (8 is a good default), got {bins!r}")
    if not bound > 0:
        raise ValueError(
            f"{who}: bound must be > 0 (the spline acts on [-bound, bound], identity outside), got {bound!r}"
        )


@final
class AffineCoupling(_Conditioned):
    r"""Affine coupling layer (RealNVP; Dinh, Sohl-Dickstein & Bengio, 2017).

    Dimensions with ``mask = False`` pass through and condition the others:
    :math:`z_{m} = x_{m} \odot e^{s(x_{\bar m})} + t(x_{\bar m})`, :math:`z_{\bar m} = x_{\bar m}`,
    :math:`\log|\det| = \sum_m s_m`. The log-scale is soft-clipped into ``(-log_scale_bound,
    log_scale_bound)`` (default ``log 1e3``, i.e. scales in ``(1e-3, 1e3)``) by :func:`soft_clip`.
    The conditioner is a :class:`MADE` with a two-level order (a plain MLP on the conditioning half);
    its zero-initialised output layer makes the layer start as the identity. The inverse is one pass.

    Args:
        dim: ``D >= 2``.
        hidden: conditioner hidden sizes.
        mask: ``None`` or ``"alternate"`` (odd dimensions transformed), or a bool ``(D,)`` tensor
            (``True`` = transformed); use ``~mask`` in the next layer.
        context: size of the ``context`` vector (0: none).
        num_classes: class-conditional on ``y`` when given.
        log_scale_bound: bound of the soft-clipped log-scale.

    Shapes:
        ``x: (B, D) -> (z: (B, D), ladj: (B,))``.

    Example:
        >>> layer = AffineCoupling(4, hidden=(16,))
        >>> z, ladj = layer(torch.randn(3, 4))
        >>> z.shape, ladj.shape
        (torch.Size([3, 4]), torch.Size([3]))
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        mask: Tensor | str | None = None,
        *,
        context: int = 0,
        num_classes: int | None = None,
        log_scale_bound: float = LOG_SCALE_BOUND,
    ) -> None:
        m = _coupling_mask(dim, mask, "AffineCoupling")
        super().__init__(dim, m.long(), m, 2, hidden, context, num_classes, "AffineCoupling")
        self.log_scale_bound = float(log_scale_bound)

    def _map(self, x: Tensor, p: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        return _affine(x, p, inverse, self.log_scale_bound)


@final
class MaskedAutoregressive(_Conditioned):
    r"""Masked autoregressive affine layer (MAF; Papamakarios, Pavlakou & Murray, 2017).

    :math:`z_i = x_i e^{s_i(x_{<i})} + t_i(x_{<i})` in the order ``order`` (``x_{<i}``: the dimensions
    ``j`` with ``order[j] < order[i]``), so the Jacobian is triangular in that order and
    :math:`\log|\det| = \sum_i s_i`. Density evaluation (``forward``) is one :class:`MADE` pass;
    sampling (``inverse``) takes ``D`` sequential passes. The log-scale is soft-clipped as in
    :class:`AffineCoupling`; the layer starts as the identity.

    Args:
        dim: ``D``.
        hidden: MADE hidden sizes.
        order: a permutation of ``0..D-1`` (``order[i]`` = position of dimension ``i``); default
            ascending.
        context: size of the ``context`` vector (0: none).
        num_classes: class-conditional on ``y`` when given.
        log_scale_bound: bound of the soft-clipped log-scale.

    Shapes:
        ``x: (B, D) -> (z: (B, D), ladj: (B,))``.

    Example:
        >>> layer = MaskedAutoregressive(3, hidden=(16,), order=[2, 0, 1])
        >>> x = torch.randn(5, 3)
        >>> torch.allclose(layer.inverse(layer(x)[0])[0], x)
        True
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        order: Tensor | Sequence[int] | None = None,
        *,
        context: int = 0,
        num_classes: int | None = None,
        log_scale_bound: float = LOG_SCALE_BOUND,
    ) -> None:
        order = _as_order(order, dim, "MaskedAutoregressive")
        super().__init__(
            dim,
            order,
            torch.ones(dim, dtype=torch.bool),
            2,
            hidden,
            context,
            num_classes,
            "MaskedAutoregressive",
        )
        self.log_scale_bound = float(log_scale_bound)

    def _map(self, x: Tensor, p: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        return _affine(x, p, inverse, self.log_scale_bound)


class _SplineMap:
    """Mixin: per-dimension parameters ``(3K - 1)`` -> :func:`rq_spline`."""

    bins: int
    bound: float

    def _map(self, x: Tensor, p: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        k = self.bins
        return rq_spline(x, p[..., :k], p[..., k : 2 * k], p[..., 2 * k :], self.bound, inverse)


@final
class SplineCoupling(_SplineMap, _Conditioned):
    r"""Rational-quadratic spline coupling layer (Durkan, Bekasov, Murray & Papamakarios, 2019).

    Like :class:`AffineCoupling` with the affine map replaced by :func:`rq_spline` (``bins`` bins on
    ``[-bound, bound]``, identity tails). Starts as the identity; one-pass inverse.

    Args:
        dim: ``D >= 2``.
        hidden: conditioner hidden sizes.
        mask: ``None``/``"alternate"`` or a bool ``(D,)`` tensor (``True`` = transformed).
        bins: number of spline bins ``K >= 1``.
        bound: spline interval half-width ``> 0``; standardise the data so most of it lies inside.
        context: size of the ``context`` vector (0: none).
        num_classes: class-conditional on ``y`` when given.

    Shapes:
        ``x: (B, D) -> (z: (B, D), ladj: (B,))``.

    Example:
        >>> layer = SplineCoupling(2, hidden=(16,), bins=4, bound=3.0)
        >>> z, ladj = layer(torch.randn(6, 2))
        >>> z.shape, ladj.shape
        (torch.Size([6, 2]), torch.Size([6]))
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        mask: Tensor | str | None = None,
        *,
        bins: int = 8,
        bound: float = 5.0,
        context: int = 0,
        num_classes: int | None = None,
    ) -> None:
        _spline_args(bins, bound, "SplineCoupling")
        m = _coupling_mask(dim, mask, "SplineCoupling")
        super().__init__(dim, m.long(), m, 3 * bins - 1, hidden, context, num_classes, "SplineCoupling")
        self.bins, self.bound = int(bins), float(bound)


@final
class SplineAutoregressive(_SplineMap, _Conditioned):
    r"""Autoregressive rational-quadratic spline layer: the NSF layer (Durkan et al., 2019).

    :math:`z_i = \mathrm{RQS}(x_i; \theta_i(x_{<i}))` with :func:`rq_spline` and a :class:`MADE`
    conditioner in the order ``order``; one pass for the density, ``D`` passes to sample. Starts as
    the identity.

    Args:
        dim: ``D``.
        hidden: MADE hidden sizes.
        order: a permutation of ``0..D-1``; default ascending.
        bins: number of spline bins ``K >= 1``.
        bound: spline interval half-width ``> 0``.
        context: size of the ``context`` vector (0: none).
        num_classes: class-conditional on ``y`` when given.

    Shapes:
        ``x: (B, D) -> (z: (B, D), ladj: (B,))``.

    Example:
        >>> layer = SplineAutoregressive(3, hidden=(16,), bins=4, context=2)
        >>> z, ladj = layer(torch.randn(5, 3), context=torch.randn(5, 2))
        >>> ladj.shape
        torch.Size([5])
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        order: Tensor | Sequence[int] | None = None,
        *,
        bins: int = 8,
        bound: float = 5.0,
        context: int = 0,
        num_classes: int | None = None,
    ) -> None:
        _spline_args(bins, bound, "SplineAutoregressive")
        order = _as_order(order, dim, "SplineAutoregressive")
        super().__init__(
            dim,
            order,
            torch.ones(dim, dtype=torch.bool),
            3 * bins - 1,
            hidden,
            context,
            num_classes,
            "SplineAutoregressive",
        )
        self.bins, self.bound = int(bins), float(bound)


# --------------------------------------------------------------------------------------------------
# Permutations and linear layers
# --------------------------------------------------------------------------------------------------


@final
class Permutation(nn.Module):
    """Fixed permutation of the dimensions: ``z = x[:, perm]``, ``ladj = 0``.

    The permutation is a buffer, so it is saved and loaded with the ``state_dict``.

    Args:
        perm: a permutation of ``0..D-1``.

    Example:
        >>> p = Permutation([2, 0, 1])
        >>> p(torch.tensor([[10.0, 11.0, 12.0]]))[0]
        tensor([[12., 10., 11.]])
    """

    def __init__(self, perm: Tensor | Sequence[int]) -> None:
        super().__init__()
        perm = torch.as_tensor(perm).long().flatten()
        d = perm.numel()
        if d < 1 or not torch.equal(perm.sort().values, torch.arange(d)):
            raise ValueError(f"Permutation needs a permutation of 0..D-1, got {perm.tolist()}")
        self.register_buffer("perm", perm)
        self.register_buffer("inv", torch.argsort(perm))

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(x, self.perm.numel(), "Permutation")
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(z, self.perm.numel(), "Permutation")
        return z[:, self.inv], z.new_zeros(z.shape[0])


@final
class Reverse(nn.Module):
    """Reverse the order of the dimensions: ``z = x.flip(1)``, ``ladj = 0``; works for any ``D``.

    Example:
        >>> Reverse()(torch.tensor([[1.0, 2.0, 3.0]]))[0]
        tensor([[3., 2., 1.]])
    """

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(x, None, "Reverse")
        return x.flip(1), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward(z)


def RandomPermutation(
    dim: int, *, seed: int | None = None, generator: torch.Generator | None = None
) -> Permutation:
    """A :class:`Permutation` drawn uniformly at random from ``seed`` or ``generator``.

    With neither, torch's default generator is used. The permutation is stored as a buffer, so a
    loaded ``state_dict`` restores it whatever the seed of the fresh instance.

    Example:
        >>> RandomPermutation(4, seed=0).perm.tolist() == RandomPermutation(4, seed=0).perm.tolist()
        True
    """
    if int(dim) != dim or dim < 1:
        raise ValueError(f"RandomPermutation: dim must be a positive integer, got {dim!r}")
    if seed is not None and generator is not None:
        raise ValueError("RandomPermutation takes seed= or generator=, not both")
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    return Permutation(torch.randperm(dim, generator=generator))


@final
class ActNorm(nn.Module):
    r"""Activation normalisation (Glow; Kingma & Dhariwal, 2018): :math:`z = (x - \mu) e^{-\log\sigma}`.

    ``ladj = -sum(log_scale)``. On the first ``forward`` in training mode with at least two rows, the
    parameters are set from the batch so that ``z`` has zero mean and unit variance per dimension
    (data-dependent initialisation). Whether this happened is the persistent buffer ``initialized``,
    so a loaded ``state_dict`` is never re-initialised. Until then the layer is the identity.

    Args:
        dim: ``D``.
        eps: added to the batch std at initialisation.

    Example:
        >>> layer = ActNorm(2)
        >>> z, _ = layer(torch.randn(100, 2) * 3 + 1)
        >>> bool(z.mean(0).abs().max() < 1e-5), bool((z.std(0, correction=0) - 1).abs().max() < 1e-4)
        (True, True)
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        if int(dim) != dim or dim < 1:
            raise ValueError(f"ActNorm: dim must be a positive integer, got {dim!r}")
        self.dim, self.eps = dim, eps
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(x, self.dim, "ActNorm")
        if self.training and not bool(self.initialized) and x.shape[0] >= 2:
            with torch.no_grad():
                xd = x.detach()
                self.loc.copy_(xd.mean(0))
                self.log_scale.copy_(torch.log(xd.std(0, correction=0) + self.eps))
                self.initialized.fill_(True)
        z = (x - self.loc) * torch.exp(-self.log_scale)
        return z, (-self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(z, self.dim, "ActNorm")
        return z * torch.exp(self.log_scale) + self.loc, self.log_scale.sum().expand(z.shape[0])


@final
class LULinear(nn.Module):
    r"""Invertible linear layer in LU form (Glow; Kingma & Dhariwal, 2018): :math:`z = W x + b`.

    :math:`W = L\,(U + \mathrm{diag}(e^{s}))` with ``L`` unit lower-triangular and ``U`` strictly upper
    triangular, so :math:`\log|\det W| = \sum s` and the inverse is two triangular solves. Starts as
    the identity. Combine with a :class:`Permutation` for the full ``P L U`` form.

    Args:
        dim: ``D``.

    Example:
        >>> layer = LULinear(3)
        >>> x = torch.randn(4, 3)
        >>> torch.equal(layer(x)[0], x)
        True
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if int(dim) != dim or dim < 1:
            raise ValueError(f"LULinear: dim must be a positive integer, got {dim!r}")
        self.dim = dim
        self.lower = nn.Parameter(torch.zeros(dim, dim))
        self.upper = nn.Parameter(torch.zeros(dim, dim))
        self.log_diag = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.dim, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower.tril(-1) + eye
        upper = self.upper.triu(1) + torch.diag(torch.exp(self.log_diag))
        return lower, upper

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(x, self.dim, "LULinear")
        lower, upper = self._factors()
        z = x @ (lower @ upper).T + self.bias
        return z, self.log_diag.sum().expand(x.shape[0])

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(z, self.dim, "LULinear")
        lower, upper = self._factors()
        r = (z - self.bias).T  # (D, B)
        r = torch.linalg.solve_triangular(lower, r, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper, r, upper=True).T
        return x, (-self.log_diag.sum()).expand(z.shape[0])


# --------------------------------------------------------------------------------------------------
# Named flows (recipes of the parts above)
# --------------------------------------------------------------------------------------------------


def _check_transforms(transforms: int, who: str) -> None:
    if int(transforms) != transforms or transforms < 1:
        raise ValueError(f"{who}: transforms must be an integer >= 1, got {transforms!r}")


def NSF(
    dim: int,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    bins: int = 8,
    bound: float = 5.0,
    coupling: bool = False,
    *,
    context: int = 0,
    num_classes: int | None = None,
) -> Flow:
    r"""Neural spline flow (Durkan, Bekasov, Murray & Papamakarios, 2019) with a standard normal base.

    ``transforms`` rational-quadratic spline layers (:class:`SplineAutoregressive`, or
    :class:`SplineCoupling` when ``coupling=True``); successive layers alternate the ascending and
    descending order (coupling: alternate which half is transformed), as zuko does. Standardise the
    data: the splines act on ``[-bound, bound]`` and are the identity outside.

    Args:
        dim: ``D`` (``>= 2`` for ``coupling=True``).
        transforms: number of spline layers.
        hidden: MADE / conditioner hidden sizes.
        bins: spline bins per dimension.
        bound: spline interval half-width.
        coupling: coupling layers (one-pass sampling) instead of autoregressive ones.
        context: size of a ``context`` vector every layer is conditioned on (0: none).
        num_classes: class-conditional on ``y`` when given.

    Returns:
        A :class:`~flowforge.normalizing.flow.Flow` over events of shape ``(D,)``.

    Example:
        >>> flow = NSF(2, transforms=2, hidden=(8,), num_classes=3)
        >>> y = torch.tensor([0, 2])
        >>> flow.sample(2, cond={"y": y}, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 2])
    """
    _check_transforms(transforms, "NSF")
    _spline_args(bins, bound, "NSF")
    layers: list[nn.Module] = []
    for i in range(transforms):
        if coupling:
            mask = torch.arange(dim) % 2 == (i + 1) % 2
            layers.append(
                SplineCoupling(
                    dim, hidden, mask, bins=bins, bound=bound, context=context, num_classes=num_classes
                )
            )
        else:
            order = torch.arange(dim) if i % 2 == 0 else torch.arange(dim).flip(0)
            layers.append(
                SplineAutoregressive(
                    dim, hidden, order, bins=bins, bound=bound, context=context, num_classes=num_classes
                )
            )
    return Flow(layers, event_shape=(dim,))


def MAF(
    dim: int,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    *,
    context: int = 0,
    num_classes: int | None = None,
) -> Flow:
    r"""Masked autoregressive flow (Papamakarios, Pavlakou & Murray, 2017) with a standard normal base.

    ``transforms`` :class:`MaskedAutoregressive` layers alternating ascending and descending orders.

    Args:
        dim: ``D``.
        transforms: number of layers.
        hidden: MADE hidden sizes.
        context: size of a ``context`` vector (0: none).
        num_classes: class-conditional on ``y`` when given.

    Example:
        >>> flow = MAF(3, transforms=2, hidden=(8,))
        >>> flow.log_prob(torch.zeros(1, 3))  # starts as the identity: log N(0; 0, I)
        tensor([-2.7568], grad_fn=<AddBackward0>)
    """
    _check_transforms(transforms, "MAF")
    layers = [
        MaskedAutoregressive(
            dim,
            hidden,
            torch.arange(dim) if i % 2 == 0 else torch.arange(dim).flip(0),
            context=context,
            num_classes=num_classes,
        )
        for i in range(transforms)
    ]
    return Flow(layers, event_shape=(dim,))


def RealNVP(
    dim: int,
    transforms: int = 4,
    hidden: Sequence[int] = (64, 64),
    *,
    context: int = 0,
    num_classes: int | None = None,
) -> Flow:
    r"""Real NVP (Dinh, Sohl-Dickstein & Bengio, 2017) with a standard normal base.

    ``transforms`` :class:`AffineCoupling` layers alternating which half (odd / even dimensions) is
    transformed.

    Args:
        dim: ``D >= 2``.
        transforms: number of coupling layers (use an even number so every dimension is transformed
            equally often).
        hidden: conditioner hidden sizes.
        context: size of a ``context`` vector (0: none).
        num_classes: class-conditional on ``y`` when given.

    Example:
        >>> flow = RealNVP(2, transforms=2, hidden=(8,))
        >>> flow.sample(3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 2])
    """
    _check_transforms(transforms, "RealNVP")
    layers = [
        AffineCoupling(
            dim, hidden, torch.arange(dim) % 2 == (i + 1) % 2, context=context, num_classes=num_classes
        )
        for i in range(transforms)
    ]
    return Flow(layers, event_shape=(dim,))
