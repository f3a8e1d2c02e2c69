r"""Reward fine-tuning of a trained flow-matching run (2-D or images): ``<base>-<method>`` recipes and
:func:`finetune` (``flowforge finetune RUN --method grpo|orw|acflow|mle --reward NAME|module:function``).

A fine-tuning run starts from a BASE run (2-D: ``moons``, ``checkerboard``, ``eight-gaussians``; images:
``digits``, ``mnist``; named by ``--set teacher_run=FOLDER``; :func:`finetune` sets it) and writes a normal
run folder: its config records
the base's config, so ``flowforge sample`` and ``flowforge eval`` go through the base recipe's generator and
metrics (the plumbing of :mod:`flowforge.recipes.few_step`). Methods (:data:`FINETUNE_METHODS`):

- ``grpo``: :class:`~flowforge.finetune.DanceGRPO` (``--set advantage=reinforce``: REINFORCE without group
  normalisation; ``kl_coef=0.05``: the per-step KL to the base);
- ``orw``: :class:`~flowforge.finetune.ORWCFM` (ORW-CFM-W2);
- ``acflow``: :class:`~flowforge.finetune.ACFlow` (AC-Flow-style, derived equations);
- ``mle``: :class:`~flowforge.finetune.FMMLE` toward the base's converged ODE map at ``deploy_steps`` Euler
  steps (no reward; sample the run with ``--solver euler --steps N``).

Rewards (:data:`REWARDS`, in the data's own units): 2-D ``modes`` (:class:`~flowforge.finetune.ModePreference`
of the eight Gaussians' modes ``--set modes=0-1``), ``halfplane`` (``x > 0``); images (``(B, 1, H, W)`` in
``[-1, 1]``) ``digit`` (:class:`~flowforge.finetune.ClassifierReward`: the shipped classifier's probability
of digit ``--set target=3``; ``reward_log=true``: its log-probability) and ``thickness``
(:class:`~flowforge.finetune.StrokeThickness`, ``--set thickness_mode=ink|area``); or ``module:function`` /
``path/file.py:function``, a callable ``(B, *event) -> (B,)``.

Image bases are class-conditional UNets: ``--set label=null`` (default) fine-tunes the UNCONDITIONAL branch
(the null label 10, what the base learnt by label dropout; all rollouts use it), ``--set label=C`` the branch of
class ``C``. The weights are shared, so the other branches move too. The run's ``reward`` and ``branch_fd``
metrics sample the fine-tuned branch (``branch_fd``: FD to the test split in the shipped classifier's
features); the base recipe's ``fd``/``acc``/``pr`` (and ``flowforge sample``) draw the classes 0..9 in turn.
``mle`` takes 2-D bases only.

Example:
    >>> from flowforge.recipes import get_recipe
    >>> get_recipe("eight-gaussians-grpo").defaults["reward"]
    'modes'
    >>> d = get_recipe("mnist-grpo").defaults
    >>> d["reward"], d["target"], d["label"], d["groups"] * d["group_size"]
    ('digit', 3, 'null', 32)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.continuous import FlowMatching
from flowforge.core.choices import unknown_choice
from flowforge.data import Standardizer, quantize
from flowforge.data.user_code import import_target
from flowforge.finetune import FMMLE, ORWCFM, ACFlow, DanceGRPO, HalfPlane, ModePreference, ode_pairs
from flowforge.finetune.rewards import ClassifierReward, Reward, StrokeThickness
from flowforge.recipes.few_step import TEACHERS, FewStepMethod, StudentHooks
from flowforge.recipes.images import N_CLASSES, check_images, image_metrics_of, image_set
from flowforge.recipes.registry import Recipe, register
from flowforge.recipes.run_folder import load_run, run_recipe
from flowforge.recipes.runs import train_recipe
from flowforge.train import Run

__all__ = [
    "BASES",
    "FINETUNE_METHODS",
    "IMAGE_BASES",
    "REWARDS",
    "branch_samples",
    "fine_tuned_label",
    "finetune",
    "finetune_recipe",
    "make_reward",
]

#: The base recipes that can be fine-tuned (2-D and image flow matching).
BASES = ("moons", "checkerboard", "eight-gaussians", "digits", "mnist")
#: The image bases among :data:`BASES` (class-conditional UNets on ``(1, H, W)`` in ``[-1, 1]``).
IMAGE_BASES = ("digits", "mnist")


def _is_image(config: Mapping[str, Any]) -> bool:
    return "image_shape" in (config.get("teacher") or {})


def _event_shape(tc: Mapping[str, Any]) -> tuple[int, ...]:
    return tuple(int(s) for s in tc["image_shape"]) if "image_shape" in tc else (int(tc["dim"]),)


def fine_tuned_label(config: Mapping[str, Any]) -> int | None:
    """The class the rollouts of an image run are conditioned on: ``label=null`` is the null label
    (:data:`~flowforge.recipes.images.N_CLASSES`, the unconditional branch), ``label=C`` the class ``C``;
    ``None`` for unconditional bases and 2-D runs."""
    tc = config.get("teacher") or {}
    if not tc.get("conditional"):
        return None
    text = str(config.get("label", "null")).strip().lower()
    if text in ("null", "none", "uncond", str(N_CLASSES)):
        return N_CLASSES
    try:
        label = int(text)
    except ValueError:
        label = -1
    if not 0 <= label < N_CLASSES:
        raise ValueError(
            f"--set label={config.get('label')}: give a class 0..{N_CLASSES - 1} or 'null' (the "
            "unconditional branch)"
        )
    return label


def _cond_sampler(config: Mapping[str, Any]) -> Any:
    label = fine_tuned_label(config)
    if label is None:
        return None

    def cond(n: int, generator: torch.Generator | None) -> dict[str, Tensor]:
        return {"y": torch.full((n,), label, dtype=torch.long)}

    return cond


def _require_image(config: Mapping[str, Any], name: str) -> None:
    if not _is_image(config):
        raise ValueError(f"--reward {name} scores images; a 2-D base takes --reward modes or halfplane")


def _digit(config: Mapping[str, Any]) -> Reward:
    _require_image(config, "digit")
    from flowforge.metrics.image_features import load_classifier

    net = load_classifier(str(config["teacher"]["dataset"]))
    try:
        target = int(config["target"])
    except (TypeError, ValueError):
        target = -1
    if not 0 <= target < net.num_classes or str(config["target"]).strip() != str(target):
        raise ValueError(f"--set target={config['target']}: give the digit to reward, 0..9, e.g. target=3")
    return ClassifierReward(net, target, log=bool(config.get("reward_log", False)))


def _thickness(config: Mapping[str, Any]) -> Reward:
    _require_image(config, "thickness")
    return StrokeThickness(str(config.get("thickness_mode", "ink")))


def _modes(config: Mapping[str, Any]) -> Reward:
    if _is_image(config):
        raise ValueError("--reward modes scores 2-D points; an image base takes --reward digit or thickness")
    text = str(config["modes"])
    try:
        modes = [int(m) for m in text.replace(",", "-").split("-") if m.strip()]
    except ValueError:
        raise ValueError(
            f"--set modes={text}: write mode indices 0..7 joined by '-', e.g. modes=0-1"
        ) from None
    return ModePreference.eight_gaussians(modes, scale=float(config["reward_scale"]))


#: Built-in rewards by name (data units).
REWARDS: dict[str, Callable[[Mapping[str, Any]], Reward]] = {
    "modes": _modes,
    "halfplane": lambda c: HalfPlane((1.0, 0.0), scale=float(c["reward_scale"])),
    "digit": _digit,
    "thickness": _thickness,
}


def make_reward(config: Mapping[str, Any]) -> Reward:
    """The run's reward in the MODEL's units: a built-in name or ``module:function``, composed with the base's
    standardisation (so the reward always sees data units)."""
    spec = str(config["reward"])
    if ":" in spec:
        fn = import_target(spec, "reward")
        if not callable(fn):
            raise ValueError(f"--reward {spec} is not callable; give a function reward(x, **cond) -> (B,)")
    elif spec in REWARDS:
        fn = REWARDS[spec](config)
    else:
        raise unknown_choice(
            "reward", spec, REWARDS, hint="or give module:function (a callable (B, D) -> (B,))"
        )
    sd = config["teacher"].get("standardizer") if config.get("teacher") else None
    if not sd:
        return fn
    std = Standardizer.from_dict(sd)

    def in_data_units(x: Tensor, **cond: Tensor) -> Tensor:
        return fn(std.inverse(x), **cond)

    in_data_units.__name__ = getattr(fn, "__name__", spec)
    return in_data_units


def _as_flow(model: nn.Module, config: dict[str, Any]) -> FlowMatching:
    return model.flow


def _dummy_data(config: dict[str, Any], recipe: Recipe, tc: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The policy samples itself; the trainer's batches are placeholders."""

    def stream(batch_size: int, generator: torch.Generator) -> Tensor:
        return torch.zeros(batch_size, *_event_shape(tc))

    return stream, {}


