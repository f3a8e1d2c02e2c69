"""Named, runnable set-ups: the one place where names (strings) map to objects.

A :class:`Recipe` is a dictionary of defaults (a flat JSON config) plus two functions: ``build`` makes
the model from a config, and ``data`` makes the training data. The whole config (with what ``data``
learned, e.g. the standardisation) is written to the run folder, so ``flowforge sample`` and
``flowforge eval`` rebuild exactly the trained model.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["Recipe", "RECIPES", "register", "get_recipe", "resolve_config", "parse_sets"]


@dataclass(frozen=True)
class Recipe:
    """A named set-up.

    Attributes:
        name: what users type (``flowforge train NAME``).
        summary: one line for ``flowforge list``.
        defaults: every configurable key with its default value (its type is the key's type).
        build: ``config -> model`` (an ``nn.Module`` with ``loss(batch)`` and ``generator()``).
        data: ``config -> (training data, config updates)``; the updates (e.g. the data's dimension and
            standardisation) are merged into the config that is saved with the run.
        kind: the family, for ``eval``'s choice of metrics (``"continuous"``, ``"normalizing"``,
            ``"image"``, ``"boltzmann"``).
        reference: ``(config, n, seed) -> (n, D)`` held-out data that ``eval`` uses when no ``--data``
            is given (a fresh toy sample, a test split, reference samples of an energy); ``None``: ``--data``
            is required.
        evaluate: ``(run_dir, config, data, metrics, **opts) -> dict`` for recipes whose metrics are not
            the sample-based ones (images, Boltzmann generators); ``None``: the default evaluation.
        metrics: the metric names this recipe's ``eval`` accepts (empty: the default set).
    """

    name: str
    summary: str
    defaults: Mapping[str, Any]
    build: Callable[[dict[str, Any]], nn.Module]
    data: Callable[[dict[str, Any]], tuple[Any, dict[str, Any]]]
    kind: str = "continuous"
    reference: Callable[[dict[str, Any], int, int], Any] | None = None
    evaluate: Callable[..., dict[str, float]] | None = None
    metrics: tuple[str, ...] = ()


RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Add a recipe to :data:`RECIPES` (names are unique)."""
    if recipe.name in RECIPES:
        raise ValueError(f"recipe {recipe.name!r} is registered twice")
    RECIPES[recipe.name] = recipe
    return recipe


def _suggest(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name gets an error listing the valid ones."""
    if name not in RECIPES:
        raise KeyError(
            f"unknown recipe {name!r}{_suggest(name, RECIPES)}; valid recipes: {', '.join(sorted(RECIPES))}"
        )
    return RECIPES[name]


def _coerce(key: str, raw: Any, default: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    kind = type(default)
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
        if default is None:
            for conv in (int, float):
                try:
                    return conv(raw)
                except ValueError:
                    pass
        return raw
    except ValueError:
        raise ValueError(f"--set {key}={raw}: expected a {kind.__name__} (default {default!r})") from None


def parse_sets(items: Iterable[str]) -> dict[str, str]:
    """Parse ``key=value`` pairs; each item may hold several pairs separated by spaces or commas."""
    out: dict[str, str] = {}
    for item in items:
        for pair in item.replace(",", " ").split():
            if "=" not in pair:
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
                f"unknown key {key!r} for recipe {recipe.name!r}{_suggest(key, config)}; "
                f"valid keys: {', '.join(sorted(config))}"
            )
        config[key] = _coerce(key, raw, config[key])
    config["recipe"] = recipe.name
    return config
