"""GFlowNet recipes: ``hypergrid-tb``, ``hypergrid-db``, ``hypergrid-subtb``, ``hypergrid-fldb``,
``bitseq-tb`` and ``set-fldb``.

Hypergrid recipes follow torchgfn's defaults (``train_hypergrid.py``): a 2-D grid of height 8 with
rewards (0.1, 0.5, 2.0), policy MLPs of 256 x 2 hidden units whose backward head shares the forward
policy's trunk, batch 16, Adam at lr 1e-3 (log Z at 1e-1: ``log_z_lr_scale=100``), on-policy sampling,
and a budget of 32,000 trajectories (2,000 steps of 16). ``hypergrid-fldb`` is forward-looking DB
(the grid's reward is defined on every state). ``bitseq-tb`` builds 8-bit strings 2 bits at a time
towards 4 random modes. ``set-fldb`` is FL-GFN's set task (Pan et al. 2023): 20 of 30 items with an
additive energy, forward-looking DB, uniform exploration (``epsilon=1``, the paper's setting for the small
task), 10,000 steps of 16; ``--set incomplete=1`` trains only on trajectories cut before their stop.
Every recipe takes ``--set objective=tb|db|subtb|fldb|flsubtb|fldb-ref|fm|zvar``. The model makes its own batches,
so ``data`` returns ``None``.

``flowforge eval RUN`` needs no ``--data``. On enumerable environments the metrics are *exact*,
computed from the trained forward policy by dynamic programming (:func:`~flowforge.gflownet.exact_metrics`):
``l1`` (``l1_sum``, torchgfn's convention, and ``l1_mean``), ``jsd``, ``logz`` (``logz_error``) and
``modes`` (``modes_found`` among ``--n`` sampled terminal states, of ``n_modes``). The set task is too
large to enumerate: ``topk`` gives ``mean_top_k_reward`` (the mean reward of the best 100 unique sets
among ``--n`` samples) and ``mean_reward``; ``logz`` is exact there too (an elementary symmetric sum).
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

from typing import Any

import torch
from torch import Tensor

from flowforge.core.choices import unknown_choice
from flowforge.gflownet import (
    BitSequence,
    FlowMatching,
    GFlowNet,
    HyperGrid,
    LocalSearch,
    SetGeneration,
    TopKTracker,
    exact_metrics,
    modes_found,
    shared_trunk_policies,
)
from flowforge.recipes.registry import Recipe, register

__all__ = [
    "VARIANTS",
    "objectives",
    "build_gflownet",
    "exact_outputs",
    "sample_terminal",
    "make_env",
    "gflownet_data",
    "gflownet_evaluate",
    "gflownet_eval_options",
    "gflownet_generator",
    "gflownet_reference",
]


#: forward-looking variants (Pan et al. 2023) of the state-flow objectives: name -> (base key, fixed kwargs);
#: ``fldb-ref`` is FL-GFN's reference code (no stop edge, free terminal flow): biased, but more exploratory
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "fldb": ("db", {"forward_looking": True}),
    "flsubtb": ("subtb", {"forward_looking": True}),
    "fldb-ref": ("db", {"forward_looking": True, "free_terminal_flow": True}),
}


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def objectives() -> dict[str, tuple[type[GFlowNet], tuple[str, ...], dict[str, Any]]]:
    """Objective name -> (class, config keys passed to it, fixed keyword arguments).

    Read from the classes themselves: every :class:`~flowforge.gflownet.GFlowNet` subclass that declares
    its own ``key`` and ``options`` is an objective, so a new objective is one file in ``gflownet/`` plus
    one export line, and ``--set objective=KEY`` finds it.
    """
    table = {
        c.__dict__["key"]: (c, tuple(c.options), {}) for c in _subclasses(GFlowNet) if "key" in c.__dict__
    }
    for name, (base, fixed) in VARIANTS.items():
        if base in table:
            table[name] = (table[base][0], table[base][1], fixed)
    return dict(sorted(table.items()))


def make_env(config: dict[str, Any]) -> HyperGrid | BitSequence | SetGeneration:
    """The config's environment (``env``: ``hypergrid``, ``bitseq`` or ``set``)."""
    kind = config.get("env", "hypergrid")
    need = {"hypergrid": _GRID, "bitseq": _BITSEQ, "set": _SET}.get(kind)
    if need is None:
        raise unknown_choice("env", kind, ["hypergrid", "bitseq", "set"])
    missing = [k for k in need if k not in config]
    if missing:
        raise ValueError(
            f"env={kind} needs the keys {', '.join(missing)}, which this recipe does not have; "
            f"start from the {kind}-* recipe instead (flowforge list)"
        )
    if kind == "hypergrid":
        c = config
        return HyperGrid(int(c["ndim"]), int(c["height"]), float(c["r0"]), float(c["r1"]), float(c["r2"]))
    if kind == "bitseq":
        return BitSequence(
            int(config["length"]),
            int(config["word"]),
            int(config["n_modes"]),
            float(config["beta"]),
            int(config["env_seed"]),
        )
    if kind == "set":
        return SetGeneration(int(config["n_items"]), int(config["set_size"]), seed=int(config["env_seed"]))
    raise AssertionError(kind)  # pragma: no cover


