r"""A transferable TARFlow over particles, conditioned on a per-token type sequence (Prose's idea).

Prose (Tan et al., "Amortized sampling with transferable normalizing flows", NeurIPS 2025,
arXiv:2508.18175) trains *one* TARFlow on many molecular systems, a token per atom, conditioned on the
atom and residue types, and uses it zero-shot as an importance-sampling / SMC proposal on systems it never
saw. :class:`TransferableTARFlow` is that model at toy scale: tokens are particles
:math:`u_t \in \mathbb R^{d}` of a system with types :math:`s_1, \dots, s_T`; block :math:`k` (data to
noise, token order flipped in odd blocks) is the autoregressive affine map

.. math::

    z_t = (u_t - \mu_t)\,e^{-\log\sigma_t}, \qquad (\log\sigma_t, \mu_t) = f_k\big(u_{<t};\ c_{\le t}\big),
    \qquad \log\Big|\det\frac{\partial z}{\partial u}\Big| = -\sum_{t,j}\log\sigma_{t,j},

with a learned start token (STARFlow), so every token is transformed, and :math:`f_k` a causal
transformer. The conditioning :math:`c_t` of token :math:`t` comes from a small *bidirectional* encoder
over the whole type sequence (type embedding + position + length), so the parameters of token :math:`t`
know the types of all particles, including later ones (Prose's look-ahead conditioning, generalised);
it does not depend on :math:`x`, so the Jacobian stays triangular. The position of context slot
:math:`t` sees :math:`c_t`, the conditioning of the token it predicts. Log-scales are soft-clipped,
:math:`\log\sigma = L\tanh(a/L)`. Coordinates are divided by a fixed ``scale`` before the flow.

Systems of different lengths share all weights (positions up to ``max_len``). A batch holds one length;
types are ``(T,)`` (shared) or ``(B, T)``. :meth:`TransferableTARFlow.bind` fixes a type sequence and
returns a :class:`BoundTransferableFlow` with the interface of :mod:`~flowforge.normalizing.importance`,
:mod:`~flowforge.normalizing.smc` and :class:`~flowforge.normalizing.SelfImprovement` (flat points
``(B, T d)``).

Example:
    >>> flow = TransferableTARFlow(num_types=3, blocks=2, width=16, layers=1, head_dim=8)
    >>> types = torch.tensor([0, 1, 2, 1])
    >>> x, log_q = flow.sample_and_log_prob(5, types, generator=torch.Generator().manual_seed(0))
    >>> x.shape, torch.allclose(flow.log_prob(x, types), log_q, atol=1e-4)
    (torch.Size([5, 8]), True)
    >>> flow.bind(types).sample(3).shape
    torch.Size([3, 8])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.batch import split_batch
from flowforge.nn.transformer import CausalTransformer

__all__ = ["BoundTransferableFlow", "TransferableTARFlow"]


class _Block(nn.Module):
    """One conditioned autoregressive affine block on ``(B, T, d)`` tokens with a learned start token."""

    def __init__(
        self, dim: int, width: int, layers: int, head_dim: int, max_len: int, clip: float, flip: bool
    ):
        super().__init__()
        self.flip, self.clip = flip, clip
        self.inp = nn.Linear(dim, width)
        self.cond = nn.Linear(width, width)
        self.pos = nn.Parameter(torch.randn(max_len, width) * 1e-2)
        self.sos = nn.Parameter(torch.randn(width) * 2e-2)
        self.trunk = CausalTransformer(width, layers, head_dim=head_dim)
        self.out = nn.Linear(width, 2 * dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def params(self, u: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, log_sigma)`` of every token, each ``(B, T, d)``, from tokens ``u`` and conditions ``c``."""
        b, t, _ = u.shape
        h = torch.cat([self.sos.to(u.dtype).expand(b, 1, -1), self.inp(u[:, :-1])], 1)
        h = h + self.cond(c) + self.pos[:t]
        mu, a = self.out(self.trunk(h)).chunk(2, -1)
        return mu, self.clip * torch.tanh(a / self.clip)

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        u, c = (x.flip(1), c.flip(1)) if self.flip else (x, c)
        mu, ls = self.params(u, c)
        z = (u - mu) * torch.exp(-ls)
        return (z.flip(1) if self.flip else z), -ls.sum((1, 2))

    def inverse(self, z: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        zz, c = (z.flip(1), c.flip(1)) if self.flip else (z, c)
        u = torch.zeros_like(zz)
        ls_all = torch.zeros_like(zz)
        for t in range(zz.shape[1]):  # token t needs u_{<t}: one causal pass a token (T is small)
            mu, ls = self.params(u, c)
            u = torch.cat([u[:, :t], (mu[:, t] + torch.exp(ls[:, t]) * zz[:, t])[:, None], u[:, t + 1 :]], 1)
            ls_all = torch.cat([ls_all[:, :t], ls[:, t : t + 1], ls_all[:, t + 1 :]], 1)
        return (u.flip(1) if self.flip else u), ls_all.sum((1, 2))


class TransferableTARFlow(nn.Module):
    r"""One TARFlow for a family of particle systems, conditioned on each system's type sequence.

    Args:
        num_types: number of particle types.
        spatial_dim: coordinates per particle ``d`` (a token's size).
        max_len: the longest system (number of particles) the model handles.
        blocks: autoregressive blocks ``K`` (odd ones flip the token order).
        width: transformer width.
        layers: transformer depth per block.
        head_dim: channels per attention head.
        scale: coordinates are divided by it before the flow (data of about unit size suit the base).
        log_sigma_clip: :math:`L` in :math:`\log\sigma = L\tanh(a/L)`.

    Shapes: points ``(B, T d)`` or ``(B, T, d)``; types ``(T,)`` or ``(B, T)`` integers in ``[0, num_types)``.
    """

    def __init__(
        self,
        num_types: int,
        spatial_dim: int = 2,
        *,
        max_len: int = 16,
        blocks: int = 4,
        width: int = 64,
        layers: int = 2,
        head_dim: int = 16,
        scale: float = 1.0,
        log_sigma_clip: float = 3.0,
    ) -> None:
        super().__init__()
        if num_types < 1 or spatial_dim < 1 or max_len < 2 or blocks < 1:
            raise ValueError(
                f"TransferableTARFlow needs num_types >= 1, spatial_dim >= 1, max_len >= 2 and blocks >= 1; "
                f"got {num_types}, {spatial_dim}, {max_len}, {blocks}"
            )
        if scale <= 0 or log_sigma_clip <= 0:
            raise ValueError(f"scale and log_sigma_clip must be positive, got {scale}, {log_sigma_clip}")
        self.num_types, self.spatial_dim, self.max_len = int(num_types), int(spatial_dim), int(max_len)
        self.scale = float(scale)
        self.type_emb = nn.Embedding(num_types, width)
        self.len_emb = nn.Embedding(max_len + 1, width)
        self.pos_emb = nn.Parameter(torch.randn(max_len, width) * 0.1)
        heads = max(1, width // head_dim)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.blocks = nn.ModuleList(
            _Block(spatial_dim, width, layers, head_dim, max_len, log_sigma_clip, flip=k % 2 == 1)
            for k in range(blocks)
        )

    # -- inputs ------------------------------------------------------------------------------------

    def _types(self, types: Any, batch: int, length: int | None, device: torch.device) -> Tensor:
        t = torch.as_tensor(types, device=device)
        if t.is_floating_point():
            raise ValueError(f"types must be integers in [0, {self.num_types}), got dtype {t.dtype}")
        if t.ndim == 1:
            t = t.expand(batch, -1)
        if t.ndim != 2 or t.shape[0] != batch:
            raise ValueError(f"types must have shape (T,) or ({batch}, T), got {tuple(t.shape)}")
        if length is not None and t.shape[1] != length:
            raise ValueError(
                f"the points hold {length} particles but the types list {t.shape[1]}; give one type a particle"
            )
        if not 2 <= t.shape[1] <= self.max_len:
            raise ValueError(f"systems need 2 to max_len={self.max_len} particles, got {t.shape[1]}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_types):
            raise ValueError(f"types must lie in [0, {self.num_types - 1}], got values {t.unique().tolist()}")
        return t.long()

    def _tokens(self, x: Tensor) -> Tensor:
        d = self.spatial_dim
        if x.ndim == 3 and x.shape[2] == d:
            return x
        if x.ndim == 2 and x.shape[1] % d == 0:
            return x.reshape(x.shape[0], -1, d)
        raise ValueError(f"points must have shape (B, T*{d}) or (B, T, {d}), got {tuple(x.shape)}")

    def condition(self, types: Tensor) -> Tensor:
        """Per-token conditioning ``(B, T, width)`` from integer types ``(B, T)`` (bidirectional encoder)."""
        t = types.shape[1]
        h = self.type_emb(types) + self.pos_emb[:t] + self.len_emb.weight[t]
        return self.encoder(h)

    # -- density -----------------------------------------------------------------------------------

    def forward(self, x: Tensor, types: Any) -> tuple[Tensor, Tensor]:
        """``(z, log|det dz/dx|)``: ``z`` tokens ``(B, T, d)``, ``ladj`` ``(B,)``."""
        u = self._tokens(x) / self.scale
        c = self.condition(self._types(types, u.shape[0], u.shape[1], u.device)).to(u.dtype)
        ladj = u.new_full((u.shape[0],), -u[0].numel() * math.log(self.scale))
        for block in self.blocks:
            u, l = block(u, c)
            ladj = ladj + l
        return u, ladj

    def log_prob(self, x: Tensor, types: Any) -> Tensor:
        r""":math:`\log q(x \mid s)`, ``(B,)``, under the standard normal base."""
        z, ladj = self(x, types)
        return -0.5 * z.square().sum((1, 2)) - 0.5 * z[0].numel() * math.log(2 * math.pi) + ladj

    def sample_and_log_prob(
        self, n: int, types: Any, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Samples ``(n, T d)`` and their :math:`\\log q` ``(n,)`` for one type sequence; gradients flow."""
        p = next(self.parameters())
        t = self._types(types, n, None, p.device)
        z = torch.randn(n, t.shape[1], self.spatial_dim, generator=generator, device=p.device, dtype=p.dtype)
        log_q = -0.5 * z.square().sum((1, 2)) - 0.5 * z[0].numel() * math.log(2 * math.pi)
        c = self.condition(t)
        u = z
        for block in reversed(self.blocks):
            u, l = block.inverse(u, c)
            log_q = log_q - l
        log_q = log_q + u[0].numel() * -math.log(self.scale)
        return (u * self.scale).reshape(n, -1), log_q

    @torch.no_grad()
    def sample(self, n: int, types: Any, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples ``(n, T d)`` for the type sequence ``types``."""
        return self.sample_and_log_prob(n, types, generator=generator)[0]

    def loss(self, batch: Any) -> Tensor:
        """Negative log-likelihood in nats per coordinate; the batch is ``(x, types)`` or ``{"x": x, "types": t}``."""
        if isinstance(batch, tuple | list) and len(batch) == 2:
            x, types = batch
        elif isinstance(batch, dict) and set(batch) == {"x", "types"}:
            x, types = batch["x"], batch["types"]
        else:
            raise ValueError(
                "TransferableTARFlow trains on (x, types) batches: x (B, T d) points, types (T,) or (B, T) "
                f"integers; got {type(batch).__name__}"
            )
        return -(self.log_prob(x, types) / x[0].numel()).mean()

    def bind(self, types: Any) -> BoundTransferableFlow:
        """The flow for one type sequence ``(T,)``: a proposal for IS, SMC and self-improvement."""
        return BoundTransferableFlow(self, types)

    def generator(self) -> TransferableTARFlow:
        return self


class BoundTransferableFlow(nn.Module):
    """A :class:`TransferableTARFlow` with its type sequence fixed: flat points ``(B, T d)``.

    Has ``sample_and_log_prob(n, generator=)``, ``log_prob(x)``, ``sample(n, generator=)`` and ``loss`` (MLE
    on points of this system), so :func:`~flowforge.normalizing.importance_sample`,
    :func:`~flowforge.normalizing.smc` and :class:`~flowforge.normalizing.SelfImprovement` take it as is;
    its parameters are the shared model's.

    Args:
        flow: the transferable model.
        types: the system's types ``(T,)``.
    """

    def __init__(self, flow: TransferableTARFlow, types: Any) -> None:
        super().__init__()
        t = torch.as_tensor(types)
        if t.ndim != 1:
            raise ValueError(f"bind takes one type sequence of shape (T,), got {tuple(t.shape)}")
        flow._types(t, 1, None, t.device)
        self.flow = flow
        self.register_buffer("types", t.long())

    @property
    def dim(self) -> int:
        return self.types.numel() * self.flow.spatial_dim

    @property
    def event_shape(self) -> tuple[int]:
        return (self.dim,)

    def _check(self, x: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"this system's points have shape (B, {self.dim}), got {tuple(x.shape)}")

    def log_prob(self, x: Tensor, **_: Any) -> Tensor:
        self._check(x)
        return self.flow.log_prob(x, self.types)

    def sample_and_log_prob(
        self, n: int, *, generator: torch.Generator | None = None, **_: Any
    ) -> tuple[Tensor, Tensor]:
        return self.flow.sample_and_log_prob(n, self.types, generator=generator)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, **_: Any) -> Tensor:
        return self.flow.sample(n, self.types, generator=generator)

    def loss(self, batch: Any) -> Tensor:
        x, _ = split_batch(batch)
        self._check(x)
        return -(self.log_prob(x) / self.dim).mean()

    def generator(self) -> BoundTransferableFlow:
        return self
