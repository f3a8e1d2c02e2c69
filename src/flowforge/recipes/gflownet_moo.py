"""Multi-objective GFlowNet recipes: ``hypergrid-moo-op`` (order-preserving TB) and ``hypergrid-moo-tb``.

The task is OP-GFN's multi-objective hypergrid (Chen & Mauch, ICLR 2024, arXiv 2310.00386;
``multi/hypergrid_comb.py``): a 2-D grid whose states are scored by two or more of Branin, Currin,
Shubert and Beale (``objectives="branin+currin"``; ``+`` separates names, since ``--set`` splits on
commas). Both recipes share the authors' set-up where it applies: a policy MLP of 3 hidden layers of
64 units, a uniform backward policy, 1% uniform exploration, batch 128, and the budget of
``benchmarks/gfn_op.py`` (300 steps = 38,400 trajectories, Adam at lr 1e-3; the trainer adds its
cosine decay).

- ``hypergrid-moo-op``: :class:`~flowforge.gflownet.OrderPreservingTB`, which only
  uses the Pareto order of each batch (``kl_weight`` is the paper's optional :math:`\\lambda_{KL}`).
- ``hypergrid-moo-tb``: trajectory balance on the preference-scalarised reward
  :math:`R(x) = \\frac1J \\sum_j (w_j^\\top f(x))^\\beta / Z_j` with ``n_preferences`` :math:`J`
  Dirichlet(``alpha``) preference vectors (``preferences="dirichlet"``) or one equal-weight vector
  (``preferences="equal"``), :math:`\\beta` = ``beta`` (16, the mean of the authors' Gamma(16, 1)
  temperature). With Dirichlet preferences this is the distribution that OP-GFN's baseline, a
  preference-conditioned GFlowNet, samples when its preference is drawn at random, learned by one
  unconditional TB model: the standard reward-scalarised comparison at equal trajectories.

``flowforge eval RUN`` needs no ``--data``: ``pareto`` gives ``pareto_share`` (the fraction of the
grid's exact Pareto front found among ``--n`` fresh samples), ``pareto_found`` and ``n_front``;
``precision`` gives ``pareto_precision``, the fraction of those samples that lie on the front.

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("hypergrid-moo-op")
    >>> r.kind, r.metrics, r.defaults["objectives"]
    ('gflownet', ('pareto', 'precision'), 'branin+currin')
    >>> model = r.build({**r.defaults, "height": 8, "width": 8, "depth": 1})
    >>> model.generator().sample(3, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([3, 2])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flowforge.core.choices import unknown_choice
from flowforge.gflownet import (
    GFlowNet,
    MultiObjectiveHyperGrid,
    OrderPreservingTB,
    TrajectoryBalance,
    dirichlet_preferences,
    pareto_share,
)
from flowforge.recipes.gflownet import gflownet_eval_options, gflownet_generator, sample_terminal
from flowforge.recipes.registry import Recipe, register

__all__ = ["build_moo_gflownet", "make_moo_env", "moo_data", "moo_evaluate", "moo_reference"]

PREFERENCES = ("dirichlet", "equal")


def _objectives(config: dict[str, Any]) -> tuple[str, ...]:
    return tuple(o.strip() for o in str(config["objectives"]).replace(",", "+").split("+") if o.strip())


def make_moo_env(config: dict[str, Any]) -> MultiObjectiveHyperGrid:
    """The config's :class:`~flowforge.gflownet.MultiObjectiveHyperGrid` (scalarised
    with the config's preferences and ``beta`` when it has them, i.e. for ``hypergrid-moo-tb``)."""
    names = _objectives(config)
    if "preferences" not in config:
        return MultiObjectiveHyperGrid(int(config["ndim"]), int(config["height"]), names)
    pref = str(config["preferences"])
    if pref not in PREFERENCES:
        raise unknown_choice("preferences", pref, PREFERENCES)
    w = (
        dirichlet_preferences(
            int(config["n_preferences"]), len(names), float(config["alpha"]), int(config["pref_seed"])
        )
        if pref == "dirichlet"
        else None
    )
    return MultiObjectiveHyperGrid(
        int(config["ndim"]), int(config["height"]), names, w, float(config["beta"])
    )


