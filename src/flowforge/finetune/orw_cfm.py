r"""ORW-CFM-W2: online reward-weighted conditional flow matching with a W2 regulariser.

Fan et al., ICLR 2025, "Online Reward-Weighted Fine-Tuning of Flow Matching with Wasserstein
Regularization" (arXiv:2502.06061; official code ``markerthu/orw-cfm``, ``finetune_fm.py``). The paper and
code already run time as flowforge does (torchcfm: :math:`t = 0` noise, :math:`t = 1` data).

The policy samples :math:`x_1 \sim q_{\theta_{last}}` by its own ODE, the reward weights them, and the
flow is regressed on them:

.. math:: L(\theta) = \mathbb E_{t,\,x_1 \sim q_{\theta_{last}},\,x_0}\Big[w(x_1)\,\lVert v_\theta(x_t, t)
   - u_t\rVert^2 + \alpha\,\lVert v_\theta(x_t, t) - v_{ref}(x_t, t)\rVert^2\Big],\qquad
   w(x_1) = e^{\beta r(x_1)},

with :math:`x_t = t x_1 + (1-t) x_0`, :math:`u_t = x_1 - x_0`, :math:`(x_0, x_1)` paired by the exact
minibatch OT coupling, squared norms averaged over the dimensions, :math:`w` **not** normalised (as in the
official code) and the :math:`\alpha` term not weighted. :math:`v_{ref}` is the frozen pre-trained flow;
:math:`\theta_{last}` (the sampling policy) is refreshed to :math:`\theta` every ``refresh_every`` steps
(an "epoch" of the official loop). The pointwise minimiser is
:math:`v^* = (\mathbb E[w u \mid x] + \alpha v_{ref})/(\mathbb E[w \mid x] + \alpha)`; :math:`\alpha = 0`
gives the velocity of the tilted law :math:`w\,q/Z` (and collapses to the reward's argmax over rounds).

Example:
    >>> import torch
    >>> from flowforge import FlowMatching
    >>> from flowforge.nn import MLP
    >>> from flowforge.finetune import HalfPlane
    >>> fm = FlowMatching(MLP(dim=2, width=16, depth=1), event_shape=(2,))
    >>> orw = ORWCFM(fm, HalfPlane((1.0, 0.0)), batch_size=16, sample_steps=2,
    ...              generator=torch.Generator().manual_seed(0))
    >>> orw.loss().backward()
    >>> orw.reward_evals
    16
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.couplings import MinibatchOT
from flowforge.core.solvers import Heun, solve, uniform_grid
from flowforge.finetune.rewards import Reward, total_reward

__all__ = ["ORWCFM", "weighted_cfm_w2_loss", "policy_samples"]


def _bcast(a: Tensor, x: Tensor) -> Tensor:
    return a.reshape(-1, *([1] * (x.dim() - 1)))


def weighted_cfm_w2_loss(
    flow: nn.Module,
    reference: nn.Module,
    x0: Tensor,
    x1: Tensor,
    t: Tensor,
    weights: Tensor,
    alpha: float,
    cond: dict[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    r""":math:`\operatorname{mean}_b\,[w_b \operatorname{mean}_d (v_\theta - u)^2 + \alpha \operatorname{mean}_d (v_\theta - v_{ref})^2]`.

    Args:
        flow, reference: models with ``velocity(x, t, **cond)``; the reference is evaluated without gradients.
        x0, x1: paired source and target ``(B, *event)``.
        t: times ``(B,)``.
        weights: :math:`w`, ``(B,)`` (per sample, or per sample and time).
        alpha: the W2 coefficient :math:`\alpha \ge 0`.

    Returns:
        ``(loss, w2)``: the scalar loss and the scalar regulariser :math:`\operatorname{mean}\lVert v_\theta - v_{ref}\rVert^2`.

    Example:
        >>> import torch
        >>> from flowforge import FlowMatching
        >>> from flowforge.nn import MLP
        >>> fm = FlowMatching(MLP(dim=2, width=8, depth=1), event_shape=(2,))
        >>> _, w2 = weighted_cfm_w2_loss(fm, fm, torch.randn(4, 2), torch.randn(4, 2), torch.rand(4),
        ...                              torch.ones(4), 1.0)
        >>> w2.item()
        0.0
    """
    cond = cond or {}
    tb = _bcast(t, x1)
    x_t = tb * x1 + (1.0 - tb) * x0
    u = x1 - x0
    v = flow.velocity(x_t, t, **cond)
    fm = ((v - u) ** 2).flatten(1).mean(1)
    w2 = torch.zeros_like(fm)
    if alpha > 0:
        with torch.no_grad():
            v_ref = reference.velocity(x_t, t, **cond)
        w2 = ((v - v_ref) ** 2).flatten(1).mean(1)
    return (weights.to(fm.dtype) * fm + alpha * w2).mean(), w2.mean().detach()


def policy_samples(
    model: nn.Module,
    x0: Tensor,
    steps: int,
    cond: dict[str, Tensor] | None = None,
) -> Tensor:
    """Samples of ``model``'s ODE from ``x0: (B, *event)`` by ``steps`` Heun steps, without gradients."""
    cond = cond or {}
    was = model.training
    model.eval()
    with torch.no_grad():
        x = solve(lambda x, t: model.velocity(x, t, **cond), x0, Heun(), uniform_grid(steps).to(x0.dtype)).x
    model.train(was)
    return x


