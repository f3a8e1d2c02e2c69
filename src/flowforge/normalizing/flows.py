r"""Named flows: NSF, MAF, RealNVP, NAF and UNAF as :class:`~flowforge.normalizing.flow.Flow` subclasses.

Each is a recipe of parts (DESIGN.md): it chooses layers and defaults and adds no maths of its own. The
constructor arguments are kept as attributes; the parameters live where a plain
``Flow([layer_0, layer_1, ...], event_shape=(dim,))`` keeps them (``transform.bijections.{i}.…``), so
``state_dict`` s of the former factory functions load unchanged.

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

from collections.abc import Sequence
from typing import final

import torch
from torch import nn

from flowforge.normalizing.autoregressive import MaskedAutoregressive, SplineAutoregressive
from flowforge.normalizing.coupling import AffineCoupling, SplineCoupling
from flowforge.normalizing.flow import Flow
from flowforge.normalizing.neural_autoregressive import NeuralAutoregressive, UnconstrainedAutoregressive
from flowforge.normalizing.splines import _spline_args

__all__ = ["MAF", "NAF", "NSF", "UNAF", "RealNVP"]


def _check_transforms(transforms: int, who: str) -> None:
    if int(transforms) != transforms or transforms < 1:
        raise ValueError(f"{who}: transforms must be an integer >= 1, got {transforms!r}")


def _alternate_mask(dim: int, i: int) -> torch.Tensor:
    """Coupling mask of layer ``i``: odd dimensions transformed in even layers, even ones in odd layers."""
    return torch.arange(dim) % 2 == (i + 1) % 2


def _alternate_order(dim: int, i: int) -> torch.Tensor:
    """Autoregressive order of layer ``i``: ascending in even layers, descending in odd ones."""
    return torch.arange(dim) if i % 2 == 0 else torch.arange(dim).flip(0)


@final
class NSF(Flow):
    r"""Neural spline flow (Durkan, Bekasov, Murray & Papamakarios, "Neural Spline Flows", NeurIPS 2019).

    ``transforms`` rational-quadratic spline layers (:class:`~flowforge.normalizing.autoregressive.SplineAutoregressive`,
    or :class:`~flowforge.normalizing.coupling.SplineCoupling` when ``coupling=True``) and a standard
    normal base; successive layers alternate the ascending and descending order (coupling: alternate which
    half is transformed), as zuko does. Standardise the data: the splines act on ``[-bound, bound]`` and
    are the identity outside.

    Args:
        dim: ``D`` (``>= 2`` for ``coupling=True``).
        transforms: number of spline layers.
        hidden: MADE / conditioner hidden sizes.
        bins: spline bins per dimension.
        bound: spline interval half-width.
        coupling: coupling layers (one-pass sampling) instead of autoregressive ones.
        context: size of a ``context`` vector every layer is conditioned on (0: none).
        num_classes: class-conditional on ``y`` when given.

    Attributes:
        dim, transforms, hidden, bins, bound, coupling, context, num_classes: the constructor arguments.

    Shapes:
        events ``(D,)``: ``log_prob: (B, D) -> (B,)``, ``sample(n) -> (n, D)``.

    Example:
        >>> flow = NSF(2, transforms=2, hidden=(8,), num_classes=3)
        >>> y = torch.tensor([0, 2])
        >>> flow.sample(2, cond={"y": y}, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 2])
        >>> isinstance(flow, Flow), flow.bins, flow.coupling
        (True, 8, False)
    """

    def __init__(
        self,
        dim: int,
        transforms: int = 5,
        hidden: Sequence[int] = (64, 64),
        bins: int = 8,
        bound: float = 5.0,
        coupling: bool = False,
        *,
        context: int = 0,
        num_classes: int | None = None,
    ) -> None:
        _check_transforms(transforms, "NSF")
        _spline_args(bins, bound, "NSF")
        layers: list[nn.Module] = []
        for i in range(transforms):
            if coupling:
                mask = _alternate_mask(dim, i)
                layers.append(
                    SplineCoupling(
                        dim, hidden, mask, bins=bins, bound=bound, context=context, num_classes=num_classes
                    )
                )
            else:
                order = _alternate_order(dim, i)
                layers.append(
                    SplineAutoregressive(
                        dim, hidden, order, bins=bins, bound=bound, context=context, num_classes=num_classes
                    )
                )
        super().__init__(layers, event_shape=(dim,))
        self.dim, self.transforms, self.hidden = int(dim), int(transforms), tuple(int(h) for h in hidden)
        self.bins, self.bound, self.coupling = int(bins), float(bound), bool(coupling)
        self.context, self.num_classes = int(context), num_classes

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, transforms={self.transforms}, hidden={self.hidden}, bins={self.bins}, "
            f"bound={self.bound}, coupling={self.coupling}, context={self.context}, "
            f"num_classes={self.num_classes}"
        )


@final
class MAF(Flow):
    r"""Masked autoregressive flow (Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017).

    ``transforms`` :class:`~flowforge.normalizing.autoregressive.MaskedAutoregressive` layers alternating
    ascending and descending orders, and a standard normal base.

    Args:
        dim: ``D``.
        transforms: number of layers.
        hidden: MADE hidden sizes.
        context: size of a ``context`` vector (0: none).
        num_classes: class-conditional on ``y`` when given.

    Attributes:
        dim, transforms, hidden, context, num_classes: the constructor arguments.

    Shapes:
        events ``(D,)``: ``log_prob: (B, D) -> (B,)``, ``sample(n) -> (n, D)``.

    Example:
        >>> flow = MAF(3, transforms=2, hidden=(8,))
        >>> flow.log_prob(torch.zeros(1, 3))  # starts as the identity: log N(0; 0, I)
        tensor([-2.7568], grad_fn=<AddBackward0>)
    """

    def __init__(
        self,
        dim: int,
        transforms: int = 5,
        hidden: Sequence[int] = (64, 64),
        *,
        context: int = 0,
        num_classes: int | None = None,
    ) -> None:
        _check_transforms(transforms, "MAF")
        layers = [
            MaskedAutoregressive(
                dim, hidden, _alternate_order(dim, i), context=context, num_classes=num_classes
            )
            for i in range(transforms)
        ]
        super().__init__(layers, event_shape=(dim,))
        self.dim, self.transforms, self.hidden = int(dim), int(transforms), tuple(int(h) for h in hidden)
        self.context, self.num_classes = int(context), num_classes

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, transforms={self.transforms}, hidden={self.hidden}, context={self.context}, "
            f"num_classes={self.num_classes}"
        )


@final
class RealNVP(Flow):
    r"""Real NVP (Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017).

    ``transforms`` :class:`~flowforge.normalizing.coupling.AffineCoupling` layers alternating which half
    (odd / even dimensions) is transformed, and a standard normal base.

    Args:
        dim: ``D >= 2``.
        transforms: number of coupling layers (use an even number so every dimension is transformed
            equally often).
        hidden: conditioner hidden sizes.
        context: size of a ``context`` vector (0: none).
        num_classes: class-conditional on ``y`` when given.

    Attributes:
        dim, transforms, hidden, context, num_classes: the constructor arguments.

    Shapes:
        events ``(D,)``: ``log_prob: (B, D) -> (B,)``, ``sample(n) -> (n, D)``.

    Example:
        >>> flow = RealNVP(2, transforms=2, hidden=(8,))
        >>> flow.sample(3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        dim: int,
        transforms: int = 4,
        hidden: Sequence[int] = (64, 64),
        *,
        context: int = 0,
        num_classes: int | None = None,
    ) -> None:
        _check_transforms(transforms, "RealNVP")
        layers = [
            AffineCoupling(dim, hidden, _alternate_mask(dim, i), context=context, num_classes=num_classes)
            for i in range(transforms)
        ]
        super().__init__(layers, event_shape=(dim,))
        self.dim, self.transforms, self.hidden = int(dim), int(transforms), tuple(int(h) for h in hidden)
        self.context, self.num_classes = int(context), num_classes

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, transforms={self.transforms}, hidden={self.hidden}, context={self.context}, "
            f"num_classes={self.num_classes}"
        )


