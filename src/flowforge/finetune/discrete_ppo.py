r"""Proximal policy optimisation of a discrete flow (InVirtuoGen's "Proximal Property Optimization").

Kaech, Wyss, Borgwardt, Grasso 2025, "Refine Drugs, Don't Complete Them: Uniform-Source Discrete Flows for
Fragment-Based Drug Discovery" (arXiv:2509.26405; code ``in_virtuo_reinforce/genetic_ppo.py``).

A discrete flow has no cheap exact sequence likelihood, so PPO uses a **surrogate log-probability**
(:func:`sequence_log_prob`). For a finished sequence :math:`x_1` and a time :math:`t_k`:

1. draw a fresh source :math:`x_0 \sim p_0` (uniform for InVirtuoGen);
2. corrupt along the mixture path, :math:`x_{t_k} \sim p_{t_k}(\cdot \mid x_0, x_1)` (each position keeps
   :math:`x_1^i` with probability :math:`\kappa_{t_k}`);
3. :math:`\log\pi_\theta(x_1; t_k) = \operatorname{mean}_{i \in C} \log p^\theta_{1|t}(x_1^i \mid x_{t_k})`
   over the corrupted (source-kept), non-pad positions :math:`C`.

Each pair :math:`(x_1, t_k)` is one PPO sample, with the times
:math:`t_k = (u/10 + k(1 - t_{start})/T) \bmod 1`, clipped at 0.99 (:func:`ppo_times`). The objective is
the clipped surrogate (Schulman et al. 2017)

.. math:: L = -\mathbb{E}\big[\min(\rho A_t,\ \operatorname{clip}(\rho, 1-\epsilon, 1+\epsilon) A_t)\big],
   \qquad \rho = \exp(\log\pi_\theta - \log\pi_{old}),

with batch-normalised advantages :math:`A = (r - \bar r)/\operatorname{sd}(r)`, negative ones scaled by
``c_neg``, then :math:`A_t = A / (1 - t^2)` (:func:`normalized_advantages`, :func:`clipped_surrogate`).
:math:`\pi_{old}` is a frozen copy of the policy from before the round, refreshed by
:meth:`DiscretePPO.refresh` after each round. As in InVirtuoGen there is **no KL-to-prior term** (their
``reverse_kl`` flag is unused) and no entropy bonus: only the clipping keeps the policy near
:math:`\pi_{old}`, and nothing keeps it near the pre-trained model over many rounds.

This is not the exact CTMC path likelihood; it is the quantity InVirtuoGen's code optimises.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

__all__ = [
    "Corruption",
    "DiscretePPO",
    "clipped_surrogate",
    "corrupt",
    "normalized_advantages",
    "ppo_times",
    "sequence_log_prob",
]


class PosteriorFlow(Protocol):
    """What PPO needs of a discrete flow (e.g. :class:`~flowforge.discrete.DiscreteFlowMatching`)."""

    path: Any  # MixturePath: .kappa(t) -> (kappa, d_kappa)
    source: Any  # Source: .sample(shape, generator, device=...)

    def posterior_logits(self, x_t: Tensor, t: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Corruption:
    """Corrupted copies of sequences, one per (sequence, time) pair, flattened row-major.

    Attributes:
        x_t: ``(B * T, L)`` corrupted tokens.
        t: ``(B * T,)`` times.
        mask: ``(B * T, L)`` float, 1 on corrupted, counted (non-pad) positions.
        rows: ``(B * T,)`` index of the sequence each row comes from.
    """

    x_t: Tensor
    t: Tensor
    mask: Tensor
    rows: Tensor


def ppo_times(
    batch: int,
    count: int,
    generator: torch.Generator | None = None,
    *,
    t_start: float = 0.0,
    t_max: float = 0.99,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""InVirtuoGen's PPO times :math:`t_k = (u/10 + k(1 - t_{start})/T) \bmod 1`, clipped at ``t_max``.

    One :math:`u \sim U(0, 1)` per sequence; returns ``(batch, count)``.

    Example:
        >>> t = ppo_times(2, 5, torch.Generator().manual_seed(0))
        >>> t.shape, bool((t >= 0).all() and (t <= 0.99).all())
        (torch.Size([2, 5]), True)
    """
    if count < 1:
        raise ValueError(f"the number of PPO times must be >= 1, got {count}; InVirtuoGen uses 50")
    u = torch.rand(batch, 1, generator=generator, device=device)
    k = torch.arange(count, device=device, dtype=u.dtype)[None, :]
    return torch.remainder(u / 10 + k * (1.0 - t_start) / count, 1.0).clamp(max=t_max)


