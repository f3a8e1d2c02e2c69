r"""Pre-LN causal transformer with a rewindable key/value cache (the trunk of TARFlow / STARFlow).

One network, three ways to call it:

* the full sequence with a causal mask (training, densities): ``net(h)``;
* a prefill that also stores the keys and values: ``net(h, cache)`` on an empty cache;
* a chunk of ``n`` new tokens against everything cached so far: ``net(h_new, cache)``; the chunk
  attends to the cache and causally to itself. ``cache.rewind(n)`` drops the last ``n`` tokens
  again, which is what Jacobi (fixed-point) decoding needs (STARFlow-V, Gu et al. 2025).

:class:`KVCache` grows with the sequence (shapes change every call). :class:`StaticKVCache` is its
fixed-shape twin for CUDA graphs: preallocated buffers of the full length, the write position held
in a device tensor, attention over the whole buffer with a mask, so one token step has the same
shapes and kernels whatever the position and can be captured once and replayed.

Every block is ``h += Attn(LN(h))``, ``h += MLP(LN(h))`` (GELU, expansion 4), as in TARFlow
(Zhai et al. 2024, arXiv:2412.06329); attention goes through
:func:`torch.nn.functional.scaled_dot_product_attention`. A final LayerNorm closes the trunk.

Example:
    >>> import torch
    >>> net = CausalTransformer(width=32, layers=2, head_dim=16)
    >>> h = torch.randn(3, 10, 32)
    >>> full = net(h)
    >>> cache = KVCache()
    >>> first = net(h[:, :6], cache)
    >>> rest = net(h[:, 6:], cache)
    >>> len(cache), bool(torch.allclose(torch.cat([first, rest], 1), full, atol=1e-5))
    (10, True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["KVCache", "StaticKVCache", "CausalSelfAttention", "TransformerBlock", "CausalTransformer"]


class KVCache:
    """Keys and values of the tokens seen so far, one entry per attention layer.

    Tensors are ``(B, heads, L, head_dim)``. Outside autograd the cache writes into preallocated
    buffers that grow by doubling (no quadratic re-copying during token-by-token decoding); when
    the incoming keys require gradients it concatenates instead, so differentiable sampling works.

    Example:
        >>> c = KVCache()
        >>> k = torch.randn(2, 1, 5, 4)
        >>> _ = c.append(0, k, k)
        >>> c.rewind(2)
        >>> len(c)
        3
    """

    def __init__(self) -> None:
        self._k: list[Tensor | None] = []
        self._v: list[Tensor | None] = []
        self._len: list[int] = []

    def __len__(self) -> int:
        """Number of cached tokens (the same in every layer once a forward pass has finished)."""
        return self._len[0] if self._len else 0

    def length(self, layer: int) -> int:
        """Number of tokens cached for ``layer``."""
        return self._len[layer] if layer < len(self._len) else 0

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v: (B, H, n, hd)`` after the cached tokens of ``layer``; return all of them."""
        while len(self._k) <= layer:
            self._k.append(None)
            self._v.append(None)
            self._len.append(0)
        n, used = k.shape[2], self._len[layer]
        kb, vb = self._k[layer], self._v[layer]
        if kb is not None and (kb.shape[0] != k.shape[0] or kb.shape[1] != k.shape[1]):
            raise ValueError(
                f"KVCache holds batch/heads {tuple(kb.shape[:2])}, got {tuple(k.shape[:2])}; "
                "use one cache per batch (call reset() to start over)"
            )
        if k.requires_grad or v.requires_grad or (kb is not None and kb.requires_grad):
            kb = k if kb is None or used == 0 else torch.cat([kb[:, :, :used], k], 2)
            vb = v if vb is None or used == 0 else torch.cat([vb[:, :, :used], v], 2)
        else:
            if kb is None or kb.shape[2] < used + n or kb.dtype != k.dtype or kb.device != k.device:
                cap = max(2 * (used + n), 16)
                new_k = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
                new_v = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
                if kb is not None and used:
                    new_k[:, :, :used] = kb[:, :, :used]
                    new_v[:, :, :used] = vb[:, :, :used]
                kb, vb = new_k, new_v
            kb[:, :, used : used + n] = k
            vb[:, :, used : used + n] = v
        self._k[layer], self._v[layer], self._len[layer] = kb, vb, used + n
        return kb[:, :, : used + n], vb[:, :, : used + n]

    def rewind(self, n: int) -> None:
        """Forget the last ``n`` tokens in every layer (``0 <= n <= len(self)``)."""
        if n < 0 or n > len(self):
            raise ValueError(f"cannot rewind {n} tokens from a cache holding {len(self)}")
        self._len = [m - n for m in self._len]

    def reset(self) -> None:
        """Forget everything."""
        self._k, self._v, self._len = [], [], []


