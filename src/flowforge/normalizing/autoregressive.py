r"""Autoregressive layers: :math:`z_i = f(x_i; \theta_i(x_{<i}))` with a :class:`~flowforge.nn.made.MADE` conditioner.

:class:`MaskedAutoregressive` (MAF; Papamakarios, Pavlakou & Murray, 2017) with the soft-clipped affine
map, :class:`SplineAutoregressive` (NSF; Durkan, Bekasov, Murray & Papamakarios, 2019) with
:func:`~flowforge.normalizing.splines.rq_spline`. Density evaluation (``forward``) is one MADE pass,
sampling (``inverse``) ``D`` passes. Conventions as in :mod:`flowforge.normalizing.coupling`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

import torch
from torch import Tensor

from flowforge.normalizing.coupling import LOG_SCALE_BOUND, _affine, _Conditioned
from flowforge.normalizing.splines import _spline_args, _SplineMap

__all__ = ["MaskedAutoregressive", "SplineAutoregressive"]


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
