"""GFlowNet recipes on the hypergrid: ``hypergrid-tb``, ``hypergrid-db``, ``hypergrid-subtb``.

torchgfn's defaults (``train_hypergrid.py``): a 2-D grid of height 8 with rewards (0.1, 0.5, 2.0),
policy MLPs of 256 x 2 hidden units whose backward head shares the forward policy's trunk, batch 16,
Adam at lr 1e-3 (log Z at 1e-1: ``log_z_lr_scale=100``), on-policy sampling, and a budget of 32,000
trajectories (2,000 steps of 16). The model makes its own batches, so ``data`` returns ``None``.

``flowforge eval RUN`` needs no ``--data``: the metrics are *exact*, computed from the trained forward
policy by dynamic programming over the grid (:func:`~flowforge.gflownet.exact_metrics`):
``l1`` (``l1_sum``, torchgfn's convention, and ``l1_mean``), ``jsd``, ``logz`` (``logz_error``) and
``modes`` (``modes_found`` among ``--n`` sampled terminal states, of ``n_modes``).
``flowforge sample RUN --out x.npy`` writes terminal states ``(n, ndim)`` as integers.

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("hypergrid-tb")
    >>> r.defaults["steps"] * r.defaults["batch_size"], r.kind
    (32000, 'gflownet')
    >>> model = r.build({**r.defaults, "height": 4, "width": 8, "depth": 1, "dim": 2})
    >>> model.generator().sample(3, generator=torch.Generator().manual_seed(0), solver="heun").shape
    torch.Size([3, 2])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowforge.gflownet import (
    DetailedBalance,
    GFlowNet,
    HyperGrid,
    SubTrajectoryBalance,
    TrajectoryBalance,
    exact_metrics,
    modes_found,
    shared_trunk_policies,
)
from flowforge.recipes.registry import Recipe, register

__all__ = [
    "OBJECTIVES",
    "build_gflownet",
    "make_env",
    "gflownet_data",
    "gflownet_evaluate",
    "gflownet_reference",
]


#: objective name -> (class, extra config keys passed to it)
OBJECTIVES: dict[str, tuple[type[GFlowNet], tuple[str, ...]]] = {
    "tb": (TrajectoryBalance, ("log_z_lr_scale",)),
    "db": (DetailedBalance, ()),
    "subtb": (SubTrajectoryBalance, ("lamda",)),
}


def make_env(config: dict[str, Any]) -> HyperGrid:
    """The config's :class:`~flowforge.gflownet.HyperGrid`."""
    return HyperGrid(
        int(config["ndim"]),
        int(config["height"]),
        float(config["r0"]),
        float(config["r1"]),
        float(config["r2"]),
    )


def build_gflownet(config: dict[str, Any]) -> GFlowNet:
    """The GFlowNet of a config; ``shared_trunk`` gives P_F and P_B one trunk with two heads (torchgfn)."""
    env = make_env(config)
    cls, extra = OBJECTIVES[config["objective"]]
    width, depth = int(config["width"]), int(config["depth"])
    uniform_pb = bool(config["uniform_pb"])
    pf = pb = None
    if config["shared_trunk"] and depth > 0:
        pf, pb = shared_trunk_policies(env.obs_dim, env.n_actions, width, depth)
        pb = None if uniform_pb else pb
    return cls(
        env,
        pf,
        pb,
        uniform_pb=uniform_pb,
        width=width,
        depth=depth,
        epsilon=float(config["epsilon"]),
        temperature=float(config["temperature"]),
        **{k: config[k] for k in extra},
    )


def gflownet_data(config: dict[str, Any]) -> tuple[None, dict[str, Any]]:
    """No data (the model samples its own trajectories); ``dim`` = ``ndim`` for ``flowforge sample``."""
    make_env(config)  # validate the grid before training starts
    if config["objective"] not in OBJECTIVES:
        raise ValueError(f"unknown objective {config['objective']!r}; choose {', '.join(OBJECTIVES)}")
    return None, {"dim": int(config["ndim"]), "standardizer": None}


def gflownet_reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    """No held-out data: the metrics are exact. An empty ``(0, ndim)`` tensor, so ``eval`` needs no ``--data``."""
    return torch.empty(0, int(config["ndim"]), dtype=torch.long)


def gflownet_evaluate(
    run_dir: Path,
    config: dict[str, Any],
    x: Tensor,
    metrics: list[str],
    *,
    n_samples: int | None = None,
    seed: int = 0,
    **_: Any,
) -> dict[str, float]:
    """Exact ``l1_sum``, ``l1_mean``, ``jsd``, ``logz_error``; ``modes_found`` of ``n_modes`` in sampled states."""
    from flowforge.recipes.runs import load_run

    model, _cfg = load_run(run_dir)
    env = model.env
    out: dict[str, float] = {}
    if {"l1", "jsd", "logz"} & set(metrics):
        m = exact_metrics(model, env)
        if "l1" in metrics:
            out["l1_sum"], out["l1_mean"] = m["l1_sum"], m["l1_mean"]
        if "jsd" in metrics:
            out["jsd"] = m["jsd"]
        if "logz" in metrics:
            out["logz_error"] = m["logz_error"]
    if "modes" in metrics:
        n = n_samples or int(config["eval_samples"])
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            states = torch.cat(
                [model.sample(min(4096, n - i), generator=g).terminal for i in range(0, n, 4096)]
            )
        out["modes_found"] = modes_found(env, states)
        out["n_modes"] = env.n_modes
    return out


_COMMON: dict[str, Any] = {
    "ndim": 2,
    "height": 8,
    "r0": 0.1,
    "r1": 0.5,
    "r2": 2.0,
    "width": 256,
    "depth": 2,
    "shared_trunk": True,
    "uniform_pb": False,
    "epsilon": 0.0,
    "temperature": 1.0,
    "eval_samples": 10_000,
    # 32,000 trajectories = 2000 x 16, torchgfn's default budget
    "steps": 2000,
    "batch_size": 16,
    "lr": 1e-3,
    "warmup": 0,
    "grad_clip": 0.0,
    "ema_decay": 0.0,
    "threads": 1,
}

_RECIPES = {
    "hypergrid-tb": ("trajectory balance", {"objective": "tb", "log_z_lr_scale": 100.0}),
    "hypergrid-db": ("detailed balance (state flow head)", {"objective": "db"}),
    "hypergrid-subtb": (
        "sub-trajectory balance (geometric-within, lamda 0.9)",
        {"objective": "subtb", "lamda": 0.9},
    ),
}
for _name, (_what, _over) in _RECIPES.items():
    register(
        Recipe(
            name=_name,
            summary=f"GFlowNet, {_what}, on the hypergrid (2-D, height 8); exact L1 / JSD / log Z eval",
            defaults={**_COMMON, **_over},
            build=build_gflownet,
            data=gflownet_data,
            kind="gflownet",
            reference=gflownet_reference,
            evaluate=gflownet_evaluate,
            metrics=("l1", "jsd", "logz", "modes"),
        )
    )
