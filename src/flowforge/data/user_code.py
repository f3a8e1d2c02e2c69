"""Loading a user's own code named on the command line: ``module:function`` or ``file.py:function``
(``--energy`` of the Boltzmann recipes, ``reward=`` of molecule optimisation)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from flowforge.core.choices import suggest

__all__ = ["import_target"]


def import_target(spec: str, what: str) -> Any:
    """The object named by ``"package.module:name"`` or ``"path/to/file.py:name"`` (dotted names reach
    attributes of attributes); ``what`` (``"energy"``, ``"reward"``) names it in the errors, which say
    what to write instead.

    Example:
        >>> import math
        >>> import_target("math:fsum", "reward") is math.fsum
        True
    """
    how = "write 'package.module:function' (a module on PYTHONPATH) or 'path/to/file.py:function'"
    if not isinstance(spec, str) or spec.count(":") < 1:
        raise ValueError(f"{what} spec {spec!r} needs the form 'module:function'; {how}")
    mod_name, _, attr = spec.rpartition(":")
    if not mod_name or not attr:
        raise ValueError(f"{what} spec {spec!r} needs both a module and a name; {how}")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise ValueError(f"{what} file {str(path)!r} does not exist; {how}")
        name = f"flowforge_user_{what}_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ValueError(f"could not load {str(path)!r} as a Python module; {how}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise ValueError(
                f"importing {str(path)!r} failed with {type(e).__name__}: {e}; fix that file (python {path} "
                "shows the full traceback)"
            ) from e
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise ValueError(
                f"could not import module {mod_name!r} ({type(e).__name__}: {e}); make sure it is installed or on "
                f"PYTHONPATH (e.g. run from its folder), or {how}"
            ) from e
        except Exception as e:
            raise ValueError(
                f"importing module {mod_name!r} failed with {type(e).__name__}: {e}; fix that module "
                f"(python -c 'import {mod_name}' shows the full traceback)"
            ) from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            own = [n for n, v in vars(module).items() if not n.startswith("_") and callable(v)
                   and getattr(v, "__module__", None) == module.__name__]  # fmt: skip
            listed = ", ".join(repr(n) for n in sorted(own)[:20]) or "none"
            raise ValueError(
                f"module {mod_name!r} has no attribute {attr!r}{suggest(attr, own)}; write '{mod_name}:<name>' with "
                f"the name of your {what} function (its own functions and classes: {listed})"
            )
        obj = getattr(obj, part)
    return obj
