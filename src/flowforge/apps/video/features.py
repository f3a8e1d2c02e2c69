r"""Frechet distances of videos: per frame and per pair of consecutive frames, in fixed random-conv features.

There is no pretrained video network for 8x8 sprites, so the features come from a fixed, seeded random
convolutional network (random features are a standard cheap FD proxy: they are sensitive to blur, noise
and misplaced blobs, not tuned to any model):

``conv3x3(C -> 32) -> ReLU -> conv3x3 stride 2 (32 -> 64) -> ReLU -> average pool to 2 x 2``, 256 features,
He-normal weights from ``torch.Generator().manual_seed(seed)``, zero biases.

:func:`frame_fd` fits Gaussians to the features of all frames of two sets of videos ``(B, F, C, H, W)`` and
returns their Frechet distance (:func:`flowforge.metrics.frechet_distance`); :func:`pair_fd` does the same on
consecutive frame pairs stacked as ``2C`` channels, so wrong motion (teleporting or frozen sprites) shows
even when every single frame looks right.

Example:
    >>> from flowforge.apps.video.sprites import moving_sprites
    >>> a, b = moving_sprites(64, frames=4, seed=0), moving_sprites(64, frames=4, seed=1)
    >>> frame_fd(a, a) < 1e-6, frame_fd(a, b) < frame_fd(a, torch.zeros_like(b))
    (True, True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from flowforge.metrics.frechet import frechet_distance

__all__ = ["RandomConvFeatures", "frame_fd", "pair_fd"]


class RandomConvFeatures:
    """A fixed random two-layer conv network ``(B, C, H, W) -> (B, 256)`` (float64, seeded).

    Example:
        >>> RandomConvFeatures(1)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 256])
    """

    def __init__(self, channels: int, seed: int = 0, hidden: int = 32, out: int = 64) -> None:
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        g = torch.Generator().manual_seed(int(seed))
        self.w1 = (
            torch.randn(hidden, channels, 3, 3, generator=g, dtype=torch.float64)
            * (2 / (9 * channels)) ** 0.5
        )
        self.w2 = torch.randn(out, hidden, 3, 3, generator=g, dtype=torch.float64) * (2 / (9 * hidden)) ** 0.5
        self.channels = channels

    def __call__(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected frames (B, {self.channels}, H, W), got {tuple(x.shape)}")
        h = F.relu(F.conv2d(x.detach().to(torch.float64), self.w1, padding=1))
        h = F.relu(F.conv2d(h, self.w2, stride=2, padding=1))
        return F.adaptive_avg_pool2d(h, 2).flatten(1)


def _videos(x: Tensor, name: str) -> Tensor:
    if x.dim() != 5:
        raise ValueError(f"{name} must be videos (B, F, C, H, W), got shape {tuple(x.shape)}")
    return x


def frame_fd(a: Tensor, b: Tensor, seed: int = 0) -> float:
    """Frechet distance between the random-conv features of all frames of videos ``a`` and ``b``."""
    a, b = _videos(a, "a"), _videos(b, "b")
    feat = RandomConvFeatures(a.shape[2], seed)
    return frechet_distance(feat(a.flatten(0, 1)), feat(b.flatten(0, 1)))


def pair_fd(a: Tensor, b: Tensor, seed: int = 0) -> float:
    """Frechet distance between the features of consecutive frame pairs ``(x_f, x_{f+1})`` (``2C`` channels)."""
    a, b = _videos(a, "a"), _videos(b, "b")
    if a.shape[1] < 2:
        raise ValueError("pair_fd needs videos of at least 2 frames")
    feat = RandomConvFeatures(2 * a.shape[2], seed)

    def pairs(v: Tensor) -> Tensor:
        return torch.cat([v[:, :-1], v[:, 1:]], 2).flatten(0, 1)

    return frechet_distance(feat(pairs(a)), feat(pairs(b)))