def _mle_data(config: dict[str, Any], recipe: Recipe, tc: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A pool of ``pairs`` pairs ``(x0, Phi*(x0))`` of the base's converged map (RK4, ``pair_steps``)."""
    base, _ = load_run(Path(str(config["teacher_run"])).expanduser())
    g = torch.Generator().manual_seed(int(config.get("seed", 0)) + 17)
    x0 = torch.randn(int(config["pairs"]), int(tc["dim"]), generator=g)
    x1 = ode_pairs(base.velocity, x0, steps=int(config["pair_steps"]))

    def stream(batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, x0.shape[0], (batch_size,), generator=generator)
        return x0[idx], x1[idx]

    return stream, {}


def _common(kind: str) -> dict[str, Any]:
    if kind == "images":
        return {
            "steps": 40,
            "batch_size": 32,
            "lr": 1e-4,
            "warmup": 0,
            "schedule": "constant",
            "grad_clip": 1.0,
            "ema_decay": 0.0,
            "threads": 1,
            "reward": "digit",
            "target": 3,
            "reward_log": False,
            "thickness_mode": "ink",
            "label": "null",
        }
    return {
        "steps": 300,
        "batch_size": 64,
        "lr": 2e-4,
        "warmup": 0,
        "schedule": "constant",
        "grad_clip": 1.0,
        "ema_decay": 0.0,
        "threads": 1,
        "reward": "modes",
        "modes": "0-1",
        "reward_scale": 0.5,
    }


def _build_grpo(config: dict[str, Any], base: FlowMatching) -> nn.Module:
    return DanceGRPO(
        base,
        make_reward(config),
        groups=int(config["groups"]),
        group_size=int(config["group_size"]),
        steps=int(config["sde_steps"]),
        eta=float(config["eta"]),
        shift=float(config["shift"]),
        timestep_fraction=float(config["timestep_fraction"]),
        clip_eps=float(config["clip_eps"]),
        kl_coef=float(config["kl_coef"]),
        inner_epochs=int(config["inner_epochs"]),
        advantage=str(config["advantage"]),
        same_noise=bool(config["same_noise"]),
        cond_sampler=_cond_sampler(config),
    )


def _orw_kw(config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "alpha": float(config["alpha"]),
        "beta": float(config["beta"]),
        "batch_size": int(config["policy_batch"]),
        "sample_steps": int(config["policy_steps"]),
        "refresh_every": int(config["refresh_every"]),
        "cond_sampler": _cond_sampler(config),
    }


def _build_orw(config: dict[str, Any], base: FlowMatching) -> nn.Module:
    return ORWCFM(base, make_reward(config), **_orw_kw(config))


def _build_acflow(config: dict[str, Any], base: FlowMatching) -> nn.Module:
    return ACFlow(
        base,
        make_reward(config),
        adv_clip=float(config["adv_clip"]),
        warmup=int(config["critic_warmup"]),
        shaping=str(config["shaping"]),
        **_orw_kw(config),
    )


def _build_mle(config: dict[str, Any], base: FlowMatching) -> nn.Module:
    return FMMLE(base, steps=int(config["deploy_steps"]), checkpoint=bool(config["checkpoint"]))


def branch_samples(flow: nn.Module, config: Mapping[str, Any], n: int, seed: int) -> Tensor:
    """``n`` samples ``(n, *event)`` of the fine-tuned branch of ``flow`` (2-D: 16 Heun steps; images: the
    base's solver and steps, conditioned on :func:`fine_tuned_label`, clamped to ``[-1, 1]``)."""
    g = torch.Generator().manual_seed(seed)
    if not _is_image(config):
        return flow.generator().sample(n, generator=g, solver="heun", steps=16)
    tc, label = config["teacher"], fine_tuned_label(config)
    parts = []
    for i in range(0, n, 250):
        m = min(250, n - i)
        cond = None if label is None else {"y": torch.full((m,), label, dtype=torch.long)}
        with torch.no_grad():
            parts.append(
                flow.generator().sample(
                    m, cond=cond, generator=g, solver=str(tc["solver"]), steps=int(tc["sample_steps"])
                )
            )
    return torch.cat(parts).clamp(-1.0, 1.0)


def _eval_n(config: Mapping[str, Any], n: int | None) -> int:
    return int(n or (500 if _is_image(config) else 4000))


def _reward_metric(model: nn.Module, config: dict[str, Any], n: int | None, seed: int) -> float:
    """Mean reward of ``n`` samples of the fine-tuned flow's fine-tuned branch."""
    x = branch_samples(model.flow, config, _eval_n(config, n), seed)
    return float(make_reward(config)(x).mean())


def _branch_fd(model: nn.Module, config: dict[str, Any], n: int | None, seed: int) -> float:
    """FD to the test split (shipped classifier features) of ``n`` samples of the fine-tuned branch."""
    if not _is_image(config):
        raise ValueError("branch_fd scores image runs; 2-D runs have swd/mmd of their base recipe")
    tc = config["teacher"]
    x = quantize(branch_samples(model.flow, config, _eval_n(config, n), seed), int(tc["levels"]))
    ref = check_images(image_set(tc, "test").x, tc)
    return image_metrics_of(x, ref, tc, ["fd"])["fd"]


_REWARD_METRIC = {
    "metrics": {"reward": _reward_metric, "branch_fd": _branch_fd},
    "default_metrics": {"points": ("reward",), "images": ("reward", "branch_fd")},
}

_ORW = {"alpha": 1.0, "beta": 0.5, "policy_batch": 64, "policy_steps": 8, "refresh_every": 10}


def _orw_defaults(kind: str) -> dict[str, Any]:
    return {**_ORW, "policy_batch": 32} if kind == "images" else dict(_ORW)


def _grpo_defaults(kind: str) -> dict[str, Any]:
    out = {
        "groups": 4,
        "group_size": 16,
        "sde_steps": 10,
        "eta": 0.7,
        "shift": 1.0,
        "timestep_fraction": 0.6,
        "clip_eps": 0.05,
        "kl_coef": 0.0,
        "inner_epochs": 2,
        "advantage": "group",
        "same_noise": True,
    }
    if kind == "images":  # 32 rollouts of 8 SDE steps a round
        out.update(groups=2, sde_steps=8)
    return out


#: Fine-tuning methods by name (``flowforge finetune --method NAME``).
FINETUNE_METHODS: dict[str, FewStepMethod] = {
    "grpo": FewStepMethod(
        name="grpo",
        summary="DanceGRPO reward fine-tuning of a {teacher} run (flowforge finetune RUN --method grpo)",
        defaults=lambda kind: {**_common(kind), **_grpo_defaults(kind)},
        build=_build_grpo,
        data=_dummy_data,
        as_flow=_as_flow,
        **_REWARD_METRIC,
    ),
    "orw": FewStepMethod(
        name="orw",
        summary="ORW-CFM-W2 reward fine-tuning of a {teacher} run (flowforge finetune RUN --method orw)",
        defaults=lambda kind: {**_common(kind), **_orw_defaults(kind)},
        build=_build_orw,
        data=_dummy_data,
        as_flow=_as_flow,
        **_REWARD_METRIC,
    ),
    "acflow": FewStepMethod(
        name="acflow",
        summary="AC-Flow-style (derived) reward fine-tuning of a {teacher} run (flowforge finetune --method acflow)",
        defaults=lambda kind: {
            **_common(kind),
            **_orw_defaults(kind),
            "adv_clip": 2.0,
            "critic_warmup": 5 if kind == "images" else 20,
            "shaping": "standardize",
        },
        build=_build_acflow,
        data=_dummy_data,
        as_flow=_as_flow,
        **_REWARD_METRIC,
    ),
    "mle": FewStepMethod(
        name="mle",
        summary="FM-MLE: fine-tune a {teacher} run through its N-step Euler map (flowforge finetune --method mle)",
        defaults=lambda kind: {
            **{k: v for k, v in _common(kind).items() if k not in ("reward", "modes", "reward_scale")},
            "batch_size": 256,
            "lr": 1e-3,
            "steps": 800,
            "deploy_steps": 2,
            "checkpoint": False,
            "pairs": 20_000,
            "pair_steps": 100,
            "solver": "euler",
            "sample_steps": 2,
        },
        build=_build_mle,
        data=_mle_data,
        as_flow=_as_flow,
    ),
}

for _method in FINETUNE_METHODS.values():
    for _base in BASES:
        if _method.name == "mle" and _base in IMAGE_BASES:
            continue  # FM-MLE is reward-free and fits 2-D maps here
        register(StudentHooks(_base, _method).as_recipe(TEACHERS[_base], run_kind="finetune"))


def finetune_recipe(run: str | os.PathLike[str], method: str) -> str:
    """The recipe that fine-tunes ``run`` by ``method`` (``<base recipe>-<method>``), with clear errors."""
    if method not in FINETUNE_METHODS:
        raise unknown_choice("fine-tuning method", method, FINETUNE_METHODS, hint="e.g. --method grpo")
    path = Path(run).expanduser()
    held = run_recipe(path)
    if held is None:
        raise FileNotFoundError(
            f"{run}: no run folder there (no config.json); train a base first, e.g. "
            f"flowforge train eight-gaussians --out {run}"
        )
    if held not in BASES:
        raise ValueError(
            f"{run} is a {held} run; fine-tuning takes flow-matching runs of {', '.join(BASES)}: "
            "train one, e.g. flowforge train eight-gaussians --out runs/eight-gaussians"
        )
    if method == "mle" and held in IMAGE_BASES:
        raise ValueError(
            f"{run} is a {held} run; --method mle fine-tunes 2-D runs only here: use grpo, orw or acflow"
        )
    return f"{held}-{method}"


def finetune(
    run: str | os.PathLike[str],
    method: str,
    *,
    reward: str | None = None,
    overrides: dict[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    steps: int | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
) -> Run:
    """Fine-tune a trained flow-matching ``run`` (2-D or image) by ``method`` toward ``reward`` into a new run folder
    (default ``RUN-METHOD``); ``flowforge finetune``. ``reward``: a name in :data:`REWARDS` or
    ``module:function`` (ignored by ``mle``, which needs none)."""
    name = finetune_recipe(run, method)
    overrides = dict(overrides or {})
    if "teacher_run" in overrides:
        raise ValueError("RUN names the base run; drop --set teacher_run=...")
    if reward is not None:
        if method == "mle":
            raise ValueError("--method mle fits the base's converged map and takes no reward; drop --reward")
        if ":" not in reward and reward not in REWARDS:
            raise unknown_choice("reward", reward, REWARDS, hint="or give module:function")
        overrides["reward"] = reward
    path = Path(run).expanduser()
    overrides["teacher_run"] = str(path.resolve())
    return train_recipe(
        name,
        overrides=overrides,
        out=path.parent / f"{path.name}-{method}" if out is None else out,
        steps=steps,
        seed=seed,
        resume=resume,
        progress=progress,
    )
