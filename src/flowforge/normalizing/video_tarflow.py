r"""A frame-causal TARFlow for videos with STARFlow-V's global-local layout, Jacobi sampling across frames and
the flow-score-matching denoiser.

STARFlow-V (Gu et al. 2025, apple/ml-starflow, ``configs/starflow-v_*_caus_*.yaml``) models a video
``x = (x_1, ..., x_F)`` with a normalizing flow that is *causal in time*: the noise of frame ``f`` depends on
frames ``<= f`` only, so :math:`p(x) = \prod_f p(x_f \mid x_{<f})` and frames can be generated as a stream.
Its global-local design splits the blocks (data-to-noise order):

* ``K`` **shallow local** blocks act inside each frame: a :class:`~flowforge.normalizing.TARFlowBlock` over
  the ``N`` tokens of one frame (patches of ``C p^2`` channels, or ``token_dim`` slices of a frame vector),
  shared by all frames, alternating the token order; frames never mix here.
* one **deep global** block is an autoregressive affine flow over the ``F N`` tokens of the whole video in
  frame-major order (never flipped): token ``(f, n)`` is transformed by
  :math:`z_{f,n} = (u_{f,n} - \mu(u_{<(f,n)}))\,\sigma(u_{<(f,n)})^{-1}`, which is causal across frames.

Hence :math:`z = D(S_K \circ \dots \circ S_1(x))` and :math:`\log|\det \partial z/\partial x| =
\sum_{k, f}\log|\det S_k'(x_f)| - \sum_{f,n,d}\log\sigma_{f,n,d}` (triangular Jacobians). STARFlow's
parameterisation is used throughout (learned start token, ``sigma = softplus(a + 0.5413)``, soft-clipped
projection).

**Sampling** inverts the deep block first. ``method="sequential"`` decodes frame by frame, token by token
(one transformer call a token, on a key/value cache: ``F N`` calls). ``method="jacobi"`` (STARFlow-V's
video-aware Jacobi) updates ``jacobi_frames`` frames (default all) in parallel by the fixed point
:math:`u^{(i+1)}_{t} = \mu(u^{(i)}_{<t}) + \sigma(u^{(i)}_{<t})\, z_t` from :math:`u^{(0)} = z` until the squared
relative change drops below ``jacobi_tol`` (see :class:`~flowforge.normalizing.TARFlowBlock`); iteration
``i`` makes the first ``i`` tokens exact, so it never needs more calls than sequential decoding and usually
far fewer. The shallow blocks are then inverted for all frames at once (frames are the batch there).

**Denoising.** Trained on :math:`\tilde x = x + \sigma\epsilon` (``noise_std``), samples are denoised by
Tweedie's step :math:`x + \sigma^2\nabla\log p_\sigma(x)` with the flow's exact score (``denoise="tweedie"``:
a backward pass through the flow, non-causal) or with STARFlow-V's flow-score matching
(``denoise="learned"``): a light causal :class:`~flowforge.normalizing.FlowScoreDenoiser` trained jointly to
regress :math:`\sigma\nabla\log p_\theta(\tilde x)` on the noisy training videos (``denoiser_width > 0``).

Example:
    >>> flow = VideoTARFlow(frames=3, frame_shape=(1, 4, 4), patch=2, blocks=1, width=16, layers=1,
    ...                     deep_layers=1, head_dim=8, noise_std=0.1, denoiser_width=16)
    >>> x = torch.randn(2, 3, 1, 4, 4)
    >>> z, ladj = flow(x)
    >>> z.shape, ladj.shape, flow.loss(x).ndim
    (torch.Size([2, 3, 1, 4, 4]), torch.Size([2]), 0)
    >>> g = torch.Generator().manual_seed(0)
    >>> flow.sample(2, generator=g, method="jacobi", denoise="learned").shape
    torch.Size([2, 3, 1, 4, 4])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.batch import split_batch
from flowforge.normalizing.flow import Flow
from flowforge.normalizing.flow_score_denoiser import FlowScoreDenoiser
from flowforge.normalizing.tarflow import JACOBI_TOL, SamplingOptions, TARFlowBlock, patchify, unpatchify

__all__ = ["VideoTARFlow"]

_DENOISE = ("none", "tweedie", "learned")


class _GlobalLocal(nn.Module):
    """The bijection ``x -> z`` of :class:`VideoTARFlow` on frame tokens ``(B, F, N, D)``."""

    def __init__(self, shallow: list[TARFlowBlock], deep: TARFlowBlock, frames: int, tokens: int) -> None:
        super().__init__()
        self.shallow, self.deep = nn.ModuleList(shallow), deep
        self.frames, self.tokens = frames, tokens

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        b, f, n, d = h.shape
        u, ladj = h.reshape(b * f, n, d), h.new_zeros(b)
        for blk in self.shallow:
            u, l = blk(u)
            ladj = ladj + l.view(b, f).sum(1)
        z, l = self.deep(u.reshape(b, f * n, d))
        return z.view(b, f, n, d), ladj + l

    def inverse(
        self, z: Tensor, shallow_opts: SamplingOptions, deep_opts: SamplingOptions, stats: dict | None
    ) -> tuple[Tensor, Tensor]:
        b, f, n, d = z.shape
        u, ladj = self.deep.inverse(z.reshape(b, f * n, d), options=deep_opts, stats=stats)
        u = u.reshape(b * f, n, d)
        for blk in reversed(self.shallow):
            u, l = blk.inverse(u, options=shallow_opts, stats=stats)
            ladj = ladj + l.view(b, f).sum(1)
        return u.view(b, f, n, d), ladj


class VideoTARFlow(Flow):
    r"""A frame-causal TARFlow on videos ``(B, F, *frame)``: shallow per-frame blocks, one deep causal block.

    Args:
        frames: frames a video ``F``.
        frame_shape: ``(C, H, W)`` (frames cut into ``p x p`` patches) or ``(D,)`` (a frame vector, e.g. a
            per-frame autoencoder latent, cut into ``D / token_dim`` tokens).
        patch: patch size ``p`` for image frames.
        token_dim: channels a token for vector frames.
        blocks: number of shallow (within-frame) blocks ``K`` (0 allowed: the deep block alone).
        width: transformer width of every block.
        layers: depth of each shallow block.
        deep_layers: depth of the deep (global, causal across frames) block.
        head_dim: channels per attention head.
        noise_std: training noise :math:`\sigma` (``x + sigma * eps``); samples are denoised when positive.
        denoiser_width: width of the causal flow-score denoiser trained with the flow (0: none).
        denoiser_layers: its depth.
        denoiser_weight: weight of the flow-score-matching term in :meth:`loss`.
        denoiser_batch: the term uses the first this many videos of a batch (its score target costs a
            forward and backward pass of the flow on them); None: the whole batch.
    """

    def __init__(
        self,
        frames: int,
        frame_shape: Sequence[int],
        *,
        patch: int = 1,
        token_dim: int = 1,
        blocks: int = 2,
        width: int = 64,
        layers: int = 1,
        deep_layers: int = 4,
        head_dim: int = 32,
        noise_std: float = 0.0,
        denoiser_width: int = 0,
        denoiser_layers: int = 2,
        denoiser_weight: float = 1.0,
        denoiser_batch: int | None = None,
    ) -> None:
        frame_shape = tuple(int(s) for s in frame_shape)
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if len(frame_shape) == 3:
            c, h, w = frame_shape
            if patch < 1 or h % patch or w % patch:
                raise ValueError(
                    f"frame size {h}x{w} is not divisible by patch={patch}; pick a patch dividing both"
                )
            n_tok, tdim = (h // patch) * (w // patch), c * patch * patch
        elif len(frame_shape) == 1:
            if token_dim < 1 or frame_shape[0] % token_dim:
                raise ValueError(
                    f"frame size {frame_shape[0]} must be a positive multiple of token_dim={token_dim}"
                )
            n_tok, tdim = frame_shape[0] // token_dim, token_dim
        else:
            raise ValueError(f"frame_shape must be (C, H, W) or (D,), got {frame_shape}")
        if blocks < 0 or layers < 1 or deep_layers < 1:
            raise ValueError(
                f"VideoTARFlow needs blocks >= 0, layers >= 1, deep_layers >= 1; got {blocks}, {layers}, {deep_layers}"
            )
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if denoiser_width and noise_std <= 0:
            raise ValueError("a flow-score denoiser needs noise-augmented training: set noise_std > 0")
        star = {"sos": True, "softplus": True, "soft_clip": 4.0, "head_dim": head_dim}
        shallow = [TARFlowBlock(n_tok, tdim, width, layers, flip=k % 2 == 1, **star) for k in range(blocks)]
        deep = TARFlowBlock(frames * n_tok, tdim, width, deep_layers, **star)
        super().__init__(_GlobalLocal(shallow, deep, frames, n_tok), event_shape=(frames, *frame_shape))
        self.frames, self.frame_shape, self.patch = int(frames), frame_shape, int(patch)
        self.tokens, self.token_dim = n_tok, tdim
        self.noise_std, self.denoiser_weight = float(noise_std), float(denoiser_weight)
        if denoiser_batch is not None and denoiser_batch < 1:
            raise ValueError(f"denoiser_batch must be >= 1 (or None: the whole batch), got {denoiser_batch}")
        self.denoiser_batch = denoiser_batch
        self.denoiser = (
            FlowScoreDenoiser(
                frames, frame_shape, denoiser_width, denoiser_layers, head_dim=head_dim, sigma=noise_std
            )
            if denoiser_width
            else None
        )

    # -- tokens ------------------------------------------------------------------------------------

    def tokenize(self, x: Tensor) -> Tensor:
        """Videos ``(B, F, *frame)`` -> frame tokens ``(B, F, N, D)``."""
        self._check(x)
        b = x.shape[0]
        if len(self.frame_shape) == 3:
            t = patchify(x.reshape(b * self.frames, *self.frame_shape), self.patch)
            return t.view(b, self.frames, self.tokens, self.token_dim)
        return x.reshape(b, self.frames, self.tokens, self.token_dim)

    def untokenize(self, h: Tensor) -> Tensor:
        """Frame tokens ``(B, F, N, D)`` -> videos ``(B, F, *frame)``."""
        b = h.shape[0]
        if len(self.frame_shape) == 3:
            x = unpatchify(
                h.reshape(b * self.frames, self.tokens, self.token_dim), self.frame_shape, self.patch
            )
            return x.view(b, self.frames, *self.frame_shape)
        return h.reshape(b, self.frames, *self.frame_shape)

    # -- Flow interface ----------------------------------------------------------------------------

    def _nocond(self, cond: dict[str, Any]) -> None:
        if cond:
            raise ValueError(f"VideoTARFlow is unconditional; got conditions {sorted(cond)}")

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log|det dz/dx|)`` for videos ``x: (B, F, *frame)``; ``z`` has the video's shape."""
        self._nocond(cond)
        z, ladj = self.transform(self.tokenize(x))
        return self.untokenize(z), ladj

    def options(
        self,
        method: str = "sequential",
        *,
        jacobi_tol: float = JACOBI_TOL,
        jacobi_frames: int | None = None,
        jacobi_max_iter: int | None = None,
    ) -> tuple[SamplingOptions, SamplingOptions]:
        """Sampling options of the shallow blocks (a chunk = one frame) and the deep block (``jacobi_frames``)."""
        chunk = self.frames if jacobi_frames is None else int(jacobi_frames)
        if not 1 <= chunk <= self.frames:
            raise ValueError(
                f"jacobi_frames must be in 1..{self.frames} (frames a Jacobi chunk), got {chunk}"
            )
        deep_n = chunk * self.tokens
        deep = SamplingOptions(
            method=method,
            jacobi_tol=jacobi_tol,
            jacobi_block=deep_n,
            jacobi_max_iter=jacobi_max_iter or deep_n,
        )
        shallow = SamplingOptions(
            method=method,
            jacobi_tol=jacobi_tol,
            jacobi_block=self.tokens,
            jacobi_max_iter=jacobi_max_iter or self.tokens,
        )
        return shallow, deep

    def inverse(
        self,
        z: Tensor,
        *,
        method: str = "sequential",
        jacobi_tol: float = JACOBI_TOL,
        jacobi_frames: int | None = None,
        jacobi_max_iter: int | None = None,
        stats: dict[str, Any] | None = None,
        **cond: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """``(x, log|det dx/dz|)`` for noise ``z: (B, F, *frame)`` (see :meth:`sample` for the options)."""
        self._nocond(cond)
        shallow, deep = self.options(
            method, jacobi_tol=jacobi_tol, jacobi_frames=jacobi_frames, jacobi_max_iter=jacobi_max_iter
        )
        h, ladj = self.transform.inverse(self.tokenize(z), shallow, deep, stats)
        return self.untokenize(h), ladj

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        method: str = "sequential",
        denoise: str | None = None,
        jacobi_tol: float = JACOBI_TOL,
        jacobi_frames: int | None = None,
        jacobi_max_iter: int | None = None,
        stats: dict[str, Any] | None = None,
        **_: Any,
    ) -> Tensor:
        """Draw ``n`` videos ``(n, F, *frame)``.

        Args:
            n: number of videos.
            cond: must be empty (the model is unconditional).
            generator: source of the base noise.
            method: ``"sequential"`` (frame by frame, token by token) or ``"jacobi"`` (frames in parallel).
            denoise: ``"none"``, ``"tweedie"`` (the flow's own score) or ``"learned"`` (the causal
                flow-score denoiser); default ``"learned"`` when there is a denoiser, else ``"tweedie"``
                when ``noise_std > 0``, else ``"none"``.
            jacobi_tol: squared relative change below which a Jacobi chunk stops.
            jacobi_frames: frames a Jacobi chunk of the deep block (default: all frames at once).
            jacobi_max_iter: iteration cap a chunk (default: its number of tokens, which makes it exact).
            stats: a dict to fill with ``transformer_calls`` (sequential passes) and ``jacobi_iters``.
            **_: options of other generators, ignored.
        """
        self._nocond(dict(cond or {}))
        z = self.base.sample(n, generator)
        x, _ = self.inverse(
            z,
            method=method,
            jacobi_tol=jacobi_tol,
            jacobi_frames=jacobi_frames,
            jacobi_max_iter=jacobi_max_iter,
            stats=stats,
        )
        return self.apply_denoiser(x, denoise)

    def apply_denoiser(self, x: Tensor, denoise: str | None = None) -> Tensor:
        """``x`` denoised by ``denoise`` (``"none"``, ``"tweedie"``, ``"learned"``; default as in :meth:`sample`)."""
        if denoise is None:
            denoise = (
                "learned" if self.denoiser is not None else ("tweedie" if self.noise_std > 0 else "none")
            )
        if denoise not in _DENOISE:
            raise ValueError(f"unknown denoise {denoise!r}; use one of {', '.join(_DENOISE)}")
        if denoise == "none":
            return x
        if self.noise_std <= 0:
            raise ValueError(
                f"denoise={denoise!r} needs a flow trained with noise_std > 0; use denoise='none'"
            )
        if denoise == "learned":
            if self.denoiser is None:
                raise ValueError("this flow has no learned denoiser; build it with denoiser_width > 0")
            with torch.no_grad():
                return self.denoiser.denoise(x)
        return x + self.noise_std**2 * self.score(x)

    def score(self, x: Tensor) -> Tensor:
        r""":math:`\nabla_x\log p(x)`, ``(B, F, *frame)`` (autograd, also under ``no_grad``)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(xg).sum(), xg)
        return grad

    def loss(self, batch: Any) -> Tensor:
        r"""NLL in nats a dimension on :math:`x + \sigma\epsilon`, plus the flow-score-matching term.

        With a denoiser: ``+ denoiser_weight * ||D(x~) - sigma grad log p(x~)||^2`` (mean over the first
        ``denoiser_batch`` videos), the target detached (it trains the denoiser only). The noise comes from torch's global generator (the
        trainer seeds it).
        """
        x, cond = split_batch(batch)
        self._nocond(cond)
        dim = math.prod(self.event_shape)
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        nll = -(self.log_prob(x) / dim).mean()
        if self.denoiser is None:
            return nll
        sub = x[: self.denoiser_batch].detach()
        fsm = self.denoiser.loss(sub, self.noise_std * self.score(sub))
        return nll + self.denoiser_weight * fsm

    def generator(self) -> VideoTARFlow:
        return self
