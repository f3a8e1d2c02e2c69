r"""Conditional flow-matching super-resolution (and temporal interpolation) of stored turbulence fields.

The decoder is built from flowforge's parts: :class:`~flowforge.continuous.FlowMatching` (linear path,
noise at ``t = 0``, data at ``t = 1``) with a :class:`~flowforge.nn.UNet` whose ``extra`` input channels
carry the condition, as in the image-inpainting recipe. The flow generates the **residual** over a fixed
decoder, :math:`r = (x - \bar u)/s_r` with :math:`\bar u` the spectral upsampling of the stored field(s)
and :math:`s_r` the residual's training standard deviation:

.. math:: x = \bar u + s_r\, r,\qquad r = \Phi_1(z),\ z \sim N(0, I),\qquad
          \dot\Phi_t = v_\theta(\Phi_t, t; \text{extra} = \mathrm{up}(y)).

To keep the network cheap on a CPU the residual and the condition are rearranged by a pixel unshuffle
(``patch x patch`` cells become channels), so the UNet works on ``(patch^2, n/patch, n/patch)``; its
convolutions are made periodic (circular padding).

``frames=1``: super-resolution, the condition is the stored version of the target itself. ``frames=3``:
temporal interpolation, a batch ``(B, 3, n, n)`` holds fields at :math:`t_0, t_1, t_2`; the stored
(downsampled) end frames condition the middle frame and :math:`\bar u` is their average (linear in time).

Example:
    >>> import torch
    >>> sr = FlowSuperResolver(factor=4, n=32, channels=8, mults=(1,))
    >>> float(sr.loss(torch.randn(4, 1, 32, 32)).detach()) > 0
    True
    >>> sr.decode(torch.randn(2, 1, 8, 8), steps=2, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([2, 1, 32, 32])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.apps.turbulence.compression import downsample, spectral_upsample
from flowforge.continuous import FlowMatching
from flowforge.nn import UNet

__all__ = ["FlowSuperResolver", "make_periodic"]


def make_periodic(net: nn.Module) -> nn.Module:
    """Switch every padded ``Conv2d`` of ``net`` to circular padding (fields on a torus); returns ``net``."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and any(p > 0 for p in m.padding):  # type: ignore[operator]
            m.padding_mode = "circular"
            m._reversed_padding_repeated_twice = [p for p in reversed(m.padding) for _ in range(2)]  # type: ignore[arg-type]
    return net


class FlowSuperResolver(nn.Module):
    """Flow matching of the residual over spectral upsampling, conditioned on the stored field(s).

    Args:
        factor: downsampling factor of the stored fields.
        n: full grid size (fields ``(B, frames, n, n)``).
        frames: 1 (super-resolution) or 3 (interpolate the middle frame from the stored ends).
        scale: field scale (the training vorticity's standard deviation); residual_scale: :math:`s_r`
            in units of ``scale``.
        patch: pixel-unshuffle factor (divides ``n``).
        channels, mults, blocks, attention: the UNet's layout.
    """

    def __init__(
        self,
        factor: int,
        n: int,
        *,
        frames: int = 1,
        scale: float = 1.0,
        residual_scale: float = 1.0,
        patch: int = 4,
        channels: int = 32,
        mults: Sequence[int] = (1, 2),
        blocks: int = 1,
        attention: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if frames not in (1, 3):
            raise ValueError(
                f"frames must be 1 (super-resolution) or 3 (temporal interpolation), got {frames}"
            )
        if n % patch or n % factor or (n // patch) % (2 ** (len(tuple(mults)) - 1)):
            raise ValueError(
                f"n={n} must be divisible by factor={factor} and patch * 2^(levels-1)={patch}*{2 ** (len(tuple(mults)) - 1)}"
            )
        if scale <= 0 or residual_scale <= 0:
            raise ValueError(f"scale and residual_scale must be > 0, got {scale}, {residual_scale}")
        self.factor, self.n, self.frames, self.patch = int(factor), int(n), int(frames), int(patch)
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("residual_scale", torch.tensor(float(residual_scale)))
        c = patch * patch
        n_cond = 1 if frames == 1 else 2
        net = UNet(
            in_channels=c,
            channels=channels,
            mults=mults,
            blocks=blocks,
            attention=attention,
            extra_channels=c * n_cond,
            groups=min(8, channels),
        )
        self.fm = FlowMatching(make_periodic(net), event_shape=(c, n // patch, n // patch))

    def _cond(self, low: Tensor) -> tuple[Tensor, Tensor]:
        ups = spectral_upsample(low / self.scale, self.factor)  # (B, K, n, n)
        return ups.mean(1, keepdim=True), F.pixel_unshuffle(ups, self.patch)

    def stored(self, x: Tensor) -> Tensor:
        """What is stored of a batch ``(B, frames, n, n)``: the downsampled target (``frames=1``) or ends."""
        if x.dim() != 4 or x.shape[1] != self.frames or x.shape[-1] != self.n:
            raise ValueError(f"expected fields (B, {self.frames}, {self.n}, {self.n}), got {tuple(x.shape)}")
        return downsample(x if self.frames == 1 else x[:, [0, 2]], self.factor)

    def target(self, x: Tensor) -> Tensor:
        """The field the decoder reconstructs: ``(B, 1, n, n)`` (the middle frame when ``frames=3``)."""
        return x[:, self.frames // 2 : self.frames // 2 + 1]

    def loss(self, batch: Tensor) -> Tensor:
        """Flow-matching loss on full-resolution fields ``(B, frames, n, n)``; a scalar."""
        base, extra = self._cond(self.stored(batch))
        r = (self.target(batch) / self.scale - base) / self.residual_scale
        return self.fm.loss({"x": F.pixel_unshuffle(r, self.patch), "extra": extra})

    @torch.no_grad()
    def decode(
        self, low: Tensor, *, steps: int = 8, solver: str = "heun", generator: torch.Generator | None = None
    ) -> Tensor:
        """One draw of the full field ``(B, 1, n, n)`` given stored fields ``(B, K, m, m)`` (data units)."""
        k = 1 if self.frames == 1 else 2
        if low.dim() != 4 or low.shape[1] != k or low.shape[-1] * self.factor != self.n:
            raise ValueError(
                f"expected stored fields (B, {k}, {self.n // self.factor}, {self.n // self.factor}), got {tuple(low.shape)}"
            )
        base, extra = self._cond(low)
        was = self.training
        self.eval()
        r = self.fm.generator().sample(
            low.shape[0], cond={"extra": extra}, steps=steps, solver=solver, generator=generator
        )
        self.train(was)
        return (base + self.residual_scale * F.pixel_shuffle(r, self.patch)) * self.scale
