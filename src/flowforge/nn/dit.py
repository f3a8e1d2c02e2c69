r"""Diffusion Transformer (DiT) velocity network for images: ``net(x, t, y=None, extra=None, *, r=None)``.

Peebles & Xie (2023), "Scalable Diffusion Models with Transformers", arXiv:2212.09748: the image is
cut into ``p x p`` patches (a strided convolution), a fixed 2-D sin-cos position embedding is added,
and every block is a pre-LN transformer block whose LayerNorms are modulated by the conditioning
vector :math:`c = \mathrm{emb}(t) + \mathrm{emb}(y)` ("adaLN-Zero"):

.. math::
    h \leftarrow h + \alpha_1 \odot \mathrm{Attn}(\mathrm{LN}(h)(1 + \gamma_1) + \beta_1), \quad
    h \leftarrow h + \alpha_2 \odot \mathrm{MLP}(\mathrm{LN}(h)(1 + \gamma_2) + \beta_2),

with :math:`(\beta_1, \gamma_1, \alpha_1, \beta_2, \gamma_2, \alpha_2) = \mathrm{Linear}(\mathrm{SiLU}(c))`
zero-initialised, so every block starts as the identity. A final adaLN + linear layer (also zero)
maps each token back to a ``p x p`` patch.

The pieces :func:`sincos_2d`, :func:`modulate`, :class:`PatchEmbed`, :class:`TimeEmbed` and
:func:`unpatchify` are reused by :mod:`flowforge.nn.mmdit`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.nn.unet import check_extra, check_gap, check_labels, check_time, timestep_embedding

__all__ = ["DiT", "DiTBlock", "PatchEmbed", "TimeEmbed", "sincos_2d", "modulate", "unpatchify"]


def sincos_2d(width: int, grid: int) -> Tensor:
    r"""Fixed 2-D sin-cos position embedding ``(grid * grid, width)`` (row-major tokens).

    Half of the channels encode the row, half the column, each with the 1-D transformer sinusoids
    :math:`[\sin(p\,\omega_k), \cos(p\,\omega_k)]`, :math:`\omega_k = 10000^{-k/(w/4)}`
    (MAE / DiT, He et al. 2022).

    Example:
        >>> sincos_2d(16, 7).shape
        torch.Size([49, 16])
    """
    if width % 4:
        raise ValueError(f"the 2-D sin-cos embedding needs width divisible by 4, got {width}")
    quarter = width // 4
    omega = 1.0 / 10_000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def one(p: Tensor) -> Tensor:
        arg = p.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)

    return torch.cat([one(rows), one(cols)], dim=1).float()


def modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``h * (1 + scale) + shift`` with ``h: (B, n, w)`` and ``shift, scale: (B, w)``."""
    return h * (1 + scale[:, None]) + shift[:, None]


def unpatchify(tokens: Tensor, channels: int, patch: int, grid: int) -> Tensor:
    """``(B, grid^2, p * p * C)`` tokens (row-major) back to images ``(B, C, grid * p, grid * p)``."""
    b = tokens.shape[0]
    x = tokens.reshape(b, grid, grid, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, grid * patch, grid * patch)


class PatchEmbed(nn.Module):
    """``(B, C, H, W) -> (B, (H/p)(W/p), width)`` by a ``p x p`` convolution of stride ``p``."""

    def __init__(self, image_size: int, in_channels: int, patch: int, width: int) -> None:
        super().__init__()
        if patch < 1 or image_size % patch:
            raise ValueError(
                f"image_size={image_size} is not divisible by patch={patch}; pick a patch dividing it "
                "(28: 2, 4, 7; 8: 2, 4)"
            )
        self.grid = image_size // patch
        self.proj = nn.Conv2d(in_channels, width, patch, stride=patch)
        w = self.proj.weight.data  # initialise like a linear layer (DiT)
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimeEmbed(nn.Module):
    """``t: (B,) -> (B, width)``: ``MLP(sinusoids(1000 t))`` with 256 frequencies (DiT's ``TimestepEmbedder``)."""

    def __init__(self, width: int, freqs: int = 256) -> None:
        super().__init__()
        self.freqs = freqs
        self.mlp = nn.Sequential(nn.Linear(freqs, width), nn.SiLU(), nn.Linear(width, width))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.freqs).to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Multi-head self-attention on tokens ``(B, n, width)`` with :func:`~torch.nn.functional.scaled_dot_product_attention`."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads={heads}; pick heads dividing width")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, h: Tensor) -> Tensor:
        b, n, w = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, w))


def mlp(width: int, ratio: float) -> nn.Sequential:
    """Transformer MLP ``width -> ratio * width -> width`` with tanh-GELU (as DiT)."""
    hidden = int(width * ratio)
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))


class DiTBlock(nn.Module):
    """One adaLN-Zero transformer block: ``(B, n, width), c: (B, width) -> (B, n, width)``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = mlp(width, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        h = h + gate1[:, None] * self.attn(modulate(self.norm1(h), shift1, scale1))
        return h + gate2[:, None] * self.mlp(modulate(self.norm2(h), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN + linear from tokens ``(B, n, width)`` to patches ``(B, n, p * p * C)``."""

    def __init__(self, width: int, patch: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch * patch * out_channels)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(h), shift, scale))


