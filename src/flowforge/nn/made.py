"""MADE (Germain et al., 2015): a masked MLP whose outputs depend only on earlier inputs in a given order.

The conditioner of every autoregressive and coupling layer in :mod:`flowforge.normalizing`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MADE", "MaskedLinear", "check_hidden"]


def check_hidden(hidden: Sequence[int], who: str) -> tuple[int, ...]:
    """``hidden`` as a tuple of positive ints, or a ValueError naming ``who`` and an example."""
    hidden = tuple(int(h) for h in hidden)
    if len(hidden) == 0 or min(hidden) < 1:
        raise ValueError(
            f"{who}: hidden must be a non-empty sequence of positive sizes, e.g. (64, 64); got {hidden}"
        )
    return hidden


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 mask (a buffer) on every call.

    Args:
        mask: ``(out_features, in_features)``; entry ``[i, j]`` says whether output ``i`` sees input ``j``.
        bias: add a (never masked) bias.

    Example:
        >>> layer = MaskedLinear(torch.tensor([[1, 0], [1, 1]]))
        >>> x = torch.randn(3, 2)  # output 0 does not see input 1
        >>> torch.equal(layer(x)[:, 0], layer(x + torch.tensor([0.0, 5.0]))[:, 0])
        True
    """

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
        hidden = check_hidden(hidden, "MADE")
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
            layers.append(MaskedLinear(d[:, None] >= prev[None, :]))
            prev = d
        out_deg = deg.repeat_interleave(params)  # output i * params + p belongs to dimension i
        self.output = MaskedLinear(out_deg[:, None] > prev[None, :])
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
