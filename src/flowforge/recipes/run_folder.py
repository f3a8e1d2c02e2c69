"""A run folder as the recipes see it: ``config.json`` (which recipe, with which settings) + checkpoints.

:func:`read_config` checks that ``config.json`` is a flowforge recipe run (a JSON object naming a
registered recipe, every value of the recipe's type) and says what is wrong otherwise;
:func:`load_run` rebuilds the model and loads its weights.

Example:
    >>> import tempfile, json, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "config.json").write_text(json.dumps({"recipe": "moons", "width": "wide"}))
    >>> read_config(d)
    Traceback (most recent call last):
    ...
    ValueError: ...config.json: width='wide' is not a int like the moons recipe's default 256; ...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowforge.core.choices import unknown_choice
from flowforge.recipes.registry import RECIPES, get_recipe
from flowforge.train import Run, latest_checkpoint
from flowforge.train.checkpoint import read_manifest

__all__ = ["CONFIG", "read_config", "load_run", "last_step", "run_recipe"]

CONFIG = "config.json"


def _damaged(path: Path, what: str) -> ValueError:
    return ValueError(
        f"{path}: {what}; it is not a flowforge run folder's config (or it was damaged). "
        f"Train a run with flowforge train RECIPE --out {path.parent}"
    )


def run_recipe(run_dir: str | Path) -> str | None:
    """The recipe name in ``run_dir/config.json``, or None when the folder holds no config at all.

    Raises the errors of :func:`read_config` when the config exists but is not a recipe run's.
    """
    if not (Path(run_dir) / CONFIG).is_file():
        return None
    return str(read_config(run_dir)["recipe"])


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The checked ``config.json`` of a run folder, with the recipe's defaults for keys it lacks.

    Raises:
        FileNotFoundError: no folder, or no ``config.json`` in it.
        ValueError: not JSON, not a JSON object, no or an unknown ``"recipe"``, or a value whose type
            differs from the recipe's default (e.g. ``"width": "wide"``).
    """
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not path.is_file():
        where = "no such folder" if not run_dir.is_dir() else "no config.json"
        raise FileNotFoundError(
            f"{run_dir} is not a flowforge run folder ({where}); train one with flowforge train RECIPE --out {run_dir}"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _damaged(path, f"not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise _damaged(path, f"a JSON {type(config).__name__}, not an object of settings")
    name = config.get("recipe")
    if not isinstance(name, str):
        raise _damaged(path, 'no "recipe" entry naming the recipe that trained it')
    if name not in RECIPES:
        raise ValueError(
            f"{path}: {unknown_choice('recipe', name, sorted(RECIPES))} (this flowforge has no recipe of that name)"
        )
    recipe = RECIPES[name]
    for key, default in recipe.defaults.items():
        if key in config and default is not None and not _same_type(config[key], default):
            raise ValueError(
                f"{path}: {key}={config[key]!r} is not a {type(default).__name__} like the {name} recipe's "
                f"default {default!r}; fix the value in {CONFIG} or train the run again"
            )
    if "seed" in config and (isinstance(config["seed"], bool) or not isinstance(config["seed"], int)):
        raise ValueError(f"{path}: seed={config['seed']!r} must be an int")
    return {**recipe.defaults, **config}  # keys a later version of the recipe added take their defaults


def _same_type(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


def load_run(run_dir: str | Path, *, ema: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a run folder and load its (EMA) weights; returns ``(model, config)``.

    The model is built under the run's seed on a forked RNG, so loading never disturbs the caller's
    random stream.
    """
    config = read_config(run_dir)
    recipe = get_recipe(config["recipe"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.get("seed", 0)))
        try:
            model = recipe.build(config)
        except KeyError as e:  # a key the recipe's data step adds (e.g. dim) is gone
            raise ValueError(
                f"{Path(run_dir) / 'config.json'} lacks the key {e.args[0]!r} that recipe {recipe.name!r} "
                "needs; it was edited or written by another version: restore it, or train the run again"
            ) from None
    Run(run_dir).load_into(model, ema=ema)
    model.eval()
    return model, config


def last_step(run_dir: str | Path) -> int | None:
    """The step of the newest checkpoint in ``run_dir`` (None: none written yet)."""
    ckpt = latest_checkpoint(run_dir) if Path(run_dir).is_dir() else None
    return None if ckpt is None else int(read_manifest(ckpt)["step"])
