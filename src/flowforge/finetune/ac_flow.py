r"""AC-Flow-style actor-critic fine-tuning of a flow (UNVERIFIED equations; see below).

Fan et al. 2025, "AC-Flow" (arXiv:2510.18072; project page jiajunfan.com/projects/ac-flow). What is
verified (abstract and project page): (1) reward shaping so that intermediate values are learned on a
well-normalised scale, (2) a "dual-stability" mechanism, advantage clipping plus a critic warm-up during
which the critic does not act on the actor, (3) a critic-weighted CFM loss with W2 regularisation that
recovers ORW-CFM-W2 (:mod:`flowforge.finetune.orw_cfm`) as a special case. There is no public code and the
paper body was not read, so **the critic loss, the shaping, the weighting and the clip values below are
our derivation, not the paper's equations** (``verified-guidance-finetune-inverse.md`` §9):

- shaping: :math:`\tilde r = (r - \bar r)/(\mathrm{sd}(r) + 10^{-8})` over the batch (``shaping="none"``:
  :math:`\tilde r = r`);
- critic on intermediate states: :math:`V_\phi(x_t, t) \approx \mathbb E[\tilde r(x_1) \mid x_t]`, fitted by
  :math:`\operatorname{mean}(V_\phi(x_t, t) - \tilde r)^2` on the same interpolants the actor trains on;
- advantage: :math:`A = \mathrm{clip}(\tilde r - V_\phi(x_t, t), -c, c)` (``V`` detached);
- actor: the ORW-CFM-W2 loss with the per-interpolant weight :math:`w = e^{\beta A}`, and
  :math:`w = e^{\beta \tilde r}` (critic not used) during the first ``warmup`` steps.

With :math:`V_\phi \equiv 0`, ``shaping="none"`` and :math:`c = \infty` the actor's loss is exactly
ORW-CFM-W2's (a test checks this). The returned loss is ``actor + critic_coef * critic``: one optimiser
over the flow's and the critic's weights trains both (the critic's loss does not reach the flow, and the
advantage does not reach the critic).

Example:
    >>> import torch
    >>> from flowforge import FlowMatching
    >>> from flowforge.nn import MLP
    >>> from flowforge.finetune import HalfPlane
    >>> fm = FlowMatching(MLP(dim=2, width=16, depth=1), event_shape=(2,))
    >>> ac = ACFlow(fm, HalfPlane((1.0, 0.0)), batch_size=16, sample_steps=2, warmup=0,
    ...             generator=torch.Generator().manual_seed(0))
    >>> ac.loss().backward()
    >>> sorted(ac.last_stats)
    ['actor', 'adv_clip_fraction', 'critic', 'reward', 'w2']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.finetune.orw_cfm import ORWCFM, weighted_cfm_w2_loss
from flowforge.finetune.rewards import Reward
from flowforge.nn import MLP

__all__ = ["ACFlow", "shape_rewards"]


def shape_rewards(rewards: Tensor, how: str = "standardize", eps: float = 1e-8) -> Tensor:
    r"""Reward shaping :math:`\tilde r`: ``"standardize"`` (batch z-score) or ``"none"``; ``(B,)``.

    Example:
        >>> import torch
        >>> shape_rewards(torch.tensor([1.0, 2.0, 3.0]))
        tensor([-1.,  0.,  1.])
    """
    if how == "none":
        return rewards
    if how == "standardize":
        if rewards.numel() < 2:
            return torch.zeros_like(rewards)
        return (rewards - rewards.mean()) / (rewards.std() + eps)
    raise ValueError(f"unknown shaping {how!r}; use 'standardize' or 'none'")


class ACFlow(nn.Module):
    r"""AC-Flow-style fine-tuning (derived, not the paper's equations; see the module docstring).

    Args:
        flow: the policy with ``velocity(x, t, **cond)`` and ``event_shape``; updated in place.
        reward: one reward or several (summed with ``weights``).
        critic: :math:`V_\phi(x, t) -> (B, 1)` or ``(B,)`` (default: an MLP of width 64, depth 2).
        alpha, beta, batch_size, sample_steps, refresh_every, ot, cond_sampler, generator: as
            :class:`~flowforge.finetune.ORWCFM`.
        adv_clip: :math:`c` (``float('inf')``: no clipping).
        warmup: steps during which the critic trains but the actor uses :math:`e^{\beta\tilde r}`.
        shaping: ``"standardize"`` or ``"none"`` (see :func:`shape_rewards`).
        critic_coef: weight of the critic's loss in the returned sum.
    """

    def __init__(
        self,
        flow: nn.Module,
        reward: Reward | Sequence[Reward],
        *,
        critic: nn.Module | None = None,
        weights: Sequence[float] | None = None,
        alpha: float = 1.0,
        beta: float = 0.5,
        adv_clip: float = 2.0,
        warmup: int = 20,
        shaping: str = "standardize",
        critic_coef: float = 1.0,
        batch_size: int = 128,
        sample_steps: int = 8,
        refresh_every: int = 10,
        ot: bool = True,
        cond_sampler: Callable[[int, torch.Generator | None], dict[str, Tensor]] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.orw = ORWCFM(
            flow,
            reward,
            weights=weights,
            alpha=alpha,
            beta=beta,
            batch_size=batch_size,
            sample_steps=sample_steps,
            refresh_every=refresh_every,
            ot=ot,
            cond_sampler=cond_sampler,
            generator=generator,
        )
        if not adv_clip > 0:
            raise ValueError(f"adv_clip must be > 0, got {adv_clip}; e.g. 2.0 (float('inf'): none)")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0 steps, got {warmup}")
        shape_rewards(torch.zeros(2), shaping)  # validates the name
        self.flow, self.reference = flow, self.orw.reference
        self.beta, self.alpha = self.orw.beta, self.orw.alpha
        dim = 1
        for s in flow.event_shape:
            dim *= int(s)
        self.critic = critic if critic is not None else MLP(dim=dim, width=64, depth=2, out_dim=1)
        self.adv_clip, self.warmup, self.shaping = float(adv_clip), int(warmup), shaping
        self.critic_coef = float(critic_coef)

    @property
    def reward_evals(self) -> int:
        """Reward evaluations so far (one per policy sample)."""
        return self.orw.reward_evals

    def value(self, x_t: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        r""":math:`V_\phi(x_t, t)`, ``(B,)``."""
        return self.critic(x_t, t, **cond).reshape(x_t.shape[0])

    def loss(self, batch: Any = None) -> Tensor:
        """One gradient step's loss, actor + ``critic_coef`` * critic (``batch`` is ignored)."""
        warm = self.orw.calls < self.warmup
        x0, x1, r, cond = self.orw.sample_and_score()
        t = torch.rand((x1.shape[0],), generator=self.orw.generator, dtype=x1.dtype).to(x1.device)
        r_sh = shape_rewards(r, self.shaping)
        tb = t.reshape(-1, *([1] * (x1.dim() - 1)))
        x_t = tb * x1 + (1.0 - tb) * x0
        value = self.value(x_t, t, **cond)
        critic_loss = ((value - r_sh) ** 2).mean()
        if warm:
            adv = r_sh
            clipped = 0.0
        else:
            raw = r_sh - value.detach()
            adv = raw.clamp(-self.adv_clip, self.adv_clip)
            clipped = float((raw.abs() > self.adv_clip).float().mean())
        w = torch.exp(self.beta * adv)
        actor, w2 = weighted_cfm_w2_loss(self.flow, self.reference, x0, x1, t, w, self.alpha, cond)
        self.last_stats = {
            "reward": float(r.mean()),
            "actor": float(actor.detach()),
            "critic": float(critic_loss.detach()),
            "w2": float(w2),
            "adv_clip_fraction": clipped,
        }
        return actor + self.critic_coef * critic_loss
