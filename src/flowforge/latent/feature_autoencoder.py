r"""FAE: a feature autoencoder with one attention layer, latent -> features -> pixels.

"One Layer Is Enough: Adapting Pretrained Visual Encoders for Image Generation" (FAE, Apple 2025) turns
frozen pretrained patch features :math:`f = F(x) \in \mathbb R^{N \times D}` (DINO / SigLIP there)
into a low-dimensional generative latent with an encoder of as little as ONE self-attention layer, and
splits decoding in two: a feature decoder :math:`G` reconstructs the features from the latent, and a
pixel decoder :math:`P` maps (reconstructed) features to pixels. Here, with
:math:`\bar f = \mathrm{LN}(f)` (a LayerNorm without parameters over the feature axis),

.. math::

    (\mu, \log\sigma^2) = W\,\mathrm{vec}\big(h\big),\quad
    h = \bar f + E + \mathrm{Attn}(\mathrm{LN}(\bar f + E)),\qquad z = \mu + \sigma\,\epsilon,

    \mathcal L = \underbrace{\tfrac{1}{ND}\lVert G(z) - \bar f\rVert^2}_{\text{feature reconstruction}}
      + \lambda_{\text{pix}} \underbrace{\tfrac{1}{CHW}\lVert P(\mathrm{sg}[G(z)]) - x\rVert_1}_{\text{pixels
      from reconstructed features}}
      + \beta\,\tfrac{1}{ND}\mathrm{KL}(q(z|x)\,\|\,\mathcal N(0, I)),

with :math:`E` learned token positions, :math:`W` one linear map to the ``latent_dim``-d latent and
:math:`\mathrm{sg}` a stop-gradient: the latent is shaped by the features alone, and the pixel decoder
learns on the reconstructed features it will see at sampling time. Latents are shaped
``(latent_dim, 1, 1)`` so that :class:`~flowforge.latent.LatentModel` (per-channel standardisation,
latent flow matching) uses them like a :class:`~flowforge.latent.KLAutoencoder`'s.

The feature network is frozen (no gradients, eval mode even under ``train()``) and kept in the
``state_dict`` under ``features.``; it needs ``tokens(x) -> (B, N, D)`` (e.g.
:class:`~flowforge.nn.PatchFeatureNet`) or is called as ``features(x) -> (B, N, D)``. This toy makes
no claim about DINO or SigLIP features.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.core.batch import split_batch
from flowforge.latent.autoencoder import gaussian_kl

__all__ = ["FeatureAutoencoder"]

_LOGVAR_RANGE = (-30.0, 20.0)


class _OneLayerEncoder(nn.Module):
    """Positions, ONE pre-LN self-attention layer with a residual, and a linear map to (mean, logvar)."""

    def __init__(self, num_tokens: int, dim: int, heads: int, latent_dim: int) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, num_tokens, dim))
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.proj = nn.Linear(num_tokens * dim, 2 * latent_dim)

    def forward(self, f: Tensor) -> Tensor:
        h = f + self.pos
        q = self.norm(h)
        h = h + self.attn(q, q, q, need_weights=False)[0]
        return self.proj(h.flatten(1))


class FeatureAutoencoder(nn.Module):
    """Frozen patch features -> one-attention-layer encoder -> latent -> features -> pixels.

    Args:
        features: the frozen pretrained network (``tokens(x) -> (B, N, D)``, or callable so).
        num_tokens: ``N``; must be a square (the pixel decoder lays the tokens out on a grid).
        feature_dim: ``D``.
        latent_dim: size of the latent (shaped ``(latent_dim, 1, 1)``).
        image_shape: ``(C, H, W)`` of the images.
        heads: attention heads (of the encoder and of the feature decoder's block).
        width: channels of the pixel decoder.
        kl_weight: :math:`\\beta`.
        pixel_weight: :math:`\\lambda_{\\text{pix}}`.

    Example:
        >>> from flowforge.nn import PatchFeatureNet
        >>> fae = FeatureAutoencoder(PatchFeatureNet(image_size=8, dim=32), num_tokens=16, feature_dim=32)
        >>> x = torch.rand(2, 1, 8, 8) * 2 - 1
        >>> mean, logvar = fae.encode(x)
        >>> mean.shape, fae.decode_features(mean).shape, fae.decode(mean).shape
        (torch.Size([2, 6, 1, 1]), torch.Size([2, 16, 32]), torch.Size([2, 1, 8, 8]))
        >>> sum(isinstance(m, torch.nn.MultiheadAttention) for m in fae.encoder.modules())
        1
    """

    def __init__(
        self,
        features: nn.Module,
        *,
        num_tokens: int,
        feature_dim: int,
        latent_dim: int = 6,
        image_shape: tuple[int, int, int] = (1, 8, 8),
        heads: int = 4,
        width: int = 64,
        kl_weight: float = 1e-4,
        pixel_weight: float = 1.0,
    ) -> None:
        super().__init__()
        side = math.isqrt(num_tokens)
        if num_tokens < 1 or side * side != num_tokens:
            raise ValueError(f"num_tokens must be a square (tokens on a grid), got {num_tokens}")
        if feature_dim < 1 or latent_dim < 1 or width < 1:
            raise ValueError(
                f"feature_dim, latent_dim, width must be >= 1; got {feature_dim}, {latent_dim}, {width}"
            )
        if feature_dim % heads:
            raise ValueError(f"feature_dim ({feature_dim}) must be divisible by heads ({heads})")
        c, h, w = (int(v) for v in image_shape)
        if h != w or h % side:
            raise ValueError(
                f"image_shape {tuple(image_shape)} must be square with a side divisible by {side}"
            )
        if kl_weight < 0 or pixel_weight < 0:
            raise ValueError(f"kl_weight and pixel_weight must be >= 0, got {kl_weight}, {pixel_weight}")
        self.features = features
        self.features.requires_grad_(False)
        self.features.eval()
        self.num_tokens, self.feature_dim, self.latent_channels = num_tokens, feature_dim, latent_dim
        self.image_shape, self.side = (c, h, w), side
        self.kl_weight, self.pixel_weight = float(kl_weight), float(pixel_weight)
        self.encoder = _OneLayerEncoder(num_tokens, feature_dim, heads, latent_dim)
        self.feat_in = nn.Linear(latent_dim, num_tokens * feature_dim)
        self.feat_pos = nn.Parameter(torch.zeros(1, num_tokens, feature_dim))
        self.feat_block = nn.TransformerEncoderLayer(
            feature_dim, heads, 2 * feature_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.feat_out = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, feature_dim))
        self.pixel_decoder = nn.Sequential(
            nn.Conv2d(feature_dim, width, 3, padding=1),
            nn.SiLU(),
            nn.Upsample(scale_factor=h // side, mode="nearest") if h > side else nn.Identity(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, c, 3, padding=1),
        )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(latent_dim, 1, 1)``."""
        return (self.latent_channels, 1, 1)

    def train(self, mode: bool = True) -> FeatureAutoencoder:
        """Set the trainable parts' mode; the frozen feature network stays in eval mode."""
        super().train(mode)
        self.features.eval()
        return self

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"FeatureAutoencoder expects images (B, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}"
            )

    @torch.no_grad()
    def target_features(self, x: Tensor) -> Tensor:
        """The frozen, LayerNorm-ed patch features :math:`\\bar f`, ``(B, N, D)``."""
        self._check(x)
        fn = getattr(self.features, "tokens", self.features)
        f = fn(x)
        if f.dim() != 3 or tuple(f.shape[1:]) != (self.num_tokens, self.feature_dim):
            raise ValueError(
                f"the feature network gave {tuple(f.shape)}, expected (B, {self.num_tokens}, {self.feature_dim}); "
                "build the FeatureAutoencoder with its num_tokens and feature_dim"
            )
        return F.layer_norm(f, (self.feature_dim,))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior ``(mean, logvar)``, each ``(B, latent_dim, 1, 1)``, of images ``x: (B, C, H, W)``."""
        out = self.encoder(self.target_features(x))
        mean, logvar = out.chunk(2, dim=1)
        return mean[..., None, None], logvar.clamp(*_LOGVAR_RANGE)[..., None, None]

    def decode_features(self, z: Tensor) -> Tensor:
        """Reconstructed features :math:`G(z)`, ``(B, N, D)``, of latents ``z: (B, latent_dim, 1, 1)``."""
        if z.dim() != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents must be (B, {self.latent_channels}, 1, 1), got {tuple(z.shape)}")
        h = self.feat_in(z.flatten(1)).view(-1, self.num_tokens, self.feature_dim) + self.feat_pos
        return self.feat_out(self.feat_block(h))

    def decode_pixels(self, f: Tensor) -> Tensor:
        """The pixel decoder's unclamped images :math:`P(f)`, ``(B, C, H, W)``, of features ``(B, N, D)``."""
        grid = f.transpose(1, 2).reshape(-1, self.feature_dim, self.side, self.side)
        return self.pixel_decoder(grid)

    def decode(self, z: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` in ``[-1, 1]`` (clamped) of latents ``(B, latent_dim, 1, 1)``."""
        return self.decode_pixels(self.decode_features(z)).clamp(-1.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        """Deterministic reconstruction ``decode(mean)``."""
        return self.decode(self.encode(x)[0])

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """The three terms ``{"feature", "pixel", "kl"}`` (scalars, per element) on images ``x``."""
        f = self.target_features(x)
        out = self.encoder(f)
        mean, logvar = out.chunk(2, dim=1)
        logvar = logvar.clamp(*_LOGVAR_RANGE)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        f_hat = self.decode_features(z[..., None, None])
        x_hat = self.decode_pixels(f_hat.detach())
        return {
            "feature": (f_hat - f).square().mean(),
            "pixel": (x_hat - x).abs().mean(),
            "kl": gaussian_kl(mean, logvar).mean() / f[0].numel(),
        }

    def loss(self, batch: Any) -> Tensor:
        """Feature reconstruction + ``pixel_weight`` x pixel L1 + ``kl_weight`` x KL (a scalar).

        The batch is ``x``, ``(x, y)`` or ``{"x": x, ...}``; labels are ignored; ``eps`` comes from torch's
        global generator.
        """
        x, _ = split_batch(batch)
        t = self.losses(x)
        return t["feature"] + self.pixel_weight * t["pixel"] + self.kl_weight * t["kl"]