def build_moo_gflownet(config: dict[str, Any]) -> GFlowNet:
    """OP-TB (``objective="op"``) or TB on the scalarised reward (``objective="tb"``)."""
    env = make_moo_env(config)
    common = {
        "width": int(config["width"]),
        "depth": int(config["depth"]),
        "uniform_pb": bool(config["uniform_pb"]),
        "epsilon": float(config["epsilon"]),
        "temperature": float(config["temperature"]),
    }
    if config["objective"] == "op":
        return OrderPreservingTB(env, kl_weight=float(config.get("kl_weight", 0.0)), **common)
    if config["objective"] == "tb":
        return TrajectoryBalance(env, log_z_lr_scale=float(config.get("log_z_lr_scale", 100.0)), **common)
    raise unknown_choice("objective", config["objective"], ["op", "tb"])


def moo_data(config: dict[str, Any]) -> tuple[None, dict[str, Any]]:
    """No data (the model samples its own trajectories); ``dim`` = ``ndim`` for ``flowforge sample``."""
    make_moo_env(config)  # validate the grid and objectives before training starts
    return None, {"dim": int(config["ndim"]), "standardizer": None}


def moo_reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    """No held-out data (the Pareto front is exact): an empty ``(0, ndim)`` tensor."""
    return torch.empty(0, int(config["ndim"]), dtype=torch.long)


def moo_evaluate(
    model: Any,
    config: dict[str, Any],
    data: Any,
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **_: Any,
) -> dict[str, float]:
    """``pareto_share``, ``pareto_found``, ``n_front`` and ``pareto_precision`` of ``n`` fresh samples."""
    env = model.env
    states = sample_terminal(model, n or int(config["eval_samples"]), seed)
    out: dict[str, float] = {}
    if "pareto" in metrics:
        out["pareto_share"] = pareto_share(env, states)
        out["pareto_found"] = int(round(out["pareto_share"] * env.n_modes))
        out["n_front"] = env.n_modes
    if "precision" in metrics:
        out["pareto_precision"] = float(env.mode_mask(states).double().mean())
    return out


_COMMON: dict[str, Any] = {
    "ndim": 2,
    "height": 64,
    "objectives": "branin+currin",
    "width": 64,
    "depth": 3,
    "uniform_pb": True,
    "epsilon": 0.01,
    "temperature": 1.0,
    "eval_samples": 128,
    # 38,400 trajectories = 300 x 128, the budget of benchmarks/gfn_op.py
    "steps": 300,
    "batch_size": 128,
    "lr": 1e-3,
    "warmup": 0,
    "grad_clip": 0.0,
    "ema_decay": 0.0,
    "threads": 1,
}

_RECIPES = {
    "hypergrid-moo-op": (
        "order-preserving TB (Chen & Mauch 2024), Pareto order only",
        {"objective": "op", "kl_weight": 0.0},
    ),
    "hypergrid-moo-tb": (
        "TB on a Dirichlet-preference-scalarised reward (beta 16), the OP-GFN baseline",
        {
            "objective": "tb",
            "log_z_lr_scale": 100.0,
            "preferences": "dirichlet",
            "n_preferences": 64,
            "alpha": 1.5,
            "beta": 16.0,
            "pref_seed": 0,
        },
    ),
}
for _name, (_what, _over) in _RECIPES.items():
    register(
        Recipe(
            name=_name,
            summary=f"GFlowNet, {_what}, on the Branin-Currin hypergrid; exact Pareto-front share eval",
            defaults={**_COMMON, **_over},
            build=build_moo_gflownet,
            data=moo_data,
            generator=gflownet_generator,
            eval_options=gflownet_eval_options,
            reference=moo_reference,
            evaluate=moo_evaluate,
            metrics=("pareto", "precision"),
            kind="gflownet",
        )
    )