def _counted(x1: Tensor, pad_id: int | None) -> Tensor:
    """``(B, L)`` bool: the positions that count, i.e. up to and including the first pad (the end token)."""
    if pad_id is None:
        return torch.ones_like(x1, dtype=torch.bool)
    is_pad = (x1 == pad_id).long()
    return (torch.cumsum(is_pad, dim=1) - is_pad) == 0


def corrupt(
    model: PosteriorFlow,
    x1: Tensor,
    t: Tensor,
    generator: torch.Generator | None = None,
    *,
    pad_id: int | None = None,
) -> Corruption:
    """Corrupt each sequence of ``x1: (B, L)`` at each of its times ``t: (B, T)`` along the model's path.

    A fresh source draw per pair; position ``i`` keeps ``x1[i]`` with probability kappa(t) (exactly
    :meth:`~flowforge.discrete.MixturePath.sample`, which does not return which positions were kept).
    With ``pad_id``, positions after a sequence's first pad do not count (the first pad plays
    InVirtuoGen's [EOS]).

    Example:
        >>> from flowforge.discrete import DiscreteFlowMatching
        >>> from flowforge.nn import TokenTransformer
        >>> dfm = DiscreteFlowMatching(TokenTransformer(5, 4, width=16, depth=1, heads=2), 5, source="uniform")
        >>> c = corrupt(dfm, torch.zeros(3, 4, dtype=torch.long), torch.rand(3, 2))
        >>> c.x_t.shape, c.rows.tolist()
        (torch.Size([6, 4]), [0, 0, 1, 1, 2, 2])
    """
    if x1.dim() != 2 or x1.dtype.is_floating_point:
        raise ValueError(
            f"x1 must be integer tokens (B, L), got {tuple(x1.shape)} {x1.dtype}; pass x1.long()"
        )
    if t.dim() != 2 or t.shape[0] != x1.shape[0]:
        raise ValueError(f"t must have shape (B, T) with B = {x1.shape[0]}, got {tuple(t.shape)}")
    b, n_t = t.shape
    rows = torch.arange(b, device=x1.device).repeat_interleave(n_t)
    x1r = x1[rows]
    tf = t.reshape(-1).to(torch.get_default_dtype())
    x0 = model.source.sample(tuple(x1r.shape), generator, device=x1.device)
    kappa = model.path.kappa(tf)[0]
    u = torch.rand(x1r.shape, generator=generator, device=x1.device, dtype=kappa.dtype)
    keep = u < kappa[:, None]
    x_t = torch.where(keep, x1r, x0)
    mask = (~keep & _counted(x1r, pad_id)).to(torch.get_default_dtype())
    return Corruption(x_t=x_t, t=tf, mask=mask, rows=rows)


def _log_prob(model: PosteriorFlow, x1: Tensor, c: Corruption) -> Tensor:
    """``(B * T,)`` mean log-posterior of ``x1`` over each row's counted corrupted positions (0 if none)."""
    logits = model.posterior_logits(c.x_t, c.t)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, x1[c.rows].unsqueeze(-1)).squeeze(-1)
    return (logp * c.mask).sum(-1) / c.mask.sum(-1).clamp(min=1.0)