class ORWCFM(nn.Module):
    r"""ORW-CFM-W2 fine-tuning (see the module docstring); ``loss(batch=None)`` is one gradient step's loss.

    Args:
        flow: the policy with ``velocity(x, t, **cond)``; updated in place.
        reward: one reward ``r(x, **cond) -> (B,)`` or several (summed with ``weights``).
        weights: weights of several rewards.
        alpha: W2 coefficient :math:`\alpha` (official 1; the README advises :math:`\ge 1`).
        beta: temperature :math:`\beta` of :math:`w = e^{\beta r}` (official 0.5).
        batch_size: policy samples (= reward evaluations) per step (official 128).
        sample_steps: Heun steps of the policy's sampler.
        refresh_every: steps between copies :math:`\theta \to \theta_{last}` (official: one epoch).
        ot: pair noise and samples by exact minibatch OT (official); False: independent pairs.
        cond_sampler: ``(batch_size, generator) -> cond``.
        generator: randomness of the noise and times (None: torch's global RNG).
    """

    def __init__(
        self,
        flow: nn.Module,
        reward: Reward | Sequence[Reward],
        *,
        weights: Sequence[float] | None = None,
        alpha: float = 1.0,
        beta: float = 0.5,
        batch_size: int = 128,
        sample_steps: int = 8,
        refresh_every: int = 10,
        ot: bool = True,
        cond_sampler: Callable[[int, torch.Generator | None], dict[str, Tensor]] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not callable(getattr(flow, "velocity", None)):
            raise TypeError(
                f"flow must have velocity(x, t, **cond) (e.g. a FlowMatching), got {type(flow).__name__}"
            )
        if not alpha >= 0:
            raise ValueError(
                f"alpha must be >= 0, got {alpha}; official 1.0 (0 collapses to the reward argmax)"
            )
        if batch_size < 1 or sample_steps < 1 or refresh_every < 1:
            raise ValueError(
                f"batch_size, sample_steps and refresh_every must be >= 1, got {batch_size}, {sample_steps}, "
                f"{refresh_every}"
            )
        self.flow = flow
        self.reference = copy.deepcopy(flow).requires_grad_(False).eval()
        self.last_policy = copy.deepcopy(flow).requires_grad_(False).eval()
        self.rewards = [reward] if callable(reward) else list(reward)
        self.weights = weights
        self.alpha, self.beta = float(alpha), float(beta)
        self.batch_size, self.sample_steps, self.refresh_every = (
            int(batch_size),
            int(sample_steps),
            int(refresh_every),
        )
        self.coupling = MinibatchOT() if ot else None
        self.cond_sampler = cond_sampler
        self.generator = generator
        self.reward_evals = 0
        self.calls = 0
        self.last_stats: dict[str, float] = {}

    def refresh(self) -> None:
        r"""Copy the current policy into :math:`\theta_{last}` (the sampling policy)."""
        self.last_policy.load_state_dict(self.flow.state_dict())

    def sample_and_score(self) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Draw ``(x0, x1, rewards, cond)``: policy samples ``x1`` from :math:`\\theta_{last}`, scored, and a
        fresh source batch ``x0`` paired with them (OT or independent)."""
        g = self.generator
        if self.calls and self.calls % self.refresh_every == 0:
            self.refresh()
        self.calls += 1
        p = next(self.flow.parameters())
        shape = tuple(self.flow.event_shape)
        cond = self.cond_sampler(self.batch_size, g) if self.cond_sampler is not None else {}
        z = torch.randn((self.batch_size, *shape), generator=g, dtype=p.dtype, device=p.device)
        x1 = policy_samples(self.last_policy, z, self.sample_steps, cond)
        with torch.no_grad():
            r = total_reward(self.rewards, x1, cond, weights=self.weights)
        self.reward_evals += self.batch_size
        x0 = torch.randn((self.batch_size, *shape), generator=g, dtype=p.dtype, device=p.device)
        if self.coupling is not None:
            i, j = self.coupling(x0, x1)
            x0, x1, r = x0[i], x1[j], r[j]
            cond = {k: v[j] for k, v in cond.items()}
        return x0, x1, r, cond

    def loss(self, batch: Any = None) -> Tensor:
        """One gradient step's loss (``batch`` is ignored: the policy makes its own samples)."""
        x0, x1, r, cond = self.sample_and_score()
        t = torch.rand((x1.shape[0],), generator=self.generator, dtype=x1.dtype).to(x1.device)
        w = torch.exp(self.beta * r)
        loss, w2 = weighted_cfm_w2_loss(self.flow, self.reference, x0, x1, t, w, self.alpha, cond)
        self.last_stats = {"reward": float(r.mean()), "w2": float(w2), "weight_max": float(w.max())}
        return loss
