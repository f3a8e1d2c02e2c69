"""``reach-flow``, ``reach-meanflow``, ``reach-meanflow-disp``, ``reach-mse`` and ``reacher-*``: policies
learned from a scripted expert's demonstrations (DM1: MeanFlow with the dispersive regulariser; Zou et al.,
2025, arXiv:2510.07865).

::

    flowforge train reach-meanflow-disp --out runs/reach-mfd
    flowforge eval runs/reach-mfd                  # success_rate, ms_per_action, expert_success, ...
    flowforge eval runs/reach-flow-run --steps 50  # a flow policy with 50 Euler steps
    flowforge train reacher-meanflow --out runs/reacher-mf   # needs pip install "flowforge[robot]"

``reach-*``: the pure-torch 2-D task :class:`~flowforge.apps.policies.Reach2D` (go around an obstacle left
or right; bimodal demonstrations). ``reacher-*``: MuJoCo ``Reacher-v5``
(:class:`~flowforge.apps.policies.Reacher`; two elbow solutions). Methods, all on the same
:class:`~flowforge.nn.ObsMLP` (``width x depth``) predicting chunks of ``chunk`` actions: ``flow``
(:class:`~flowforge.continuous.FlowMatching`, Euler with ``sample_steps`` = 10 steps), ``meanflow``
(:class:`~flowforge.continuous.MeanFlow`, 1 jump), ``meanflow-disp`` (MeanFlow plus
``dispersive_weight`` x the dispersive loss of ``dispersive_layer``, the observation embedding), ``mse``
(:class:`~flowforge.apps.policies.RegressionPolicy`).

**Eval keys** (``flowforge eval`` JSON): ``success_rate`` over ``eval_episodes`` (or ``--n``) closed-loop
episodes from fresh starts (seed ``--seed``); ``expert_success`` (the scripted expert on the same starts:
the control); ``ms_per_action`` (best-of-30 latency of one policy call on one observation, divided by
``chunk``) and ``ms_per_call`` (one call on the whole batch of episodes); ``effective_rank`` and
``mean_distance`` of the observation embeddings of 256 start observations
(:func:`~flowforge.apps.policies.embedding_stats`); ``steps``. ``sample`` draws action chunks at fresh
start observations.

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("reach-meanflow-disp")
    >>> r.defaults["dispersive_weight"], r.defaults["sample_steps"], "success_rate" in r.metrics
    (0.5, 1, True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from flowforge.apps.policies import (
    ActionSampler,
    Reach2D,
    Reacher,
    RegressionPolicy,
    collect_demos,
    embedding_stats,
    latency,
    observation_embeddings,
    rollout,
)
from flowforge.continuous import FlowMatching, MeanFlow, MeanFlowTimes
from flowforge.core.choices import unknown_choice
from flowforge.core.time import Uniform
from flowforge.nn import ObsMLP
from flowforge.recipes.registry import Recipe, register

__all__ = ["POLICY_METRICS", "make_task", "build_policy", "policy_data", "policy_evaluate"]

POLICY_METRICS = (
    "success_rate",
    "expert_success",
    "ms_per_action",
    "ms_per_call",
    "effective_rank",
    "mean_distance",
)
_TASKS = ("reach2d", "reacher")
_METHODS = ("flow", "meanflow", "mse")


def make_task(config: dict[str, Any]) -> Any:
    """The task of a config: ``task=reach2d`` (with ``mode``) or ``task=reacher`` (MuJoCo)."""
    task = config["task"]
    if task == "reach2d":
        return Reach2D(mode=str(config.get("mode", "random")))
    if task == "reacher":
        return Reacher()
    raise unknown_choice("task", task, _TASKS, hint="--set task=reach2d")


def build_policy(config: dict[str, Any]) -> nn.Module:
    """The policy model: ``method=flow`` (FlowMatching), ``meanflow`` (MeanFlow, optional dispersive) or ``mse``."""
    task = make_task(config) if config["task"] == "reach2d" else None
    obs_dim = task.obs_dim if task is not None else Reacher.obs_dim
    act = (task.act_dim if task is not None else Reacher.act_dim) * int(config["chunk"])
    width, depth, method = int(config["width"]), int(config["depth"]), config["method"]
    if method == "flow":
        return FlowMatching(ObsMLP(act, obs_dim, width, depth))
    if method == "mse":
        return RegressionPolicy(ObsMLP(act, obs_dim, width, depth))
    if method == "meanflow":
        weight = float(config["dispersive_weight"])
        return MeanFlow(
            ObsMLP(act, obs_dim, width, depth, two_times=True),
            times=MeanFlowTimes(Uniform(), diagonal=float(config["diagonal"])),
            p=float(config["adaptive_p"]),
            dispersive_weight=weight,
            dispersive_layers=(str(config["dispersive_layer"]),) if weight > 0 else (),
            tau=float(config["tau"]),
            event_shape=(act,),
        )
    raise unknown_choice("method", method, _METHODS, hint="--set method=meanflow")


def policy_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``n_demos`` expert episodes cut into ``(obs, action chunk)`` pairs (seed ``1000 + seed``)."""
    if int(config["n_demos"]) < 1 or int(config["chunk"]) < 1:
        raise ValueError(f"n_demos and chunk must be >= 1, got {config['n_demos']}, {config['chunk']}")
    demos = collect_demos(
        make_task(config),
        int(config["n_demos"]),
        chunk=int(config["chunk"]),
        seed=1000 + int(config.get("seed", 0)),
    )
    return demos, {"n_pairs": len(demos)}


