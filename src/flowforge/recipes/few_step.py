r"""Few-step students of a trained flow-matching run: ``<teacher>-reflow``, ``<teacher>-turbo`` and
:func:`distill` (``flowforge distill --teacher RUN --method reflow|turbo``; ``freeflow`` lives in
:mod:`flowforge.recipes.few_step_freeflow`).

A few-step run distils a TEACHER run, a flow-matching run of one of :data:`TEACHERS` (``moons``,
``checkerboard``, ``eight-gaussians``; ``digits``, ``mnist``), named by ``--set teacher_run=FOLDER``
(like the ``ae_run`` of the latent recipes). Its config records the teacher's config, so ``flowforge
sample`` and ``flowforge eval`` go through the teacher recipe's own generator, sampling options and
evaluation (SWD on the 2-D sets, FD/accuracy on images), and the run folder holds every weight it needs:

- ``reflow`` (2-rectified flow++, :class:`~flowforge.distill.Reflow`, arXiv:2405.20320). Stage 1 integrates
  the teacher from noise and writes the pairs ``(x0, x1[, y])`` to ``RUN/pairs.safetensors``
  (:func:`~flowforge.distill.generate_pairs`: chunked and resumable; a killed run started again continues
  the pairs and writes the same bits). Stage 2 trains a student that starts as a copy of the teacher, with
  rf++'s U-shaped times and pseudo-Huber loss (``--set time=uniform loss=mse``: plain reflow, the ablation).
  Image teachers are class-conditional: the pairs hold balanced labels, and the student keeps the teacher's
  label dropout (so guidance still works). Sampling defaults to one Euler step.
- ``turbo`` (FlowTurbo, :class:`~flowforge.distill.VelocityRefiner`, arXiv:2409.18128): a light refiner
  trained against the frozen teacher (whose weights the run keeps, frozen). Its generator runs FlowTurbo's
  ``H P R`` schedule: ``--steps N`` gives one Heun step, pseudo-corrector steps and up to three refiner
  steps (refiner steps only when ``1/N`` fits the refiner's training gap ``dt_max``; else Heun + P), or set
  one with ``--set turbo_schedule=1-5-3`` (n_H-n_P-n_R; it is also the default ``--steps``).

Further methods plug in as one :class:`FewStepMethod` passed to :func:`add_method`, which registers
``<teacher>-<method>`` for every teacher of :data:`TEACHERS`.

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("moons-reflow")
    >>> r.sample_options(dict(r.defaults)), r.default_metrics_for({})
    (('solver', 'steps', 'qmc'), ('swd', 'mmd', 'energy', 'straightness'))
    >>> get_recipe("digits-turbo").sample_options(dict(get_recipe("digits-turbo").defaults))
    ('steps', 'qmc', 'label')
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.continuous import FlowMatching
from flowforge.continuous.generator import make_solver
from flowforge.core.choices import unknown_choice
from flowforge.core.noise import standard_normal
from flowforge.core.objectives import SquaredError
from flowforge.distill import (
    Reflow,
    TurboGenerator,
    VelocityRefiner,
    default_schedule,
    generate_pairs,
    load_pairs,
)
from flowforge.metrics import straightness
from flowforge.nn import MLP, UNet
from flowforge.recipes.flows2d import TIME_SAMPLERS
from flowforge.recipes.images import N_CLASSES
from flowforge.recipes.registry import RECIPES, Recipe, get_recipe, register
from flowforge.recipes.run_folder import last_step, load_run, read_config, run_recipe
from flowforge.recipes.runs import train_recipe
from flowforge.train import Run

__all__ = [
    "TEACHERS",
    "METHODS",
    "FewStepMethod",
    "add_method",
    "distill",
    "distill_recipe",
    "distill_out",
    "parse_schedule",
    "TurboRun",
    "PAIRS_FILE",
]

#: The teacher recipes that have few-step students, and their kind (which defaults a student gets).
TEACHERS: dict[str, str] = {
    "moons": "points",
    "checkerboard": "points",
    "eight-gaussians": "points",
    "digits": "images",
    "mnist": "images",
}

#: Name of the teacher-pair file in a reflow run folder.
PAIRS_FILE = "pairs.safetensors"

#: Sampling keys of a student's config that replace the teacher's when its hooks sample the student.
_SAMPLING_KEYS = ("solver", "sample_steps", "qmc", "guidance", "guidance_schedule")


@dataclass(frozen=True)
class FewStepMethod:
    """One distillation method of the few-step recipes (a row of :data:`METHODS`).

    Attributes:
        name: what ``flowforge distill --method NAME`` takes; its recipes are ``<teacher>-<name>``.
        summary: one line for ``flowforge list``; ``{teacher}`` becomes the teacher recipe's name.
        defaults: ``kind -> keys`` (``kind`` is ``"points"`` or ``"images"``): the method's settings and
            its training defaults (``steps``, ``lr``, ...; ``teacher_run`` is added).
        build: ``(config, teacher) -> model`` with ``loss(batch)``; ``teacher`` is the teacher's
            :class:`~flowforge.continuous.FlowMatching`, with its trained weights when the teacher run is at
            hand (else with its architecture only: loading the student's run then overwrites every weight).
        data: ``(config, teacher_recipe, teacher_config) -> (training data, config updates)``.
        prepare: ``(config, run_dir, data) -> None``: work done in the run folder before training
            (reflow: the pair file); ``None``: nothing.
        as_flow: ``(model, config) -> flow``: the trained model as the teacher recipe's ``generator`` and
            ``evaluate`` hooks take a flow-matching model (``generator()``, ``net``, ...).
        fixed: teacher-config entries the method fixes when it samples (turbo: ``solver="turbo"``).
        dropped_options: sampling options of the teacher recipe that do not apply.
        dropped_metrics: metrics of the teacher recipe that do not apply (turbo has no ``nll``).
        metrics: extra metrics, ``name -> fn(model, config, n, seed) -> float``.
        default_metrics: the extra metrics ``eval`` computes by default, by kind.
        describe: ``(flow, config) -> dict`` added to ``eval``'s result (e.g. the schedule used).
    """

    name: str
    summary: str
    defaults: Callable[[str], dict[str, Any]]
    build: Callable[[dict[str, Any], FlowMatching], nn.Module]
    data: Callable[[dict[str, Any], Recipe, dict[str, Any]], tuple[Any, dict[str, Any]]]
    as_flow: Callable[[nn.Module, dict[str, Any]], Any]
    prepare: Callable[[dict[str, Any], Path, Any], None] | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    dropped_options: tuple[str, ...] = ()
    dropped_metrics: tuple[str, ...] = ()
    metrics: Mapping[str, Callable[..., float]] = field(default_factory=dict)
    default_metrics: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    describe: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None


#: Distillation methods by name (``flowforge distill --method NAME``); :func:`add_method` adds one.
METHODS: dict[str, FewStepMethod] = {}


# --------------------------------------------------------------------------------------------------
# The teacher run
# --------------------------------------------------------------------------------------------------


def _teacher_path(config: Mapping[str, Any]) -> Path:
    return Path(str(config["teacher_run"])).expanduser()


def _check_teacher(config: Mapping[str, Any], teacher: str) -> dict[str, Any]:
    """The teacher run's config; clear errors for a missing run or one of the wrong recipe."""
    path = _teacher_path(config)
    method = str(config["recipe"]).removeprefix(f"{teacher}-")
    held = run_recipe(path)
    if held is None:
        raise FileNotFoundError(
            f"no teacher run in {path}; train one first (flowforge train {teacher} --out {path}) and distil it "
            f"with flowforge distill --teacher {path} --method {method} (or point to it with --set "
            "teacher_run=FOLDER)"
        )
    if held != teacher:
        if held in TEACHERS:
            hint = f"distil it with {held}-{method} (flowforge distill --teacher {path} --method {method})"
        else:
            hint = (
                f"it is not a flow-matching run of {', '.join(TEACHERS)}; train a teacher with "
                f"flowforge train {teacher}"
            )
        raise ValueError(f"{path} is a {held} run, but {config['recipe']} distils a {teacher} run; {hint}")
    if last_step(path) is None:
        raise FileNotFoundError(
            f"the teacher run {path} holds no checkpoint yet; let flowforge train {teacher} --out {path} "
            "write one (or finish it with --resume)"
        )
    return read_config(path)


def _teacher_model(config: dict[str, Any], teacher: str, *, trained: bool) -> FlowMatching:
    """The teacher's flow-matching model; its trained (EMA) weights when the teacher run is at hand and is
    the one this run recorded. ``trained=True``: those weights are required (else an error)."""
    tc = config["teacher"]
    path = _teacher_path(config)
    same = (
        run_recipe(path) == teacher
        and read_config(path) == tc
        and last_step(path) == config.get("teacher_step")
    )
    if same:
        model, _ = load_run(path)
    elif trained:
        raise ValueError(
            f"the teacher run {path} is not the one this run started from (its config or its last step "
            f"changed); point --set teacher_run= at that run, or start this run again in a new folder"
        )
    else:  # the architecture only; a student run's checkpoint overwrites every weight
        model = get_recipe(teacher).build(dict(tc))
    if not isinstance(model, FlowMatching):
        raise ValueError(
            f"the teacher of {config['recipe']} must be a flow-matching run, got a {type(model).__name__}; "
            f"train one with flowforge train {teacher}"
        )
    return model


def _teacher_config(config: Mapping[str, Any], teacher: str, method: FewStepMethod) -> dict[str, Any]:
    """The config the teacher recipe's hooks see: the teacher's, with the student's sampling keys."""
    tc = dict(config.get("teacher") or get_recipe(teacher).defaults)
    tc["recipe"] = teacher
    tc.update({k: config[k] for k in _SAMPLING_KEYS if k in config})
    tc.update(method.fixed)
    return tc


def _kind_of(config: Mapping[str, Any]) -> str:
    return "images" if "image_shape" in config["teacher"] else "points"


def _device(config: Mapping[str, Any]) -> torch.device:
    name = str(config.get("device") or "")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------------------------------
# The hooks of a <teacher>-<method> recipe
# --------------------------------------------------------------------------------------------------

#: data objects waiting for their run folder: the ``data`` hook leaves them here, keyed by the config
#: dict it was given, and the ``monitor`` hook (the one hook that is told the run folder, called right
#: after ``data`` and ``build``) takes them out and runs the method's ``prepare`` there.
_PENDING: dict[int, tuple[dict[str, Any], Any]] = {}


class StudentHooks:
    """The :class:`~flowforge.recipes.Recipe` hooks of a run trained from a base run: ``<teacher>-<method>`` (few-step students, reward fine-tuning)."""

    def __init__(self, teacher: str, method: FewStepMethod) -> None:
        self.teacher, self.method = teacher, method

    @property
    def recipe(self) -> Recipe:
        return get_recipe(self.teacher)

    def tc(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return _teacher_config(config, self.teacher, self.method)

    def as_recipe(self, data_kind: str, *, run_kind: str) -> Recipe:
        """The :class:`~flowforge.recipes.Recipe` ``<teacher>-<method>`` (``run_kind``: "distill" or "finetune")."""
        return Recipe(
            name=f"{self.teacher}-{self.method.name}",
            summary=self.method.summary.format(teacher=self.teacher),
            defaults={"teacher_run": f"runs/{self.teacher}", **self.method.defaults(data_kind)},
            build=self.build,
            data=self.data,
            generator=self.generator,
            evaluate=self.evaluate,
            metrics=self.metrics(),
            sample_options=self.sample_options,
            sample_kwargs=self.sample_kwargs,
            eval_options=self.eval_options,
            reference=self.reference,
            load_data=self.load_data,
            default_metrics=self.default_metrics,
            picture=self.picture if data_kind == "images" else None,
            kind=run_kind,
            monitor=self.monitor,
        )

    def data(self, config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        tc = _check_teacher(config, self.teacher)
        config["teacher"] = tc  # the method's data step reads it (and it is saved with the run)
        data, updates = self.method.data(config, self.recipe, tc)
        updates = {"teacher": tc, "teacher_step": last_step(_teacher_path(config)), **updates}
        if self.method.prepare is not None:
            while len(_PENDING) > 16:  # data steps whose training never started
                _PENDING.pop(next(iter(_PENDING)))
            _PENDING[id(config)] = (config, data)
        return data, updates

    def build(self, config: dict[str, Any]) -> nn.Module:
        return self.method.build(config, _teacher_model(config, self.teacher, trained=False))

    def monitor(self, config: dict[str, Any], run_dir: Path) -> None:
        pending = _PENDING.pop(id(config), None)
        if self.method.prepare is not None:
            if pending is None or pending[0] is not config:
                raise RuntimeError(
                    f"{config['recipe']}: the run folder was named without the data step before it; train "
                    "few-step recipes with train_recipe(...) or flowforge train/distill"
                )
            self.method.prepare(config, Path(run_dir), pending[1])
        return None

    def generator(self, model: nn.Module, config: dict[str, Any]) -> Any:
        return self.recipe.generator(self.method.as_flow(model, config), self.tc(config))

    def sample_options(self, config: dict[str, Any]) -> tuple[str, ...]:
        opts = self.recipe.sample_options(self.tc(config))
        return tuple(o for o in opts if o not in self.method.dropped_options)

    def sample_kwargs(self, config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
        return self.recipe.sample_kwargs(self.tc(config), given, n)

    def eval_options(self, config: dict[str, Any]) -> tuple[str, ...]:
        opts = self.recipe.eval_options(self.tc(config))
        return tuple(o for o in opts if o not in self.method.dropped_options)

    def reference(self, config: dict[str, Any], n: int, seed: int) -> Tensor:
        assert self.recipe.reference is not None
        return self.recipe.reference(self.tc(config), n, seed)

    def load_data(self, path: str, config: dict[str, Any]) -> Tensor:
        return self.recipe.load_data(path, self.tc(config))

    def picture(self, samples: Any, config: dict[str, Any]) -> Any:
        pic = self.recipe.picture
        return samples if pic is None else pic(samples, self.tc(config))

    def metrics(self) -> tuple[str, ...]:
        base = tuple(m for m in self.recipe.metrics if m not in self.method.dropped_metrics)
        return (*base, *self.method.metrics)

    def default_metrics(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        base = tuple(
            m for m in self.recipe.default_metrics_for(options) if m not in self.method.dropped_metrics
        )
        return (*base, *self.method.default_metrics.get(TEACHERS[self.teacher], ()))

    def evaluate(
        self,
        model: nn.Module,
        config: dict[str, Any],
        data: Callable[[], Tensor],
        metrics: list[str],
        *,
        n: int | None = None,
        seed: int = 0,
        **options: Any,
    ) -> dict[str, Any]:
        """The teacher recipe's evaluation of the student's samples, the method's own metrics, and what
        the student is (``method``, ``teacher``, and e.g. turbo's schedule and calls)."""
        flow = self.method.as_flow(model, config)
        base = [m for m in metrics if m not in self.method.metrics]
        out: dict[str, Any] = {}
        if base:
            out.update(self.recipe.evaluate(flow, self.tc(config), data, base, n=n, seed=seed, **options))
        for m in metrics:
            if m in self.method.metrics:
                out[m] = float(self.method.metrics[m](model, config, n, seed))
        out.update(method=self.method.name, teacher=self.teacher)
        if self.method.describe is not None:
            out.update(self.method.describe(flow, config))
        return out


def add_method(method: FewStepMethod) -> FewStepMethod:
    """Add a distillation method to :data:`METHODS` and register ``<teacher>-<name>`` for each of :data:`TEACHERS`."""
    if method.name in METHODS:
        raise ValueError(f"distillation method {method.name!r} is added twice")
    METHODS[method.name] = method
    for teacher, kind in TEACHERS.items():
        register(StudentHooks(teacher, method).as_recipe(kind, run_kind="distill"))
    return method


# --------------------------------------------------------------------------------------------------
# reflow
# --------------------------------------------------------------------------------------------------

#: Reflow distances by name: ``pseudo-huber`` is rf++'s (``C = 0.00054 d``, Reflow's default).
REFLOW_LOSSES: dict[str, Callable[[], Any]] = {"pseudo-huber": lambda: None, "mse": SquaredError}


def _reflow_defaults(kind: str) -> dict[str, Any]:
    if kind == "points":
        return {
            "pairs": 50_000,
            "pair_solver": "heun",
            "pair_steps": 32,
            "pair_batch": 5000,
            "time": "u-shaped",
            "loss": "pseudo-huber",
            "steps": 4000,
            "batch_size": 512,
            "lr": 5e-4,
            "warmup": 100,
            "grad_clip": 1.0,
            "ema_decay": 0.999,
            "threads": 1,
            "solver": "euler",
            "sample_steps": 1,
            "qmc": True,
        }
    return {
        "pairs": 20_000,
        "pair_solver": "heun",
        "pair_steps": 16,
        "pair_batch": 500,
        "time": "u-shaped",
        "loss": "pseudo-huber",
        "steps": 2000,
        "batch_size": 128,
        "lr": 2e-4,
        "warmup": 100,
        "grad_clip": 1.0,
        "ema_decay": 0.999,
        "threads": 0,
        "device": "",
        "solver": "euler",
        "sample_steps": 1,
        "guidance": 1.0,
        "guidance_schedule": "constant",
    }


def _positive(config: Mapping[str, Any], key: str) -> int:
    value = config[key]
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"--set {key}={value}: must be a whole number >= 1")
    return int(value)


class _PairStream:
    """Training batches ``(x0, x1[, y])`` drawn with replacement from the run's pair file (read on first use)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._pairs: tuple[Tensor, ...] | None = None

    def __call__(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        if self._pairs is None:
            if self.path is None:
                raise RuntimeError(
                    "the teacher pairs were not generated; train reflow recipes with flowforge train/distill "
                    "or train_recipe(...), which write them to the run folder first"
                )
            self._pairs = load_pairs(self.path)
        idx = torch.randint(0, self._pairs[0].shape[0], (batch_size,), generator=generator)
        return tuple(p[idx] for p in self._pairs)


def _reflow_data(config: dict[str, Any], recipe: Recipe, tc: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    for key in ("pairs", "pair_steps", "pair_batch"):
        _positive(config, key)
    make_solver(config["pair_solver"])  # an unknown solver fails now, not after the teacher is loaded
    _pick_time(config)
    _pick_loss(config)
    return _PairStream(), {}


def _pick_time(config: Mapping[str, Any]) -> Any:
    if config["time"] not in TIME_SAMPLERS:
        raise unknown_choice("time", config["time"], TIME_SAMPLERS, hint="rf++ uses --set time=u-shaped")
    return TIME_SAMPLERS[config["time"]](dict(config))


def _pick_loss(config: Mapping[str, Any]) -> Any:
    if config["loss"] not in REFLOW_LOSSES:
        raise unknown_choice("loss", config["loss"], REFLOW_LOSSES, hint="rf++ uses --set loss=pseudo-huber")
    return REFLOW_LOSSES[config["loss"]]()


def _pairs_done(path: Path) -> bool:
    return path.is_file() and path.with_suffix(".json").is_file()


def _reflow_prepare(config: dict[str, Any], run_dir: Path, stream: _PairStream) -> None:
    """Stage 1: the teacher's pairs in ``run_dir/pairs.safetensors`` (continued if a run was killed)."""
    path = run_dir / PAIRS_FILE
    stream.path = path
    step = last_step(run_dir)
    if _pairs_done(path) or (step is not None and step >= int(config["steps"])):
        return  # written (the trainer checks the settings), or a finished run that needs no data
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0:
        while not _pairs_done(path):  # under torchrun rank 0 writes the pairs; the others wait for them
            time.sleep(2.0)
        return
    teacher = _teacher_model(config, str(config["teacher"]["recipe"]), trained=True)
    n = int(config["pairs"])
    conditional = bool(config["teacher"].get("conditional")) and "y" in _net_cond(teacher)
    device = _device(config)
    threads, before = int(config.get("threads", 0)), torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        generate_pairs(
            teacher.to(device),
            n,
            path,
            solver=config["pair_solver"],
            steps=int(config["pair_steps"]),
            batch_size=int(config["pair_batch"]),
            generator=torch.Generator().manual_seed(int(config.get("seed", 0))),
            y=torch.arange(n) % N_CLASSES if conditional else None,
            teacher_name=f"{config['teacher']['recipe']} run, step {config.get('teacher_step')}",
            device=device,
        )
    finally:
        torch.set_num_threads(before)


def _net_cond(model: FlowMatching) -> tuple[str, ...]:
    return ("y",) if getattr(model.net, "num_classes", None) else ()


def _build_reflow(config: dict[str, Any], teacher: FlowMatching) -> Reflow:
    tc = config["teacher"]
    dropout = float(tc.get("label_dropout", 0.0)) if tc.get("conditional") and _net_cond(teacher) else 0.0
    return Reflow.from_teacher(
        teacher, time=_pick_time(config), distance=_pick_loss(config), label_dropout=dropout
    )


def _reflow_straightness(model: nn.Module, config: dict[str, Any], n: int | None, seed: int) -> float:
    """Liu et al.'s straightness of the student's ODE per dimension (``per_dim``), 32 Euler steps, in the
    model's space, from at most 1000 i.i.d. source samples (classes in turn for class-conditional runs)."""
    fm = model.flow
    k = min(int(n or 1000), 1000)
    x0 = torch.randn((k, *fm.event_shape), generator=torch.Generator().manual_seed(seed))
    cond = (
        {"y": torch.arange(k) % N_CLASSES} if _net_cond(fm) and config["teacher"].get("conditional") else None
    )
    return straightness(fm.velocity, x0, steps=32, cond=cond, per_dim=True)


add_method(
    FewStepMethod(
        name="reflow",
        summary="rectified flow++ student of a {teacher} run: teacher pairs, U-shaped t, pseudo-Huber; 1 step",
        defaults=_reflow_defaults,
        build=_build_reflow,
        data=_reflow_data,
        prepare=_reflow_prepare,
        as_flow=lambda model, config: model.flow,
        metrics={"straightness": _reflow_straightness},
        default_metrics={"points": ("straightness",)},
    )
)


# --------------------------------------------------------------------------------------------------
# turbo
# --------------------------------------------------------------------------------------------------


def parse_schedule(text: str) -> tuple[int, int, int] | None:
    """``"1-5-3"`` as ``(n_H, n_P, n_R)``; ``""`` as None (the schedule follows ``--steps``).

    Example:
        >>> parse_schedule("1-5-3"), parse_schedule("")
        ((1, 5, 3), None)
    """
    text = str(text).strip()
    if not text:
        return None
    parts = text.replace(",", "-").replace(" ", "-").split("-")
    try:
        counts = tuple(int(p) for p in parts)
    except ValueError:
        counts = ()
    if len(counts) != 3 or min(counts) < 0 or sum(counts) == 0:
        raise ValueError(
            f"turbo_schedule={text!r}: write three step counts n_H-n_P-n_R (Heun, pseudo-corrector, "
            "refiner), e.g. --set turbo_schedule=1-5-3"
        )
    return counts  # type: ignore[return-value]


def _check_fits(schedule: tuple[int, int, int], dt_max: float, what: str) -> None:
    if schedule[2] > 0 and 1.0 / sum(schedule) > dt_max * (1 + 1e-9):
        raise ValueError(
            f"{what}: its refiner steps of 1/{sum(schedule)} are longer than the gap the refiner is trained on "
            f"(dt_max={dt_max}); take at least {int(-(-1 // dt_max))} steps in all, no refiner steps "
            "(e.g. 1-2-0), or a larger --set dt_max"
        )


def _fitting_schedule(steps: int, dt_max: float) -> tuple[int, int, int]:
    """:func:`~flowforge.distill.default_schedule`, without refiner steps when ``1/steps > dt_max``."""
    n_h, n_p, n_r = default_schedule(steps)
    return (n_h, n_p, n_r) if 1.0 / steps <= dt_max * (1 + 1e-9) else (n_h, n_p + n_r, 0)


class TurboRun(nn.Module):
    """The model of a turbo run: a :class:`~flowforge.distill.VelocityRefiner` and its frozen teacher.

    The teacher is a submodule here (its parameters do not require gradients, so the optimizer sees the
    refiner only), so that the run's checkpoints hold the teacher's weights too and the run folder stands
    alone. ``loss`` and ``generator`` are the refiner's.
    """

    def __init__(self, refiner: VelocityRefiner, teacher: FlowMatching) -> None:
        super().__init__()
        self.refiner, self.teacher = refiner, teacher
        teacher.requires_grad_(False)

    def loss(self, batch: Any) -> Tensor:
        """FlowTurbo's refiner loss on a data batch (see :meth:`VelocityRefiner.loss`); a scalar."""
        return self.refiner.loss(batch)

    def generator(self) -> TurboGenerator:
        """The teacher and refiner as a :class:`~flowforge.distill.TurboGenerator`."""
        return self.refiner.generator()


class _TurboSampler:
    """A turbo run speaking the teacher recipe's sampling options: ``solver`` (only ``"turbo"``), ``steps``
    (a schedule, see :func:`_fitting_schedule`), ``qmc``; ``field`` is the teacher velocity it calls."""

    def __init__(self, run: TurboRun, schedule: tuple[int, int, int] | None) -> None:
        self.run, self.schedule = run, schedule
        self.field = run.refiner.teacher
        self.event_shape = tuple(run.refiner.event_shape or ())
        self.last_nfe: dict[str, int] = {"teacher": 0, "refiner": 0}
        self.last_schedule: tuple[int, int, int] | None = None

    def schedule_for(self, steps: int | None) -> tuple[int, int, int]:
        if self.schedule is not None and (steps is None or int(steps) == sum(self.schedule)):
            return self.schedule
        return _fitting_schedule(9 if steps is None else int(steps), self.run.refiner.dt_max)

    def sample(
        self,
        n: int,
        *,
        cond: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        solver: str | None = None,
        steps: int | None = None,
        qmc: bool = False,
        x0: Tensor | None = None,
    ) -> Tensor:
        """``(n, *event)`` samples by FlowTurbo's ``H P R`` schedule for ``steps``."""
        if solver not in (None, "turbo"):
            raise ValueError(
                f"turbo runs sample by FlowTurbo's Heun/pseudo-corrector/refiner schedule, not --solver {solver}; "
                "drop --solver (--steps N picks the schedule)"
            )
        schedule = self.schedule_for(steps)
        device = next(self.run.refiner.parameters()).device
        if x0 is None:
            x0 = standard_normal((n, *self.event_shape), generator=generator, qmc=qmc, device=device)
        gen = TurboGenerator(
            lambda x, t, **c: self.field(x, t, **c),
            self.run.refiner.offset,
            self.event_shape,
            dt_max=self.run.refiner.dt_max,
        )
        x = gen.sample(n, cond=cond, schedule=schedule, x0=x0)
        self.last_nfe, self.last_schedule = dict(gen.last_nfe), schedule
        return x


class _TurboFlow:
    """A turbo run as the teacher recipe's hooks take a flow-matching model (``generator()``, ``net``)."""

    def __init__(self, run: TurboRun, config: Mapping[str, Any]) -> None:
        self.run, self.net = run, run.teacher.net
        self.schedule = parse_schedule(config["turbo_schedule"])
        self.last: _TurboSampler | None = None

    def generator(self, guide: Any = None, **_: Any) -> _TurboSampler:
        """A fresh sampler (callers may wrap its ``field`` to count calls); the last one is ``self.last``."""
        if guide is not None:
            raise ValueError("turbo runs sample without guidance; drop --guidance")
        self.last = _TurboSampler(self.run, self.schedule)
        return self.last


def _turbo_defaults(kind: str) -> dict[str, Any]:
    common = {"dt_max": 0.12, "turbo_schedule": "", "sample_steps": 9}
    if kind == "points":
        return {
            **common,
            "refiner_width": 64,
            "refiner_depth": 2,
            "steps": 3000,
            "batch_size": 512,
            "lr": 1e-3,
            "warmup": 100,
            "grad_clip": 1.0,
            "ema_decay": 0.999,
            "threads": 1,
            "qmc": True,
        }
    return {
        **common,
        "refiner_channels": 16,
        "refiner_mults": "1-2",
        "refiner_blocks": 1,
        "steps": 1500,
        "batch_size": 64,
        "lr": 5e-4,
        "warmup": 100,
        "grad_clip": 1.0,
        "ema_decay": 0.999,
        "threads": 0,
        "device": "",
    }


def _turbo_data(config: dict[str, Any], recipe: Recipe, tc: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    dt_max = float(config["dt_max"])
    if not 0.0 < dt_max <= 1.0:
        raise ValueError(f"--set dt_max={dt_max}: must lie in (0, 1]; FlowTurbo uses 0.12")
    schedule = parse_schedule(config["turbo_schedule"])
    if schedule is not None:
        _check_fits(schedule, dt_max, f"turbo_schedule={config['turbo_schedule']}")
    _positive(config, "sample_steps")
    data, _ = recipe.data(dict(tc))  # the teacher's data; its config updates are the teacher run's already
    return data, {}


def _build_turbo(config: dict[str, Any], teacher: FlowMatching) -> TurboRun:
    tc = config["teacher"]
    shape = tuple(teacher.event_shape or ())
    if "image_shape" in tc:
        c = int(shape[0])
        mults = tuple(int(v) for v in str(config["refiner_mults"]).replace("-", " ").split())
        net: nn.Module = UNet(
            in_channels=2 * c,
            out_channels=c,
            channels=int(config["refiner_channels"]),
            mults=mults,
            blocks=int(config["refiner_blocks"]),
            attention=(),
            num_classes=N_CLASSES if _net_cond(teacher) else None,
        )
    else:
        d = int(tc["dim"])
        net = MLP(2 * d, int(config["refiner_width"]), int(config["refiner_depth"]), out_dim=d)
    refiner = VelocityRefiner(net, teacher, dt_max=float(config["dt_max"]), event_shape=shape)
    return TurboRun(refiner, teacher)


def _turbo_describe(flow: _TurboFlow, config: dict[str, Any]) -> dict[str, Any]:
    s = flow.last
    if s is None or s.last_schedule is None:
        return {}
    return {
        "schedule": "-".join(str(k) for k in s.last_schedule),
        "nfe_teacher": s.last_nfe["teacher"],
        "nfe_refiner": s.last_nfe["refiner"],
    }


add_method(
    FewStepMethod(
        name="turbo",
        summary="FlowTurbo on a {teacher} run: a light velocity refiner + Heun/pseudo-corrector steps (H1 P5 R3)",
        defaults=_turbo_defaults,
        build=_build_turbo,
        data=_turbo_data,
        as_flow=lambda model, config: _TurboFlow(model, config),
        fixed={"solver": "turbo", "guidance": 1.0, "guidance_schedule": "constant"},
        dropped_options=("solver", "guidance", "guidance_schedule"),
        dropped_metrics=("nll",),
        describe=_turbo_describe,
    )
)


# --------------------------------------------------------------------------------------------------
# flowforge distill
# --------------------------------------------------------------------------------------------------


def distill_recipe(teacher_run: str | os.PathLike[str], method: str) -> str:
    """The recipe that distils ``teacher_run`` by ``method`` (``<teacher recipe>-<method>``); clear errors
    for an unknown method, a folder without a run, and a run no few-step recipe takes."""
    if method not in METHODS:
        raise unknown_choice("distillation method", method, METHODS, hint="e.g. --method reflow")
    path = Path(teacher_run).expanduser()
    held = run_recipe(path)
    if held is None:
        raise FileNotFoundError(
            f"--teacher {teacher_run}: no run folder there (no config.json); train a teacher first, e.g. "
            f"flowforge train moons --out {teacher_run}"
        )
    name = f"{held}-{method}"
    if name not in RECIPES or held not in TEACHERS:
        raise ValueError(
            f"--teacher {teacher_run} is a {held} run; {method} distils flow-matching runs of "
            f"{', '.join(TEACHERS)}: train one, e.g. flowforge train moons --out runs/moons"
        )
    return name


def distill_out(teacher_run: str | os.PathLike[str], method: str) -> Path:
    """Where :func:`distill` writes by default: ``runs/moons`` -> ``runs/moons-reflow``."""
    path = Path(teacher_run).expanduser()
    return path.parent / f"{path.name}-{method}"


def distill(
    teacher_run: str | os.PathLike[str],
    method: str,
    *,
    overrides: dict[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    steps: int | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
) -> Run:
    """Distil a trained flow-matching run by ``method``: :func:`~flowforge.recipes.train_recipe` of
    ``<teacher recipe>-<method>`` with ``teacher_run`` set (``flowforge distill``).

    Args:
        teacher_run: the teacher's run folder (a ``moons``, ``checkerboard``, ``eight-gaussians``,
            ``digits`` or ``mnist`` run).
        method: a name in :data:`METHODS` (``reflow``, ``turbo``).
        overrides: recipe keys (``--set``), e.g. ``{"time": "uniform", "loss": "mse"}``.
        out: the student's run folder (default :func:`distill_out`).
        steps, seed, resume, progress: as for ``train_recipe``; ``resume`` also continues an interrupted
            pair generation (which gives the same bits as an uninterrupted one).

    Returns:
        The student's :class:`~flowforge.train.Run`.
    """
    name = distill_recipe(teacher_run, method)
    overrides = dict(overrides or {})
    if "teacher_run" in overrides:
        raise ValueError("--teacher names the teacher run; drop --set teacher_run=...")
    overrides["teacher_run"] = str(Path(teacher_run).expanduser().resolve())
    return train_recipe(
        name,
        overrides=overrides,
        out=distill_out(teacher_run, method) if out is None else out,
        steps=steps,
        seed=seed,
        resume=resume,
        progress=progress,
    )
