"""Flow-matching recipes on 2-D toy sets (``moons``, ``checkerboard``, ...) and on users' arrays.

Every choice below (path, time sampler, coupling, loss) is a name in a small table, set with
``--set key=value``; the defaults were chosen by measurement (see BENCHMARKS.md).

Hooks: the run's generator samples in data units (:func:`~flowforge.recipes.common.data_space_generator`);
``sample`` takes ``--solver``, ``--steps`` and ``--qmc`` (defaults: the config's ``solver``,
``sample_steps`` and ``qmc``); ``eval`` computes :data:`METRICS` against fresh toy points (or ``--data``)
with i.i.d. source noise unless ``--qmc`` is given, and records the noise, solver and steps it used.

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("moons")
    >>> r.sample_kwargs(dict(r.defaults), {"steps": 8}, 10)
    {'solver': 'heun', 'steps': 8, 'qmc': True}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from flowforge.continuous import FlowMatching
from flowforge.core import couplings as C
from flowforge.core import time as T
from flowforge.core.choices import unknown_choice
from flowforge.core.objectives import PseudoHuber, SquaredError
from flowforge.core.paths import AffinePath, BrownianGamma, StochasticInterpolant, TrigonometricInterpolant
from flowforge.core.schedules import Cosine, Linear, Polynomial, VariancePreserving
from flowforge.data import Standardizer, check_finite, load_array, toy2d
from flowforge.nn import MLP
from flowforge.recipes.common import SAMPLE_METRICS, data_space_generator, nll_of, sample_metrics
from flowforge.recipes.registry import Recipe, register

__all__ = [
    "METRICS",
    "PATHS",
    "TIME_SAMPLERS",
    "COUPLINGS",
    "DISTANCES",
    "build_flow_matching",
    "flow_data",
    "toy_reference",
    "flow_sample_options",
    "flow_sample_kwargs",
    "flow_evaluate",
]

#: Metrics ``flowforge eval`` knows for flow-matching runs (``nll`` by the exact ODE likelihood).
METRICS: tuple[str, ...] = (*SAMPLE_METRICS, "nll")

PATHS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "linear": lambda c: AffinePath(Linear()),
    "cosine": lambda c: AffinePath(Cosine()),
    "vp": lambda c: AffinePath(VariancePreserving()),
    "polynomial": lambda c: AffinePath(Polynomial(2.0)),
    "interpolant": lambda c: StochasticInterpolant(Linear(), BrownianGamma(c["gamma_a"])),
    "interpolant-trig": lambda c: StochasticInterpolant(
        TrigonometricInterpolant(BrownianGamma(c["gamma_a"])), BrownianGamma(c["gamma_a"])
    ),
}
TIME_SAMPLERS: dict[str, Callable[[dict[str, Any]], T.TimeSampler]] = {
    "uniform": lambda c: T.Uniform(),
    "logit-normal": lambda c: T.LogitNormal(0.0, 1.0),
    "mode": lambda c: T.ModeSampler(1.29),
    "cosmap": lambda c: T.CosMap(),
    "u-shaped": lambda c: T.UShaped(4.0),
}
COUPLINGS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "independent": lambda c: C.Independent(),
    "ot": lambda c: C.MinibatchOT("exact"),
    "sinkhorn": lambda c: C.MinibatchOT("sinkhorn", c["ot_reg"]),
    "sb": lambda c: C.SchrodingerBridge(c["sb_sigma"]),
}
DISTANCES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "mse": lambda c: SquaredError(),
    "pseudo-huber": lambda c: PseudoHuber(),
}


def _pick(table: dict[str, Any], key: str, config: dict[str, Any]) -> Any:
    name = config[key]
    if name not in table:
        raise unknown_choice(key, name, table, hint=f"e.g. --set {key}={next(iter(table))}")
    return table[name](config)


def build_flow_matching(config: dict[str, Any]) -> FlowMatching:
    """An MLP flow-matching model from a flat config (see :data:`FLOW2D_DEFAULTS`)."""
    dim = int(config["dim"])
    net = MLP(dim, config["width"], config["depth"], time_freqs=config["time_freqs"])
    coupling = _pick(COUPLINGS, "coupling", config)
    path = coupling.path if isinstance(coupling, C.SchrodingerBridge) else _pick(PATHS, "path", config)
    time = _pick(TIME_SAMPLERS, "time", config)
    if config["time_shift"] != 1.0:
        time = T.Shifted(time, config["time_shift"])
    singular = isinstance(path, StochasticInterpolant) or config["path"] == "vp"
    return FlowMatching(
        net,
        path=path,
        time=time,
        coupling=coupling,
        prediction=config["prediction"],
        distance=_pick(DISTANCES, "loss", config),
        t_range=(1e-4, 1 - 1e-4) if singular else (0.0, 1.0),
        event_shape=(dim,),
    )


def flow_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Training data for a flow recipe and the config entries it fixes (``dim``, ``standardizer``).

    A toy set is sampled fresh for every batch (an endless stream, seeded by the trainer's generator);
    a user's file (``data_file``) is loaded, checked for NaN/inf and used as a fixed tensor.
    """
    if config.get("data_file"):
        x = load_array(config["data_file"])
        check_finite(x, what=f"{config['data_file']}:")
        std = Standardizer.fit(x) if config["standardize"] else None
        z = std.forward(x) if std is not None else x
        updates = {"dim": int(x.shape[1]), "standardizer": std.to_dict() if std else None, "n_train": len(x)}
        return z.contiguous(), updates
    name, noise = config["dataset"], config["noise"]
    ref = toy2d(name, 200_000, noise=noise, seed=12345)
    std = Standardizer.fit(ref) if config["standardize"] else None

    def stream(batch_size: int, generator: torch.Generator) -> Tensor:
        x = toy2d(name, batch_size, noise=noise, generator=generator)
        return std.forward(x) if std is not None else x

    return stream, {"dim": 2, "standardizer": std.to_dict() if std else None}


