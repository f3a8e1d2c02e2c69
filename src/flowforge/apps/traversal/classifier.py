r"""The classifier that recognises which traversal produced an image pair.

Given the images before and after one traversal step, :math:`(G(z_t), G(z_{t+1}))`, it predicts the
traversal index :math:`k` (Voynov & Babenko, "Unsupervised Discovery of Interpretable Directions in the GAN
Latent Space", ICML 2020, the "reconstructor"; Song et al., arXiv:2304.12944, §3). The traversals and the
classifier are trained together with the cross-entropy :math:`\mathrm{CE}(\text{logits}, k)`, which makes
the traversals distinguishable from one another.

Example:
    >>> import torch
    >>> from flowforge.apps.traversal import PairClassifier
    >>> clf = PairClassifier((1, 16, 16), num_traversals=4, width=32)
    >>> clf(torch.zeros(3, 1, 16, 16), torch.ones(3, 1, 16, 16)).shape
    torch.Size([3, 4])
"""

from __future__ import annotations

from math import prod

import torch
from torch import Tensor, nn

__all__ = ["PairClassifier"]


class PairClassifier(nn.Module):
    """An MLP on ``[x, x' - x]`` (flattened) -> ``num_traversals`` logits.

    Args:
        image_shape: the decoder's image shape ``(C, H, W)`` (or any event shape).
        num_traversals: :math:`K`.
        width: hidden width.
        depth: number of hidden layers.
    """

    def __init__(
        self, image_shape: tuple[int, ...], num_traversals: int, width: int = 128, depth: int = 2
    ) -> None:
        super().__init__()
        if num_traversals < 2 or width < 1 or depth < 1:
            raise ValueError(
                f"PairClassifier needs num_traversals >= 2, width >= 1, depth >= 1; got "
                f"{num_traversals}, {width}, {depth}"
            )
        self.image_shape = tuple(image_shape)
        n = prod(self.image_shape)
        layers: list[nn.Module] = [nn.Linear(2 * n, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        layers.append(nn.Linear(width, num_traversals))
        self.net = nn.Sequential(*layers)

    def forward(self, before: Tensor, after: Tensor) -> Tensor:
        """``(B, *image), (B, *image) -> (B, K)`` logits."""
        if before.shape != after.shape or tuple(before.shape[1:]) != self.image_shape:
            raise ValueError(
                f"PairClassifier expects two image batches of shape (B, {', '.join(map(str, self.image_shape))}); "
                f"got {tuple(before.shape)} and {tuple(after.shape)}"
            )
        a, b = before.flatten(1), after.flatten(1)
        return self.net(torch.cat([a, b - a], dim=1))
