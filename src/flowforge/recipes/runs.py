"""Train a recipe into a run folder, and rebuild, sample and evaluate a run folder.

This is what the CLI calls; the API and the CLI read the same folder, so they never drift apart. Nothing
here knows a family: every family-specific step is a hook of the run's :class:`~flowforge.recipes.Recipe`
(``build``, ``data``, ``generator``, ``sample_options``/``sample_kwargs``, ``eval_options``,
``reference``/``load_data``, ``evaluate``, ``metrics``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowforge.core.choices import unknown_choice
from flowforge.recipes.registry import RECIPES, Recipe, get_recipe, resolve_config
from flowforge.recipes.run_folder import load_run, read_config, run_recipe
from flowforge.train import Run, train

__all__ = [
    "TRAIN_KEYS",
    "train_recipe",
    "train_options",
    "load_run",
    "generator",
    "sample",
    "inpaint",
    "picture",
    "evaluate",
    "check_options",
]

#: Training keys passed to the trainer rather than to the model (when the recipe's defaults have them; a
#: recipe may add e.g. ``"precision": "auto"`` so that ``--set precision=fp32`` reaches the trainer).
TRAIN_KEYS = (
    "batch_size",
    "lr",
    "warmup",
    "grad_clip",
    "ema_decay",
    "schedule",
    "precision",
    "compile",
    "channels_last",
    "tf32",
)


def train_options(name: str) -> tuple[str, ...]:
    """The optional inputs recipe ``name`` trains from: ``data`` (a user's file), ``energy`` (a target)."""
    defaults = get_recipe(name).defaults
    return tuple(opt for opt, key in (("data", "data_file"), ("energy", "energy")) if key in defaults)


def check_options(
    recipe: Recipe, command: str, given: Iterable[str], valid: Sequence[str], also: str
) -> None:
    """Refuse options that do not apply to ``recipe``'s runs, naming those that do."""
    bad = [k for k in given if k not in valid]
    if bad:
        flags = ", ".join(f"--{k}" for k in bad)
        ok = ", ".join(f"--{k}" for k in valid) or "none"
        where = "".join(
            f"; --{k} applies to {', '.join(names)} runs" for k in bad if (names := _accepting(k, command))
        )
        raise ValueError(
            f"{flags} {'does' if len(bad) == 1 else 'do'} not apply to {recipe.name} runs; "
            f"the {command} options that do: {ok} (and {also}){where}"
        )


def _accepting(option: str, command: str) -> list[str]:
    """The recipes whose runs (at their defaults) take ``--option`` in ``command``."""
    names = []
    for name, r in sorted(RECIPES.items()):
        config = {**r.defaults, "recipe": name}
        try:
            if command == "train":
                valid = train_options(name)
            elif command == "sample":
                valid = r.sample_options(config)
            else:
                valid = r.eval_options(config)
        except (KeyError, ValueError, TypeError):  # an option set that needs trained keys: not listed
            continue
        if option in valid:
            names.append(name)
    return names


def train_recipe(
    name: str,
    *,
    overrides: dict[str, Any] | None = None,
    data_file: str | None = None,
    out: str | Path | None = None,
    steps: int | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
) -> Run:
    """Train recipe ``name`` (with ``overrides``) into ``out`` (default ``runs/NAME``); returns the Run.

    The model is built and the data made under ``seed`` (on a forked RNG, so the caller's random stream is
    untouched): the same recipe, config and seed give the same run, bit for bit on CPU. A folder that holds
    another recipe's run is refused, with or without ``resume``. The recipe's ``monitor`` hook, when it has
    one, gives the trainer's ``callback`` (e.g. sample grids written every N steps).
    """
    recipe = get_recipe(name)
    overrides = dict(overrides or {})
    if steps is not None:
        overrides["steps"] = steps
    if out is not None and not str(out).strip():
        raise ValueError(f"--out {out!r} names no folder; write e.g. --out runs/{name}")
    out = Path(out) if out is not None else Path("runs") / name
    held = run_recipe(out)
    if held is not None and held != name:
        raise FileExistsError(
            f"{out} holds a run of recipe {held!r}, not {name!r}; train {name} into another folder "
            f"(--out runs/{name}) or delete {out}"
        )
    if data_file:
        if "data_file" not in recipe.defaults:
            raise ValueError(f"recipe {name!r} does not train on a user's file; drop --data")
        if not Path(data_file).is_file():
            raise FileNotFoundError(
                f"--data {data_file}: no such file; give a .npy, .npz, .pt or .csv of shape (N, D) "
                "(token recipes: a .txt with one sequence a line, or a .smi)"
            )
        overrides["data_file"] = str(Path(data_file).resolve())
    config = resolve_config(recipe, overrides)
    config["seed"] = seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        data, updates = recipe.data(config)
        config.update(updates)
        model = recipe.build(config)
    callback = recipe.monitor(config, out) if recipe.monitor is not None else None
    # passed only when there is one, so that wrappers of train() that add their own callback keep working
    hooks = {"callback": callback} if callback is not None else {}
    return train(
        model,
        data,
        **hooks,
        steps=int(config["steps"]),
        out=out,
        seed=seed,
        resume=resume,
        progress=progress,
        config=config,
        device=config.get("device") or None,
        **{k: config[k] for k in TRAIN_KEYS if k in config},
        threads=int(config.get("threads", 0)) or None,  # 0: the trainer's automatic rule
    )


def generator(run_dir: str | Path) -> Any:
    """The EMA model of a run folder as its recipe's Generator (data units; images: integer pixels)."""
    model, config = load_run(run_dir)
    return get_recipe(config["recipe"]).generator(model, config)


def sample(run_dir: str | Path, n: int, *, seed: int = 0, **options: Any) -> Tensor:
    """``n`` samples of a run with the recipe's sampling ``options`` (None: the run's default).

    Options that do not apply to the run's recipe (e.g. ``solver`` for a GFlowNet) are refused.
    """
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}; write e.g. --n 10000")
    config = read_config(run_dir)
    recipe = get_recipe(config["recipe"])
    given = {k: v for k, v in options.items() if v is not None}
    check_options(recipe, "sample", given, recipe.sample_options(config), "--n, --seed, --out")
    model, config = load_run(run_dir)
    kwargs = recipe.sample_kwargs(config, given, n)
    gen = recipe.generator(model, config)
    return gen.sample(n, generator=torch.Generator().manual_seed(seed), **kwargs)


