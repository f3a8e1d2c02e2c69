"""Outcome-conditioned GFlowNet recipe on bit sequences: ``bitseq-ocgfn`` (Pan et al., ICLR 2024).

Three stages, chosen with ``--set stage=...``:

- ``pretrain`` (default): reward-free pre-training of an
  :class:`~flowforge.gflownet.outcome.OutcomeConditionedGFlowNet` on append-only bit strings
  (``length`` 12, ``word`` 3: 4,096 outcomes). ``eval`` reports ``success`` (exact mean probability of
  reaching a uniform outcome) and ``success_sampled``.
- ``finetune``: ``--set stage=finetune init_from=RUN_DIR modes_seed=S`` converts the pre-trained run to
  the downstream reward :math:`R(x) = \\exp(-\\beta \\min_m d_H(x, m))` (``n_modes`` modes drawn with
  ``modes_seed``) with the amortised conversion for ``convert_steps`` steps, then continues with
  trajectory balance (:class:`~flowforge.gflownet.outcome.OutcomeFineTuning`).
- ``scratch``: the same trajectory balance (same network, batch and lr) from a random initialisation,
  the baseline.

``eval`` on ``finetune``/``scratch`` runs gives the exact metrics of the hypergrid recipes (``l1_sum``,
``l1_mean``, ``jsd``, ``logz_error``, ``modes_found``, ``n_modes``); metrics that do not apply to a
stage are skipped. ``steps=0`` / ``batch_size=0`` mean the stage's default (pretrain 4,000 x 64;
finetune 2,000 conversion + 1,000 TB steps of 16; scratch 2,000 x 16).

Example:
    >>> from flowforge.recipes import get_recipe
    >>> import flowforge.recipes.gflownet_oc  # noqa: F401  (registers the recipe)
    >>> r = get_recipe("bitseq-ocgfn")
    >>> r.kind, r.defaults["stage"], r.defaults["length"], r.defaults["word"]
    ('gflownet', 'pretrain', 12, 3)
    >>> cfg, _ = {**r.defaults, "width": 8, "depth": 1, "length": 4, "word": 2}, None
    >>> type(r.build(cfg)).__name__
    'OutcomeConditionedGFlowNet'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.choices import unknown_choice
from flowforge.gflownet import PolicyMLP, TrajectoryBalance
from flowforge.gflownet.envs import BitSequence
from flowforge.gflownet.exact import modes_found
from flowforge.gflownet.outcome import OutcomeConditionedGFlowNet, OutcomeFineTuning
from flowforge.recipes.gflownet import (
    exact_outputs,
    gflownet_eval_options,
    gflownet_generator,
    sample_terminal,
)
from flowforge.recipes.registry import Recipe, register
from flowforge.recipes.run_folder import read_config

__all__ = ["STAGES", "build_ocgfn", "downstream_env", "ocgfn_data", "ocgfn_evaluate", "ocgfn_reference"]

STAGES = ("pretrain", "finetune", "scratch")

#: keys a finetune run must share with its ``init_from`` pre-training run
_ARCH = ("length", "word", "width", "depth", "log_floor")


def _check_stage(config: dict[str, Any]) -> str:
    stage = config["stage"]
    if stage not in STAGES:
        raise unknown_choice("stage", stage, STAGES, hint="e.g. --set stage=finetune")
    return stage


def downstream_env(config: dict[str, Any]) -> BitSequence:
    """The downstream :class:`~flowforge.gflownet.BitSequence` (``n_modes`` modes from ``modes_seed``)."""
    return BitSequence(
        int(config["length"]),
        int(config["word"]),
        modes=int(config["n_modes"]),
        beta=float(config["beta"]),
        seed=int(config["modes_seed"]),
    )


def _pretrained(config: dict[str, Any]) -> OutcomeConditionedGFlowNet:
    return OutcomeConditionedGFlowNet(
        BitSequence(int(config["length"]), int(config["word"])),
        width=int(config["width"]),
        depth=int(config["depth"]),
        log_floor=float(config["log_floor"]),
        epsilon=float(config["epsilon"]),
        hindsight=bool(config["hindsight"]),
    )


def build_ocgfn(config: dict[str, Any]) -> nn.Module:
    """The model of a stage: the OC-GFN, the fine-tuning module (weights from ``init_from``) or plain TB."""
    stage = _check_stage(config)
    if stage == "pretrain":
        return _pretrained(config)
    env = downstream_env(config)
    width, depth = int(config["width"]), int(config["depth"])
    if stage == "scratch":
        return TrajectoryBalance(
            env,
            PolicyMLP(env.obs_dim, env.n_actions, width, depth),
            uniform_pb=True,
            epsilon=float(config["tb_epsilon"]),
            log_z_lr_scale=float(config["log_z_lr_scale"]),
        )
    oc = _pretrained(config)
    init = Path(config["init_from"]).expanduser() if config["init_from"] else None
    if init is not None and (init / "config.json").is_file():
        from flowforge.train import Run

        Run(init).load_into(oc, ema=True)
    return OutcomeFineTuning(
        oc,
        env,
        convert_steps=int(config["convert_steps"]),
        width=width,
        depth=depth,
        epsilon=float(config["epsilon"]),
        tb_epsilon=float(config["tb_epsilon"]),
        log_z_lr_scale=float(config["log_z_lr_scale"]),
    )


def ocgfn_data(config: dict[str, Any]) -> tuple[None, dict[str, Any]]:
    """No data; fills the stage's default ``steps``/``batch_size`` and checks ``init_from`` for finetune."""
    stage = _check_stage(config)
    downstream_env(config)  # validate length / word before training starts
    updates: dict[str, Any] = {"dim": int(config["length"]) // int(config["word"]), "standardizer": None}
    if int(config["steps"]) <= 0:
        updates["steps"] = {"pretrain": 4000, "finetune": int(config["convert_steps"]) + 1000}.get(
            stage, 2000
        )
    if int(config["batch_size"]) <= 0:
        updates["batch_size"] = 64 if stage == "pretrain" else 16
    if stage == "finetune":
        init = Path(config["init_from"]).expanduser() if config["init_from"] else None
        if init is None or not (init / "config.json").is_file():
            raise FileNotFoundError(
                "stage=finetune starts from a pre-trained run: --set init_from=RUN_DIR "
                f"(train one with flowforge train bitseq-ocgfn --out RUN_DIR); got {config['init_from']!r}"
            )
        init_cfg = read_config(init)
        if init_cfg.get("recipe") != "bitseq-ocgfn" or init_cfg.get("stage") != "pretrain":
            raise ValueError(f"init_from={init} is not a bitseq-ocgfn stage=pretrain run")
        for k in _ARCH:
            if init_cfg.get(k) != config.get(k):
                raise ValueError(
                    f"init_from run has {k}={init_cfg.get(k)!r} but this config has {config.get(k)!r}; "
                    f"add --set {k}={init_cfg.get(k)}"
                )
    return None, updates


def ocgfn_reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    """No held-out data: the metrics are exact. An empty ``(0, n_words)`` tensor."""
    return torch.empty(0, int(config["length"]) // int(config["word"]), dtype=torch.long)


def ocgfn_evaluate(
    model: Any,
    config: dict[str, Any],
    data: Any,
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **_: Any,
) -> dict[str, float]:
    """pretrain: ``success`` (exact) and ``success_sampled``; finetune/scratch: exact ``l1_sum``,
    ``l1_mean``, ``jsd``, ``logz_error`` and ``modes_found`` of ``n_modes`` in sampled states."""
    n = n or int(config["eval_samples"])
    g = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    if config["stage"] == "pretrain":
        if "success" in metrics:
            out["success"] = model.success_rate()
            with torch.no_grad():
                y, tr = model.rollout(n, generator=g, epsilon=0.0)
            out["success_sampled"] = float((tr.terminal == y).all(1).double().mean())
        return out
    env = model.env
    out.update(exact_outputs(model, env, metrics))
    if "modes" in metrics:
        states = sample_terminal(model, n, seed)
        out["modes_found"] = modes_found(env, states)
        out["n_modes"] = env.n_modes
    return out


_DEFAULTS: dict[str, Any] = {
    "stage": "pretrain",
    "length": 12,
    "word": 3,
    "width": 128,
    "depth": 2,
    "log_floor": -20.0,
    "epsilon": 0.1,
    "hindsight": True,
    "init_from": "",
    "n_modes": 4,
    "beta": 3.0,
    "modes_seed": 1,
    "convert_steps": 2000,  # benchmarks/RESULTS-gfn-oc.md: 2000 conversion + 1000 TB steps beat 1000 + 2000
    "tb_epsilon": 0.0,
    "log_z_lr_scale": 100.0,
    "eval_samples": 10_000,
    "steps": 0,
    "batch_size": 0,
    "lr": 1e-3,
    "warmup": 0,
    "grad_clip": 0.0,
    "ema_decay": 0.0,
    "threads": 1,
}

register(
    Recipe(
        name="bitseq-ocgfn",
        summary="outcome-conditioned GFlowNet on 12-bit sequences: stage=pretrain|finetune|scratch; exact eval",
        defaults=_DEFAULTS,
        build=build_ocgfn,
        data=ocgfn_data,
        generator=gflownet_generator,
        eval_options=gflownet_eval_options,
        reference=ocgfn_reference,
        evaluate=ocgfn_evaluate,
        metrics=("l1", "jsd", "logz", "modes", "success"),
        kind="gflownet",
    )
)
