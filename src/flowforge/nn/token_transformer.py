r"""Non-causal token transformer for discrete flows: ``net(x_tokens, t, y=None) -> logits (B, L, V)``.

Tokens ``x: (B, L)`` with ids in ``0..vocab_size`` (id ``vocab_size`` is the mask of a masked source)
are embedded, a learned position embedding is added, and ``depth`` bidirectional DiT blocks
(adaLN-Zero, Peebles & Xie 2023, arXiv:2212.09748) are conditioned on
:math:`c = \mathrm{TimeEmbed}(t) + \mathrm{Embed}(y)`, as the DDiT of discrete diffusion / flow models
(Lou et al. 2024; Gat et al. 2024). A final adaLN + linear layer gives ``vocab_size`` logits per
position (the mask is never predicted). The final layer starts at zero, so a fresh network returns
uniform posteriors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowforge.nn.dit import DiTBlock, TimeEmbed, init_transformer, modulate, zero_linear
from flowforge.nn.unet import check_labels, check_time

__all__ = ["TokenTransformer"]


class TokenTransformer(nn.Module):
    """Bidirectional transformer over token ids with adaLN time (and class) conditioning.

    Args:
        vocab_size: number of data tokens ``V``; inputs may also hold the mask id ``V``.
        length: maximal sequence length ``L`` (learned position embeddings); shorter inputs use the first rows.
        width: token width.
        depth: number of blocks.
        heads: attention heads (must divide ``width``).
        num_classes: number of classes of the condition ``y`` (``None``: unconditional); row
            ``num_classes`` is the null class, used when ``y`` is ``None`` (classifier-free dropout).
        mlp_ratio: MLP expansion.

    Example:
        >>> import torch
        >>> net = TokenTransformer(vocab_size=5, length=8, width=32, depth=2, heads=4, num_classes=3)
        >>> x = torch.tensor([[0, 5, 5, 1, 2, 3, 4, 5]])  # 5 is the mask id
        >>> net(x, torch.rand(1), y=torch.tensor([2])).shape
        torch.Size([1, 8, 5])
    """

    def __init__(
        self,
        vocab_size: int,
        length: int,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        num_classes: int | None = None,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if vocab_size < 1 or length < 1 or width < 1 or depth < 1:
            raise ValueError(
                f"TokenTransformer needs vocab_size, length, width, depth >= 1; got {vocab_size}, {length}, "
                f"{width}, {depth}"
            )
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (or None for unconditional), got {num_classes}")
        self.vocab_size, self.length, self.num_classes = int(vocab_size), int(length), num_classes
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.head = nn.Linear(width, self.vocab_size)
        init_transformer(self)
        self.embed = nn.Embedding(self.vocab_size + 1, width)
        self.pos = nn.Parameter(torch.zeros(1, self.length, width))
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        self.time = TimeEmbed(width)
        self.label = nn.Embedding(num_classes + 1, width) if num_classes is not None else None
        if self.label is not None:
            nn.init.normal_(self.label.weight, std=0.02)
        for block in self.blocks:
            zero_linear(block.ada[-1])
        zero_linear(self.ada[-1])
        zero_linear(self.head)

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """``x: (B, L)`` ids in ``0..vocab_size``, ``t: (B,)``, ``y: (B,)`` or ``None`` -> logits ``(B, L, V)``."""
        if not isinstance(x, Tensor) or x.dtype.is_floating_point or x.dtype == torch.bool or x.dim() != 2:
            what = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"TokenTransformer expects integer token ids (B, L), got {what}; pass x.long()")
        b, n = x.shape
        if n > self.length:
            raise ValueError(
                f"sequence length {n} exceeds the network's length={self.length}; build it longer"
            )
        if x.numel() and (int(x.min()) < 0 or int(x.max()) > self.vocab_size):
            raise ValueError(
                f"token ids must lie in 0..{self.vocab_size} ({self.vocab_size} = the mask), got "
                f"{int(x.min())}..{int(x.max())}"
            )
        dtype = self.embed.weight.dtype
        t = check_time(t, b, x).to(dtype)
        y = check_labels(y, self.num_classes, b, x.device)
        h = self.embed(x.long()) + self.pos[:, :n]
        c = self.time(t).to(dtype)
        if self.label is not None:
            c = c + self.label(y)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada(c).chunk(2, dim=1)
        return self.head(modulate(self.norm(h), shift, scale))
