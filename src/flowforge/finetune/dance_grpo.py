r"""DanceGRPO: group-relative policy optimisation of a flow through a marginal-preserving SDE.

Xue et al. 2025, "DanceGRPO: Unleashing GRPO on Visual Generation" (arXiv:2505.07818; code
``XueZeyue/DanceGRPO``, ``fastvideo/train_grpo_flux.py``: ``flux_step``, ``train_one_step``). The paper runs
time with :math:`s = 1` as noise; here :math:`t = 1 - s`, :math:`v_{ff}(x, t) = -v_{paper}(x, 1 - t)`
(flowforge's convention, ``DESIGN.md``).

**SDE** (:func:`sde_step`). On the linear path the ODE :math:`\dot x = v(x, t)` and the SDE

.. math:: dx = \big[v(x, t) + \tfrac12\eta^2\, s(x, t)\big]\,dt + \eta\, dW_t,\qquad
   s(x, t) = -\frac{x - t\,\hat x_1}{(1 - t)^2},\quad \hat x_1 = x + (1 - t)\,v,

have the same marginals :math:`p_t` (:math:`s = \nabla\log p_t`). One Euler–Maruyama step
:math:`t \to t + \Delta t` is a Gaussian :math:`\pi_\theta(x' \mid x) = \mathcal N(\mu, \sigma^2 I)` with
:math:`\mu = x + \Delta t\,(v + \tfrac12\eta^2 s)`, :math:`\sigma = \eta\sqrt{\Delta t}`, whose
log-density is averaged over the dimensions (:func:`gaussian_log_prob`, as the official code does).

**Groups and advantages** (:func:`group_advantages`). ``groups`` groups of ``group_size`` samples share a
condition and (with ``same_noise``) the initial noise; the summed reward :math:`R` of each sample becomes
:math:`A = \mathrm{clip}((R - \bar R_G)/(\mathrm{sd}_G + 10^{-8}), \pm A_{max})` (unbiased sd). With
``advantage="reinforce"`` the group normalisation is switched off: :math:`A = R - \bar R_{batch}` (plain
REINFORCE with a batch-mean baseline; the issue's baseline).

**Loss** (:meth:`DanceGRPO.loss`). For a random subset (``timestep_fraction``) of the steps of each
sample, :math:`\rho = \exp(\log\pi_\theta - \log\pi_{old})` and

.. math:: L = \operatorname{mean}\max\big(-A\rho,\ -A\,\mathrm{clip}(\rho, 1 - \epsilon, 1 + \epsilon)\big)
   + \beta_{KL}\, \operatorname{mean} \frac{\lVert \mu_\theta - \mu_{ref}\rVert^2}{2\sigma^2 D},

the second term (off by default, as in every official script) being the exact per-step KL between the
policy's and the frozen reference's Gaussian transitions (a reference-velocity penalty: on the linear
path :math:`\mu_\theta - \mu_{ref} = \Delta t\,(1 + \tfrac{\eta^2 t}{2(1 - t)})(v_\theta - v_{ref})`).
The reward is taken on :math:`\hat x_1` of the last step (the official code decodes that, not the noisy
final state).

Example:
    >>> import torch
    >>> from flowforge import FlowMatching
    >>> from flowforge.nn import MLP
    >>> from flowforge.finetune import HalfPlane
    >>> fm = FlowMatching(MLP(dim=2, width=16, depth=1), event_shape=(2,))
    >>> grpo = DanceGRPO(fm, HalfPlane((1.0, 0.0)), groups=2, group_size=4, steps=4,
    ...                  generator=torch.Generator().manual_seed(0))
    >>> loss = grpo.loss()
    >>> loss.backward()
    >>> grpo.last_stats["clip_fraction"], grpo.reward_evals  # first inner step: ratio 1, nothing clipped
    (0.0, 8)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from flowforge.finetune.rewards import Reward, total_reward

__all__ = [
    "DanceGRPO",
    "SDERollout",
    "VelocityModel",
    "gaussian_log_prob",
    "group_advantages",
    "sde_rollout",
    "sde_step",
    "shifted_grid",
]


class VelocityModel(Protocol):
    """What the fine-tuners need of a flow: ``velocity(x, t, **cond)`` (e.g. :class:`~flowforge.FlowMatching`)."""

    def velocity(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor: ...


def _bcast(a: Tensor, x: Tensor) -> Tensor:
    return a.reshape(-1, *([1] * (x.dim() - 1)))


def shifted_grid(steps: int, shift: float = 1.0, *, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""DanceGRPO's time grid :math:`t_i = u_i / (\text{shift} - (\text{shift} - 1) u_i)`, :math:`u_i = i/N`.

    The SD3/FLUX shift :math:`\sigma' = \text{shift}\,\sigma/(1 + (\text{shift}-1)\sigma)` with :math:`t = 1 - \sigma`;
    ``shift > 1`` puts more steps near the noise (small :math:`t`). Returns ``(steps + 1,)`` from 0 to 1.

    Example:
        >>> shifted_grid(2, 3.0)
        tensor([0.0000, 0.2500, 1.0000], dtype=torch.float64)
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}; DanceGRPO uses 16")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}; 1 is the uniform grid, FLUX uses 3")
    u = torch.arange(steps + 1, dtype=dtype) / steps
    return u / (shift - (shift - 1.0) * u)


def sde_step(v: Tensor, x: Tensor, t: Tensor, dt: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    r"""Mean and std of one step of the marginal-preserving SDE on the linear path.

    :math:`\hat x_1 = x + (1-t)v`, :math:`s = -(x - t\hat x_1)/(1-t)^2`,
    :math:`\mu = x + \Delta t\,(v + \tfrac12\eta^2 s)`, :math:`\sigma = \eta\sqrt{\Delta t}`.

    Args:
        v: velocity at ``(x, t)``, ``(B, *event)``.
        x: current state ``(B, *event)``.
        t: current times ``(B,)`` (each < 1).
        dt: step sizes ``(B,)`` (> 0).
        eta: the noise level :math:`\eta \ge 0` (0: the Euler step of the ODE).

    Returns:
        ``(mean (B, *event), std (B,))``.

    Example:
        >>> import torch
        >>> m, s = sde_step(torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1), torch.full((1,), 0.5), 1.0)
        >>> m, s  # score of N(0, I) at t = 0 is -x
        (tensor([[0.7500, 0.7500]]), tensor([0.7071]))
    """
    tb, db = _bcast(t, x), _bcast(dt, x)
    x1_hat = x + (1.0 - tb) * v
    score = -(x - tb * x1_hat) / (1.0 - tb) ** 2
    mean = x + db * (v + 0.5 * eta**2 * score)
    return mean, eta * dt.sqrt()


def gaussian_log_prob(x_next: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    r"""Gaussian log-density of each sample, averaged over its dimensions (DanceGRPO's convention), ``(B,)``.

    :math:`\operatorname{mean}_d\big[-(x'_d-\mu_d)^2/(2\sigma^2) - \log\sigma - \log\sqrt{2\pi}\big]`.

    Example:
        >>> import torch
        >>> gaussian_log_prob(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1))
        tensor([-0.9189])
    """
    s = _bcast(std, x_next)
    lp = -((x_next - mean) ** 2) / (2 * s**2) - torch.log(s) - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(1)


def group_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    normalize: bool = True,
    clip: float = 5.0,
    eps: float = 1e-8,
) -> Tensor:
    r"""Advantages of ``rewards: (B,)`` laid out group after group (``B = groups * group_size``), ``(B,)``.

    ``normalize=True`` (GRPO): :math:`A = \mathrm{clip}((R - \bar R_G)/(\mathrm{sd}_G + \epsilon), \pm\text{clip})`
    with the unbiased sd of each group. ``normalize=False`` (REINFORCE): :math:`A = R - \bar R` over the
    whole batch, no scaling and no clip.

    Example:
        >>> import torch
        >>> group_advantages(torch.tensor([1.0, 2.0, 3.0]), 3)
        tensor([-1.,  0.,  1.])
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be (B,), got shape {tuple(rewards.shape)}")
    if not normalize:
        return rewards - rewards.mean()
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(
            f"group normalisation needs group_size >= 2 dividing the batch, got group_size={group_size} "
            f"for {rewards.numel()} rewards; use e.g. group_size=8, or normalize=False (REINFORCE)"
        )
    r = rewards.reshape(-1, group_size)
    a = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)
    return a.clamp(-clip, clip).reshape(-1)


