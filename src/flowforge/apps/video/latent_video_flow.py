r"""A frame-causal TARFlow in the latent space of a per-frame autoencoder (STARFlow-V's latent layout).

STARFlow-V (Gu et al. 2025) runs its causal flow on the latents of a pretrained, frozen video
autoencoder, not on pixels. :class:`LatentVideoFlow` does the same on toy videos: every frame
:math:`x_f` of a video ``(B, F, C, H, W)`` is encoded by one :class:`~flowforge.latent.KLAutoencoder`
(shared by all frames, so it never mixes frames and causality is untouched) to its posterior mean,
standardised per channel, :math:`u_f = (E(x_f) - m) / s` (the statistics :math:`m, s` of the training
latents, as :func:`~flowforge.latent.latent_stats` and LDM do), and a
:class:`~flowforge.normalizing.VideoTARFlow` models :math:`p(u_1, \dots, u_F) = \prod_f p(u_f \mid u_{<f})`.
Sampling draws latents (sequential or Jacobi across frames), denoises them in latent space (Tweedie with
the flow's score, or the learned flow-score denoiser) and decodes every frame: :math:`x_f = D(m + s\,u_f)`.

Training has two phases in one model, so one ``flowforge train`` run does both (as
:class:`~flowforge.apps.audio.LatentFlowSeparator`): the first ``ae_steps`` calls of :meth:`loss` train the
autoencoder on all frames of the batch (its own KL-VAE loss); the next call fixes :math:`m, s` from that
batch's latents, and from then on the autoencoder is frozen (encoded under ``no_grad``) and only the flow
trains. Its log-likelihood is that of the standardised latents (nats a latent dimension), not comparable
with a pixel flow's.

Example:
    >>> m = LatentVideoFlow(3, 8, latent_channels=2, ae_channels=(8,), ae_steps=1, patch=2, blocks=1,
    ...                     width=16, layers=1, deep_layers=1, head_dim=8, noise_std=0.1, denoiser_width=8)
    >>> x = torch.rand(2, 3, 1, 8, 8) * 2 - 1
    >>> m.encode(x).shape, m.decode(m.encode(x)).shape
    (torch.Size([2, 3, 2, 4, 4]), torch.Size([2, 3, 1, 8, 8]))
    >>> _ = m.loss(x), m.loss(x)  # one autoencoder step, then the flow
    >>> m.sample(2, generator=torch.Generator().manual_seed(0), method="jacobi").shape
    torch.Size([2, 3, 1, 8, 8])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.batch import split_batch
from flowforge.latent import KLAutoencoder
from flowforge.normalizing import VideoTARFlow

__all__ = ["LatentVideoFlow"]


class LatentVideoFlow(nn.Module):
    r"""A :class:`~flowforge.normalizing.VideoTARFlow` on per-frame autoencoder latents (see the module).

    Args:
        frames: frames a video ``F``.
        size: frame height and width ``H = W`` (frames are ``(channels, size, size)`` in ``[-1, 1]``).
        channels: frame channels ``C``.
        latent_channels: channels of the ``(latent_channels, size/2, size/2)`` latent of a frame.
        ae_channels: the autoencoder's convolution widths.
        ae_res_blocks: its residual blocks per level.
        kl_weight: its KL weight :math:`\beta`.
        ae_steps: training steps of the autoencoder phase (then the flow phase).
        **flow_kwargs: :class:`~flowforge.normalizing.VideoTARFlow`'s options (``patch``, ``blocks``,
            ``width``, ``noise_std``, ``denoiser_width``, ...), for the latent frames.
    """

    def __init__(
        self,
        frames: int,
        size: int,
        *,
        channels: int = 1,
        latent_channels: int = 2,
        ae_channels: Sequence[int] = (16, 32),
        ae_res_blocks: int = 0,
        kl_weight: float = 1e-4,
        ae_steps: int = 500,
        **flow_kwargs: Any,
    ) -> None:
        super().__init__()
        if ae_steps < 0:
            raise ValueError(f"ae_steps must be >= 0 (autoencoder training steps), got {ae_steps}")
        self.frames, self.ae_steps = int(frames), int(ae_steps)
        self.ae = KLAutoencoder(
            channels,
            size,
            latent_channels,
            tuple(ae_channels),
            downsample=2,
            res_blocks=ae_res_blocks,
            kl_weight=kl_weight,
        )
        self.frame_shape = (channels, size, size)
        self.flow = VideoTARFlow(frames, self.ae.latent_shape, **flow_kwargs)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.ones(latent_channels))

    def _check(self, x: Tensor) -> None:
        if x.dim() != 5 or tuple(x.shape[1:]) != (self.frames, *self.frame_shape):
            raise ValueError(
                f"LatentVideoFlow expects videos (B, {self.frames}, {', '.join(map(str, self.frame_shape))}), "
                f"got {tuple(x.shape)}; build it with frames=... and size=... matching the data"
            )

    def _scale(self) -> tuple[Tensor, Tensor]:
        return self.latent_mean[:, None, None], self.latent_std[:, None, None]

    def encode(self, x: Tensor) -> Tensor:
        """Standardised latents ``(B, F, C_z, H/2, W/2)`` (posterior means) of videos ``(B, F, C, H, W)``."""
        self._check(x)
        mean, std = self._scale()
        z = self.ae.encode(x.flatten(0, 1))[0]
        return ((z - mean) / std).unflatten(0, x.shape[:2])

    def decode(self, u: Tensor) -> Tensor:
        """Videos ``(B, F, C, H, W)`` in ``[-1, 1]`` from standardised latents ``(B, F, C_z, H/2, W/2)``."""
        mean, std = self._scale()
        return self.ae.decode(u.flatten(0, 1) * std + mean).unflatten(0, u.shape[:2])

    def loss(self, batch: Any) -> Tensor:
        """The autoencoder's loss for the first ``ae_steps`` calls (in training), then the latent flow's."""
        x, _ = split_batch(batch)
        self._check(x)
        step = int(self.steps_done)
        if self.training:
            self.steps_done += 1
        if step < self.ae_steps:
            return self.ae.loss(x.flatten(0, 1))
        with torch.no_grad():
            if step == self.ae_steps and self.training:  # fix the latent statistics once
                z = self.ae.encode(x.flatten(0, 1))[0]
                self.latent_mean.copy_(z.mean((0, 2, 3)))
                self.latent_std.copy_(z.std((0, 2, 3)).clamp_min(1e-4))
            u = self.encode(x)
        return self.flow.loss(u)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        method: str = "sequential",
        denoise: str | None = None,
        **options: Any,
    ) -> Tensor:
        """``n`` decoded videos ``(n, F, C, H, W)``: latents from the flow, denoised in latent space, decoded.

        ``method``, ``denoise`` and the other options are :meth:`VideoTARFlow.sample`'s.
        """
        u = self.flow.sample(n, generator=generator, method=method, denoise=denoise, **options)
        return self.decode(u)
