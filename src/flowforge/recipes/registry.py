"""Named, runnable set-ups: the one place where names (strings) map to objects.

A :class:`Recipe` is a dictionary of defaults (a flat JSON config) plus the hooks that make it run: ``build``
makes the model from a config, ``data`` the training data, ``generator`` turns the trained model into a
:class:`~flowforge.core.contracts.Generator`, ``sample_options``/``sample_kwargs`` say which sampling
options apply and how they reach ``sample(...)``, ``reference``/``evaluate``/``metrics`` say how a run is
evaluated, and ``monitor`` (optional) what it writes while it trains. The whole config (with what ``data`` learned, e.g. the standardisation) is written to the run
folder, so ``flowforge sample`` and ``flowforge eval`` rebuild exactly the trained model. The run code
(:mod:`flowforge.recipes.runs`) and the CLI call these hooks and know no family.

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("moons")
    >>> r.sample_options(dict(r.defaults)), r.default_metrics_for({})
    (('solver', 'steps', 'qmc'), ('swd', 'mmd', 'energy'))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from flowforge.core.choices import suggest, unknown_choice
from flowforge.data import check_finite, load_array

if TYPE_CHECKING:
    from flowforge.train import Trainer

__all__ = [
    "Recipe",
    "RECIPES",
    "register",
    "get_recipe",
    "resolve_config",
    "parse_sets",
    "load_points",
    "no_options",
    "no_kwargs",
]


def no_options(config: dict[str, Any]) -> tuple[str, ...]:
    """The ``sample_options`` of a recipe whose ``sample`` takes none (GFlowNets, spline flows)."""
    return ()


def no_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    """The ``sample_kwargs`` of a recipe whose ``sample`` takes no options."""
    return {}


def load_points(path: str, config: dict[str, Any]) -> Tensor:
    """``(N, D)`` float points from a ``.npy``/``.npz``/``.pt``/``.csv`` file, checked for NaN/inf."""
    x = load_array(path)
    check_finite(x, what=str(path))
    return x.float()


@dataclass(frozen=True)
class Recipe:
    """A named set-up and the hooks that train, sample and evaluate it.

    Attributes:
        name: what users type (``flowforge train NAME``).
        summary: one line for ``flowforge list``.
        defaults: every configurable key with its default value (its type is the key's type).
        build: ``config -> model`` (an ``nn.Module`` with ``loss(batch)``); built under the run's seed.
        data: ``config -> (training data, config updates)``; the updates (e.g. the data's dimension and
            standardisation) are merged into the config that is saved with the run.
        generator: ``(model, config) -> Generator``: the trained model as something with
            ``sample(n, generator=..., **kwargs)`` in the data's own units (and ``log_prob`` where the
            family has one).
        sample_options: ``config -> names`` of the sampling options (CLI ``--NAME``) that apply to a run,
            e.g. ``("solver", "steps", "qmc")``; the others are refused.
        sample_kwargs: ``(config, given, n) -> kwargs`` for ``generator.sample(n, **kwargs)``, from the
            options given (a subset of ``sample_options``) and the run's defaults.
        eval_options: ``config -> names`` of the options ``evaluate`` takes (``"data"``, ``"n"``,
            ``"energy"``, and sampling options); the others are refused.
        reference: ``(config, n, seed) -> (n, ...)`` held-out data that ``eval`` uses when no ``--data``
            is given (a fresh toy sample, a test split, reference samples of an energy); ``None``: none.
        load_data: ``(path, config) -> Tensor``: how ``eval --data FILE`` is read.
        evaluate: ``(model, config, data, metrics, *, n, seed, **options) -> dict``; ``data()`` gives the
            held-out data (call it only for metrics that need it; it raises when there is none).
        metrics: the metric names ``eval`` accepts.
        default_metrics: what ``eval`` computes when none are named: a tuple, or ``options -> tuple``
            (e.g. add ``ess``/``logz`` when ``--energy`` is given); empty: every metric.
        picture: ``(samples, config) -> what a plot shows`` (e.g. integer pixels with the run's grey levels
            as floats in ``[-1, 1]``); ``None``: the samples as they are.
        inpaint: ``(model, config, image, hole, *, seed, **options) -> images``: fill the ``hole`` pixels
            of integer images (``flowforge inpaint``); ``None``: the recipe's runs do not inpaint.
        kind: the family, a label for people (``flowforge list``, docs); no code branches on it.
        decode: ``(samples, config) -> list of strings``: token runs' samples as text (``flowforge sample
            --out FILE.txt``); ``None``: the samples are arrays.
        monitor: ``(config, run_dir) -> callback or None``: periodic monitoring while training, e.g. a
            sample grid ``run_dir/samples/step_XXXXXXX.png`` every N steps. The callback is called as
            ``callback(step, trainer)`` after every step (and after that step's checkpoint), with
            ``trainer.ema``, ``trainer.model`` and ``trainer.train_config`` at hand; it must draw its
            randomness from its own ``torch.Generator`` (never the global RNGs, which the training
            trajectory and its bit-for-bit resume depend on) and put the model back in train mode.
            ``None`` (the default), or a returned None: no monitoring.
    """

    name: str
    summary: str
    defaults: Mapping[str, Any]
    build: Callable[[dict[str, Any]], nn.Module]
    data: Callable[[dict[str, Any]], tuple[Any, dict[str, Any]]]
    generator: Callable[[nn.Module, dict[str, Any]], Any]
    evaluate: Callable[..., dict[str, Any]]
    metrics: tuple[str, ...]
    sample_options: Callable[[dict[str, Any]], tuple[str, ...]] = no_options
    sample_kwargs: Callable[[dict[str, Any], dict[str, Any], int], dict[str, Any]] = no_kwargs
    eval_options: Callable[[dict[str, Any]], tuple[str, ...]] = no_options
    reference: Callable[[dict[str, Any], int, int], Tensor] | None = None
    load_data: Callable[[str, dict[str, Any]], Tensor] = load_points
    default_metrics: tuple[str, ...] | Callable[[Mapping[str, Any]], tuple[str, ...]] = ()
    inpaint: Callable[..., Tensor] | None = None
    picture: Callable[[Any, dict[str, Any]], Any] | None = None
    kind: str = "continuous"
    decode: Callable[[Any, dict[str, Any]], list[str]] | None = None
    monitor: Callable[[dict[str, Any], Path], Callable[[int, Trainer], None] | None] | None = None

    def default_metrics_for(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        """The metrics ``eval`` computes when none are named, given the eval options in use."""
        chosen = self.default_metrics(options) if callable(self.default_metrics) else self.default_metrics
        return tuple(chosen) or self.metrics


RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Add a recipe to :data:`RECIPES` (names are unique)."""
    if recipe.name in RECIPES:
        raise ValueError(f"recipe {recipe.name!r} is registered twice")
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name gets an error listing the valid ones."""
    if name not in RECIPES:
        raise unknown_choice("recipe", name, sorted(RECIPES), hint="flowforge list shows them all")
    return RECIPES[name]


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def coerce(key: str, raw: Any, default: Any) -> Any:
    """``raw`` as the type of ``default`` (strings are parsed; ints widen to floats); else a ``ValueError``."""
    kind = type(default)
    if default is None:
        if not isinstance(raw, str):
            return raw
        for conv in (int, float):
            try:
                return conv(raw)
            except ValueError:
                pass
        return raw
    if not isinstance(raw, str):
        if kind is float and isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        if kind is str and isinstance(raw, int | float) and not isinstance(raw, bool):
            return str(raw)
        if kind is int and isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, kind) and (kind is bool or not isinstance(raw, bool)):
            return raw
        raise ValueError(
            f"--set {key}={raw!r}: expected {_article(kind.__name__)} {kind.__name__}; write e.g. --set {key}={default}"
        )
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return low in ("1", "true", "yes")
        if kind is int:
            return int(float(raw)) if float(raw).is_integer() else int(raw)
        if kind is float:
            return float(raw)
        if kind in (list, tuple, dict):
            raise ValueError(raw)
        return raw
    except ValueError:
        raise ValueError(
            f"--set {key}={raw}: expected {_article(kind.__name__)} {kind.__name__}; write e.g. --set {key}={default}"
        ) from None


def parse_sets(items: Iterable[str]) -> dict[str, str]:
    """Parse ``key=value`` pairs; each item may hold several pairs separated by spaces or commas.

    Example:
        >>> parse_sets(["width=128 depth=4", "time=logit-normal"])
        {'width': '128', 'depth': '4', 'time': 'logit-normal'}
    """
    out: dict[str, str] = {}
    for item in items:
        for pair in item.replace(",", " ").split():
            if "=" not in pair or pair.startswith("="):
                raise ValueError(
                    f"--set expects key=value pairs, got {pair!r}; write e.g. --set width=128 depth=3"
                )
            k, v = pair.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def resolve_config(recipe: Recipe, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's defaults with ``overrides`` applied and type-checked; unknown keys are an error."""
    config = dict(recipe.defaults)
    for key, raw in overrides.items():
        if key not in config:
            raise KeyError(
                f"unknown key {key!r} for recipe {recipe.name!r}{suggest(key, config)}; "
                f"valid keys: {', '.join(sorted(config))}"
            )
        config[key] = coerce(key, raw, config[key])
    config["recipe"] = recipe.name
    return config
