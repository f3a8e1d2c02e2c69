"""Validity, uniqueness and novelty of generated token sequences (strings), with no extra package.

The sequence counterparts of the molecule metrics (:mod:`flowforge.metrics.molecules`), for the embedded
grammars of :mod:`flowforge.data.tokens` or any validity check a user supplies:

- **validity**: fraction of generated strings the check accepts;
- **uniqueness**: distinct valid strings over the number valid;
- **novelty**: fraction of the distinct valid strings not in the training set.

Strings are compared as they are (no canonical form: ``"1+2"`` and ``"2+1"`` are different).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from flowforge.data.tokens import is_balanced, is_valid_expression

__all__ = ["sequence_metrics", "expression_metrics", "bracket_metrics"]


def sequence_metrics(
    generated: Sequence[str], train: Iterable[str], is_valid: Callable[[str], bool]
) -> dict[str, float]:
    """Validity, uniqueness and novelty of ``generated`` strings under a validity check.

    Uniqueness and novelty are 0.0 when no string is valid.

    Args:
        generated: generated strings (decoded samples).
        train: the training strings.
        is_valid: ``str -> bool``.

    Returns:
        ``{"validity": ..., "uniqueness": ..., "novelty": ...}``.

    Example:
        >>> sequence_metrics(["ab", "ab", "ba", "x"], ["ab"], lambda s: set(s) <= {"a", "b"})
        {'validity': 0.75, 'uniqueness': 0.6666666666666666, 'novelty': 0.5}
    """
    if isinstance(generated, str) or isinstance(train, str):
        raise TypeError("generated and train must be lists of strings, not single strings; write [text]")
    gen = list(generated)
    if not gen:
        raise ValueError("generated is empty; pass at least one string")
    valid = [s for s in gen if is_valid(s)]
    distinct = set(valid)
    return {
        "validity": len(valid) / len(gen),
        "uniqueness": len(distinct) / len(valid) if valid else 0.0,
        "novelty": len(distinct - set(train)) / len(distinct) if distinct else 0.0,
    }


def expression_metrics(generated: Sequence[str], train: Iterable[str]) -> dict[str, float]:
    """:func:`sequence_metrics` with :func:`flowforge.data.tokens.is_valid_expression` as the check.

    Example:
        >>> expression_metrics(["(1+2)*3", "(1+2)*3", "4-5", "1+", "(2"], ["4-5"])
        {'validity': 0.6, 'uniqueness': 0.6666666666666666, 'novelty': 0.5}
    """
    return sequence_metrics(generated, train, is_valid_expression)


def bracket_metrics(generated: Sequence[str], train: Iterable[str]) -> dict[str, float]:
    """:func:`sequence_metrics` with :func:`flowforge.data.tokens.is_balanced` as the check.

    Example:
        >>> bracket_metrics(["([])", "([)]", "()"], ["()"])
        {'validity': 0.6666666666666666, 'uniqueness': 1.0, 'novelty': 0.5}
    """
    return sequence_metrics(generated, train, is_balanced)
