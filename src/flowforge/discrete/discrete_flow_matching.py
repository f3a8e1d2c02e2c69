r"""Discrete flow matching on tokens (Gat et al. 2024, "Discrete Flow Matching", arXiv:2407.15595).

:class:`DiscreteFlowMatching` chooses a source (masked, uniform or any factorised law), a mixture path
:math:`\kappa_t` from a :mod:`flowforge.core.schedules` schedule, a time sampler and a loss; the network
predicts the factorised posterior :math:`p_{1|t}(x_1^i \mid x_t)` as logits ``(B, L, V)``.
Losses (per token, averaged over the batch):

- ``"ce"``: cross-entropy on every position (Meta's text example; InVirtuoGen's "refinement, not
  completion", Kaech et al. 2025, arXiv:2509.26405);
- ``"ce_masked"``: cross-entropy on the masked positions only (masked source; MDLM-style, unweighted);
- ``"gkl"``: the generalised KL of Meta's ``MixturePathGeneralizedKL``, weight
  :math:`\dot\kappa_t/(1-\kappa_t)`; with uniform ``t``, ``L * loss`` estimates the negative ELBO.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.batch import split_batch
from flowforge.core.guidance import drop_labels
from flowforge.core.schedules import Schedule
from flowforge.core.time import TimeSampler, Uniform
from flowforge.discrete.generator import DiscreteGenerator
from flowforge.discrete.losses import generalized_kl, token_cross_entropy
from flowforge.discrete.paths import MixturePath
from flowforge.discrete.sources import CategoricalSource, MaskedSource, Source, UniformSource

__all__ = ["DiscreteFlowMatching", "LOSSES"]

LOSSES = ("ce", "ce_masked", "gkl")


def make_source(source: str | Tensor | Source, vocab_size: int) -> Source:
    """``"mask"``, ``"uniform"``, probabilities ``(S,)``/``(L, S)`` or a source object -> a source."""
    if isinstance(source, str):
        if source == "mask":
            return MaskedSource(vocab_size)
        if source == "uniform":
            return UniformSource(vocab_size)
        raise ValueError(
            f"unknown source {source!r}; use 'mask', 'uniform', a probability tensor or a Source"
        )
    if isinstance(source, Tensor):
        source = CategoricalSource(source)
    if not isinstance(source, Source):
        raise TypeError(
            f"source must be 'mask', 'uniform', a tensor or a Source, got {type(source).__name__}"
        )
    if source.num_states not in (vocab_size, vocab_size + 1):
        raise ValueError(
            f"the source has {source.num_states} states; with vocab_size={vocab_size} it needs {vocab_size} "
            f"(data tokens) or {vocab_size + 1} (the last id = the mask)"
        )
    return source


class DiscreteFlowMatching(nn.Module):
    """Discrete flow matching with a mixture path; ``loss(batch)`` for training, ``generator()`` to sample.

    Args:
        net: the network, called ``net(x_t, t, **cond) -> logits (B, L, vocab_size)`` with ``x_t: (B, L)``
            int64 (may hold the mask id ``vocab_size``) and ``t: (B,)``;
            e.g. :class:`~flowforge.nn.token_transformer.TokenTransformer`.
        vocab_size: number of data tokens ``V``; data ids lie in ``0..V-1``.
        source: ``"mask"``, ``"uniform"``, probabilities ``(S,)`` or ``(L, S)`` (``S = V`` or ``V + 1``),
            or a :class:`~flowforge.discrete.sources.Source`.
        schedule: :math:`\\kappa_t` as a schedule's ``alpha`` (default linear, :math:`\\kappa_t = t`).
        loss: ``"ce"``, ``"ce_masked"`` (masked source only) or ``"gkl"``.
        time: training-time sampler (default uniform; ``"gkl"`` is the ELBO only with uniform times).
        t_max: training times are ``t_max * time(...)``: the rate diverges at ``t = 1``.
        label_dropout: probability of replacing the class ``y`` by ``null_label`` (classifier-free guidance).
        null_label: the null class (defaults to ``net.num_classes`` when the net has it).
        length: sequence length for sampling; inferred from the first batch when omitted.

    Example:
        >>> import torch
        >>> from flowforge.nn import TokenTransformer
        >>> net = TokenTransformer(vocab_size=4, length=6, width=32, depth=1, heads=2)
        >>> dfm = DiscreteFlowMatching(net, vocab_size=4, source="mask")
        >>> loss = dfm.loss(torch.randint(0, 4, (8, 6)))
        >>> dfm.generator().sample(3, steps=4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 6])
    """

    def __init__(
        self,
        net: nn.Module,
        vocab_size: int,
        *,
        source: str | Tensor | Source = "mask",
        schedule: Schedule | None = None,
        loss: str = "ce",
        time: TimeSampler | None = None,
        t_max: float = 1.0 - 1e-3,
        label_dropout: float = 0.0,
        null_label: int | None = None,
        length: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(vocab_size, bool) or int(vocab_size) != vocab_size or vocab_size < 1:
            raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; use one of {LOSSES}")
        self.net = net
        self.vocab_size = int(vocab_size)
        self.source = make_source(source, self.vocab_size)
        if loss == "ce_masked" and not isinstance(self.source, MaskedSource):
            raise ValueError(
                "loss='ce_masked' needs source='mask'; use loss='ce' or 'gkl' with other sources"
            )
        self.path = MixturePath(schedule)
        self.loss_name = loss
        self.time = time if time is not None else Uniform()
        if not 0.0 < t_max <= 1.0:
            raise ValueError(f"t_max must be in (0, 1], got {t_max}; e.g. 1 - 1e-3")
        self.t_max = float(t_max)
        self.label_dropout = float(label_dropout)
        self.null_label = null_label if null_label is not None else getattr(net, "num_classes", None)
        if self.label_dropout > 0 and self.null_label is None:
            raise ValueError("label_dropout > 0 needs null_label=... (or a net with num_classes)")
        self.length = length

    def _check_tokens(self, x1: Any) -> Tensor:
        if not isinstance(x1, Tensor):
            raise ValueError(f"the batch must hold a LongTensor of token ids (B, L), got {type(x1).__name__}")
        if x1.dtype.is_floating_point or x1.dtype.is_complex or x1.dtype == torch.bool:
            raise ValueError(
                f"tokens must be integer ids (B, L), got dtype {x1.dtype}; pass x.long() "
                "(a one-hot or float batch is not accepted)"
            )
        if x1.dim() != 2:
            raise ValueError(
                f"tokens must have shape (B, L), got {tuple(x1.shape)}; reshape to (batch, length)"
            )
        if x1.numel() and (int(x1.min()) < 0 or int(x1.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in 0..{self.vocab_size - 1} (vocab_size={self.vocab_size}), got "
                f"{int(x1.min())}..{int(x1.max())}; raise vocab_size or remap the ids"
            )
        return x1.long()

    def posterior_logits(self, x_t: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        """The network's posterior logits ``(B, L, vocab_size)``, shape-checked."""
        logits = self.net(x_t, t, **cond)
        want = (*x_t.shape, self.vocab_size)
        if tuple(logits.shape) != want:
            raise ValueError(
                f"the net must return posterior logits (B, L, vocab_size) = {want}, got {tuple(logits.shape)}"
            )
        return logits

    def loss(self, batch: Any) -> Tensor:
        """The training loss on tokens ``x1: (B, L)`` (plus conditions such as ``y``); a scalar per token."""
        x1, cond = split_batch(batch)
        x1 = self._check_tokens(x1)
        if self.length is None:
            self.length = x1.shape[1]
        b = x1.shape[0]
        t = self.t_max * self.time(b, device=x1.device)
        x0 = self.source.sample(tuple(x1.shape), device=x1.device)
        x_t = self.path.sample(x0, x1, t).x_t
        if self.label_dropout > 0 and "y" in cond:
            cond["y"] = drop_labels(cond["y"], self.label_dropout, self.null_label)
        logits = self.posterior_logits(x_t, t, **cond)
        if self.loss_name == "gkl":
            return generalized_kl(logits, x1, x_t, self.path.jump_coefficient(t)).mean()
        ce = token_cross_entropy(logits, x1)
        if self.loss_name == "ce_masked":
            masked = (x_t == self.vocab_size).to(ce.dtype)
            return (ce * masked).sum() / masked.sum().clamp(min=1.0)
        return ce.mean()

    def generator(self) -> DiscreteGenerator:
        """The model as a :class:`~flowforge.discrete.generator.DiscreteGenerator` (sampling and the ELBO)."""
        params = self.net.parameters() if isinstance(self.net, nn.Module) else iter(())
        device = next(iter(params), torch.empty(0)).device
        return DiscreteGenerator(
            self.posterior_logits, self.path, self.source, self.vocab_size, self.length, device=device
        )
