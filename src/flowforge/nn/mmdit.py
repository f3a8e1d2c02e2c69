r"""Multimodal Diffusion Transformer (MM-DiT) conditioned on a semantic map: ``net(x, t, seg=None)``.

Esser et al. (2024), "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis"
(Stable Diffusion 3), arXiv:2403.03206, Sec. 4 and Fig. 2: two token streams, here the image
patches and the cells of a coarse semantic map, each with its OWN weights (adaLN modulation,
LayerNorms, QKV and output projections, MLP), meet in ONE joint attention over the concatenated
sequence ``[context; image]`` and are split again afterwards. Both streams are modulated by the
time embedding (adaLN-Zero, as in :mod:`flowforge.nn.dit`). As in SD3 the last block keeps only
the context stream's keys and values ("context pre-only"): its context output would be discarded.

SD3 writes time with ``t = 1`` as noise; this network only sees ``t`` through an embedding, so it is
used unchanged with flowforge's ``t = 0`` noise, ``t = 1`` data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.nn.dit import (
    FinalLayer,
    PatchEmbed,
    TimeEmbed,
    init_transformer,
    mlp,
    modulate,
    sincos_2d,
    unpatchify,
    zero_linear,
)
from flowforge.nn.unet import check_time

__all__ = ["MMDiT", "MMDiTBlock"]


class _Stream(nn.Module):
    """The per-stream weights of one MM-DiT block: adaLN, LayerNorms, QKV, output projection, MLP.

    With ``pre_only`` only the modulation of the first norm and the QKV projection exist (the
    stream feeds the joint attention but produces no output).
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float, pre_only: bool = False) -> None:
        super().__init__()
        self.heads, self.pre_only = heads, pre_only
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, (2 if pre_only else 6) * width))
        if not pre_only:
            self.proj = nn.Linear(width, width)
            self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
            self.mlp = mlp(width, mlp_ratio)

    def pre(self, h: Tensor, vec: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
        """``q, k, v: (B, heads, n, w / heads)`` and the remaining modulation ``(gate1, shift2, scale2, gate2)``."""
        mods = self.ada(vec).chunk(2 if self.pre_only else 6, dim=1)
        b, n, w = h.shape
        qkv = self.qkv(modulate(self.norm1(h), mods[0], mods[1]))
        q, k, v = qkv.view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v, mods[2:]

    def post(self, h: Tensor, attn: Tensor, mods: tuple[Tensor, ...]) -> Tensor:
        """``h + gate1 * proj(attn)``, then ``h + gate2 * MLP(modulated LN(h))``."""
        gate1, shift2, scale2, gate2 = mods
        h = h + gate1[:, None] * self.proj(attn)
        return h + gate2[:, None] * self.mlp(modulate(self.norm2(h), shift2, scale2))


class MMDiTBlock(nn.Module):
    """Joint-attention block with separate image and context weights (Esser et al. 2024, Fig. 2b).

    ``(x: (B, n_x, w), c: (B, n_c, w), vec: (B, w)) -> (x', c')``; with ``context_out=False``
    (the last block) ``c'`` is ``None``.

    Example:
        >>> block = MMDiTBlock(16, 2)
        >>> x, c = block(torch.randn(2, 9, 16), torch.randn(2, 4, 16), torch.randn(2, 16))
        >>> x.shape, c.shape
        (torch.Size([2, 9, 16]), torch.Size([2, 4, 16]))
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, *, context_out: bool = True) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads={heads}; pick heads dividing width")
        self.image = _Stream(width, heads, mlp_ratio)
        self.context = _Stream(width, heads, mlp_ratio, pre_only=not context_out)

    def forward(self, x: Tensor, c: Tensor, vec: Tensor) -> tuple[Tensor, Tensor | None]:
        qx, kx, vx, mx = self.image.pre(x, vec)
        qc, kc, vc, mc = self.context.pre(c, vec)
        n_c = c.shape[1]
        out = F.scaled_dot_product_attention(
            torch.cat([qc, qx], dim=2), torch.cat([kc, kx], dim=2), torch.cat([vc, vx], dim=2)
        )
        out = out.transpose(1, 2).flatten(2)  # (B, n_c + n_x, w)
        x = self.image.post(x, out[:, n_c:], mx)
        c = None if self.context.pre_only else self.context.post(c, out[:, :n_c], mc)
        return x, c


class MMDiT(nn.Module):
    r"""MM-DiT (Esser et al. 2024, arXiv:2403.03206) conditioned on a semantic map ``seg``.

    Image tokens: ``p x p`` patches + fixed 2-D sin-cos positions (as :class:`~flowforge.nn.DiT`).
    Context tokens: one per cell of ``seg: (B, S, S)``, the embedding of its class (``seg_classes + 1``
    rows: row ``seg_classes`` is the null value) plus a learned position embedding. ``seg=None`` is the
    null map (every cell ``null_seg``), the "no condition" of classifier-free guidance. The time
    embedding modulates both streams; the last block drops the context output; a final adaLN +
    linear layer (zero-initialised) turns image tokens back into patches.

    Args:
        image_size: ``H = W``.
        in_channels: image channels ``C`` (also the output channels).
        patch: patch size ``p``.
        width: token width.
        depth: number of joint blocks.
        heads: attention heads.
        seg_classes: number of map classes (11 for digits 0..9 + background); ``null_seg = seg_classes``.
        seg_size: the map's side ``S``.
        mlp_ratio: MLP expansion.

    Example:
        >>> import torch
        >>> net = MMDiT(image_size=8, patch=2, width=32, depth=2, heads=2, seg_size=4)
        >>> seg = torch.randint(0, 11, (3, 4, 4))
        >>> net(torch.randn(3, 1, 8, 8), torch.rand(3), seg=seg).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        patch: int = 4,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        seg_classes: int = 11,
        seg_size: int = 7,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if in_channels < 1 or width < 1 or depth < 1 or seg_classes < 1 or seg_size < 1:
            raise ValueError(
                f"MMDiT needs in_channels, width, depth, seg_classes, seg_size >= 1; got {in_channels}, "
                f"{width}, {depth}, {seg_classes}, {seg_size}"
            )
        self.image_size, self.in_channels, self.patch = image_size, in_channels, patch
        self.seg_classes, self.seg_size, self.null_seg = seg_classes, seg_size, seg_classes
        self.blocks = nn.ModuleList(
            MMDiTBlock(width, heads, mlp_ratio, context_out=i < depth - 1) for i in range(depth)
        )
        self.final = FinalLayer(width, patch, in_channels)
        init_transformer(self)
        self.embed = PatchEmbed(image_size, in_channels, patch, width)
        self.grid = self.embed.grid
        self.register_buffer("pos", sincos_2d(width, self.grid)[None], persistent=False)
        self.time = TimeEmbed(width)
        self.seg_embed = nn.Embedding(seg_classes + 1, width)
        nn.init.normal_(self.seg_embed.weight, std=0.02)
        self.seg_pos = nn.Parameter(torch.randn(1, seg_size * seg_size, width) * 0.02)
        for block in self.blocks:
            zero_linear(block.image.ada[-1])
            zero_linear(block.context.ada[-1])
        zero_linear(self.final.ada[-1])
        zero_linear(self.final.linear)

    def null_map(self, b: int, device: torch.device | None = None) -> Tensor:
        """The "no condition" map ``(B, S, S)`` filled with ``null_seg``."""
        return torch.full((b, self.seg_size, self.seg_size), self.null_seg, dtype=torch.long, device=device)

    def forward(self, x: Tensor, t: Tensor, seg: Tensor | None = None) -> Tensor:
        """``x: (B, C, H, W)``, ``t: (B,)``, ``seg: (B, S, S)`` int64 in ``0..seg_classes`` or ``None`` -> ``(B, C, H, W)``."""
        want = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"MMDiT(image_size={self.image_size}, in_channels={self.in_channels}) expects images "
                f"(B, {', '.join(map(str, want))}), got {tuple(x.shape)}"
            )
        b = x.shape[0]
        t = check_time(t, b, x)
        if seg is None:
            seg = self.null_map(b, x.device)
        s = self.seg_size
        if tuple(seg.shape) != (b, s, s) or seg.dtype.is_floating_point or seg.dtype == torch.bool:
            raise ValueError(
                f"seg must be an integer map of shape (B, {s}, {s}) = ({b}, {s}, {s}), got {tuple(seg.shape)} "
                f"{seg.dtype}; make one with flowforge.data.semantic_map(images, labels, grid={s})"
            )
        if seg.numel() and (int(seg.min()) < 0 or int(seg.max()) > self.null_seg):
            raise ValueError(
                f"seg values must lie in 0..{self.seg_classes - 1} (or {self.null_seg} = null), got "
                f"{int(seg.min())}..{int(seg.max())}"
            )
        h = self.embed(x) + self.pos.to(x.dtype)
        c = self.seg_embed(seg.long().to(x.device).flatten(1)) + self.seg_pos
        vec = self.time(t).to(x.dtype)
        for block in self.blocks:
            h, c = block(h, c, vec)
        return unpatchify(self.final(h, vec), self.in_channels, self.patch, self.grid)
