r"""Coupling layers: half of the dimensions condition an elementwise map of the other half.

:class:`AffineCoupling` (RealNVP; Dinh, Sohl-Dickstein & Bengio, 2017) and :class:`SplineCoupling`
(Durkan, Bekasov, Murray & Papamakarios, 2019). Both run on one engine shared with
:mod:`flowforge.normalizing.autoregressive`: an elementwise map :math:`z_i = f(x_i; \theta_i)` whose
parameters come from a :class:`~flowforge.nn.made.MADE` (a coupling conditioner is a MADE with a two-level
order). The affine map soft-clips its log-scale with :func:`soft_clip`.

Every layer maps data to noise (DESIGN.md): ``forward(x, **cond) -> (z, ladj)`` with
``ladj = log|det dz/dx|`` of shape ``(B,)``, and ``inverse(z, **cond) -> (x, ladj)`` with
``ladj = log|det dx/dz|``. Points have shape ``(B, D)``. Conditioning arrives as keyword tensors:
``y`` (class labels, ``(B,)`` long) and ``context`` (``(B, C)`` features); layers built without
conditioning accept and ignore them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import final

import torch
from torch import Tensor, nn

from flowforge.nn.made import MADE, check_hidden
from flowforge.normalizing.flow import _check_points
from flowforge.normalizing.splines import _spline_args, _SplineMap

__all__ = ["LOG_SCALE_BOUND", "AffineCoupling", "SplineCoupling", "soft_clip"]

LOG_SCALE_BOUND = math.log(1e3)
"""Default bound ``c`` of the affine log-scale: ``s in (-c, c)``, i.e. the per-layer scale lies in
``(1e-3, 1e3)`` (zuko's ``slope=1e-3``)."""


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


def _affine(x: Tensor, p: Tensor, inverse: bool, bound: float) -> tuple[Tensor, Tensor]:
    """``z = x exp(s) + t`` with ``s = soft_clip(p[..., 1])``, ``t = p[..., 0]``; per-element ladj."""
    shift, s = p[..., 0], soft_clip(p[..., 1], bound)
    if inverse:
        return (x - shift) * torch.exp(-s), -s
    return x * torch.exp(s) + shift, s


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
            dim, params, check_hidden(hidden, who), order=degrees, context=context, num_classes=num_classes
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