def build_gflownet(config: dict[str, Any]) -> GFlowNet:
    """The GFlowNet of a config; ``shared_trunk`` gives P_F and P_B one trunk with two heads (torchgfn)."""
    env = make_env(config)
    name, table = config["objective"], objectives()
    if name not in table:
        raise unknown_choice("objective", name, table, hint="write e.g. --set objective=tb")
    cls, extra, fixed = table[name]
    width, depth = int(config["width"]), int(config["depth"])
    uniform_pb = bool(config["uniform_pb"]) or cls is FlowMatching  # FM needs no backward policy
    pf = pb = None
    if config["shared_trunk"] and depth > 0 and cls is not FlowMatching:
        pf, pb = shared_trunk_policies(env.obs_dim, env.n_actions, width, depth)
        pb = None if uniform_pb else pb
    if float(config.get("incomplete", 0.0)) and "incomplete" not in extra:
        raise ValueError(
            f"incomplete > 0 needs an objective with local residuals (db, subtb, fldb, flsubtb), not {name!r}"
        )
    return cls(
        env,
        pf,
        pb,
        uniform_pb=uniform_pb,
        width=width,
        depth=depth,
        epsilon=float(config["epsilon"]),
        temperature=float(config["temperature"]),
        local_search=_local_search(config),
        **{k: config[k] for k in extra if k in config},
        **fixed,
    )


def _local_search(config: dict[str, Any]) -> LocalSearch | None:
    """``--set local_search=0.5 ls_filter=mh``: LS-GFN's back ratio and filter; 0 (the default): off."""
    ratio = float(config.get("local_search", 0.0))
    if ratio == 0.0:
        return None
    if not 0.0 < ratio <= 1.0:
        raise ValueError(
            f"--set local_search={ratio}: the fraction of each trajectory undone and rebuilt lies in (0, 1]; "
            "write e.g. --set local_search=0.5 (0: off)"
        )
    return LocalSearch(back_ratio=ratio, filter=str(config.get("ls_filter", "deterministic")))


def gflownet_data(config: dict[str, Any]) -> tuple[None, dict[str, Any]]:
    """No data (the model samples its own trajectories); ``dim`` = ``ndim`` for ``flowforge sample``."""
    env = make_env(config)  # validate the environment before training starts
    if config["objective"] not in (table := objectives()):
        raise unknown_choice("objective", config["objective"], table, hint="write e.g. --set objective=tb")
    return None, {"dim": int(env.s0.numel()), "standardizer": None}


def gflownet_reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    """No held-out data: the metrics are exact. An empty ``(0, ndim)`` tensor, so ``eval`` needs no ``--data``."""
    return torch.empty(0, int(make_env(config).s0.numel()), dtype=torch.long)