class StaticKVCache:
    """A fixed-shape key/value cache of at most ``length`` tokens, for decoding under a CUDA graph.

    Buffers are ``(B, heads, length, head_dim)``, allocated (zeroed) on the first write of each layer
    and never reallocated; ``pos`` is a 0-dim ``long`` tensor on the device holding the number of
    cached tokens, advanced in place after every transformer pass, so no Python integer depends on
    the position. Attention reads the whole buffer through :meth:`mask` (key ``j`` is visible to new
    token ``i`` iff ``j <= pos + i``). Inference only (writes are in place).

    Args:
        length: the most tokens the cache will hold.
        device: where ``pos`` (and the buffers) live.

    Example:
        >>> c = StaticKVCache(4)
        >>> k = torch.randn(2, 1, 1, 3)
        >>> kb, _ = c.append(0, k, k)
        >>> c.mask(1).tolist(), kb.shape
        ([[True, False, False, False]], torch.Size([2, 1, 4, 3]))
        >>> c.advance(1)
        >>> int(c.pos), c.mask(1).tolist()
        (1, [[True, True, False, False]])
    """

    def __init__(self, length: int, device: torch.device | str | None = None) -> None:
        if length < 1:
            raise ValueError(f"StaticKVCache needs length >= 1, got {length}")
        self.length = int(length)
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self._keys = torch.arange(self.length, device=device)
        self._k: list[Tensor] = []
        self._v: list[Tensor] = []

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k, v: (B, H, n, hd)`` at positions ``pos .. pos + n - 1``; return the full buffers."""
        if layer == len(self._k):
            shape = (k.shape[0], k.shape[1], self.length, k.shape[3])
            self._k.append(k.new_zeros(shape))  # zeros: masked keys must not hold NaN (0 * NaN = NaN)
            self._v.append(v.new_zeros(shape))
        kb, vb = self._k[layer], self._v[layer]
        if kb.shape[:2] != k.shape[:2] or kb.shape[3] != k.shape[3]:
            raise ValueError(
                f"StaticKVCache holds batch/heads/head_dim {tuple(kb.shape[:2])}/{kb.shape[3]}, got "
                f"{tuple(k.shape[:2])}/{k.shape[3]}; use one cache per batch"
            )
        idx = self.pos + self._keys[: k.shape[2]]
        kb.index_copy_(2, idx, k)
        vb.index_copy_(2, idx, v)
        return kb, vb

    def mask(self, n: int) -> Tensor:
        """``(n, length)`` boolean attention mask of ``n`` new tokens written at ``pos``."""
        return self._keys[None, :] <= (self.pos + self._keys[:n])[:, None]

    def advance(self, n: int) -> None:
        """Count ``n`` more tokens as cached (in place: safe inside a captured graph)."""
        self.pos.add_(n)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, ``(B, n, width) -> (B, n, width)``, optionally cached.

    Args:
        width: model width.
        heads: number of heads (``width`` must be divisible by it).
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads={heads}; pick heads dividing width")
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        h: Tensor,
        cache: KVCache | StaticKVCache | None = None,
        layer: int = 0,
        attn_temp: float | Tensor = 1.0,
        mask: Tensor | None = None,
    ) -> Tensor:
        """``mask``: the :meth:`StaticKVCache.mask` of this pass (computed once by the trunk)."""
        b, n, w = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if isinstance(attn_temp, Tensor):  # one temperature per sample: scale the queries
            q = q / attn_temp.to(q.dtype).view(b, 1, 1, 1)
            scale = None
        else:
            scale = self.head_dim**-0.5 / attn_temp
        past = 0
        if isinstance(cache, StaticKVCache):
            k, v = cache.append(layer, k, v)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=cache.mask(n) if mask is None else mask, scale=scale
            )
            return self.proj(out.transpose(1, 2).reshape(b, n, w))
        if cache is not None:
            past = cache.length(layer)
            k, v = cache.append(layer, k, v)
        if past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=n > 1, scale=scale)
        elif n == 1:
            out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        else:  # query i of the chunk sees the cache and chunk tokens <= i
            mask = torch.ones(n, past + n, dtype=torch.bool, device=h.device).tril(past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, w))


class TransformerBlock(nn.Module):
    """Pre-LN block: ``h + Attn(LN(h))`` then ``h + MLP(LN(h))`` with a GELU MLP of ``mlp_ratio * width``."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )

    def forward(
        self,
        h: Tensor,
        cache: KVCache | StaticKVCache | None = None,
        layer: int = 0,
        attn_temp: float | Tensor = 1.0,
        mask: Tensor | None = None,
    ) -> Tensor:
        h = h + self.attn(self.norm1(h), cache, layer, attn_temp, mask)
        return h + self.mlp(self.norm2(h))