def sequence_log_prob(
    model: PosteriorFlow,
    x1: Tensor,
    times: Tensor | int,
    generator: torch.Generator | None = None,
    *,
    pad_id: int | None = None,
) -> Tensor:
    r"""InVirtuoGen's surrogate :math:`\log\pi(x_1; t_k)` per sequence and time, ``(B, T)``.

    Args:
        model: a discrete flow with ``posterior_logits(x_t, t)``, ``path`` and ``source``.
        x1: finished sequences ``(B, L)`` int64.
        times: a count ``T`` (times from :func:`ppo_times`), a grid ``(T,)`` shared by all sequences, or
            ``(B, T)``.
        generator: randomness of the times, the source draws and the corruption.
        pad_id: the padding id (positions after the first pad are not counted); None: all count.

    Gradients flow to the network (call under ``torch.no_grad()`` for :math:`\pi_{old}`).

    Example:
        >>> from flowforge.discrete import DiscreteFlowMatching
        >>> from flowforge.nn import TokenTransformer
        >>> dfm = DiscreteFlowMatching(TokenTransformer(5, 4, width=16, depth=1, heads=2), 5, source="uniform")
        >>> x1 = torch.randint(0, 5, (3, 4), generator=torch.Generator().manual_seed(0))
        >>> sequence_log_prob(dfm, x1, 8, torch.Generator().manual_seed(1)).shape
        torch.Size([3, 8])
    """
    b = x1.shape[0]
    if isinstance(times, int):
        t = ppo_times(b, times, generator, device=x1.device)
    else:
        t = torch.as_tensor(times, device=x1.device)
        t = t.expand(b, -1) if t.dim() == 1 else t
    c = corrupt(model, x1, t, generator, pad_id=pad_id)
    return _log_prob(model, x1, c).reshape(t.shape)


def normalized_advantages(rewards: Tensor, c_neg: float = 1.0, eps: float = 1e-8) -> Tensor:
    r"""Advantages :math:`A = (r - \bar r) / \operatorname{sd}(r)` in the batch; negative ones times ``c_neg``.

    A batch of one (or of equal rewards) has zero advantages.

    Example:
        >>> normalized_advantages(torch.tensor([0.0, 1.0, 2.0]), c_neg=0.5)
        tensor([-0.5000,  0.0000,  1.0000])
    """
    dtype = rewards.dtype if rewards.dtype.is_floating_point else torch.get_default_dtype()
    r = rewards.double()
    if r.numel() < 2:
        return torch.zeros_like(r, dtype=dtype)
    a = (r - r.mean()) / (r.std() + eps)
    return torch.where(a < 0, c_neg * a, a).to(dtype)


def clipped_surrogate(
    logp_new: Tensor, logp_old: Tensor, advantages: Tensor, clip_eps: float = 0.2
) -> Tensor:
    r"""PPO's clipped loss :math:`-\operatorname{mean}\min(\rho A, \operatorname{clip}(\rho, 1\pm\epsilon) A)`.

    Example:
        >>> lp_old = torch.zeros(2)
        >>> lp_new = torch.log(torch.tensor([1.5, 0.5]))
        >>> clipped_surrogate(lp_new, lp_old, torch.tensor([1.0, 1.0]))  # -(1.2 + 0.5) / 2
        tensor(-0.8500)
    """
    ratio = torch.exp(logp_new - logp_old)
    a = advantages.to(ratio.dtype)
    return -torch.minimum(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a).mean()


