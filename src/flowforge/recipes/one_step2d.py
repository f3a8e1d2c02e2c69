"""``moons-meanflow``, ``checkerboard-meanflow``, ... and ``moons-twinflow``, ...: one-step models of the
2-D toy sets, trained from scratch (no teacher).

MeanFlow (Geng et al., 2025, arXiv 2505.13447) learns the average velocity ``u(x, r, t)`` with the
MeanFlow identity; TwinFlow (arXiv 2512.05150) trains one network with a real and a fake branch. Both
sample in ``--steps`` jumps (default 1) and share the toy recipes' data, standardisation and metrics
(``swd``, ``mmd``, ``energy``, ``w2`` against fresh points). Distilled students of a teacher run are in
:mod:`flowforge.recipes.few_step` (``flowforge distill``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from flowforge.continuous import MeanFlow, MeanFlowTimes, TwinFlow
from flowforge.core.choices import unknown_choice
from flowforge.core.time import LogitNormal, Uniform
from flowforge.nn import MLP
from flowforge.recipes.common import SAMPLE_METRICS, data_space_generator, sample_metrics
from flowforge.recipes.flows2d import FLOW2D_DEFAULTS, flow_data, toy_reference
from flowforge.recipes.registry import Recipe, register

__all__ = ["build_meanflow", "build_twinflow", "meanflow_times"]

_SETS = ("moons", "checkerboard", "eight-gaussians")


def _net(config: dict[str, Any]) -> MLP:
    return MLP(int(config["dim"]), config["width"], config["depth"], two_times=True)


def meanflow_times(config: dict[str, Any]) -> MeanFlowTimes:
    """The ``(r, t)`` sampler: two draws of ``time`` (``uniform``, or ``logit-normal`` with ``time_loc`` and
    ``time_scale``), sorted; a share ``diagonal`` of the rows gets ``r = t``."""
    laws = {
        "uniform": lambda: Uniform(),
        "logit-normal": lambda: LogitNormal(config["time_loc"], config["time_scale"]),
    }
    law = config.get("time", "logit-normal")  # runs saved before the key existed drew logit-normal times
    if law not in laws:
        raise unknown_choice("time", law, laws, hint="--set time=uniform")
    return MeanFlowTimes(laws[law](), diagonal=config["diagonal"])


def build_meanflow(config: dict[str, Any]) -> MeanFlow:
    """MeanFlow on an MLP with a second time input (:func:`meanflow_times`; the adaptive weight's ``p``)."""
    times = meanflow_times(config)
    return MeanFlow(_net(config), times=times, p=config["adaptive_p"], event_shape=(int(config["dim"]),))


def build_twinflow(config: dict[str, Any]) -> TwinFlow:
    """TwinFlow on an MLP with a second time input (the official batch split and loss defaults)."""
    return TwinFlow(_net(config), event_shape=(int(config["dim"]),))


def _sample_options(config: dict[str, Any]) -> tuple[str, ...]:
    return ("steps",)


def _sample_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    return {"steps": int(given.get("steps", config.get("sample_steps", 1)))}


def _evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Callable[[], Tensor],
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Sample metrics against held-out points; samples use i.i.d. source noise."""
    gen = data_space_generator(model, config)
    kwargs = _sample_kwargs(config, options, 0)
    out: dict[str, Any] = dict(sample_metrics(gen, data().float(), metrics, n=n, seed=seed, **kwargs))
    return {**out, "source_noise": "iid", "steps": kwargs["steps"]}


_COMMON = {
    **{k: v for k, v in FLOW2D_DEFAULTS.items() if k not in ("path", "gamma_a", "coupling", "ot_reg")},
    "sample_steps": 1,
}
for _key in ("time", "time_shift", "sb_sigma", "prediction", "loss", "solver", "qmc", "time_freqs"):
    _COMMON.pop(_key)

_METHODS: dict[str, tuple[Callable[[dict[str, Any]], nn.Module], dict[str, Any], str]] = {
    "meanflow": (
        build_meanflow,
        # uniform times, 75% of rows r != t, 32k steps: on moons 1-jump SWD 0.028 against 0.076 with the
        # paper's ImageNet sampler (logit-normal(0.4, 1), 75% r = t) at 4k steps (BENCHMARKS 13.10); p = 0
        # (plain squared error): on moons p = 1 gave 0.092 against 0.076 (BENCHMARKS 13)
        {
            "time": "uniform",
            "time_loc": 0.4,
            "time_scale": 1.0,
            "diagonal": 0.25,
            "adaptive_p": 0.0,
            "steps": 32_000,
        },
        "MeanFlow (average velocity by the MeanFlow identity, JVP) on {name}; 1-step sampling",
    ),
    "twinflow": (
        build_twinflow,
        {"steps": 8_000},
        "TwinFlow (one net, real and fake branches, no teacher) on {name}; 1-step sampling",
    ),
}

for _method, (_build, _extra, _summary) in _METHODS.items():
    for _name in _SETS:
        register(
            Recipe(
                name=f"{_name}-{_method}",
                summary=_summary.format(name=_name),
                defaults={**_COMMON, **_extra, "dataset": _name},
                build=_build,
                data=flow_data,
                generator=data_space_generator,
                sample_options=_sample_options,
                sample_kwargs=_sample_kwargs,
                eval_options=lambda config: ("data", "n", "steps"),
                reference=toy_reference,
                evaluate=_evaluate,
                metrics=SAMPLE_METRICS,
                default_metrics=("swd", "mmd", "energy"),
                kind="continuous",
            )
        )
