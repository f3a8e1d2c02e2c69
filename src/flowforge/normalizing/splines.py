"""Monotonic rational-quadratic splines (Durkan, Bekasov, Murray & Papamakarios, 2019, "Neural Spline Flows").

:func:`rq_spline` is the elementwise map of :class:`~flowforge.normalizing.coupling.SplineCoupling` and
:class:`~flowforge.normalizing.autoregressive.SplineAutoregressive` (and so of
:class:`~flowforge.normalizing.flows.NSF`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rq_spline"]


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
        >>> g = torch.Generator().manual_seed(0)
        >>> w, h, d = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(5, 7, generator=g)
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


def _spline_args(bins: int, bound: float, who: str) -> None:
    if int(bins) != bins or bins < 1:
        raise ValueError(f"{who}: bins must be an integer >= 1 (8 is a good default), got {bins!r}")
    if not bound > 0:
        raise ValueError(
            f"{who}: bound must be > 0 (the spline acts on [-bound, bound], identity outside), got {bound!r}"
        )


class _SplineMap:
    """Mixin: per-dimension parameters ``(3K - 1)`` -> :func:`rq_spline`."""

    bins: int
    bound: float

    def _map(self, x: Tensor, p: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        k = self.bins
        return rq_spline(x, p[..., :k], p[..., k : 2 * k], p[..., 2 * k :], self.bound, inverse)
