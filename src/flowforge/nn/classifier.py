"""A small convolutional image classifier whose penultimate layer is the feature space of image metrics.

``flowforge.metrics.image_features`` ships trained weights for MNIST (1x28x28) and sklearn's digits
(1x8x8) and computes the Frechet distance, precision/recall and class accuracy of generated images in
this network's features: the same recipe as FID (Heusel et al., 2017), with a classifier that fits the
data instead of InceptionV3 on ImageNet.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SmallCNN"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class SmallCNN(nn.Module):
    """Three conv stages (``width``, ``2 width``, ``4 width`` channels, each halving the side), then
    ``Linear -> ReLU`` to ``feature_dim`` features and a linear head to ``num_classes`` logits.

    Inputs are float images ``x: (B, C, H, W)`` with ``H = W = image_size`` in ``[-1, 1]``: integer
    pixels ``q`` in ``0..levels-1`` map to ``2 q / (levels - 1) - 1``.

    Args:
        in_channels: image channels ``C``.
        image_size: side ``H = W`` (at least 8: three 2x2 poolings).
        num_classes: number of classes of the logits.
        width: channels of the first stage.
        feature_dim: size of the penultimate layer returned by :meth:`features`.

    Example:
        >>> net = SmallCNN(image_size=8, width=4, feature_dim=16)
        >>> x = torch.rand(2, 1, 8, 8) * 2 - 1
        >>> net.features(x).shape, net(x).shape
        (torch.Size([2, 16]), torch.Size([2, 10]))
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        width: int = 32,
        feature_dim: int = 128,
    ) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(
                f"SmallCNN needs image_size >= 8 (three 2x2 poolings), got {image_size}; "
                "upsample the images or pick another network"
            )
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
            if v < 1:
                raise ValueError(f"SmallCNN needs {name} >= 1, got {v}")
        if feature_dim < 1:
            raise ValueError(f"SmallCNN needs feature_dim >= 1, got {feature_dim}")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.width, self.feature_dim = width, feature_dim
        side = image_size // 8
        self.body = nn.Sequential(
            _block(in_channels, width), _block(width, 2 * width), _block(2 * width, 4 * width)
        )
        self.proj = nn.Linear(4 * width * side * side, feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    def config(self) -> dict[str, int]:
        """The constructor's keyword arguments (what a JSON config stores)."""
        return {
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "width": self.width,
            "feature_dim": self.feature_dim,
        }

    def _check(self, x: Tensor) -> None:
        want = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"SmallCNN expects images (B, {want[0]}, {want[1]}, {want[2]}), got {tuple(x.shape)}; "
                "add a channel axis with x.unsqueeze(1) or build the network with matching sizes"
            )

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features ``(B, feature_dim)`` (after the ReLU) of images ``x: (B, C, H, W)``."""
        self._check(x)
        return torch.relu(self.proj(self.body(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)`` of images ``x: (B, C, H, W)`` in ``[-1, 1]``."""
        return self.head(self.dropout(self.features(x)))
