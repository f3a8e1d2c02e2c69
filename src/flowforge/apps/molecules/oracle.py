r"""A counted, cached molecule oracle with a budget, and PMO's top-k AUC.

PMO (Gao et al. 2022, "Sample Efficiency Matters", arXiv:2206.12411; code ``mol_opt``) counts each
**new** canonical molecule once: a molecule scored before is free and its cached score is reused. The
optimisation stops when the budget of calls is spent.

:func:`top_k_auc` is ``mol_opt``'s ``top_auc`` (also InVirtuoGen's ``pbo.py``): every ``freq`` calls, in call
order, take the mean of the ``k`` best scores so far; integrate these with the trapezoid rule from 0 (the
value at call 0), add the last partial interval, extend an early stop with the last value up to the
budget, and divide by the budget. A run that finds score 1 at its first call scores just under 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flowforge.data.user_code import import_target

__all__ = ["Oracle", "OracleResult", "load_reward", "top_k_auc", "top_k_mean", "REWARDS"]

#: the named rewards (anything else is read as ``module:function``)
REWARDS = ("qed",)


def _qed(smiles: list[str]) -> list[float]:
    from flowforge.metrics.molecules import qed

    return qed(smiles)


def load_reward(spec: str | Callable[[list[str]], Sequence[float]]) -> Callable[[list[str]], Sequence[float]]:
    """A reward ``f(list of SMILES) -> list of floats`` from ``"qed"``, ``"module:function"`` or
    ``"path/to/file.py:function"`` (or a callable, returned as it is).

    Example:
        >>> load_reward("qed").__name__
        '_qed'
        >>> load_reward("math:fsum") is math.fsum
        True
    """
    how = "write reward=qed, reward=package.module:function or reward=path/to/file.py:function"
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward {spec!r} is empty or not a string; {how}")
    if spec == "qed":
        return _qed
    if ":" not in spec:
        raise ValueError(f"unknown reward {spec!r}; the named rewards are {', '.join(REWARDS)}; or {how}")
    obj = import_target(spec, "reward")
    if not callable(obj):
        raise ValueError(
            f"reward {spec!r} is a {type(obj).__name__}, not a function list[str] -> list[float]"
        )
    return obj


@dataclass(frozen=True)
class OracleResult:
    """One batch's answers, aligned with the SMILES given.

    Attributes:
        scores: the score, or None (invalid SMILES, or a new molecule past the budget).
        new: whether this SMILES cost a call (the first time its canonical form was scored).
        canonical: RDKit's canonical SMILES, or None when invalid.
    """

    scores: list[float | None]
    new: list[bool]
    canonical: list[str | None]


class Oracle:
    """A reward on molecules with PMO's call counting: new canonical molecules cost one call, repeats are free.

    Args:
        reward: ``f(list of SMILES) -> list of floats`` (called on canonical SMILES), ``"qed"`` (default) or
            ``"module:function"``.
        budget: the number of calls; new molecules past it are not scored.

    Attributes:
        scores: the scores in call order (one per call); ``smiles`` the canonical SMILES alongside.

    Example:
        >>> from flowforge.data.molecules import rdkit_available
        >>> o = Oracle(lambda s: [len(x) / 10 for x in s], budget=2)
        >>> r = o(["CCO", "OCC", "C1CC", "CCN", "CCCC"]) if rdkit_available() else [0.3, 0.3, None, 0.3, None]
        >>> r, (o.calls, o.exhausted) if rdkit_available() else (2, True)
        ([0.3, 0.3, None, 0.3, None], (2, True))
    """

    def __init__(self, reward: str | Callable[[list[str]], Sequence[float]] = "qed", *, budget: int) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget must be a positive number of oracle calls, got {budget!r}; e.g. 10000")
        self.reward = load_reward(reward)
        self.budget = budget
        self.scores: list[float] = []
        self.smiles: list[str] = []
        self._cache: dict[str, float] = {}

    @property
    def calls(self) -> int:
        """Oracle calls spent (unique canonical molecules scored)."""
        return len(self.scores)

    @property
    def remaining(self) -> int:
        """Calls left."""
        return self.budget - self.calls

    @property
    def exhausted(self) -> bool:
        """Whether the budget is spent."""
        return self.calls >= self.budget

    def cached(self, smiles: str) -> float | None:
        """The score of an already-scored canonical SMILES (None: not scored yet)."""
        return self._cache.get(smiles)

    def score(self, smiles: Sequence[str]) -> OracleResult:
        """Score a batch: canonicalise, reuse cached scores, score the new ones (up to the budget) in one call."""
        from flowforge.data.molecules import canonical

        if isinstance(smiles, str):
            raise TypeError("smiles must be a list of strings, not one string; write oracle([smiles])")
        canon = [canonical(s) if isinstance(s, str) else None for s in smiles]
        fresh: list[str] = []
        for c in canon:
            if c is not None and c not in self._cache and c not in fresh and len(fresh) < self.remaining:
                fresh.append(c)
        if fresh:
            values = list(self.reward(list(fresh)))
            if len(values) != len(fresh):
                raise ValueError(
                    f"the reward returned {len(values)} values for {len(fresh)} molecules; return one each"
                )
            for c, v in zip(fresh, values):
                v = float(v)
                if not math.isfinite(v):
                    raise ValueError(
                        f"the reward gave {v} for {c!r}; return finite floats (e.g. 0 for a bad molecule)"
                    )
                self._cache[c] = v
                self.scores.append(v)
                self.smiles.append(c)
        new_set = set(fresh)
        new, seen = [], set()
        for c in canon:
            is_new = c is not None and c in new_set and c not in seen
            new.append(is_new)
            if is_new:
                seen.add(c)
        return OracleResult(
            scores=[self._cache.get(c) if c else None for c in canon], new=new, canonical=canon
        )

    def __call__(self, smiles: Sequence[str]) -> list[float | None]:
        """The scores of :meth:`score` (None: invalid, or new past the budget)."""
        return self.score(smiles).scores


def top_k_mean(scores: Sequence[float], k: int = 10) -> float:
    """The mean of the ``k`` best scores (of all when fewer; 0 for none).

    Example:
        >>> top_k_mean([0.1, 0.9, 0.5], k=2)
        0.7
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    best = sorted(scores, reverse=True)[:k]
    return sum(best) / len(best) if best else 0.0


def top_k_auc(scores: Sequence[float], k: int = 10, freq: int = 100, *, budget: int) -> float:
    r"""PMO's area under the top-``k`` mean curve, normalised by the budget (``mol_opt`` ``top_auc``).

    Args:
        scores: oracle scores in call order (only the first ``budget`` count).
        k: how many best scores are averaged (10 in PMO).
        freq: the curve is read every ``freq`` calls (100 in PMO).
        budget: the oracle budget; a shorter run is extended with its last value.

    Example:
        >>> top_k_auc([1.0] * 200, k=10, freq=100, budget=200)  # (100 * 0.5 + 100 * 1) / 200
        0.75
        >>> round(top_k_auc([1.0] * 100, budget=300), 4)  # early stop: (50 + 200 * 1) / 300
        0.8333
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive number of oracle calls, got {budget!r}")
    if freq < 1:
        raise ValueError(f"freq must be >= 1, got {freq}")
    scores = [float(s) for s in scores][:budget]
    n = len(scores)
    total, prev, called = 0.0, 0.0, 0
    for idx in range(freq, n, freq):
        now = top_k_mean(scores[:idx], k)
        total += freq * (now + prev) / 2
        prev, called = now, idx
    now = top_k_mean(scores, k)
    total += (n - called) * (now + prev) / 2
    total += (budget - n) * now
    return total / budget
