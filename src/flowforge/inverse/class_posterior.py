r"""Hierarchical posterior sampling over a class: :class:`ClassPosterior`, ``p_phi(y | measurement)``.

An inpainting posterior over images mixes classes,

.. math:: p(x_{\text{hole}} \mid x_{\text{kept}}) = \sum_y p(y \mid x_{\text{kept}})\,
          p(x_{\text{hole}} \mid x_{\text{kept}}, y),

so it can be sampled in two stages: draw a class from a classifier of the measurement, then fill with a
class- and context-conditional flow. The classifier here sees exactly what the flow's extra channels see
(the kept pixels and the mask, :func:`flowforge.core.masks.inpaint_extra`) and is trained by cross-entropy;
its temperature ``tau`` draws from ``p(y | kept)^(1/tau)`` (``tau = 1``: the posterior itself; ``tau < 1``
leans towards the likeliest class, as guidance does for the fill).

Example:
    >>> import torch
    >>> from flowforge.nn import SmallCNN
    >>> post = ClassPosterior(SmallCNN(in_channels=2, width=4, feature_dim=8), num_classes=10)
    >>> extra = torch.zeros(3, 2, 28, 28)
    >>> post.sample(extra, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([3])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["ClassPosterior"]


class ClassPosterior(nn.Module):
    """``p_phi(y | extra)``: a classifier of the measurement, trained by cross-entropy.

    Args:
        net: ``(B, E, H, W) -> (B, num_classes)`` logits.
        num_classes: number of classes.
    """

    def __init__(self, net: nn.Module, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.net, self.num_classes = net, int(num_classes)

    def forward(self, extra: Tensor) -> Tensor:
        """``(B, E, H, W)`` measurement channels -> ``(B, num_classes)`` logits."""
        if extra.dim() != 4:
            raise ValueError(
                f"extra must be (B, E, H, W) measurement channels (kept pixels and mask), got {tuple(extra.shape)}"
            )
        logits = self.net(extra)
        if logits.shape != (extra.shape[0], self.num_classes):
            raise ValueError(
                f"the net returned {tuple(logits.shape)}, expected (B, {self.num_classes}) logits"
            )
        return logits

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Cross-entropy of ``batch["y"]`` given ``batch["extra"]`` (``batch["x"]`` is not used)."""
        for key in ("extra", "y"):
            if key not in batch:
                raise ValueError(f"a ClassPosterior batch needs 'extra' and 'y'; missing {key!r}")
        return F.cross_entropy(self(batch["extra"]), batch["y"])

    def probs(self, extra: Tensor, temperature: float = 1.0) -> Tensor:
        """``(B, num_classes)``: ``softmax(logits / tau)``."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (1 = the posterior itself), got {temperature}")
        return (self(extra) / float(temperature)).softmax(-1)

    @torch.no_grad()
    def sample(
        self, extra: Tensor, *, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """``(B,)`` int64 classes drawn from ``p(y | extra)^(1/tau)`` (renormalised)."""
        p = self.probs(extra, temperature)
        return torch.multinomial(p.double().cpu(), 1, generator=generator).squeeze(1).to(extra.device)