class DiscretePPO:
    r"""InVirtuoGen's PPO step on a discrete flow (see the module docstring for the maths).

    Args:
        model: the policy, a :class:`~flowforge.discrete.DiscreteFlowMatching` (updated in place).
        lr: Adam learning rate (InVirtuoGen: 1e-5, with a cosine schedule and 10 warm-up steps that this
            class leaves out: the rate is constant).
        clip_eps: :math:`\epsilon` (0.2 for PMO, 0.5 for docking).
        c_neg: factor on negative advantages.
        num_timesteps: times :math:`T` per sequence (InVirtuoGen: 50).
        grad_clip: gradient-norm clip.
        minibatch: (sequence, time) pairs per gradient step.
        pad_id: padding id for :func:`corrupt`.

    There is no KL term to the pre-trained model (as in InVirtuoGen).

    Example:
        >>> from flowforge.discrete import DiscreteFlowMatching
        >>> from flowforge.nn import TokenTransformer
        >>> dfm = DiscreteFlowMatching(TokenTransformer(5, 4, width=16, depth=1, heads=2), 5, source="uniform")
        >>> ppo = DiscretePPO(dfm, num_timesteps=4)
        >>> x1 = torch.randint(0, 5, (6, 4), generator=torch.Generator().manual_seed(0))
        >>> stats = ppo.step(x1, torch.arange(6.0), torch.Generator().manual_seed(1))
        >>> sorted(stats)
        ['clip_fraction', 'loss', 'updates']
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float = 1e-5,
        clip_eps: float = 0.2,
        c_neg: float = 1.0,
        num_timesteps: int = 50,
        grad_clip: float = 2.0,
        minibatch: int = 256,
        pad_id: int | None = None,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}; InVirtuoGen uses 1e-5")
        if not clip_eps > 0:
            raise ValueError(f"clip_eps must be > 0, got {clip_eps}; e.g. 0.2")
        if num_timesteps < 1 or minibatch < 1:
            raise ValueError(f"num_timesteps and minibatch must be >= 1, got {num_timesteps}, {minibatch}")
        self.model, self.clip_eps, self.c_neg = model, float(clip_eps), float(c_neg)
        self.num_timesteps, self.grad_clip, self.minibatch = (
            int(num_timesteps),
            float(grad_clip),
            int(minibatch),
        )
        self.pad_id = pad_id
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=lr)
        self.old: nn.Module = copy.deepcopy(model).requires_grad_(False)

    def refresh(self) -> None:
        r"""Copy the current policy into :math:`\pi_{old}` (after each round)."""
        self.old.load_state_dict(self.model.state_dict())

    def advantages(self, rewards: Tensor) -> Tensor:
        """Batch-normalised advantages ``(B,)`` (negative ones scaled by ``c_neg``)."""
        return normalized_advantages(rewards, self.c_neg)

    def loss(self, x1: Tensor, advantages: Tensor, c: Corruption, logp_old: Tensor) -> Tensor:
        r"""The clipped loss on corrupted pairs ``c`` with advantages per sequence, times :math:`1/(1-t^2)`."""
        logp = _log_prob(self.model, x1, c)
        a = advantages.to(logp.device)[c.rows].to(logp.dtype) / (1.0 - c.t.to(logp.dtype) ** 2)
        return clipped_surrogate(logp, logp_old, a, self.clip_eps)

    def step(self, x1: Tensor, rewards: Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        """One PPO pass over ``x1: (B, L)`` with ``rewards: (B,)``: fresh times and corruptions, then
        minibatch Adam steps over the ``B * T`` pairs (in a random order). Returns the mean loss, the
        share of clipped ratios and the number of updates."""
        if x1.shape[0] != rewards.shape[0]:
            raise ValueError(f"x1 has {x1.shape[0]} sequences but rewards has {rewards.shape[0]} values")
        adv = self.advantages(rewards)
        t = ppo_times(x1.shape[0], self.num_timesteps, generator, device=x1.device)
        c = corrupt(self.model, x1, t, generator, pad_id=self.pad_id)
        with torch.no_grad():
            logp_old = _log_prob(self.old, x1, c)
        order = torch.randperm(len(c.rows), generator=generator).to(x1.device)
        losses, clipped, updates = [], 0.0, 0
        for idx in order.split(self.minibatch):
            part = Corruption(x_t=c.x_t[idx], t=c.t[idx], mask=c.mask[idx], rows=c.rows[idx])
            loss = self.loss(x1, adv, part, logp_old[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            self.optimizer.step()
            with torch.no_grad():
                ratio = torch.exp(_log_prob(self.model, x1, part) - logp_old[idx])
                clipped += float(((ratio - 1).abs() > self.clip_eps).float().sum())
            losses.append(float(loss.detach()))
            updates += 1
        return {"loss": sum(losses) / len(losses), "clip_fraction": clipped / len(c.rows), "updates": updates}