@final
class NAF(Flow):
    r"""Neural autoregressive flow (Huang, Krueger, Lacoste & Courville, "Neural Autoregressive Flows", ICML 2018).

    ``transforms`` :class:`~flowforge.normalizing.neural_autoregressive.NeuralAutoregressive` layers (the
    deep sigmoidal flow transformer with ``components`` sigmoids) alternating ascending and descending
    orders (a reversal between layers), and a standard normal base. Sampling inverts every layer by
    bisection, ``D`` MADE passes a layer.

    Args:
        dim: ``D``.
        transforms: number of layers.
        hidden: MADE hidden sizes.
        components: sigmoids per transformer.
        context: size of a ``context`` vector (0: none).
        num_classes: class-conditional on ``y`` when given.

    Attributes:
        dim, transforms, hidden, components, context, num_classes: the constructor arguments.

    Shapes:
        events ``(D,)``: ``log_prob: (B, D) -> (B,)``, ``sample(n) -> (n, D)``.

    Example:
        >>> flow = NAF(2, transforms=2, hidden=(8,), components=4)
        >>> flow.log_prob(torch.zeros(1, 2))  # starts as the identity: log N(0; 0, I)
        tensor([-1.8379], grad_fn=<AddBackward0>)
    """

    def __init__(
        self,
        dim: int,
        transforms: int = 3,
        hidden: Sequence[int] = (64, 64),
        components: int = 16,
        *,
        context: int = 0,
        num_classes: int | None = None,
    ) -> None:
        _check_transforms(transforms, "NAF")
        layers = [
            NeuralAutoregressive(
                dim,
                hidden,
                _alternate_order(dim, i),
                components=components,
                context=context,
                num_classes=num_classes,
            )
            for i in range(transforms)
        ]
        super().__init__(layers, event_shape=(dim,))
        self.dim, self.transforms, self.hidden = int(dim), int(transforms), tuple(int(h) for h in hidden)
        self.components, self.context, self.num_classes = int(components), int(context), num_classes

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, transforms={self.transforms}, hidden={self.hidden}, "
            f"components={self.components}, context={self.context}, num_classes={self.num_classes}"
        )


