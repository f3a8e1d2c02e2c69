"""One message for every "unknown name" error: what was given, the closest valid name, the valid ones."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["unknown_choice", "suggest"]


def suggest(name: object, valid: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` when a valid name is close to ``name``, else ``""``."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_choice(what: str, name: object, valid: Iterable[str], *, hint: str = "") -> ValueError:
    """A ``ValueError`` saying ``unknown {what} {name!r}; choose one of a, b, c``; raise it.

    Example:
        >>> str(unknown_choice("solver", "hune", ["euler", "heun"]))
        "unknown solver 'hune' (did you mean 'heun'?); choose one of euler, heun"
    """
    valid = [str(v) for v in valid]
    msg = f"unknown {what} {name!r}{suggest(name, valid)}; choose one of {', '.join(valid)}"
    return ValueError(msg + (f". {hint}" if hint else ""))