@dataclass(frozen=True)
class SDERollout:
    """A batch of SDE trajectories.

    Attributes:
        states: ``(K + 1, B, *event)`` the states at the grid times.
        log_probs: ``(K, B)`` :math:`\\log\\pi(x_{k+1} \\mid x_k)` (dimension-averaged).
        times: ``(K + 1,)`` the grid.
        x1: ``(B, *event)`` :math:`\\hat x_1` of the last step (what the reward sees).
    """

    states: Tensor
    log_probs: Tensor
    times: Tensor
    x1: Tensor


def sde_rollout(
    velocity: Callable[..., Tensor],
    x0: Tensor,
    grid: Tensor,
    eta: float,
    *,
    generator: torch.Generator | None = None,
    cond: dict[str, Tensor] | None = None,
) -> SDERollout:
    """Integrate the SDE of :func:`sde_step` from ``x0: (B, *event)`` over ``grid`` (0 -> 1), no gradients.

    Example:
        >>> import torch
        >>> r = sde_rollout(lambda x, t: -x, torch.zeros(3, 2), shifted_grid(4), 0.5,
        ...                 generator=torch.Generator().manual_seed(0))
        >>> tuple(r.states.shape), tuple(r.log_probs.shape)
        ((5, 3, 2), (4, 3))
    """
    cond = cond or {}
    x = x0
    states, lps = [x0], []
    x1 = x0
    with torch.no_grad():
        ts = grid.to(x0.dtype).tolist()
        for k in range(len(ts) - 1):
            t = torch.full((x.shape[0],), ts[k], dtype=x.dtype, device=x.device)
            dt = torch.full_like(t, ts[k + 1] - ts[k])
            v = velocity(x, t, **cond)
            mean, std = sde_step(v, x, t, dt, eta)
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x_next = mean + _bcast(std, x) * noise
            lps.append(gaussian_log_prob(x_next, mean, std))
            if k == len(ts) - 2:
                x1 = x + (1.0 - _bcast(t, x)) * v
            x = x_next
            states.append(x)
    return SDERollout(torch.stack(states), torch.stack(lps), grid.to(x0.dtype), x1)


