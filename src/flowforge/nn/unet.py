r"""ADM-style U-Net velocity network for images: ``net(x, t, y=None, extra=None, *, r=None)``.

The architecture of Dhariwal & Nichol (2021), "Diffusion Models Beat GANs on Image Synthesis",
arXiv:2105.05233 (Ho et al. 2020's U-Net with BigGAN-style details), at MNIST scale: residual blocks
(GroupNorm, SiLU, 3x3 conv) whose second normalisation is modulated by the time / class embedding
(scale-shift, :math:`h \leftarrow \mathrm{GN}(h)(1 + s) + b`), strided-conv down- and
nearest-neighbour up-sampling with skip connections, multi-head self-attention at chosen
resolutions, and zero-initialised last convolutions so that every residual block (and the whole
network) starts as the identity / zero map.

The helpers :func:`timestep_embedding`, :func:`check_time`, :func:`check_gap`, :func:`check_labels` and
:func:`check_extra` are shared with :mod:`flowforge.nn.dit` and :mod:`flowforge.nn.mmdit`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNet", "timestep_embedding", "check_time", "check_gap", "check_labels", "check_extra"]


def timestep_embedding(t: Tensor, dim: int, *, scale: float = 1000.0, max_period: float = 10_000.0) -> Tensor:
    r"""Transformer sinusoids of time, :math:`[\cos(s t \omega_k), \sin(s t \omega_k)]`, ``(B,) -> (B, dim)``.

    :math:`\omega_k = P^{-k / (d/2)}` for :math:`k < d/2` (Vaswani et al. 2017; Ho et al. 2020).
    ``t`` in ``[0, 1]`` is scaled by ``scale = 1000`` first so that the frequencies span the same
    range as for the integer diffusion steps the embedding was designed for.

    Example:
        >>> timestep_embedding(torch.tensor([0.0, 1.0]), 8).shape
        torch.Size([2, 8])
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    arg = (scale * t.float())[:, None] * freqs[None]
    emb = torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def check_time(t: Tensor | float, b: int, like: Tensor) -> Tensor:
    """``t`` as a ``(B,)`` tensor on ``like``'s device: a float or 0-dim tensor is broadcast to the batch."""
    if not isinstance(t, Tensor):
        t = torch.tensor(float(t))
    if t.dim() == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise ValueError(f"t must have shape (B,) = ({b},) (or be a scalar), got {tuple(t.shape)}")
    return t.to(like.device)


def check_gap(t: Tensor, r: Tensor | float | None, two_times: bool, b: int, like: Tensor) -> Tensor | None:
    """The gap ``t - r`` ``(B,)`` of a two-time net (``r=None``: ``r = t``); ``None`` for a one-time net."""
    if not two_times:
        if r is not None:
            raise ValueError(
                "this network takes one time: build it with two_times=True to pass a second time r"
            )
        return None
    return t - (t if r is None else check_time(r, b, like))


def check_labels(y: Tensor | None, num_classes: int | None, b: int, device: torch.device) -> Tensor | None:
    """Class labels ``(B,)`` int64 in ``0..num_classes`` (``num_classes`` is the null label; ``None`` means it)."""
    if num_classes is None:
        if y is not None:
            raise ValueError("this network is unconditional: build it with num_classes=... to pass y")
        return None
    if y is None:
        return torch.full((b,), num_classes, dtype=torch.long, device=device)
    if y.shape != (b,) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(
            f"y must be integer class indices of shape (B,) = ({b},), got {tuple(y.shape)} {y.dtype}; "
            "write y=labels.long()"
        )
    if y.numel() and (int(y.min()) < 0 or int(y.max()) > num_classes):
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1} (or {num_classes} = the null label), got values in "
            f"{int(y.min())}..{int(y.max())}"
        )
    return y.long().to(device)


