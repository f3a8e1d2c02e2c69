r"""Demonstrations from a task's scripted expert, and closed-loop rollouts of a policy with success rate.

A *task* is a batch of episodes with ``reset(n, generator=...) -> obs (n, obs_dim)``,
``step(action (n, act_dim)) -> obs``, ``done()``, ``success()``, ``horizon``, and a scripted expert
``draw_modes(n, generator=...)`` / ``expert_action(modes)`` (e.g. :class:`~flowforge.apps.policies.Reach2D`,
:class:`~flowforge.apps.policies.Reacher`). A *policy* maps observations ``(n, obs_dim)`` to action chunks
``(n, chunk * act_dim)`` (:class:`~flowforge.apps.policies.ActionSampler`). As in diffusion policies
(Chi et al., 2023) and DM1, a chunk of ``chunk`` actions is predicted and executed open loop before the
next observation is used.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Demonstrations", "collect_demos", "rollout", "Rollout", "latency"]

Policy = Callable[..., Tensor]


@dataclass
class Demonstrations:
    """Pairs ``obs: (N, obs_dim)`` and action chunks ``actions: (N, chunk * act_dim)`` (float32).

    Called as ``demos(batch_size, generator)`` it draws a training batch ``{"x": actions, "obs": obs}``
    (the Trainer's callable data; ``x`` is what the flow generates, ``obs`` its condition).
    """

    obs: Tensor
    actions: Tensor
    chunk: int

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        idx = torch.randint(len(self), (batch_size,), generator=generator)
        return {"x": self.actions[idx], "obs": self.obs[idx]}


def collect_demos(task: Any, n_episodes: int, *, chunk: int = 1, seed: int = 0) -> Demonstrations:
    """Run the task's expert on ``n_episodes`` episodes and cut its actions into chunks.

    Every step ``k`` of a running episode gives the pair ``(o_k, [a_k, ..., a_{k+chunk-1}])``; steps past
    the episode's end repeat its last action.

    Args:
        task: the task (``reset``, ``step``, ``done``, ``draw_modes``, ``expert_action``, ``horizon``).
        n_episodes: expert episodes.
        chunk: actions per chunk (``>= 1``).
        seed: seeds the starts and the expert's modes.

    Example:
        >>> from flowforge.apps.policies import Reach2D
        >>> d = collect_demos(Reach2D(), 4, chunk=2, seed=0)
        >>> d.obs.shape[1], d.actions.shape[1]
        (4, 4)
    """
    if n_episodes < 1 or chunk < 1:
        raise ValueError(f"collect_demos needs n_episodes >= 1 and chunk >= 1, got {n_episodes}, {chunk}")
    g = torch.Generator().manual_seed(int(seed))
    obs = task.reset(n_episodes, generator=g)
    modes = task.draw_modes(n_episodes, generator=g)
    all_obs, all_act, alive = [], [], []
    for _ in range(task.horizon):
        alive.append(~task.done())
        all_obs.append(obs)
        a = task.expert_action(modes)
        all_act.append(a)
        obs = task.step(a)
    o = torch.stack(all_obs, 1)  # (n, T, obs_dim)
    a = torch.stack(all_act, 1)  # (n, T, act_dim)
    live = torch.stack(alive, 1)  # (n, T)
    horizon = a.shape[1]
    # after an episode ends, repeat its last live action
    last = (live.long().cumsum(1).clamp(min=1) - 1).clamp(max=horizon - 1)
    a = torch.gather(a, 1, last[:, :, None].expand_as(a))
    pad = a[:, -1:].expand(-1, chunk - 1, -1)
    a_pad = torch.cat([a, pad], 1)
    chunks = torch.stack([a_pad[:, k : k + chunk] for k in range(horizon)], 1).flatten(2)  # (n, T, chunk*A)
    return Demonstrations(o[live].float(), chunks[live].float(), int(chunk))


@dataclass
class Rollout:
    """Result of :func:`rollout`: per-episode ``success`` ``(n,)``, its mean ``success_rate``, the policy's
    seconds per batched call ``sec_per_call`` and the number of calls."""

    success: Tensor
    success_rate: float
    sec_per_call: float
    calls: int


def rollout(
    task: Any, policy: Policy, n_episodes: int, *, chunk: int = 1, seed: int = 0, execute: int | None = None
) -> Rollout:
    """Closed-loop rollouts of ``policy`` on ``n_episodes`` episodes (all at once, as a batch).

    Every ``execute`` steps (default ``chunk``) the policy is called on the current observations and its
    first ``execute`` actions are applied. The starts come from ``seed`` and the policy's noise from a
    separate generator seeded by ``seed + 1``, so the same seed gives the same rollout.

    Args:
        task: the task (see the module docstring).
        policy: ``policy(obs (n, obs_dim), generator=g) -> (n, chunk * act_dim)``.
        n_episodes: episodes.
        chunk: actions per policy output.
        seed: the seed of the starts and of the policy's noise.
        execute: actions applied per call, ``1 <= execute <= chunk``.
    """
    execute = chunk if execute is None else int(execute)
    if not 1 <= execute <= chunk:
        raise ValueError(f"execute must be in [1, chunk={chunk}], got {execute}")
    g_env = torch.Generator().manual_seed(int(seed))
    g_pol = torch.Generator().manual_seed(int(seed) + 1)
    obs = task.reset(n_episodes, generator=g_env)
    spent, calls, k = 0.0, 0, 0
    act_dim = task.act_dim
    while k < task.horizon and not bool(task.done().all()):
        t0 = time.perf_counter()
        out = policy(obs, generator=g_pol)
        spent += time.perf_counter() - t0
        calls += 1
        if out.shape != (n_episodes, chunk * act_dim):
            raise ValueError(
                f"the policy returned shape {tuple(out.shape)}, expected (n, chunk * act_dim) = "
                f"({n_episodes}, {chunk * act_dim}); check the run's chunk"
            )
        acts = out.reshape(n_episodes, chunk, act_dim)
        for j in range(execute):
            if k >= task.horizon:
                break
            obs = task.step(acts[:, j])
            k += 1
    success = task.success()
    return Rollout(success, float(success.float().mean()), spent / max(calls, 1), calls)


def latency(policy: Policy, obs: Tensor, *, repeats: int = 50, seed: int = 0) -> float:
    """Seconds of one policy call on ``obs`` (e.g. one observation ``(1, obs_dim)``): the best of ``repeats``
    calls after a warm-up (the timeit convention: on a shared machine the minimum is the least disturbed)."""
    g = torch.Generator().manual_seed(seed)
    policy(obs, generator=g)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy(obs, generator=g)
        times.append(time.perf_counter() - t0)
    return min(times)
