"""Recipes: named, runnable set-ups (the only layer where names map to objects).

Every module of this package is imported here (:mod:`pkgutil`), so a new recipe is one new file that
calls :func:`register`; nothing else lists it.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from flowforge.recipes.common import DataSpaceGenerator  # noqa: E402
from flowforge.recipes.few_step import distill, distill_out, distill_recipe  # noqa: E402
from flowforge.recipes.flows2d import METRICS  # noqa: E402
from flowforge.recipes.inverse import restore  # noqa: E402
from flowforge.recipes.registry import (  # noqa: E402
    RECIPES,
    Recipe,
    get_recipe,
    parse_sets,
    register,
    resolve_config,
)
from flowforge.recipes.reward_finetune import finetune, finetune_recipe  # noqa: E402
from flowforge.recipes.run_folder import read_config  # noqa: E402
from flowforge.recipes.runs import (  # noqa: E402
    decode,
    evaluate,
    generator,
    inpaint,
    load_run,
    picture,
    sample,
    train_recipe,
)

__all__ = [
    "METRICS",
    "RECIPES",
    "DataSpaceGenerator",
    "Recipe",
    "distill",
    "distill_out",
    "distill_recipe",
    "decode",
    "evaluate",
    "finetune",
    "finetune_recipe",
    "generator",
    "get_recipe",
    "inpaint",
    "picture",
    "load_run",
    "parse_sets",
    "read_config",
    "register",
    "resolve_config",
    "restore",
    "sample",
    "train_recipe",
]
