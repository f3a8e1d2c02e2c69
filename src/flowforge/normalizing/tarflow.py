r"""Transformer autoregressive flows: TARFlow and STARFlow, with sequential and Jacobi sampling.

TARFlow (Zhai et al. 2024, "Normalizing Flows are Capable Generative Models", arXiv:2412.06329)
stacks ``K`` autoregressive affine blocks on a sequence of tokens ``x: (B, T, D)`` (coordinates of
a vector, or patches of an image). Block ``k`` (the ``MetaBlock`` of apple/ml-tarflow) maps data
to noise by

.. math::

    u = \pi_k(x), \qquad z_t = (u_t - \mu_t(u_{<t}))\, \sigma_t(u_{<t})^{-1}, \qquad
    \log\left|\det \frac{\partial z}{\partial x}\right| = -\sum_{t, d} \log \sigma_{t,d},

where :math:`\pi_k` is the identity or the token flip (alternating between blocks) and
:math:`(\log\sigma_t, \mu_t) = (a_t, b_t)` come out of a causal transformer (zero-initialised output
projection, so each block starts as the identity). The shift by one token makes the Jacobian
triangular: the first token is left untouched (TARFlow), or, with a learned start-of-sequence
token (STARFlow, Gu et al. 2025), transformed by parameters that depend on the class only.
STARFlow also uses :math:`\sigma = \mathrm{softplus}(a + 0.5413)` (``softplus=True``; ``sigma = 1``
at ``a = 0``), soft-clips the projection to :math:`4\tanh(o/4)` (``soft_clip=4``) and puts one deep
block last in data-to-noise order (``layers=[2, 2, 2, 8]``), optionally the only conditioned one
(``cond_top_only=True``).

Sampling inverts the blocks in reverse order. Inside a block ``x_t = mu_t + sigma_t z_t`` needs
``x_{<t}``: ``method="sequential"`` runs the transformer token by token on a key/value cache
(``cuda_graph=True``: a static cache and one fixed-shape token step, replayed as a CUDA graph);
``method="jacobi"`` (STARFlow-V) splits the tokens into chunks and iterates
``x^{(i+1)}_t = mu_t(x^{(i)}_{<t}) + sigma_t(x^{(i)}_{<t}) z_t`` in parallel over a chunk from
``x^{(0)} = z`` until ``||x^{(i+1)} - x^{(i)}||^2 / ||x^{(i+1)}||^2 < tol`` (the squared relative
change of STARFlow-V, checked per sample, worst sample decides), rewinding the cache between
iterations. Iteration ``i`` makes the first ``i`` tokens of the chunk exact, so a chunk of ``n``
tokens never needs more than ``n`` iterations (Jacobi never makes more transformer calls than
sequential decoding). Between iterations the cache keeps the entries whose context is final: the
first position's, and those of every following position whose input token moved by less than the
tolerance, so later iterations only recompute the unsettled tail of the chunk. Jacobi trades
FLOPs (several evaluations per token) for fewer, larger calls: it pays off where calls, not
arithmetic, bound the time (GPUs, small batches on CPUs); see ``benchmarks/RESULTS-jacobi.md``.

Classifier-free guidance acts per token on the affine parameters of the conditional and the
unconditional (null-label) branch: TARFlow's linear rule ``a + g (a - a_u)``, ``b + g (b - b_u)``
(optionally annealed, ``g_k = (k + 1) / K * g`` over the ``K`` transformed tokens) or STARFlow's
Gaussian product of experts :func:`guided_affine`. ``guidance=0`` is plain conditional sampling
(unlike :class:`flowforge.core.guidance.ClassifierFreeGuidance`, where 1 is). Models trained on
noisy data ``x + sigma eps`` are denoised after sampling by one Tweedie step
``x + sigma^2 grad_x log p(x)`` with the flow's own score (TARFlow Sec. 2.3).

The latent variant of STARFlow (the flow on a frozen autoencoder's latents) is this same model on
latent tensors: encode the data, train ``TARFlow(image_shape=latent_shape, patch=1, ...)`` on the
latents, decode the samples: ``flowforge.latent.LatentModel(TARFlow(...), KLAutoencoder(...))`` does
this, and the ``mnist-latent-starflow`` recipe trains it on the ``mnist-ae`` autoencoder.

Example:
    >>> import torch
    >>> flow = TARFlow(dim=4, blocks=2, width=32, layers=1, head_dim=16)
    >>> x = torch.randn(8, 4)
    >>> flow.loss(x).ndim, flow.log_prob(x).shape
    (0, torch.Size([8]))
    >>> g = torch.Generator().manual_seed(0)
    >>> flow.sample(3, generator=g, method="jacobi").shape
    torch.Size([3, 4])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.core.batch import split_batch
from flowforge.core.guidance import drop_labels
from flowforge.nn.transformer import CausalTransformer, KVCache, StaticKVCache
from flowforge.normalizing.flow import Compose, Flow

__all__ = [
    "SamplingOptions",
    "TARFlowBlock",
    "TARFlow",
    "guided_affine",
    "patchify",
    "unpatchify",
]

_SOFTPLUS_SHIFT = math.log(math.e - 1.0)  # 0.5413: softplus(0 + shift) = 1
_METHODS = ("sequential", "jacobi")
_RULES = ("tarflow", "starflow")
# Jacobi defaults, measured on a 64-token model (benchmarks/RESULTS-jacobi.md): one large chunk needs
# fewest transformer calls; tol is on the squared relative change. 1e-9 reproduces the sequential
# samples to about 1e-4 (STARFlow-V's scripts use 1e-3: faster, but pixels move by about 1e-2), and
# max_iter = chunk size makes the fixed point exact (a chunk of n tokens settles in n iterations).
JACOBI_TOL, JACOBI_BLOCK, JACOBI_MAX_ITER = 1e-9, 64, 64


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def patchify(x: Tensor, patch: int) -> Tensor:
    """Images ``(B, C, H, W)`` to tokens ``(B, (H/p)(W/p), C p^2)``, row-major patches, ``(c, i, j)`` inside.

    The channel layout matches ``torch.nn.functional.unfold`` (TARFlow's ``patchify``).

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> patchify(x, 2)[0, 0]
        tensor([0., 1., 4., 5.])
        >>> torch.equal(unpatchify(patchify(x, 2), (1, 4, 4), 2), x)
        True
    """
    if x.dim() != 4:
        raise ValueError(f"patchify expects images (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not divisible by patch={patch}; pick a patch dividing both")
    x = x.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: Tensor, image_shape: Sequence[int], patch: int) -> Tensor:
    """Inverse of :func:`patchify`: ``(B, T, C p^2)`` to ``(B, C, H, W)`` for ``image_shape = (C, H, W)``."""
    c, h, w = image_shape
    b = tokens.shape[0]
    if tokens.shape[1:] != (h // patch * (w // patch), c * patch * patch):
        raise ValueError(
            f"tokens of shape {tuple(tokens.shape)} do not tile an image {tuple(image_shape)} with patch={patch}"
        )
    x = tokens.reshape(b, h // patch, w // patch, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def guided_affine(
    mu_c: Tensor,
    log_sigma_c: Tensor,
    mu_u: Tensor,
    log_sigma_u: Tensor,
    w: float | Tensor,
    rule: str = "tarflow",
) -> tuple[Tensor, Tensor]:
    r"""Guided per-token affine parameters ``(mu, log_sigma)`` from a conditional and an unconditional branch.

    ``rule="tarflow"`` (Zhai et al. 2024): the linear extrapolation of the raw parameters,
    :math:`\log\sigma = \log\sigma_c + w(\log\sigma_c - \log\sigma_u)`, :math:`\mu = \mu_c + w(\mu_c - \mu_u)`.

    ``rule="starflow"`` (Gu et al. 2025): the Gaussian proportional to
    :math:`\mathcal N(\mu_c, \sigma_c^2)^{1+w} / \mathcal N(\mu_u, \sigma_u^2)^{w}`, with the ratio clipped so
    the precision stays positive:

    .. math::

        s = \min(\sigma_c / \sigma_u, 1)^2, \quad
        \sigma = \frac{\sigma_c}{\sqrt{1 + w - w s}}, \quad
        \mu = \frac{(1 + w)\mu_c - w s \mu_u}{1 + w - w s}.

    Both give the conditional parameters at ``w = 0`` and leave equal branches unchanged.

    Args:
        mu_c, log_sigma_c: conditional shift and log-scale, any shape.
        mu_u, log_sigma_u: unconditional ones, same shape.
        w: guidance weight (a float or a tensor broadcasting against the parameters).
        rule: ``"tarflow"`` or ``"starflow"``.

    Example:
        >>> m, s = torch.tensor([1.0]), torch.tensor([0.0])
        >>> guided_affine(m, s, torch.tensor([0.0]), s, 2.0, "starflow")
        (tensor([3.]), tensor([0.]))
    """
    if rule == "tarflow":
        return mu_c + w * (mu_c - mu_u), log_sigma_c + w * (log_sigma_c - log_sigma_u)
    if rule == "starflow":
        s = torch.exp(2.0 * (log_sigma_c - log_sigma_u).clamp(max=0.0))
        denom = 1.0 + w - w * s
        return ((1.0 + w) * mu_c - w * s * mu_u) / denom, log_sigma_c - 0.5 * torch.log(denom)
    raise ValueError(f"unknown guidance_rule {rule!r}; use one of {', '.join(_RULES)}")


@dataclass(frozen=True)
class SamplingOptions:
    """How a :class:`TARFlowBlock` is inverted (see :meth:`TARFlow.sample` for every field).

    Attributes:
        method: ``"sequential"`` (token by token, KV cache) or ``"jacobi"`` (parallel fixed point).
        guidance: guidance weight ``g``; 0 is plain (conditional) sampling.
        guidance_rule: ``"tarflow"`` (linear on ``(a, b)``) or ``"starflow"`` (product of experts).
        annealed: ramp the weight linearly along the tokens, ``g_k = (k + 1) / K * g``.
        attn_temp: attention temperature of the unguided branch (TARFlow's guidance for
            unconditional models uses e.g. 0.3 with ``guidance=0.2``); 1 keeps the branch as is.
        jacobi_tol: stop a chunk when the squared relative change drops below this.
        jacobi_block: tokens per Jacobi chunk.
        jacobi_max_iter: at most this many iterations per chunk (never more than the chunk size).
        cuda_graph: fixed-shape steps, captured once per block as a CUDA graph and replayed (on a
            CPU they run eagerly); removes the host overhead that bounds small models on a GPU.
            Jacobi: one full causal pass over the current guess (no cache) per iteration.
            Sequential: one token step on a :class:`~flowforge.nn.transformer.StaticKVCache`
            (preallocated, position in a device counter) per token. Inference only.
    """

    method: str = "sequential"
    guidance: float = 0.0
    guidance_rule: str = "tarflow"
    annealed: bool = False
    attn_temp: float = 1.0
    jacobi_tol: float = JACOBI_TOL
    jacobi_block: int = JACOBI_BLOCK
    jacobi_max_iter: int = JACOBI_MAX_ITER
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"unknown sampling method {self.method!r}; use one of {', '.join(_METHODS)}")
        if self.guidance_rule not in _RULES:
            raise ValueError(f"unknown guidance_rule {self.guidance_rule!r}; use one of {', '.join(_RULES)}")
        if self.guidance_rule == "starflow" and self.guidance <= -1.0:
            raise ValueError(f"the starflow guidance rule needs guidance > -1, got {self.guidance}")
        if self.attn_temp <= 0:
            raise ValueError(f"attn_temp must be positive, got {self.attn_temp}")
        if self.jacobi_block < 1 or self.jacobi_max_iter < 1 or self.jacobi_tol < 0:
            raise ValueError(
                "Jacobi sampling needs jacobi_block >= 1, jacobi_max_iter >= 1 and jacobi_tol >= 0; got "
                f"{self.jacobi_block}, {self.jacobi_max_iter}, {self.jacobi_tol}"
            )

    @property
    def guided(self) -> bool:
        return self.guidance != 0.0


# --------------------------------------------------------------------------------------------------
# One block
# --------------------------------------------------------------------------------------------------


class TARFlowBlock(nn.Module):
    r"""One autoregressive affine flow block on tokens ``(B, T, D)`` (TARFlow's ``MetaBlock``).

    ``forward(x, y=None) -> (z, ladj)`` maps data to noise; ``ladj = -sum_{t,d} log sigma_{t,d}`` has
    shape ``(B,)`` (a true log-determinant, not the per-dimension mean of the reference code).
    ``inverse(z, y=None, options=..., stats=...) -> (x, log|det dx/dz|)`` samples.

    The transformer reads a *context* sequence: TARFlow's zero shift ``[x_0, ..., x_{T-2}]`` (output
    ``p`` gives the parameters of token ``p + 1``; token 0 is copied) or, with ``sos=True``,
    ``[SOS, x_0, ..., x_{T-2}]`` (output ``p`` gives token ``p``; every token is transformed).

    Args:
        seq_len: number of tokens ``T``.
        token_dim: channels per token ``D``.
        width: transformer width.
        layers: transformer depth.
        flip: reverse the token order before the autoregression (and back after).
        num_classes: classes of the label ``y``; label ``num_classes`` is the null label.
        sos: learned start token instead of the zero shift (STARFlow).
        softplus: ``sigma = softplus(a + 0.5413)`` instead of ``exp(a)`` (STARFlow).
        soft_clip: clip the output projection to ``c tanh(o / c)`` (STARFlow uses 4); None disables.
        heads, head_dim: attention heads (default ``width // head_dim``, at least 1).

    Example:
        >>> blk = TARFlowBlock(seq_len=6, token_dim=2, width=16, layers=1, head_dim=8)
        >>> x = torch.randn(3, 6, 2)
        >>> z, ladj = blk(x)  # zero-initialised output: the identity
        >>> torch.equal(z, x), ladj.shape
        (True, torch.Size([3]))
    """

    def __init__(
        self,
        seq_len: int,
        token_dim: int,
        width: int = 64,
        layers: int = 2,
        *,
        flip: bool = False,
        num_classes: int | None = None,
        sos: bool = False,
        softplus: bool = False,
        soft_clip: float | None = None,
        heads: int | None = None,
        head_dim: int = 64,
    ) -> None:
        super().__init__()
        if seq_len < 1 or token_dim < 1:
            raise ValueError(f"TARFlowBlock needs seq_len, token_dim >= 1; got {seq_len}, {token_dim}")
        if seq_len < 2 and not sos:
            raise ValueError("a single token is never transformed with the zero shift; use sos=True")
        if soft_clip is not None and soft_clip <= 0:
            raise ValueError(f"soft_clip must be positive (or None), got {soft_clip}")
        self.seq_len, self.token_dim, self.width = seq_len, token_dim, width
        self.flip, self.softplus, self.soft_clip = flip, softplus, soft_clip
        self.num_classes = num_classes
        self.off = 1 if sos else 0  # context position p holds token p - off; it predicts token p + 1 - off
        self.positions = seq_len - 1 + self.off
        self.in_proj = nn.Linear(token_dim, width)
        self.pos = nn.Parameter(torch.randn(self.positions, width) * 1e-2)
        self.sos = nn.Parameter(torch.randn(width) * 2e-2) if sos else None
        self.label = nn.Embedding(num_classes + 1, width) if num_classes else None
        if self.label is not None:
            nn.init.normal_(self.label.weight, std=2e-2)
        self.trunk = CausalTransformer(width, layers, heads=heads, head_dim=head_dim)
        self.out = nn.Linear(width, 2 * token_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    # -- pieces ------------------------------------------------------------------------------------

    def _check(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[1:] != (self.seq_len, self.token_dim):
            raise ValueError(
                f"TARFlowBlock expects tokens of shape (B, {self.seq_len}, {self.token_dim}), got {tuple(x.shape)}"
            )

    def _class(self, y: Tensor | None, batch: int) -> Tensor | None:
        """Class embedding ``(B, width)`` or None for an unconditional block."""
        if self.label is None:
            return None
        if y is None:  # no label: the null class (unconditional sampling of a conditional model)
            return self.label.weight[self.num_classes].expand(batch, -1)
        if y.shape != (batch,) or y.is_floating_point():
            raise ValueError(
                f"y must be integer class labels of shape ({batch},), got {y.dtype} {tuple(y.shape)}"
            )
        return self.label(y)

    def _embed(self, tokens: Tensor, p0: int | Tensor, cls: Tensor | None) -> Tensor:
        """Embed the context positions ``p0, p0 + 1, ...``; ``tokens`` are the data tokens among them.

        With ``p0`` a 0-dim device tensor (fixed-shape decoding) ``tokens`` is one token ``(B, 1, D)``,
        replaced by the start token where ``p0`` is the SOS position.
        """
        if isinstance(p0, Tensor):
            h = self.in_proj(tokens)
            if self.sos is not None:
                h = torch.where(p0 < self.off, self.sos.to(h.dtype), h)
            h = h + self.pos.index_select(0, p0.view(1))
            return h if cls is None else h + cls[:, None]
        parts = []
        if p0 < self.off:
            parts.append(self.sos.to(tokens.dtype).expand(tokens.shape[0], 1, -1))
        if tokens.shape[1]:
            parts.append(self.in_proj(tokens))
        h = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        h = h + self.pos[p0 : p0 + h.shape[1]]
        return h if cls is None else h + cls[:, None]

    def _affine(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Transformer output ``(B, n, width)`` to ``(mu, log_sigma)``, each ``(B, n, D)``."""
        o = self.out(h)
        if self.soft_clip is not None:
            o = self.soft_clip * torch.tanh(o / self.soft_clip)
        a, b = o.chunk(2, -1)
        log_sigma = torch.log(F.softplus(a + _SOFTPLUS_SHIFT)) if self.softplus else a
        return b, log_sigma

    def context_params(
        self,
        tokens: Tensor,
        p0: int | Tensor,
        cls: Tensor | None,
        cache: KVCache | StaticKVCache | None = None,
        attn_temp: float | Tensor = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """``(mu, log_sigma)`` at context positions ``p0, ...`` (tokens in the block's own order)."""
        return self._affine(self.trunk(self._embed(tokens, p0, cls), cache, attn_temp))

    # -- data to noise -----------------------------------------------------------------------------

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x: (B, T, D)`` -> ``(z, log|det dz/dx|)`` with ``z: (B, T, D)``, ``ladj: (B,)``."""
        self._check(x)
        u = x.flip(1) if self.flip else x
        mu, log_sigma = self.context_params(u[:, : self.seq_len - 1], 0, self._class(y, x.shape[0]))
        first = 1 - self.off  # index of the first transformed token
        z = torch.cat([u[:, :first], (u[:, first:] - mu) * torch.exp(-log_sigma)], 1)
        return (z.flip(1) if self.flip else z), -log_sigma.sum((1, 2))

    # -- noise to data -----------------------------------------------------------------------------

    def inverse(
        self,
        z: Tensor,
        y: Tensor | None = None,
        *,
        options: SamplingOptions | None = None,
        stats: dict[str, Any] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``z: (B, T, D)`` -> ``(x, log|det dx/dz|)``; ``options`` picks the method and the guidance."""
        self._check(z)
        opts = options or SamplingOptions()
        b = z.shape[0]
        zp = z.flip(1) if self.flip else z
        cls = self._class(y, b)
        # Guidance: the batch is doubled, second half the unconditional branch (null label and/or temperature).
        temp: float | Tensor = 1.0
        guided = opts.guided and (self.label is not None or opts.attn_temp != 1.0)
        if guided:
            null = self._class(None, b) if self.label is not None else None
            cls = None if cls is None else torch.cat([cls, null])
            if opts.attn_temp != 1.0:
                temp = torch.cat([z.new_ones(b), z.new_full((b,), opts.attn_temp)])
        weight = self._weights(opts, z) if guided else None

        def params(tokens: Tensor, p0: int | Tensor, cache: Any) -> tuple[Tensor, Tensor]:
            if not guided:
                return self.context_params(tokens, p0, cls, cache)
            mu, ls = self.context_params(torch.cat([tokens, tokens]), p0, cls, cache, temp)
            (mu_c, mu_u), (ls_c, ls_u) = mu.chunk(2), ls.chunk(2)
            w = (
                weight.index_select(1, p0.view(1))
                if isinstance(p0, Tensor)
                else weight[:, p0 : p0 + mu.shape[1]]
            )
            return guided_affine(mu_c, ls_c, mu_u, ls_u, w, opts.guidance_rule)

        run = self._sequential if opts.method == "sequential" else self._jacobi
        x, log_sigma = run(zp, params, opts, stats)
        return (x.flip(1) if self.flip else x), log_sigma.sum((1, 2))

    def _weights(self, opts: SamplingOptions, z: Tensor) -> Tensor:
        """Guidance weight per context position, ``(1, P, 1)``."""
        w = z.new_full((1, self.positions, 1), opts.guidance)
        if opts.annealed:
            ramp = torch.arange(1, self.positions + 1, dtype=z.dtype, device=z.device) / self.positions
            w = w * ramp.view(1, -1, 1)
        return w

    def _sequential(
        self, zp: Tensor, params: Any, opts: SamplingOptions, stats: dict | None
    ) -> tuple[Tensor, Tensor]:
        if opts.cuda_graph and not torch.is_grad_enabled():
            return self._sequential_graph(zp, params, opts, stats)
        cache = KVCache()
        toks = [zp[:, :1]] if self.off == 0 else []
        sigmas = []
        for p in range(self.positions):
            ctx = toks[p - self.off] if p >= self.off else zp[:, :0]
            mu, ls = params(ctx, p, cache)
            t = p + 1 - self.off
            toks.append(zp[:, t : t + 1] * torch.exp(ls) + mu)
            sigmas.append(ls)
        if stats is not None:
            stats["transformer_calls"] = stats.get("transformer_calls", 0) + self.positions
        return torch.cat(toks, 1), torch.cat(sigmas, 1)

    def _sequential_graph(
        self, zp: Tensor, params: Any, opts: SamplingOptions, stats: dict | None
    ) -> tuple[Tensor, Tensor]:
        """Token-by-token decoding with one fixed-shape step on a :class:`StaticKVCache`.

        The step reads its position from the cache's device counter, so the same kernels serve every
        token: on a GPU it is captured once per block as a CUDA graph and replayed for every later
        token (no host synchronisation at all); on a CPU it runs eagerly. Same samples as
        :meth:`_sequential` up to float rounding (attention runs over the masked full buffer).
        """
        first, n = 1 - self.off, self.positions
        cache = StaticKVCache(n, zp.device)
        x = zp.clone()  # token 0 is copied (zero shift); every other token is overwritten
        log_sigma = zp.new_zeros(zp.shape[0], n, zp.shape[2])
        cur = zp[:, :1].clone()  # the context token of the next step (ignored at the SOS position)

        def step() -> None:
            p = cache.pos.clone()  # context position of this step = tokens cached so far
            t = (p + first).view(1)  # the token it produces
            mu, ls = params(cur, p, cache)
            new = zp.index_select(1, t) * torch.exp(ls) + mu
            x.index_copy_(1, t, new)
            log_sigma.index_copy_(1, p.view(1), ls)
            cur.copy_(new)

        graph = None
        if zp.is_cuda:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                step()  # warm-up on a side stream, as capture requires; it is the first token
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()  # recorded, not run
        else:
            step()
        for _ in range(n - 1):
            graph.replay() if graph is not None else step()
        if stats is not None:
            stats["transformer_calls"] = stats.get("transformer_calls", 0) + n
        return x, log_sigma

    def _jacobi(
        self, zp: Tensor, params: Any, opts: SamplingOptions, stats: dict | None
    ) -> tuple[Tensor, Tensor]:
        if opts.cuda_graph and not torch.is_grad_enabled():
            return self._jacobi_graph(zp, params, opts, stats)
        cache, off, first = KVCache(), self.off, 1 - self.off
        # Without autograd the guesses are updated in place (fewer allocations and kernels per
        # iteration, which is what a launch-bound GPU pays for); with it, by concatenation.
        inplace = not torch.is_grad_enabled()
        u = zp.clone() if inplace else zp  # the initial guess is the noise itself (STARFlow-V)
        log_sigma = zp.new_zeros(zp.shape[0], self.positions, zp.shape[2])
        iters, calls, tokens = [], 0, 0
        for c0 in range(0, self.positions, opts.jacobi_block):
            c1 = min(c0 + opts.jacobi_block, self.positions)
            start, it = c0, 0
            while True:  # context positions < start are final and cached
                mu, ls = params(u[:, max(start - off, 0) : c1 - off], start, cache)
                new = torch.addcmul(mu, zp[:, start + first : c1 + first], torch.exp(ls))
                delta = new - u[:, start + first : c1 + first]
                if inplace:
                    u[:, start + first : c1 + first] = new
                    log_sigma[:, start:c1] = ls
                else:
                    u = torch.cat([u[:, : start + first], new, u[:, c1 + first :]], 1)
                    log_sigma = torch.cat([log_sigma[:, :start], ls, log_sigma[:, c1:]], 1)
                it, calls, tokens = it + 1, calls + 1, tokens + c1 - start
                if start + 1 == c1 or it >= opts.jacobi_max_iter:
                    break
                # squared change per token, relative to the chunk's mean squared token (worst sample)
                scale = u[:, c0 + first : c1 + first].square().sum((1, 2)) / (c1 - c0)
                change = (delta.square().sum(2) / scale.clamp_min(1e-30)[:, None]).amax(0)
                small = (change < opts.jacobi_tol).tolist()  # one device sync per iteration
                if all(small):  # then the chunk criterion sum |dx|^2 / sum |x|^2 < tol holds too
                    break
                # Output `start` saw a final context, so its cache entry is final; so is that of every
                # following position whose context token did not move in this iteration.
                keep = 1
                while keep < len(small) and small[keep - 1]:
                    keep += 1
                cache.rewind(c1 - start - keep)
                start += keep
                if start == c1:  # every context is final, hence so is every output just written
                    break
            iters.append(it)
        if stats is not None:
            stats.setdefault("jacobi_iters", []).extend(iters)
            stats["transformer_calls"] = stats.get("transformer_calls", 0) + calls
            stats["tokens"] = stats.get("tokens", 0) + tokens
        return u, log_sigma

    def _jacobi_graph(
        self, zp: Tensor, params: Any, opts: SamplingOptions, stats: dict | None
    ) -> tuple[Tensor, Tensor]:
        """Jacobi on the whole sequence with one fixed-shape step, replayed as a CUDA graph on a GPU."""
        first, n = 1 - self.off, self.positions
        u = zp.clone()
        log_sigma = zp.new_zeros(zp.shape[0], n, zp.shape[2])
        change = zp.new_zeros(n)

        def step() -> None:
            mu, ls = params(u[:, : n - self.off], 0, None)  # full causal pass, no cache
            new = torch.addcmul(mu, zp[:, first : first + n], torch.exp(ls))
            delta = new - u[:, first : first + n]
            u[:, first : first + n] = new
            log_sigma.copy_(ls)
            scale = new.square().sum((1, 2)) / n
            change.copy_((delta.square().sum(2) / scale.clamp_min(1e-30)[:, None]).amax(0))

        graph = None
        if zp.is_cuda:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                step()  # warm-up on a side stream, as capture requires; it is the first iteration
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
        else:
            step()
        it, limit = 1, min(opts.jacobi_max_iter, n)
        while it < limit:
            if bool((change < opts.jacobi_tol).all()):  # one device sync per iteration
                break
            graph.replay() if graph is not None else step()
            it += 1
        if stats is not None:
            stats.setdefault("jacobi_iters", []).append(it)
            stats["transformer_calls"] = stats.get("transformer_calls", 0) + it
            stats["tokens"] = stats.get("tokens", 0) + it * n
        return u, log_sigma


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class TARFlow(Flow):
    r"""TARFlow / STARFlow: a stack of :class:`TARFlowBlock` on vectors or images, with its own loss and sampler.

    Vectors ``(B, dim)`` are cut into ``dim / token_dim`` tokens; images ``(B, C, H, W)`` into
    ``(H/p)(W/p)`` patches of ``C p^2`` channels (:func:`patchify`). Block ``k`` (data to noise)
    flips the token order when ``k`` is odd.

    Args:
        dim: vector size (give this or ``image_shape``).
        image_shape: ``(C, H, W)`` for images.
        patch: patch size ``p`` for images.
        token_dim: channels per token for vectors (``dim`` must be divisible by it).
        blocks: number of flow blocks ``K``.
        width: transformer width.
        layers: transformer depth per block, an int or one per block; STARFlow's deep-shallow layout
            puts the deep block last, e.g. ``[2, 2, 2, 8]``.
        heads, head_dim: attention heads (default ``width // head_dim``, at least 1).
        num_classes: number of classes for class-conditional models (label ``num_classes`` is the null
            label used for classifier-free guidance).
        label_dropout: probability of replacing the label by the null label during training.
        cond_top_only: only the last (deep) block sees the label (STARFlow); guidance then acts there.
        sos, softplus, soft_clip: STARFlow's parameterisation (see :class:`TARFlowBlock`);
            ``sos=True, softplus=True, soft_clip=4.0`` is STARFlow's choice, the defaults TARFlow's.
        noise_std: Gaussian noise added to the training data, ``x + noise_std * eps``; None means
            0.05 for images (TARFlow's ImageNet-64 value) and 0 for vectors. Samples are denoised
            with one score step when it is positive.

    Example:
        >>> flow = TARFlow(image_shape=(1, 4, 4), patch=2, blocks=2, width=16, layers=[1, 2], head_dim=8,
        ...                num_classes=3)
        >>> x, y = torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
        >>> z, ladj = flow(x, y=y)
        >>> z.shape, ladj.shape
        (torch.Size([5, 1, 4, 4]), torch.Size([5]))
        >>> g = torch.Generator().manual_seed(0)
        >>> flow.sample(2, cond={"y": torch.tensor([1, 2])}, guidance=1.0, generator=g).shape
        torch.Size([2, 1, 4, 4])
    """

    def __init__(
        self,
        dim: int | None = None,
        *,
        image_shape: Sequence[int] | None = None,
        patch: int = 1,
        token_dim: int = 1,
        blocks: int = 4,
        width: int = 64,
        layers: int | Sequence[int] = 2,
        heads: int | None = None,
        head_dim: int = 64,
        num_classes: int | None = None,
        label_dropout: float = 0.1,
        cond_top_only: bool = False,
        sos: bool = False,
        softplus: bool = False,
        soft_clip: float | None = None,
        noise_std: float | None = None,
    ) -> None:
        if (dim is None) == (image_shape is None):
            raise ValueError("give exactly one of dim=D (vectors) or image_shape=(C, H, W) (images)")
        if image_shape is not None:
            if len(image_shape) != 3:
                raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
            c, h, w = (int(s) for s in image_shape)
            if patch < 1 or h % patch or w % patch:
                raise ValueError(
                    f"image size {h}x{w} is not divisible by patch={patch}; pick a patch dividing both"
                )
            event: tuple[int, ...] = (c, h, w)
            seq_len, tdim = (h // patch) * (w // patch), c * patch * patch
        else:
            if dim < 1 or token_dim < 1 or dim % token_dim:
                raise ValueError(f"dim={dim} must be a positive multiple of token_dim={token_dim}")
            event, seq_len, tdim = (dim,), dim // token_dim, token_dim
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks}")
        depths = [layers] * blocks if isinstance(layers, int) else [int(n) for n in layers]
        if len(depths) != blocks:
            raise ValueError(f"layers lists {len(depths)} depths for {blocks} blocks; give one per block")
        if not 0.0 <= label_dropout <= 1.0:
            raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")
        stack = [
            TARFlowBlock(
                seq_len,
                tdim,
                width,
                depths[k],
                flip=k % 2 == 1,
                num_classes=num_classes if (not cond_top_only or k == blocks - 1) else None,
                sos=sos,
                softplus=softplus,
                soft_clip=soft_clip,
                heads=heads,
                head_dim=head_dim,
            )
            for k in range(blocks)
        ]
        super().__init__(Compose(stack), event_shape=event)
        self.image_shape = event if image_shape is not None else None
        self.patch, self.seq_len, self.token_dim = patch, seq_len, tdim
        self.num_classes, self.label_dropout = num_classes, float(label_dropout)
        self.noise_std = float(
            noise_std if noise_std is not None else (0.05 if image_shape is not None else 0.0)
        )
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")

    @property
    def blocks(self) -> nn.ModuleList:
        """The flow blocks in data-to-noise order."""
        return self.transform.bijections

    # -- tokens ------------------------------------------------------------------------------------

    def tokenize(self, x: Tensor) -> Tensor:
        """``(B, *event)`` -> tokens ``(B, T, D)``."""
        self._check(x)
        if self.image_shape is not None:
            return patchify(x, self.patch)
        return x.reshape(x.shape[0], self.seq_len, self.token_dim)

    def untokenize(self, tokens: Tensor) -> Tensor:
        """Tokens ``(B, T, D)`` -> ``(B, *event)``."""
        if self.image_shape is not None:
            return unpatchify(tokens, self.image_shape, self.patch)
        return tokens.reshape(tokens.shape[0], *self.event_shape)

    def _label(self, cond: dict[str, Any], batch: int, device: torch.device) -> Tensor | None:
        extra = set(cond) - {"y"}
        if extra:
            raise ValueError(f"TARFlow is conditioned on y=(B,) class labels only; got {sorted(extra)}")
        y = cond.get("y")
        if y is None:
            return None
        if self.num_classes is None:
            raise ValueError("this TARFlow is unconditional; build it with num_classes=... to pass y")
        y = torch.as_tensor(y, device=device)
        if y.is_floating_point():
            raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
        if y.dim() == 0:
            y = y.expand(batch)
        if y.shape != (batch,):
            raise ValueError(f"y must have shape ({batch},) (one label per sample), got {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}] (label {self.num_classes} is the null label)"
            )
        return y.long()

    # -- Flow interface ----------------------------------------------------------------------------

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log|det dz/dx|)`` for data ``x: (B, *event)``; ``z`` has the event shape, ``ladj: (B,)``."""
        y = self._label(cond, x.shape[0], x.device)
        h, ladj = self.transform(self.tokenize(x), y=y)
        return self.untokenize(h), ladj

    def inverse(
        self,
        z: Tensor,
        *,
        options: SamplingOptions | None = None,
        stats: dict[str, Any] | None = None,
        **cond: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """``(x, log|det dx/dz|)`` for noise ``z: (B, *event)``, blocks in reverse order."""
        y = self._label(cond, z.shape[0], z.device)
        h = self.tokenize(z)
        ladj = z.new_zeros(z.shape[0])
        for block in reversed(self.blocks):
            h, l = block.inverse(h, y, options=options, stats=stats)
            ladj = ladj + l
        return self.untokenize(h), ladj

    def sample_and_log_prob(
        self,
        n: int,
        *,
        cond: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        method: str = "sequential",
        jacobi_tol: float = JACOBI_TOL,
        jacobi_block: int = JACOBI_BLOCK,
        jacobi_max_iter: int = JACOBI_MAX_ITER,
    ) -> tuple[Tensor, Tensor]:
        """Reparameterised samples ``(n, *event)`` and their model ``log q`` ``(n,)``; gradients flow.

        No guidance and no denoising (those change the distribution); with ``method="jacobi"`` the
        samples and log-densities are exact up to the Jacobi tolerance.
        """
        opts = SamplingOptions(
            method=method, jacobi_tol=jacobi_tol, jacobi_block=jacobi_block, jacobi_max_iter=jacobi_max_iter
        )
        z = self.base.sample(n, generator)
        x, ladj = self.inverse(z, options=opts, **(cond or {}))
        return x, self.base.log_prob(z) - ladj

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        method: str = "sequential",
        guidance: float = 0.0,
        guidance_rule: str = "tarflow",
        annealed: bool = False,
        attn_temp: float = 1.0,
        denoise: bool | None = None,
        jacobi_tol: float = JACOBI_TOL,
        jacobi_block: int = JACOBI_BLOCK,
        jacobi_max_iter: int = JACOBI_MAX_ITER,
        cuda_graph: bool = False,
        stats: dict[str, Any] | None = None,
        **_: Any,
    ) -> Tensor:
        r"""Draw ``n`` samples ``(n, *event)``.

        Args:
            n: number of samples.
            cond: ``{"y": (n,) labels}`` (or one int label) for class-conditional models; without it a
                conditional model samples with the null label.
            generator: source of the base noise.
            method: ``"sequential"`` (token by token on a KV cache) or ``"jacobi"`` (parallel chunks).
            guidance: classifier-free guidance weight ``g`` (0 = conditional sampling). Acts on the
                blocks that see the label; for unconditional models it needs ``attn_temp != 1``.
            guidance_rule: ``"tarflow"`` (linear on ``(log sigma, mu)``) or ``"starflow"`` (Gaussian
                product of experts), see :func:`guided_affine`.
            annealed: TARFlow's annealed guidance ``g_k = (k + 1) / K * g`` along the tokens.
            attn_temp: attention temperature of the unconditional branch.
            denoise: one Tweedie step ``x + noise_std^2 grad log p(x | y)``; default: when the model
                was trained with noise (``noise_std > 0``).
            jacobi_tol: squared relative change below which a Jacobi chunk stops.
            jacobi_block: tokens per Jacobi chunk.
            jacobi_max_iter: iteration cap per chunk.
            cuda_graph: fixed-shape steps replayed as CUDA graphs on a GPU, for both methods (Jacobi:
                one full pass per iteration; sequential: one static-cache token step per token; see
                :class:`SamplingOptions`). Compare the methods with the same setting.
            stats: a dict to fill with ``transformer_calls`` and (Jacobi) ``jacobi_iters`` per chunk.
            **_: options of other generators, ignored.
        """
        opts = SamplingOptions(
            method=method,
            guidance=float(guidance),
            guidance_rule=guidance_rule,
            annealed=annealed,
            attn_temp=float(attn_temp),
            jacobi_tol=jacobi_tol,
            jacobi_block=jacobi_block,
            jacobi_max_iter=jacobi_max_iter,
            cuda_graph=cuda_graph,
        )
        if opts.guided and self.num_classes is None and opts.attn_temp == 1.0:
            raise ValueError(
                "guidance needs a class-conditional model (num_classes=...) or, for an unconditional "
                "one, an attention temperature for the guiding branch (e.g. attn_temp=0.3)"
            )
        z = self.base.sample(n, generator)
        cond = dict(cond or {})
        x, _ = self.inverse(z, options=opts, stats=stats, **cond)
        if denoise is None:
            denoise = self.noise_std > 0
        if denoise:
            x = self.denoise(x, **cond)
        return x

    def score(self, x: Tensor, **cond: Tensor) -> Tensor:
        """``grad_x log p(x | y)``, ``(B, *event)`` (computed with autograd, outside any no_grad)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(xg, **cond).sum(), xg)
        return grad

    def denoise(self, x: Tensor, sigma: float | None = None, **cond: Tensor) -> Tensor:
        r"""Tweedie's one-step denoiser ``x + sigma^2 grad_x log p_sigma(x)`` (TARFlow Sec. 2.3).

        The flow models the noisy data ``x + sigma eps``, so its score gives the posterior mean of the
        clean data. ``sigma`` defaults to the training ``noise_std``.
        """
        s = self.noise_std if sigma is None else float(sigma)
        return x + s**2 * self.score(x, **cond)

    def loss(self, batch: Any) -> Tensor:
        """Negative log-likelihood in **nats per dimension** (mean over the batch).

        The batch is ``x``, ``(x, y)`` or ``{"x": x, "y": y}``. The data get Gaussian noise
        ``x + noise_std * eps`` and, for conditional models, labels are dropped to the null label
        with probability ``label_dropout`` (both drawn from torch's global generator, which the
        trainer seeds).
        """
        x, cond = split_batch(batch)
        y = self._label(cond, x.shape[0], x.device)
        if self.num_classes is not None and y is None:
            raise ValueError("this TARFlow is class-conditional: train on (x, y) batches")
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        if y is not None and self.training and self.label_dropout > 0:
            y = drop_labels(y, self.label_dropout, self.num_classes)
        cond = {} if y is None else {"y": y}
        return -(self.log_prob(x, **cond) / math.prod(self.event_shape)).mean()

    def generator(self) -> TARFlow:
        return self