def sample_terminal(model: Any, n: int, seed: int) -> Tensor:
    """``(n, ndim)`` terminal states of a trained GFlowNet, drawn in chunks of 4096 with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return torch.cat([model.sample(min(4096, n - i), generator=g).terminal for i in range(0, n, 4096)])


def exact_outputs(model: Any, env: Any, metrics: list[str]) -> dict[str, float]:
    """The exact metrics asked for: ``l1`` -> ``l1_sum``, ``l1_mean``; ``jsd``; ``logz`` -> ``logz_error``."""
    out: dict[str, float] = {}
    if {"l1", "jsd"} & set(metrics):
        m = exact_metrics(model, env)
        if "l1" in metrics:
            out["l1_sum"], out["l1_mean"] = m["l1_sum"], m["l1_mean"]
        if "jsd" in metrics:
            out["jsd"] = m["jsd"]
    if "logz" in metrics:
        with torch.no_grad():
            out["logz_error"] = abs(float(model.log_z) - env.log_partition)
    return out


def gflownet_generator(model: Any, config: dict[str, Any]) -> Any:
    """The ``generator`` hook of GFlowNet runs: ``model.generator()``, whose samples are terminal states."""
    return model.generator()


def gflownet_eval_options(config: dict[str, Any]) -> tuple[str, ...]:
    """``eval`` of a GFlowNet takes ``--n`` (sampled terminal states); its exact metrics need no data."""
    return ("n",)


def gflownet_evaluate(
    model: Any,
    config: dict[str, Any],
    data: Any,
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **_: Any,
) -> dict[str, float]:
    """Exact ``l1_sum``, ``l1_mean``, ``jsd``, ``logz_error``; ``modes_found`` of ``n_modes`` and
    ``mean_top_k_reward`` / ``mean_reward`` in ``n`` sampled terminal states."""
    env = model.env
    out = exact_outputs(model, env, metrics)
    if {"modes", "topk"} & set(metrics):
        states = sample_terminal(model, n or int(config["eval_samples"]), seed)
        if "modes" in metrics:
            out["modes_found"] = modes_found(env, states)
            out["n_modes"] = env.n_modes
        if "topk" in metrics:
            log_r = env.log_reward(states, torch.float64)
            top = TopKTracker(k=int(config["top_k"]))
            top.add(states, log_r)
            out["mean_top_k_reward"] = top.mean_top_k()
            out["mean_reward"] = float(log_r.exp().mean())
    return out


_COMMON: dict[str, Any] = {
    "width": 256,
    "depth": 2,
    "shared_trunk": True,
    "uniform_pb": False,
    "epsilon": 0.0,
    "temperature": 1.0,
    # local search (LS-GFN): fraction of each trajectory undone and rebuilt; 0 = off
    "local_search": 0.0,
    "ls_filter": "deterministic",
    "eval_samples": 10_000,
    # 32,000 trajectories = 2000 x 16, torchgfn's default budget
    "steps": 2000,
    "batch_size": 16,
    "lr": 1e-3,
    # torchgfn keeps lr constant; cosine decay measured better at this budget (benchmarks/gfn_vs_torchgfn.py, RESULTS-gfn.md)
    "schedule": "cosine",
    "warmup": 0,
    "grad_clip": 0.0,
    "ema_decay": 0.0,
    "threads": 1,
}
_GRID: dict[str, Any] = {"env": "hypergrid", "ndim": 2, "height": 8, "r0": 0.1, "r1": 0.5, "r2": 2.0}
_BITSEQ: dict[str, Any] = {"env": "bitseq", "length": 8, "word": 2, "n_modes": 4, "beta": 2.0, "env_seed": 0}
_SET: dict[str, Any] = {"env": "set", "n_items": 30, "set_size": 20, "env_seed": 0, "top_k": 100}
_EXACT = ("l1", "jsd", "logz", "modes")

_RECIPES: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "hypergrid-tb": (
        "trajectory balance on the hypergrid (2-D, height 8); exact L1 / JSD / log Z eval",
        {**_GRID, "objective": "tb", "log_z_lr_scale": 100.0},
        _EXACT,
    ),
    "hypergrid-db": (
        "detailed balance (state flow head) on the hypergrid; exact eval",
        {**_GRID, "objective": "db", "incomplete": 0.0},
        _EXACT,
    ),
    "hypergrid-subtb": (
        "sub-trajectory balance (geometric-within, lamda 0.9) on the hypergrid; exact eval",
        {**_GRID, "objective": "subtb", "lamda": 0.9, "incomplete": 0.0},
        _EXACT,
    ),
    "hypergrid-fldb": (
        "forward-looking detailed balance (FL-GFN) on the hypergrid; exact eval",
        {**_GRID, "objective": "fldb", "incomplete": 0.0},
        _EXACT,
    ),
    "bitseq-tb": (
        "trajectory balance on 8-bit sequences, 2 bits per step, 4 modes; exact eval",
        {**_BITSEQ, "objective": "tb", "log_z_lr_scale": 100.0},
        _EXACT,
    ),
    "set-fldb": (
        "forward-looking DB on FL-GFN's set task (20 of 30 items, additive energy); top-100 reward eval",
        {**_SET, "objective": "fldb", "incomplete": 0.0, "epsilon": 1.0, "steps": 10_000},
        ("topk", "logz"),
    ),
}
for _name, (_what, _over, _metrics) in _RECIPES.items():
    register(
        Recipe(
            name=_name,
            summary=f"GFlowNet, {_what}",
            defaults={**_COMMON, **_over},
            build=build_gflownet,
            data=gflownet_data,
            generator=gflownet_generator,
            eval_options=gflownet_eval_options,
            reference=gflownet_reference,
            evaluate=gflownet_evaluate,
            metrics=_metrics,
            kind="gflownet",
        )
    )