class CausalTransformer(nn.Module):
    """A stack of causal pre-LN transformer blocks on embedded tokens, ``(B, n, width) -> (B, n, width)``.

    Args:
        width: model width.
        layers: number of blocks.
        heads: number of attention heads; default ``max(1, width // head_dim)``.
        head_dim: channels per head when ``heads`` is not given (64 as in TARFlow).
        mlp_ratio: hidden expansion of the MLPs.

    Call ``net(h, cache=None, attn_temp=1.0)``. Without a cache the whole sequence is processed with a
    causal mask. With a :class:`KVCache`, ``h`` holds the *new* tokens: they are appended to the cache
    and attend to every cached token. With a :class:`StaticKVCache` the same
    happens on fixed shapes, and the cache's position advances by ``n`` after the pass. ``attn_temp`` divides the attention logits (a float, or a
    ``(B,)`` tensor with one temperature per sample); TARFlow uses ``attn_temp != 1`` for guidance
    of unconditional models.

    Example:
        >>> net = CausalTransformer(width=16, layers=1, heads=2)
        >>> net(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(
        self, width: int, layers: int, *, heads: int | None = None, head_dim: int = 64, mlp_ratio: int = 4
    ) -> None:
        super().__init__()
        if width < 1 or layers < 1:
            raise ValueError(
                f"CausalTransformer needs width, layers >= 1; got width={width}, layers={layers}"
            )
        if heads is None:
            heads = max(1, width // head_dim)
        self.width, self.heads = width, heads
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(
        self, h: Tensor, cache: KVCache | StaticKVCache | None = None, attn_temp: float | Tensor = 1.0
    ) -> Tensor:
        if h.dim() != 3 or h.shape[-1] != self.width:
            raise ValueError(f"expected tokens of shape (B, n, {self.width}), got {tuple(h.shape)}")
        static = isinstance(cache, StaticKVCache)
        mask = cache.mask(h.shape[1]) if static else None
        for i, block in enumerate(self.blocks):
            h = block(h, cache, i, attn_temp, mask)
        if static:
            cache.advance(h.shape[1])
        return self.norm(h)