class DanceGRPO(nn.Module):
    r"""DanceGRPO fine-tuning of a flow toward a reward (see the module docstring for the maths).

    An ``nn.Module`` with ``loss(batch=None)``: each call is one gradient step's loss (what the Trainer and
    a plain optimiser loop need). A call draws a new rollout when the previous one has been used for
    ``inner_epochs`` steps; the policy's trainable weights are the flow's, the frozen reference's are not.

    Args:
        flow: the policy, with ``velocity(x, t, **cond)`` (e.g. a trained :class:`~flowforge.FlowMatching`);
            updated in place.
        reward: one reward ``r(x, **cond) -> (B,)`` or several (summed with ``weights``).
        weights: weights of several rewards (default all 1).
        groups: number of groups per rollout.
        group_size: :math:`G`, samples per group (official FLUX: 12).
        steps: SDE steps :math:`K` (official: 16).
        eta: noise level :math:`\eta` (official FLUX 0.3; small 2-D problems want more, e.g. 0.7).
        shift: time-grid shift (:func:`shifted_grid`; official 3).
        timestep_fraction: share of the steps trained on per sample (official 0.6).
        clip_eps: PPO clip :math:`\epsilon` on the dimension-averaged ratio (official 1e-4 at ~1e5 dims).
        adv_clip: advantage clip (official 5).
        kl_coef: :math:`\beta_{KL}` of the per-step KL to the frozen reference (0: none, as official).
        inner_epochs: gradient steps per rollout (1: the ratio is 1 and clipping is inactive).
        advantage: ``"group"`` (GRPO) or ``"reinforce"`` (no group normalisation, batch-mean baseline).
        same_noise: the samples of a group share their initial noise (official ``init_same_noise``).
        cond_sampler: ``(groups, generator) -> cond`` conditions, one per group (repeated over the group).
        generator: randomness of the noise and of the step subsets (None: torch's global RNG).
    """

    def __init__(
        self,
        flow: nn.Module,
        reward: Reward | Sequence[Reward],
        *,
        weights: Sequence[float] | None = None,
        groups: int = 4,
        group_size: int = 8,
        steps: int = 16,
        eta: float = 0.7,
        shift: float = 1.0,
        timestep_fraction: float = 0.6,
        clip_eps: float = 1e-2,
        adv_clip: float = 5.0,
        kl_coef: float = 0.0,
        inner_epochs: int = 1,
        advantage: str = "group",
        same_noise: bool = True,
        cond_sampler: Callable[[int, torch.Generator | None], dict[str, Tensor]] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not callable(getattr(flow, "velocity", None)):
            raise TypeError(
                f"flow must have velocity(x, t, **cond) (e.g. a FlowMatching), got {type(flow).__name__}"
            )
        if advantage not in ("group", "reinforce"):
            raise ValueError(f"unknown advantage {advantage!r}; use 'group' (GRPO) or 'reinforce'")
        if groups < 1 or group_size < 1 or (advantage == "group" and group_size < 2):
            raise ValueError(
                f"need groups >= 1 and group_size >= 2 for group advantages, got {groups}, {group_size}; "
                "e.g. groups=4, group_size=8"
            )
        if not 0 < timestep_fraction <= 1:
            raise ValueError(f"timestep_fraction must be in (0, 1], got {timestep_fraction}; official 0.6")
        if not eta > 0:
            raise ValueError(
                f"eta must be > 0 (the SDE needs noise for log-probabilities), got {eta}; e.g. 0.7"
            )
        if inner_epochs < 1:
            raise ValueError(f"inner_epochs must be >= 1, got {inner_epochs}")
        if not clip_eps > 0:
            raise ValueError(f"clip_eps must be > 0, got {clip_eps}; e.g. 1e-2 (float('inf'): no clipping)")
        self.flow = flow
        self.reference = copy.deepcopy(flow).requires_grad_(False).eval()
        self.rewards = [reward] if callable(reward) else list(reward)
        self.weights = weights
        self.groups, self.group_size, self.steps = int(groups), int(group_size), int(steps)
        self.eta, self.timestep_fraction = float(eta), float(timestep_fraction)
        self.clip_eps, self.adv_clip, self.kl_coef = float(clip_eps), float(adv_clip), float(kl_coef)
        self.inner_epochs, self.advantage, self.same_noise = int(inner_epochs), advantage, bool(same_noise)
        self.cond_sampler = cond_sampler
        self.generator = generator
        self.register_buffer("grid", shifted_grid(self.steps, shift), persistent=False)
        self.reward_evals = 0
        self.last_stats: dict[str, float] = {}
        self._buffer: tuple[SDERollout, Tensor, Tensor, dict[str, Tensor]] | None = None
        self._passes_left = 0

    def _event_shape(self) -> tuple[int, ...]:
        shape = getattr(self.flow, "event_shape", None)
        if shape is None:
            raise RuntimeError(
                "the flow's event shape is unknown; build it with event_shape=... or train it first"
            )
        return tuple(shape)

    def rollout(self) -> tuple[SDERollout, Tensor, Tensor, dict[str, Tensor]]:
        """Sample ``groups * group_size`` trajectories and score them: ``(rollout, rewards, advantages, cond)``."""
        g, n = self.generator, self.groups * self.group_size
        p = next(self.flow.parameters())
        shape = self._event_shape()
        if self.same_noise:
            x0 = torch.randn((self.groups, *shape), generator=g, dtype=p.dtype, device=p.device)
            x0 = x0.repeat_interleave(self.group_size, 0)
        else:
            x0 = torch.randn((n, *shape), generator=g, dtype=p.dtype, device=p.device)
        cond: dict[str, Tensor] = {}
        if self.cond_sampler is not None:
            cond = {
                k: v.repeat_interleave(self.group_size, 0)
                for k, v in self.cond_sampler(self.groups, g).items()
            }
        was = self.flow.training
        self.flow.eval()
        ro = sde_rollout(self.flow.velocity, x0, self.grid, self.eta, generator=g, cond=cond)
        self.flow.train(was)
        with torch.no_grad():
            r = total_reward(self.rewards, ro.x1, cond, weights=self.weights)
        self.reward_evals += n
        adv = group_advantages(r, self.group_size, normalize=self.advantage == "group", clip=self.adv_clip)
        return ro, r, adv, cond

    def loss(self, batch: Any = None) -> Tensor:
        """One gradient step's loss (``batch`` is ignored: the policy makes its own samples)."""
        if self._buffer is None or self._passes_left == 0:
            self._buffer = self.rollout()
            self._passes_left = self.inner_epochs
        self._passes_left -= 1
        ro, r, adv, cond = self._buffer
        k_all, b = ro.log_probs.shape
        k = max(1, int(self.timestep_fraction * k_all))
        keys = torch.rand((b, k_all), generator=self.generator).to(ro.states.device)
        steps = keys.argsort(1)[:, :k]  # a random subset of steps per sample, (B, k)
        rows = torch.arange(b, device=steps.device)[:, None].expand(b, k).reshape(-1)
        idx = steps.reshape(-1)
        x, x_next = ro.states[idx, rows], ro.states[idx + 1, rows]
        t, dt = ro.times[idx], ro.times[idx + 1] - ro.times[idx]
        c = {key: val[rows] for key, val in cond.items()}
        mean, std = sde_step(self.flow.velocity(x, t, **c), x, t, dt, self.eta)
        logp = gaussian_log_prob(x_next, mean, std)
        ratio = torch.exp(logp - ro.log_probs[idx, rows])
        a = adv[rows].to(ratio.dtype)
        surrogate = torch.maximum(-a * ratio, -a * ratio.clamp(1 - self.clip_eps, 1 + self.clip_eps)).mean()
        kl = torch.zeros((), dtype=surrogate.dtype, device=surrogate.device)
        if self.kl_coef > 0:
            with torch.no_grad():
                mean_ref, _ = sde_step(self.reference.velocity(x, t, **c), x, t, dt, self.eta)
            kl = ((mean - mean_ref) ** 2).flatten(1).mean(1).div(2 * std**2).mean()
        self.last_stats = {
            "reward": float(r.mean()),
            "kl": float(kl.detach()),
            "clip_fraction": float(((ratio.detach() - 1).abs() > self.clip_eps).float().mean()),
            "ratio_dev": float((ratio.detach() - 1).abs().max()),
            "adv_std": float(adv.std()) if adv.numel() > 1 else 0.0,
        }
        return surrogate + self.kl_coef * kl
