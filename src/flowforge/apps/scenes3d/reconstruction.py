r"""A feed-forward "reconstruction" model: two views -> a grid of Gaussians, the frozen latent encoder.

It stands in for a pretrained feed-forward 3-D reconstruction model (LGM, GS-LRM) reused as a latent
encoder, as in "Taming feed-forward reconstruction models as latent encoders for 3D generation":
the encoder maps the two views of :func:`~flowforge.apps.scenes3d.render_views` to a latent grid
``(8, G, G, G)`` over :math:`[-1, 1]^3` (``G = 4``: 64 cells); each cell's 8 channels are one Gaussian
(opacity logit :math:`o`, offset logits :math:`\delta \in \mathbb R^3`, log-scale :math:`s`, colour
logits :math:`\kappa \in \mathbb R^3`), decoded as

.. math::

    \mu = \text{centre} + \tfrac{h}{2}\tanh\delta,\quad
    \sigma = \sigma_{\min} + \operatorname{softplus}(s),\quad
    c = \operatorname{sigmoid}(\kappa),\quad w = w_{\max}\operatorname{sigmoid}(o)

(``h`` = cell side) and rendered with the same renderer: ``decode`` is the renderer, so the
"decoder-space" of the latent flow is the rendered views. Encoder: a small CNN per view to a ``G x G``
feature map, back-projection into the 3-D grid (the front view's features at ``(x, y)`` plus the side
view's at ``(z, y)``), two 3-D convolutions. It is trained once on the views' reconstruction error
(:meth:`loss`) and then frozen; channels of empty cells (low opacity) are unconstrained by that loss,
which is what per-channel standardisation and opacity-weighted losses have to cope with.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.apps.scenes3d.render import render_views
from flowforge.core.batch import split_batch

__all__ = ["GaussianGridReconstructor"]

LATENT_CHANNELS = 8


class GaussianGridReconstructor(nn.Module):
    """Two views ``(B, 2, 3, H, H)`` -> latent grid ``(B, 8, G, G, G)`` of Gaussians -> rendered views.

    Args:
        image_size: view side ``H`` (a multiple of ``grid``).
        grid: cells per axis ``G``.
        width: CNN / 3-D convolution channels.
        sigma_min: smallest decoded Gaussian standard deviation.
        w_max: largest decoded peak column density.

    Example:
        >>> from flowforge.apps.scenes3d import render_views, sample_scenes
        >>> rec = GaussianGridReconstructor(image_size=8, width=8)
        >>> views = render_views(sample_scenes(2, generator=torch.Generator().manual_seed(0)), size=8)
        >>> z, logvar = rec.encode(views)
        >>> z.shape, rec.decode(z).shape, rec.occupancy(z).shape
        (torch.Size([2, 8, 4, 4, 4]), torch.Size([2, 2, 3, 8, 8]), torch.Size([2, 4, 4, 4]))
    """

    latent_channels = LATENT_CHANNELS

    def __init__(
        self,
        image_size: int = 16,
        grid: int = 4,
        width: int = 32,
        *,
        sigma_min: float = 0.04,
        w_max: float = 3.0,
    ) -> None:
        super().__init__()
        if grid < 1 or image_size % grid:
            raise ValueError(f"image_size ({image_size}) must be a multiple of grid ({grid}), grid >= 1")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.image_size, self.grid, self.width = image_size, grid, width
        self.sigma_min, self.w_max = float(sigma_min), float(w_max)
        pool = image_size // grid
        self.view_net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(pool) if pool > 1 else nn.Identity(),
            nn.Conv2d(width, width, 3, padding=1),
        )
        self.view_embed = nn.Parameter(torch.zeros(2, width, 1, 1))
        self.cell_net = nn.Sequential(
            nn.SiLU(),
            nn.Conv3d(width + 3, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv3d(width, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv3d(width, LATENT_CHANNELS, 1),
        )
        # start from faint, small Gaussians (opacity 0.02, sigma ~ sigma_min + 0.06): 64 cells at opacity 0.5
        # and sigma 0.7 would saturate the tone map everywhere and leave no gradient to learn from
        last = self.cell_net[-1]
        with torch.no_grad():
            last.weight.mul_(0.1)
            last.bias.zero_()
            last.bias[0] = -4.0
            last.bias[4] = -2.8
        c = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2 - 1
        cx, cy, cz = torch.meshgrid(c, c, c, indexing="ij")
        self.register_buffer("centres", torch.stack([cx, cy, cz]), persistent=False)  # (3, G, G, G)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """``(8, G, G, G)``, axes ``(channel, x, y, z)``."""
        return (LATENT_CHANNELS, self.grid, self.grid, self.grid)

    def _check_views(self, views: Tensor) -> None:
        want = (2, 3, self.image_size, self.image_size)
        if views.dim() != 5 or tuple(views.shape[1:]) != want:
            raise ValueError(
                f"GaussianGridReconstructor expects views (B, {', '.join(map(str, want))}) from "
                f"render_views(..., size={self.image_size}), got {tuple(views.shape)}"
            )

    def encode(self, views: Tensor) -> tuple[Tensor, Tensor]:
        """Latent grid ``(B, 8, G, G, G)`` and a zero log-variance of the same shape (a deterministic encoder)."""
        self._check_views(views)
        b = views.shape[0]
        # per-view feature maps (B, 2, F, G, G), rows y; columns x (view 0) or z (view 1)
        f = self.view_net(views.flatten(0, 1)).unflatten(0, (b, 2)) + self.view_embed
        front = f[:, 0].transpose(-1, -2)  # (B, F, x, y)
        side = f[:, 1]  # (B, F, y, z)
        vol = front[..., None] + side[:, :, None]  # back-projection: (B, F, x, y, z)
        pos = self.centres.to(vol.dtype).expand(b, -1, -1, -1, -1)
        z = self.cell_net(torch.cat([vol, pos], 1))
        return z, torch.zeros_like(z)

    def occupancy(self, z: Tensor) -> Tensor:
        """Each cell's opacity :math:`\\operatorname{sigmoid}(o)` in ``(0, 1)``, ``(B, G, G, G)``."""
        return torch.sigmoid(z[:, 0])

    def to_scene(self, z: Tensor) -> Tensor:
        """The decoded Gaussians ``(B, G^3, 8)`` (rows as in ``SCENE_FIELDS``) of latents ``(B, 8, G, G, G)``."""
        if z.dim() != 5 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"latents must be (B, {', '.join(map(str, self.latent_shape))}), got {tuple(z.shape)}"
            )
        h = 2.0 / self.grid
        mu = self.centres.to(z.dtype) + 0.5 * h * torch.tanh(z[:, 1:4])
        sigma = self.sigma_min + F.softplus(z[:, 4:5])
        colour = torch.sigmoid(z[:, 5:8])
        w = self.w_max * torch.sigmoid(z[:, 0:1])
        return torch.cat([mu, sigma, colour, w], 1).flatten(2).transpose(1, 2)

    def decode(self, z: Tensor) -> Tensor:
        """Rendered views ``(B, 2, 3, H, H)`` in ``[-1, 1]`` of latents ``(B, 8, G, G, G)``."""
        return render_views(self.to_scene(z), self.image_size)

    def forward(self, views: Tensor) -> Tensor:
        """Reconstructed views ``decode(encode(views))``."""
        return self.decode(self.encode(views)[0])

    def loss(self, batch: Any) -> Tensor:
        """Mean squared reconstruction error of the views (a scalar); the batch is views or ``(views, ...)``."""
        views, _ = split_batch(batch)
        return (self(views) - views).square().mean()
