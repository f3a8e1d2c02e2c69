"""A small convolutional classifier that exposes patch tokens: a toy "pretrained feature encoder".

:class:`PatchFeatureNet` stands in for a self-supervised vision backbone (DINO, SigLIP) when a
feature autoencoder (:class:`flowforge.latent.FeatureAutoencoder`) needs frozen patch features on
small images: two 3x3 convolutions at full resolution, a stride-``patch`` convolution to a
``(H/patch) x (W/patch)`` grid of ``dim``-d tokens, one more 3x3 convolution, and a classification head
(LayerNorm, mean over tokens, linear) used only to train it.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["PatchFeatureNet"]


class PatchFeatureNet(nn.Module):
    """Images ``(B, C, H, W)`` -> patch tokens ``(B, (H/p)(W/p), dim)`` -> class logits.

    Args:
        in_channels: image channels ``C``.
        image_size: side ``H = W`` (a multiple of ``patch``).
        patch: token stride ``p``.
        dim: token width.
        num_classes: classes of the training head.

    Example:
        >>> import torch
        >>> net = PatchFeatureNet(image_size=8, patch=2, dim=32)
        >>> x = torch.rand(3, 1, 8, 8) * 2 - 1
        >>> net.tokens(x).shape, net(x).shape
        (torch.Size([3, 16, 32]), torch.Size([3, 10]))
    """

    def __init__(
        self, in_channels: int = 1, image_size: int = 8, patch: int = 2, dim: int = 32, num_classes: int = 10
    ) -> None:
        super().__init__()
        if patch < 1 or image_size % patch:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch ({patch} >= 1)")
        if min(in_channels, dim, num_classes) < 1:
            raise ValueError(
                f"in_channels, dim, num_classes must be >= 1, got {in_channels}, {dim}, {num_classes}"
            )
        self.in_channels, self.image_size, self.patch, self.dim = in_channels, image_size, patch, dim
        self.num_tokens = (image_size // patch) ** 2
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, dim, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(dim, dim, patch, stride=patch),
            nn.SiLU(),
            nn.Conv2d(dim, dim, 3, padding=1),
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def tokens(self, x: Tensor) -> Tensor:
        """Patch tokens ``(B, N, dim)`` (row-major over the token grid) of images ``x: (B, C, H, W)``."""
        want = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"PatchFeatureNet expects images (B, {', '.join(map(str, want))}), got {tuple(x.shape)}"
            )
        return self.body(x).flatten(2).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)``."""
        return self.head(self.norm(self.tokens(x)).mean(1))