def toy_reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    """Fresh held-out points of a toy recipe's distribution (a user's file has none: pass ``--data``)."""
    if config.get("data_file"):
        raise ValueError(f"the run was trained on {config['data_file']}; pass held-out data with --data FILE")
    return toy2d(config["dataset"], n, noise=config["noise"], seed=10_000 + seed)


def flow_sample_options(config: dict[str, Any]) -> tuple[str, ...]:
    """Sampling options of a flow-matching run: the ODE/SDE solver, its steps, quasi-random noise."""
    return ("solver", "steps", "qmc")


def flow_sample_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    """``sample(...)`` keywords: what is given, else the run's ``solver``, ``sample_steps`` and ``qmc``."""
    return {
        "solver": given.get("solver", config.get("solver", "heun")),
        "steps": int(given.get("steps", config.get("sample_steps", 25))),
        "qmc": bool(given.get("qmc", config.get("qmc", False))),
    }


def flow_eval_options(config: dict[str, Any]) -> tuple[str, ...]:
    """``eval`` options of a flow-matching run."""
    return ("data", "n", "solver", "steps", "qmc")


def flow_evaluate(
    model: Any,
    config: dict[str, Any],
    data: Callable[[], Tensor],
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    qmc: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Sample metrics (``swd``, ``w2``, ``mmd``, ``energy``) and ``nll`` of a run against held-out points.

    Samples use i.i.d. source noise unless ``qmc=True`` (quasi-random noise spreads a batch evenly and
    flatters the sample metrics); the result records ``source_noise``, ``solver`` and ``steps``.
    """
    gen = data_space_generator(model, config)
    x = data().float()
    out: dict[str, Any] = {}
    if set(metrics) & set(SAMPLE_METRICS):
        kwargs = flow_sample_kwargs(config, {**options, "qmc": qmc}, 0)
        out.update(sample_metrics(gen, x, metrics, n=n, seed=seed, **kwargs))
        out.update(
            source_noise="qmc" if kwargs["qmc"] else "iid", solver=kwargs["solver"], steps=kwargs["steps"]
        )
    if "nll" in metrics:
        out["nll"] = nll_of(gen, x, seed=seed)
    return out


FLOW2D_DEFAULTS: dict[str, Any] = {
    "dataset": "moons",
    "noise": None,
    "data_file": "",
    "standardize": True,
    "width": 256,
    "depth": 3,
    "time_freqs": 0,
    "path": "linear",
    "gamma_a": 1.0,
    "time": "uniform",
    "time_shift": 0.5,
    "coupling": "independent",
    "ot_reg": 0.05,
    "sb_sigma": 0.5,
    "prediction": "velocity",
    "loss": "mse",
    "steps": 12_000,
    "batch_size": 256,
    "lr": 2e-3,
    "warmup": 500,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "threads": 1,
    "solver": "heun",
    "sample_steps": 25,
    "qmc": True,
}

_SUMMARIES = {
    "moons": "flow matching on two moons (MLP 3x256, rectified-flow path, EMA); the default demo",
    "checkerboard": "flow matching on the 4x4 checkerboard",
    "eight-gaussians": "flow matching on eight Gaussians on a circle",
    "spirals": "flow matching on two interleaved spirals",
    "circles": "flow matching on two concentric circles",
}

for _name, _summary in _SUMMARIES.items():
    register(
        Recipe(
            name=_name,
            summary=_summary,
            defaults={**FLOW2D_DEFAULTS, "dataset": _name},
            build=build_flow_matching,
            data=flow_data,
            generator=data_space_generator,
            sample_options=flow_sample_options,
            sample_kwargs=flow_sample_kwargs,
            eval_options=flow_eval_options,
            reference=toy_reference,
            evaluate=flow_evaluate,
            metrics=METRICS,
            default_metrics=("swd", "mmd", "energy"),
            kind="continuous",
        )
    )