def picture(run_dir: str | Path, samples: Any) -> Any:
    """``samples`` of a run as a plot shows them (the recipe's ``picture`` hook; else unchanged)."""
    recipe = get_recipe(read_config(run_dir)["recipe"])
    return samples if recipe.picture is None else recipe.picture(samples, read_config(run_dir))


def decode(run_dir: str | Path, samples: Any) -> list[str] | None:
    """``samples`` of a token run as strings (the recipe's ``decode`` hook); ``None`` for array runs."""
    config = read_config(run_dir)
    recipe = get_recipe(config["recipe"])
    return None if recipe.decode is None else recipe.decode(samples, config)


#: run settings that ``inpaint`` may override at sampling time (two-stage sampling of conditional runs)
INPAINT_OVERRIDES = ("class_from", "class_temperature", "guide_on")


def inpaint(
    run_dir: str | Path,
    image: Tensor,
    hole: Tensor,
    *,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    **options: Any,
) -> Tensor:
    """Fill the ``hole`` (``(N, 1, H, W)`` bool, True = fill) of integer images ``(N, C, H, W)`` with a run.

    The kept pixels come back unchanged; ``options`` are the run's sampling options (solver, steps);
    ``overrides`` may replace the run's ``class_from``, ``class_temperature`` and ``guide_on``.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for k in overrides:
        if k not in INPAINT_OVERRIDES:
            raise ValueError(f"inpaint cannot override {k!r}; it can override {', '.join(INPAINT_OVERRIDES)}")
    config = read_config(run_dir)
    recipe = get_recipe(config["recipe"])
    if recipe.inpaint is None:
        raise ValueError(
            f"{run_dir} is a {recipe.name} run, which does not inpaint; train an inpainting run: "
            "flowforge train mnist-inpaint"
        )
    given = {k: v for k, v in options.items() if v is not None}
    check_options(recipe, "sample", given, recipe.sample_options(config), "--image, --mask, --seed, --out")
    model, config = load_run(run_dir)
    return recipe.inpaint(model, {**config, **overrides}, image, hole, seed=seed, **given)


def evaluate(
    run_dir: str | Path,
    data: str | Path | Tensor | None = None,
    metrics: Sequence[str] | None = None,
    *,
    n_samples: int | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate a run folder against ``data`` (a file or a tensor; default: the recipe's held-out data).

    ``metrics`` default to the recipe's; ``options`` (``solver``, ``steps``, ``qmc``, ``energy``, ...; None:
    not given) must be among the recipe's ``eval_options``. Sampling uses i.i.d. source noise unless
    ``qmc=True``. Returns the recipe's metrics (and, where it samples an ODE, ``source_noise``, ``solver``,
    ``steps``).
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    recipe = get_recipe(config["recipe"])
    given = {k: v for k, v in options.items() if v is not None}
    named = [*given, *(["data"] if data is not None else []), *(["n"] if n_samples is not None else [])]
    check_options(recipe, "eval", named, recipe.eval_options(config), "--metrics, --seed")
    if n_samples is not None and n_samples < 1:
        raise ValueError(f"--n must be >= 1, got {n_samples}; write e.g. --n 10000")
    metrics = recipe.default_metrics_for(given) if metrics is None else tuple(metrics)
    if not metrics:
        raise ValueError(f"no metrics asked for; write e.g. --metrics {','.join(recipe.metrics)}")
    for m in metrics:
        if m not in recipe.metrics:
            raise unknown_choice(
                "metric", m, recipe.metrics, hint=f"Those are the metrics of {recipe.name} runs"
            )
    model, config = load_run(run_dir)
    return recipe.evaluate(
        model,
        config,
        _held_out(recipe, config, data, n_samples, seed),
        list(metrics),
        n=n_samples,
        seed=seed,
        **given,
    )


def _held_out(
    recipe: Recipe, config: dict[str, Any], data: str | Path | Tensor | None, n: int | None, seed: int
) -> Callable[[], Tensor]:
    """The evaluation data, read or drawn on first use (many metrics need none)."""
    cache: list[Tensor] = []

    def get() -> Tensor:
        if not cache:
            if isinstance(data, Tensor):
                cache.append(data)
            elif data is not None:
                cache.append(recipe.load_data(str(data), config))
            elif recipe.reference is None:
                raise ValueError(f"recipe {recipe.name!r} has no held-out data of its own; pass --data FILE")
            else:
                cache.append(recipe.reference(config, n or 10_000, seed + 1))
        return cache[0]

    return get