class StartActions:
    """``sample(n, generator=g, steps=K)``: action chunks ``(n, chunk * act_dim)`` at ``n`` fresh start observations."""

    def __init__(self, model: nn.Module, config: dict[str, Any]) -> None:
        self.model, self.config = model, config

    def sample(self, n: int, *, generator: torch.Generator | None = None, steps: int | None = None) -> Tensor:
        obs = make_task(self.config).reset(n, generator=generator)
        k = int(steps if steps is not None else self.config["sample_steps"])
        return ActionSampler(self.model, steps=k)(obs, generator=generator)


def _sample_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    return {"steps": int(given.get("steps", config["sample_steps"]))}


def _expert_success(task: Any, n: int, seed: int) -> float:
    g = torch.Generator().manual_seed(int(seed))
    task.reset(n, generator=g)
    modes = task.draw_modes(n, generator=torch.Generator().manual_seed(int(seed) + 1))
    for _ in range(task.horizon):
        task.step(task.expert_action(modes))
    return float(task.success().float().mean())


def policy_evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Any,
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Closed-loop success rate, the expert's success on the same starts, latency and embedding spread."""
    steps = int(options.get("steps") or config["sample_steps"])
    n_ep = int(n or config["eval_episodes"])
    task = make_task(config)
    policy = ActionSampler(model, steps=steps)
    chunk = int(config["chunk"])
    values: dict[str, Any] = {}
    if "success_rate" in metrics or "ms_per_call" in metrics:
        res = rollout(task, policy, n_ep, chunk=chunk, seed=10_000 + seed)
        values.update(success_rate=res.success_rate, ms_per_call=1e3 * res.sec_per_call)
    if "expert_success" in metrics:
        values["expert_success"] = _expert_success(task, n_ep, 10_000 + seed)
    if "ms_per_action" in metrics:
        obs = task.reset(1, generator=torch.Generator().manual_seed(seed))
        values["ms_per_action"] = 1e3 * latency(policy, obs, repeats=30) / chunk
    if "effective_rank" in metrics or "mean_distance" in metrics:
        obs = task.reset(256, generator=torch.Generator().manual_seed(20_000 + seed))
        stats = embedding_stats(observation_embeddings(model.net, obs))
        values.update(effective_rank=stats["effective_rank"], mean_distance=stats["mean_distance"])
    out = {m: values[m] for m in metrics}
    out.update(steps=steps, episodes=n_ep, chunk=chunk)
    return out


_COMMON: dict[str, Any] = {
    "task": "reach2d",
    "mode": "random",
    "method": "flow",
    "chunk": 4,
    "n_demos": 200,
    "width": 128,
    "depth": 3,
    "diagonal": 0.25,
    "adaptive_p": 0.0,
    "dispersive_weight": 0.0,
    "dispersive_layer": "obs_embed",
    "tau": 0.5,
    "steps": 3_000,
    "batch_size": 256,
    "lr": 1e-3,
    "warmup": 0,
    # constant lr, no clipping: on reach (seed 0) flow-10 0.73 / MeanFlow 0.36 success against 0.56 / 0.26
    # with a cosine decay and grad_clip=1 (BENCHMARKS, policies)
    "grad_clip": 0.0,
    "schedule": "constant",
    "ema_decay": 0.995,
    "threads": 1,
    "sample_steps": 10,
    "eval_episodes": 500,
}

_VARIANTS = {
    "flow": ({"method": "flow", "sample_steps": 10}, "flow policy (flow matching, Euler 10 steps)"),
    "meanflow": ({"method": "meanflow", "sample_steps": 1}, "one-step MeanFlow policy"),
    "meanflow-disp": (
        {"method": "meanflow", "sample_steps": 1, "dispersive_weight": 0.5},
        "one-step MeanFlow policy + dispersive loss on the observation embedding (DM1)",
    ),
    "mse": ({"method": "mse", "sample_steps": 1}, "regression (MSE) policy of the same size"),
}
_TASK_DEFAULTS = {
    "reach": ({"task": "reach2d"}, "2-D reaching around an obstacle (bimodal expert)"),
    "reacher": ({"task": "reacher", "n_demos": 300, "chunk": 2}, "MuJoCo Reacher-v5 (two elbow solutions)"),
}

for _prefix, (_task_defaults, _task_summary) in _TASK_DEFAULTS.items():
    for _variant, (_extra, _summary) in _VARIANTS.items():
        register(
            Recipe(
                name=f"{_prefix}-{_variant}",
                summary=f"{_summary} on {_task_summary}",
                defaults={**_COMMON, **_task_defaults, **_extra},
                build=build_policy,
                data=policy_data,
                generator=StartActions,
                sample_options=lambda config: ("steps",),
                sample_kwargs=_sample_kwargs,
                eval_options=lambda config: ("n", "steps"),
                evaluate=policy_evaluate,
                metrics=POLICY_METRICS,
                kind="policy",
            )
        )