@final
class UNAF(Flow):
    r"""Unconstrained monotonic neural network flow (Wehenkel & Louppe, "Unconstrained Monotonic Neural Networks", NeurIPS 2019).

    ``transforms`` :class:`~flowforge.normalizing.neural_autoregressive.UnconstrainedAutoregressive`
    layers (the transformer is the Clenshaw-Curtis integral of a positive network) alternating ascending
    and descending orders (a reversal between layers), and a standard normal base. Sampling inverts
    every layer by bisection, ``D`` MADE passes a layer.

    Args:
        dim: ``D``.
        transforms: number of layers.
        hidden: MADE hidden sizes.
        embedding: size of the per-dimension embedding fed to the integrand.
        integrand: hidden sizes of the integrand MLP.
        nodes: Clenshaw-Curtis quadrature nodes.
        context: size of a ``context`` vector (0: none).
        num_classes: class-conditional on ``y`` when given.

    Attributes:
        dim, transforms, hidden, embedding, integrand, nodes, context, num_classes: the constructor
        arguments.

    Shapes:
        events ``(D,)``: ``log_prob: (B, D) -> (B,)``, ``sample(n) -> (n, D)``.

    Example:
        >>> flow = UNAF(2, transforms=2, hidden=(8,), integrand=(8,), nodes=9)
        >>> flow.log_prob(torch.zeros(1, 2))  # starts as the identity: log N(0; 0, I)
        tensor([-1.8379], grad_fn=<AddBackward0>)
    """

    def __init__(
        self,
        dim: int,
        transforms: int = 3,
        hidden: Sequence[int] = (64, 64),
        embedding: int = 8,
        integrand: Sequence[int] = (32, 32),
        nodes: int = 33,
        *,
        context: int = 0,
        num_classes: int | None = None,
    ) -> None:
        _check_transforms(transforms, "UNAF")
        layers = [
            UnconstrainedAutoregressive(
                dim,
                hidden,
                _alternate_order(dim, i),
                embedding=embedding,
                integrand=integrand,
                nodes=nodes,
                context=context,
                num_classes=num_classes,
            )
            for i in range(transforms)
        ]
        super().__init__(layers, event_shape=(dim,))
        self.dim, self.transforms, self.hidden = int(dim), int(transforms), tuple(int(h) for h in hidden)
        self.embedding, self.integrand, self.nodes = (
            int(embedding),
            tuple(int(h) for h in integrand),
            int(nodes),
        )
        self.context, self.num_classes = int(context), num_classes

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, transforms={self.transforms}, hidden={self.hidden}, "
            f"embedding={self.embedding}, integrand={self.integrand}, nodes={self.nodes}, "
            f"context={self.context}, num_classes={self.num_classes}"
        )
