"""Recipes: named, runnable set-ups (the only layer where names map to objects)."""

from flowforge.recipes import boltzmann as _boltzmann  # noqa: F401  (Boltzmann generators)
from flowforge.recipes import flows2d as _flows2d  # noqa: F401  (registers the 2-D flow recipes)
from flowforge.recipes import gflownet as _gflownet  # noqa: F401  (GFlowNet hypergrid recipes)
from flowforge.recipes import gflownet_moo as _gflownet_moo  # noqa: F401  (multi-objective GFlowNet recipes)
from flowforge.recipes import gflownet_oc as _gflownet_oc  # noqa: F401  (outcome-conditioned GFlowNet recipe)
from flowforge.recipes import normalizing as _normalizing  # noqa: F401  (normalizing-flow recipes)
from flowforge.recipes.registry import RECIPES, Recipe, get_recipe, parse_sets, register, resolve_config
from flowforge.recipes.runs import METRICS, DataSpaceGenerator, evaluate, generator, load_run, train_recipe

__all__ = [
    "METRICS",
    "RECIPES",
    "DataSpaceGenerator",
    "Recipe",
    "evaluate",
    "generator",
    "get_recipe",
    "load_run",
    "parse_sets",
    "register",
    "resolve_config",
    "train_recipe",
]