def init_transformer(module: nn.Module) -> None:
    """DiT's initialisation: xavier-uniform linear weights and zero biases (later overridden where zero-init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def zero_linear(linear: nn.Linear) -> None:
    """Zero a linear layer's weight and bias (the "Zero" of adaLN-Zero)."""
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)


class DiT(nn.Module):
    r"""Diffusion Transformer (Peebles & Xie 2023, arXiv:2212.09748) predicting a velocity ``(B, C, H, W)``.

    Tokens: ``(H/p)^2`` patches (28 / 4 = 7 -> 49 tokens; 8 / 2 = 4 -> 16 tokens) plus the fixed 2-D
    sin-cos position embedding; conditioning :math:`c = \mathrm{TimeEmbed}(t) + \mathrm{Embed}(y)`
    with ``num_classes + 1`` label rows (row ``num_classes`` = the null label, used when ``y`` is
    ``None``). ``extra_channels`` planes passed as ``extra`` are concatenated to ``x`` before
    patchifying. All adaLN modulations and the final linear layer start at zero (adaLN-Zero), so a
    fresh network returns zeros.

    With ``two_times=True`` the network takes a second time ``r`` (keyword; the start time of a
    two-time map such as MeanFlow's :math:`u(x, r, t)`, ``x`` at ``r``, ``t`` the end time) and adds
    its own ``TimeEmbed(t - r)`` of the gap to :math:`c`, as MeanFlow's DiT does (arXiv:2505.13447,
    conditioning on ``(t, t - r)``). The gap is zero on the diagonal ``r = t`` (``r=None`` means
    ``r = t``), where the net is a velocity field of ``(x, t)``. With ``two_times=False`` (default)
    nothing changes.

    Args:
        image_size: ``H = W``.
        in_channels: image channels ``C`` (also the output channels).
        patch: patch size ``p`` (must divide ``image_size``).
        width: token width.
        depth: number of blocks.
        heads: attention heads.
        num_classes: number of classes for conditioning (``None``: unconditional).
        extra_channels: number of extra conditioning planes passed as ``extra``.
        mlp_ratio: MLP expansion.
        two_times: accept a second time ``r`` and embed the gap ``t - r``.

    Example:
        >>> import torch
        >>> net = DiT(image_size=8, patch=2, width=32, depth=2, heads=2, num_classes=10)
        >>> net(torch.randn(3, 1, 8, 8), torch.rand(3), y=torch.tensor([0, 1, 10])).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        patch: int = 4,
        width: int = 128,
        depth: int = 6,
        heads: int = 4,
        num_classes: int | None = None,
        extra_channels: int = 0,
        mlp_ratio: float = 4.0,
        two_times: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1 or width < 1 or depth < 1:
            raise ValueError(f"DiT needs in_channels, width, depth >= 1; got {in_channels}, {width}, {depth}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (or None for unconditional), got {num_classes}")
        if extra_channels < 0:
            raise ValueError(f"extra_channels must be >= 0, got {extra_channels}")
        self.image_size, self.in_channels, self.patch = image_size, in_channels, patch
        self.num_classes, self.extra_channels = num_classes, extra_channels
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.final = FinalLayer(width, patch, in_channels)
        init_transformer(self)
        self.embed = PatchEmbed(image_size, in_channels + extra_channels, patch, width)
        self.grid = self.embed.grid
        self.register_buffer("pos", sincos_2d(width, self.grid)[None], persistent=False)
        self.time = TimeEmbed(width)
        self.label = nn.Embedding(num_classes + 1, width) if num_classes is not None else None
        if self.label is not None:
            nn.init.normal_(self.label.weight, std=0.02)
        for block in self.blocks:
            zero_linear(block.ada[-1])
        zero_linear(self.final.ada[-1])
        zero_linear(self.final.linear)
        self.two_times = bool(two_times)
        if self.two_times:  # built last, so every other weight is initialised as without it
            self.gap = TimeEmbed(width)

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
        ``r: (B,)`` start time (``two_times`` only) -> ``(B, C, H, W)``."""
        want = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"DiT(image_size={self.image_size}, in_channels={self.in_channels}) expects images "
                f"(B, {', '.join(map(str, want))}), got {tuple(x.shape)}; build it with the image size of your data"
            )
        b = x.shape[0]
        t = check_time(t, b, x)
        y = check_labels(y, self.num_classes, b, x.device)
        h = self.embed(check_extra(x, extra, self.extra_channels)) + self.pos.to(x.dtype)
        c = self.time(t).to(x.dtype)
        gap = check_gap(t, r, self.two_times, b, x)
        if gap is not None:
            c = c + self.gap(gap).to(x.dtype)
        if self.label is not None:
            c = c + self.label(y)
        for block in self.blocks:
            h = block(h, c)
        return unpatchify(self.final(h, c), self.in_channels, self.patch, self.grid)