def check_extra(x: Tensor, extra: Tensor | None, extra_channels: int) -> Tensor:
    """``x`` with ``extra: (B, E, H, W)`` concatenated along channels (checked against ``extra_channels``)."""
    if extra_channels == 0:
        if extra is not None:
            raise ValueError(
                "this network takes no extra channels: build it with extra_channels=E to pass extra"
            )
        return x
    if extra is None:
        raise ValueError(
            f"this network was built with extra_channels={extra_channels}: pass extra=(B, {extra_channels}, H, W) "
            "(e.g. the masked image and the mask for inpainting)"
        )
    want = (x.shape[0], extra_channels, *x.shape[2:])
    if tuple(extra.shape) != want:
        raise ValueError(f"extra must have shape {want}, got {tuple(extra.shape)}")
    return torch.cat([x, extra.to(x.dtype)], dim=1)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    r"""``h = conv(SiLU(GN(x)))``; ``h = conv(drop(SiLU(GN(h)(1 + s) + b)))``; return ``skip(x) + h``.

    ``(s, b) = Linear(SiLU(emb))`` is the scale-shift ("AdaGN") conditioning of Dhariwal & Nichol
    (2021); the last convolution is zero-initialised.
    """

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``x: (B, cin, H, W)``, ``emb: (B, emb_dim)`` -> ``(B, cout, H, W)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the ``H * W`` positions, residual, zero-initialised output projection."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(
                f"{channels} channels are not divisible by heads={heads}; pick heads dividing them"
            )
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``; ``emb`` is ignored (uniform call with :class:`ResBlock`)."""
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # (B, heads, HW, c/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    r"""ADM U-Net (Dhariwal & Nichol 2021, arXiv:2105.05233) predicting a velocity ``(B, C, H, W)``.

    Level ``i`` works at resolution ``H / 2^i`` (rounded up: 28 -> 14 -> 7, 8 -> 4 -> 2) with
    ``channels * mults[i]`` channels and ``blocks`` residual blocks (``blocks + 1`` on the way up,
    each eating one skip connection); the levels listed in ``attention`` add self-attention after
    every residual block, and the bottleneck is ResBlock-Attention-ResBlock. The time embedding is
    ``MLP(sinusoids(1000 t))`` of size ``4 * channels``; a class embedding with ``num_classes + 1``
    rows (row ``num_classes`` = the null label of classifier-free guidance, used when ``y`` is
    ``None``) is added to it. ``extra_channels`` extra input planes (``extra=``, e.g. the masked
    image and the mask for inpainting) are concatenated to ``x``. The output convolution is
    zero-initialised, so a fresh network returns zeros.

    With ``two_times=True`` the network takes a second time ``r`` (keyword; the start time of a
    two-time map such as MeanFlow's :math:`u(x, r, t)`, ``x`` at ``r``, ``t`` the end time) and adds
    its own embedding ``MLP(sinusoids(1000 (t - r)))`` of the gap to the time embedding. The gap is
    embedded rather than ``r`` because it is zero on the diagonal ``r = t`` (``r=None`` means
    ``r = t``), where the net is a velocity field of ``(x, t)``, and MeanFlow (arXiv:2505.13447)
    conditions on ``(t, t - r)``. With ``two_times=False`` (default) nothing changes.

    The defaults (16 channels, mults ``(1, 2, 4)``, 2 blocks, attention at the lowest level: 1.0 M
    parameters, 0.6 GFLOP forward + backward per 28x28 image) keep the full-resolution level thin,
    where convolutions cost most; ``channels=32, mults=(1, 2, 2)`` is the wider ADM-at-MNIST
    layout (1.7 M parameters, 1.7 GFLOP per image).

    Args:
        in_channels: image channels ``C``.
        out_channels: output channels (default ``in_channels``: a velocity).
        channels: base width.
        mults: width multiplier per resolution level.
        blocks: residual blocks per level on the way down.
        attention: indices into ``mults`` of the levels with self-attention (``()`` for none).
        heads: attention heads.
        num_classes: number of classes for conditioning (``None``: unconditional).
        extra_channels: number of extra conditioning planes passed as ``extra``.
        dropout: dropout in the residual blocks.
        groups: GroupNorm groups (must divide every level's channels).
        two_times: accept a second time ``r`` and embed the gap ``t - r``.

    Example:
        >>> import torch
        >>> net = UNet(channels=16, mults=(1, 2), blocks=1, attention=(1,), num_classes=10)
        >>> net(torch.randn(3, 1, 8, 8), torch.rand(3), y=torch.tensor([0, 1, 10])).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        channels: int = 16,
        mults: Sequence[int] = (1, 2, 4),
        blocks: int = 2,
        attention: Sequence[int] = (2,),
        heads: int = 4,
        num_classes: int | None = None,
        extra_channels: int = 0,
        dropout: float = 0.0,
        groups: int = 8,
        two_times: bool = False,
    ) -> None:
        super().__init__()
        mults, attention = tuple(mults), tuple(attention)
        if in_channels < 1 or channels < 1 or blocks < 1 or not mults or min(mults) < 1:
            raise ValueError(
                f"UNet needs in_channels, channels, blocks >= 1 and positive mults; got in_channels="
                f"{in_channels}, channels={channels}, blocks={blocks}, mults={mults}"
            )
        if any(not 0 <= a < len(mults) for a in attention):
            raise ValueError(
                f"attention lists level indices into mults (0..{len(mults) - 1}), got {attention}"
            )
        widths = [channels * m for m in mults]
        if any(w % groups for w in widths):
            raise ValueError(
                f"groups={groups} must divide every level's channels {widths}; pick another groups"
            )
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (or None for unconditional), got {num_classes}")
        if extra_channels < 0:
            raise ValueError(f"extra_channels must be >= 0, got {extra_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels or in_channels
        self.num_classes, self.extra_channels = num_classes, extra_channels
        self.levels = len(mults)
        self.channels = channels
        emb = 4 * channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label = nn.Embedding(num_classes + 1, emb) if num_classes is not None else None
        self.inp = nn.Conv2d(in_channels + extra_channels, channels, 3, padding=1)

        self.down = nn.ModuleList()
        skips, c = [channels], channels
        for i, w in enumerate(widths):
            for _ in range(blocks):
                layers = [ResBlock(c, w, emb, dropout, groups)]
                if i in attention:
                    layers.append(AttentionBlock(w, heads, groups))
                self.down.append(nn.ModuleList(layers))
                c = w
                skips.append(c)
            if i < self.levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
        self.mid = nn.ModuleList(
            [
                ResBlock(c, c, emb, dropout, groups),
                AttentionBlock(c, heads, groups),
                ResBlock(c, c, emb, dropout, groups),
            ]
        )
        self.up = nn.ModuleList()
        for i in reversed(range(self.levels)):
            w = widths[i]
            for j in range(blocks + 1):
                layers = [ResBlock(c + skips.pop(), w, emb, dropout, groups)]
                c = w
                if i in attention:
                    layers.append(AttentionBlock(w, heads, groups))
                if i > 0 and j == blocks:
                    layers.append(nn.Conv2d(c, c, 3, padding=1))  # after nearest upsampling
                self.up.append(nn.ModuleList(layers))
        self.out = nn.Sequential(
            nn.GroupNorm(groups, c), nn.SiLU(), _zero(nn.Conv2d(c, self.out_channels, 3, padding=1))
        )
        self.two_times = bool(two_times)
        if self.two_times:  # built last, so every other weight is initialised as without it
            self.gap_mlp = nn.Sequential(nn.Linear(channels, emb), nn.SiLU(), nn.Linear(emb, emb))

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        extra: Tensor | None = None,
        *,
        r: Tensor | None = None,
    ) -> Tensor:
        """``x: (B, C, H, W)``, ``t: (B,)``, ``y: (B,)`` labels or ``None``, ``extra: (B, E, H, W)``,
        ``r: (B,)`` start time (``two_times`` only) -> ``(B, C_out, H, W)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects images (B, {self.in_channels}, H, W), got {tuple(x.shape)}; "
                "add a channel axis with x[:, None] for (B, H, W) batches"
            )
        b = x.shape[0]
        t = check_time(t, b, x)
        y = check_labels(y, self.num_classes, b, x.device)
        h = check_extra(x, extra, self.extra_channels)
        emb = self.time_mlp(timestep_embedding(t, self.channels).to(x.dtype))
        gap = check_gap(t, r, self.two_times, b, x)
        if gap is not None:
            emb = emb + self.gap_mlp(timestep_embedding(gap, self.channels).to(x.dtype))
        if self.label is not None:
            emb = emb + self.label(y)

        h = self.inp(h)
        hs = [h]
        for layers in self.down:
            for layer in layers:
                h = layer(h, emb) if not isinstance(layer, nn.Conv2d) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layers in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            for layer in layers:
                if isinstance(layer, nn.Conv2d):  # upsample to the next skip's size (odd sizes: 7 -> 14)
                    h = layer(F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest"))
                else:
                    h = layer(h, emb)
        return self.out(h)
