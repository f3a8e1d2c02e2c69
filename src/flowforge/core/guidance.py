r"""Classifier-free guidance (Ho & Salimans, 2022) for any network called ``net(x, t, **cond)``.

Training drops the condition with probability ``p`` (replacing it by a null label); sampling mixes
the conditional and unconditional outputs, :math:`u_w = u_\varnothing + w\,(u_c - u_\varnothing)`,
so ``w = 1`` is plain conditional sampling and ``w = 0`` unconditional. (Meta's flow_matching
example writes :math:`(1+w')u_c - w'u_\varnothing`, i.e. :math:`w = 1 + w'`.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["drop_labels", "ClassifierFreeGuidance"]


def drop_labels(y: Tensor, p: float, null_label: int, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by ``null_label`` with probability ``p``; ``y: (B,)`` integer classes."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label dropout must be in [0, 1], got {p}")
    if p == 0.0:
        return y
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p
    return torch.where(drop, torch.full_like(y, null_label), y)


class ClassifierFreeGuidance(nn.Module):
    """Wrap a conditional network so that it returns the guided output in one batched call.

    Args:
        net: the conditional network, ``net(x, t, **{key: y})``.
        scale: guidance weight ``w`` (1 = no guidance).
        null_label: the label the network was trained with for "no condition".
        key: the keyword under which the label is passed.

    Example:
        >>> import torch
        >>> from flowforge.nn import MLP
        >>> net = MLP(2, 16, 1, num_classes=3)
        >>> guided = ClassifierFreeGuidance(net, scale=2.0, null_label=3)
        >>> guided(torch.randn(4, 2), torch.rand(4), y=torch.tensor([0, 1, 2, 0])).shape
        torch.Size([4, 2])
    """

    def __init__(self, net: nn.Module, scale: float, null_label: int, key: str = "y") -> None:
        super().__init__()
        self.net, self.scale, self.null_label, self.key = net, float(scale), int(null_label), key

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        """``x: (B, *event)``, ``t: (B,)``, ``cond[key]: (B,)`` -> guided output ``(B, *event)``."""
        if self.key not in cond:
            raise ValueError(f"classifier-free guidance needs the condition {self.key}=... (B,) labels")
        y = cond.pop(self.key)
        if self.scale == 1.0:
            return self.net(x, t, **{self.key: y}, **cond)
        both = torch.cat([y, torch.full_like(y, self.null_label)])
        extras = {k: torch.cat([v, v]) for k, v in cond.items()}
        out = self.net(torch.cat([x, x]), torch.cat([t, t]), **{self.key: both}, **extras)
        c, u = out.chunk(2)
        return u + self.scale * (c - u)
