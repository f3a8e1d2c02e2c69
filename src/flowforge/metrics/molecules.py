r"""Molecule metrics on SMILES: validity, uniqueness, novelty, internal diversity, QED, SA, FCD.

The definitions follow MOSES (Polykovskiy et al., "Molecular Sets (MOSES)", Front. Pharmacol. 2020):

- **validity**: fraction of generated strings RDKit parses (and sanitises) into a non-empty molecule;
- **uniqueness**: distinct canonical SMILES among the valid ones, over the number valid;
- **novelty**: fraction of the distinct valid molecules whose canonical SMILES is not in the training set;
- **internal diversity** (IntDiv\ :sub:`1`): :math:`1 - \frac{1}{|G|^2}\sum_{a, b \in G} T(a, b)` over
  the valid molecules :math:`G` (pairs with themselves included, as in MOSES), with :math:`T` the
  Tanimoto similarity of Morgan fingerprints (radius 2; 2,048 bits here, MOSES uses 1,024);
- **QED** (Bickerton et al., Nat. Chem. 2012) and the **SA score** (Ertl & Schuffenhauer,
  J. Cheminf. 2009; 1 = easy to make, 10 = hard), per molecule, from RDKit and its ``Contrib``;
- **FCD** (Preuer et al., "Frechet ChemNet Distance", J. Chem. Inf. Model. 2018): the Frechet distance
  (:func:`flowforge.metrics.frechet_distance`) between Gaussians fitted to ChemNet activations, ChemNet
  from the ``fcd-torch`` wheel (which ships its weights), run on the CPU by default;
- **quality** (InVirtuoGen's de novo measure): the fraction of generated strings that are valid, distinct
  molecules with QED >= 0.6 and SA <= 4.

RDKit (``pip install 'flowforge[molecules]'``) and ``fcd-torch`` are imported inside the functions.
Invalid SMILES never raise; they count as invalid (and are ``nan`` in per-molecule lists).

Example:
    >>> from flowforge.data.molecules import rdkit_available
    >>> validity(["CCO", "C1CC", "c1ccccc1"]) if rdkit_available() else 2 / 3
    0.6666666666666666
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from flowforge.core.choices import unknown_choice
from flowforge.data.molecules import _mol, require_rdkit
from flowforge.metrics.boltzmann import wasserstein_1d
from flowforge.metrics.frechet import frechet_distance

__all__ = [
    "validity",
    "uniqueness",
    "novelty",
    "internal_diversity",
    "qed",
    "sa_score",
    "quality",
    "chemnet_features",
    "fcd",
    "molecule_metrics",
    "MOLECULE_METRICS",
]

#: Names :func:`molecule_metrics` computes; the last three need ``test``.
MOLECULE_METRICS = (
    "validity",
    "uniqueness",
    "novelty",
    "internal_diversity",
    "qed",
    "sa",
    "quality",
    "fcd",
    "qed_w1",
    "sa_w1",
)
_NEED_TEST = ("fcd", "qed_w1", "sa_w1")
_PAIR_ROWS = 1024  # rows of the Tanimoto matrix held at once


def _check_list(smiles: Sequence[str], name: str, *, allow_empty: bool = False) -> list[str]:
    if isinstance(smiles, str):
        raise TypeError(f"{name} must be a list of SMILES strings, not one string; write [{smiles!r}]")
    out = list(smiles)
    if not out and not allow_empty:
        raise ValueError(f"{name} is empty; pass at least one SMILES string")
    return out


def _parse(smiles: Sequence[str], what: str) -> list[tuple[str, object] | None]:
    """``(canonical SMILES, mol)`` per input, ``None`` where invalid."""
    Chem = require_rdkit(what)
    from rdkit.rdBase import BlockLogs

    out: list[tuple[str, object] | None] = []
    with BlockLogs():
        for s in smiles:
            mol = _mol(s)
            out.append(None if mol is None else (Chem.MolToSmiles(mol), mol))
    return out


def validity(generated: Sequence[str]) -> float:
    """Fraction of ``generated`` that RDKit parses into a non-empty molecule.

    Example:
        >>> from flowforge.data.molecules import rdkit_available
        >>> validity(["CCO", "xyz"]) if rdkit_available() else 0.5
        0.5
    """
    gen = _check_list(generated, "generated")
    return sum(p is not None for p in _parse(gen, "validity")) / len(gen)


def _uniqueness(parsed: list) -> float:
    canon = [p[0] for p in parsed if p is not None]
    return len(set(canon)) / len(canon) if canon else 0.0


def uniqueness(generated: Sequence[str]) -> float:
    """Distinct canonical SMILES among the valid molecules, over the number valid (0.0 if none is valid).

    Example:
        >>> from flowforge.data.molecules import rdkit_available
        >>> uniqueness(["CCO", "OCC", "xyz"]) if rdkit_available() else 0.5
        0.5
    """
    return _uniqueness(_parse(_check_list(generated, "generated"), "uniqueness"))


def _canonical_set(train: Iterable[str], assume_canonical: bool) -> set[str]:
    if isinstance(train, str):
        raise TypeError(f"train must be a list of SMILES strings, not one string; write [{train!r}]")
    if assume_canonical:
        return set(train)
    return {p[0] for p in _parse(list(train), "novelty") if p is not None}


def _novelty(parsed: list, train_set: set[str]) -> float:
    distinct = {p[0] for p in parsed if p is not None}
    return len(distinct - train_set) / len(distinct) if distinct else 0.0


def novelty(generated: Sequence[str], train: Iterable[str], *, assume_canonical: bool = False) -> float:
    """Fraction of the distinct valid generated molecules not in ``train`` (0.0 if none is valid).

    Both sides are compared as RDKit canonical SMILES.

    Args:
        generated: generated SMILES.
        train: the training SMILES.
        assume_canonical: ``train`` is already RDKit-canonical (e.g. MOSES); skips canonicalising it,
            which for 1.6M molecules saves minutes.

    Example:
        >>> from flowforge.data.molecules import rdkit_available
        >>> novelty(["OCC", "CCN", "CCN", "xyz"], ["CCO"]) if rdkit_available() else 0.5
        0.5
    """
    parsed = _parse(_check_list(generated, "generated"), "novelty")
    return _novelty(parsed, _canonical_set(train, assume_canonical))


def _fingerprints(mols: list, radius: int, n_bits: int) -> np.ndarray:
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    return np.stack([gen.GetFingerprintAsNumPy(m) for m in mols]).astype(np.float32)


def _internal_diversity(mols: list, radius: int, n_bits: int) -> float:
    if not mols:
        return 0.0
    fp = torch.from_numpy(_fingerprints(mols, radius, n_bits))  # (N, n_bits) of 0/1
    counts = fp.sum(1).double()
    total = 0.0
    for i in range(0, len(fp), _PAIR_ROWS):
        block = fp[i : i + _PAIR_ROWS]
        inter = (block @ fp.T).double()  # bit counts <= n_bits: exact in float32, divided in float64
        union = counts[i : i + _PAIR_ROWS, None] + counts[None] - inter
        # two empty fingerprints are identical: similarity 1
        sim = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
        total += sim.sum().item()
    return 1.0 - total / len(fp) ** 2


def internal_diversity(generated: Sequence[str], *, radius: int = 2, n_bits: int = 2048) -> float:
    r"""MOSES IntDiv\ :sub:`1`: one minus the mean Tanimoto similarity over all pairs of valid molecules.

    The mean runs over all :math:`|G|^2` ordered pairs, each molecule with itself included (as MOSES
    does), so a set of ``k`` distinct molecules with no shared bits scores :math:`1 - 1/k`. Invalid
    strings are left out; duplicates count. 0.0 when none is valid.

    Args:
        generated: SMILES.
        radius: Morgan fingerprint radius (2, i.e. ECFP4).
        n_bits: fingerprint length (MOSES uses 1024).

    Example:
        >>> from flowforge.data.molecules import rdkit_available
        >>> internal_diversity(["CCO", "CCO", "OCC"]) if rdkit_available() else 0.0
        0.0
    """
    parsed = _parse(_check_list(generated, "generated"), "internal_diversity")
    return _internal_diversity([p[1] for p in parsed if p is not None], radius, n_bits)


def qed(smiles: Sequence[str]) -> list[float]:
    """QED drug-likeness in ``[0, 1]`` per molecule (RDKit ``Chem.QED.qed``); ``nan`` for invalid SMILES.

    Example:
        >>> from flowforge.data.molecules import rdkit_available
        >>> [round(q, 3) for q in qed(["CC(=O)Oc1ccccc1C(=O)O"])] if rdkit_available() else [0.55]
        [0.55]
    """
    parsed = _parse(_check_list(smiles, "smiles", allow_empty=True), "qed")
    return _qed([p[1] if p is not None else None for p in parsed])


def _qed(mols: list) -> list[float]:
    from rdkit.Chem import QED

    return [math.nan if m is None else float(QED.qed(m)) for m in mols]


_SASCORER: ModuleType | None = None


def _sascorer() -> ModuleType:
    """RDKit's ``Contrib/SA_Score/sascorer.py``, loaded from the RDKit install (it is no package module)."""
    global _SASCORER
    if _SASCORER is None:
        require_rdkit("sa_score")
        from rdkit import RDConfig

        path = Path(RDConfig.RDContribDir) / "SA_Score" / "sascorer.py"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: this RDKit install lacks its Contrib folder (the PyPI wheel has it); "
                "install RDKit with pip install 'flowforge[molecules]'"
            )
        spec = importlib.util.spec_from_file_location("flowforge_rdkit_sascorer", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SASCORER = module
    return _SASCORER


def _sa(mols: list) -> list[float]:
    if not any(m is not None for m in mols):
        return [math.nan] * len(mols)
    scorer = _sascorer()
    return [math.nan if m is None else float(scorer.calculateScore(m)) for m in mols]


def sa_score(smiles: Sequence[str]) -> list[float]:
    """Synthetic accessibility in ``[1, 10]`` per molecule (1 easy, 10 hard); ``nan`` for invalid SMILES.

    Uses the scorer that ships in RDKit's ``Contrib/SA_Score`` (Ertl & Schuffenhauer, 2009).

    Example:
        >>> from flowforge.data.molecules import rdkit_available
        >>> s = sa_score(["CCO", "xyz"]) if rdkit_available() else [1.98, float("nan")]
        >>> round(s[0], 2), s[1] != s[1]
        (1.98, True)
    """
    parsed = _parse(_check_list(smiles, "smiles", allow_empty=True), "sa_score")
    return _sa([p[1] if p is not None else None for p in parsed])


def _quality(parsed: list, qeds: list[float], sas: list[float], qed_min: float, sa_max: float) -> float:
    good = {p[0] for p, q, s in zip(parsed, qeds, sas) if p is not None and q >= qed_min and s <= sa_max}
    return len(good) / len(parsed)


def quality(generated: Sequence[str], *, qed_min: float = 0.6, sa_max: float = 4.0) -> float:
    """Fraction of ``generated`` that are valid, distinct molecules with QED >= ``qed_min`` and SA <= ``sa_max``.

    InVirtuoGen's de novo "quality" (a duplicate counts once; the denominator is every generated string).

    Example:
        >>> from flowforge.data.molecules import rdkit_available
        >>> ibuprofen = "CC(C)Cc1ccc(C(C)C(=O)O)cc1"  # QED 0.82, SA 2.2; ethanol has QED 0.41
        >>> quality([ibuprofen, ibuprofen, "CCO", "xyz"]) if rdkit_available() else 0.25
        0.25
    """
    parsed = _parse(_check_list(generated, "generated"), "quality")
    mols = [p[1] if p is not None else None for p in parsed]
    return _quality(parsed, _qed(mols), _sa(mols), qed_min, sa_max)


_FCD_MODELS: dict[str, object] = {}


def _fcd_model(device: str, batch_size: int):
    if importlib.util.find_spec("fcd_torch") is None:
        raise ImportError(
            "FCD needs fcd-torch (its wheel ships the ChemNet weights); install it without touching torch: "
            "pip install --no-deps fcd-torch (it needs only torch, numpy, scipy), or pip install 'flowforge[molecules]'"
        )
    require_rdkit("fcd")
    from fcd_torch import FCD

    key = f"{device}:{batch_size}"
    if key not in _FCD_MODELS:
        # n_jobs=1: parse SMILES in this process (no DataLoader workers)
        _FCD_MODELS[key] = FCD(device=device, n_jobs=1, batch_size=batch_size)
    return _FCD_MODELS[key]


def chemnet_features(smiles: Sequence[str], *, device: str = "cpu", batch_size: int = 512) -> torch.Tensor:
    """ChemNet's penultimate activations ``(N, 512)`` float64 for valid SMILES (the FCD features).

    Args:
        smiles: SMILES that RDKit parses (filter with :func:`validity`'s rules first; :func:`fcd` does).
        device: torch device for ChemNet.
        batch_size: molecules a forward pass.

    Returns:
        ``(N, 512)`` float64 activations.

    Example:
        >>> import importlib.util
        >>> ok = importlib.util.find_spec("fcd_torch") is not None and importlib.util.find_spec("rdkit")
        >>> tuple(chemnet_features(["CCO", "c1ccccc1"]).shape) if ok else (2, 512)
        (2, 512)
    """
    smiles = _check_list(smiles, "smiles")
    model = _fcd_model(device, batch_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fcd-torch's np.row_stack under NumPy 2
        return torch.from_numpy(np.asarray(model.get_predictions(smiles), dtype=np.float64))


def fcd(
    generated: Sequence[str], reference: Sequence[str], *, device: str = "cpu", batch_size: int = 512
) -> float:
    """Frechet ChemNet Distance between the valid molecules of ``generated`` and ``reference``.

    Invalid SMILES are left out of both sets (as MOSES does); each set needs at least two valid ones.
    Lower is better; a set against itself gives 0. Needs ``fcd-torch``.

    Args:
        generated: generated SMILES.
        reference: reference SMILES (usually the test set).
        device: torch device for ChemNet (``"cpu"`` default).
        batch_size: molecules a ChemNet forward pass.

    Example:
        >>> import importlib.util
        >>> ok = importlib.util.find_spec("fcd_torch") is not None and importlib.util.find_spec("rdkit")
        >>> round(fcd(["CCO", "CCN", "c1ccccc1"], ["CCO", "CCN", "c1ccccc1"]), 6) if ok else 0.0
        0.0
    """
    gen = [p[0] for p in _parse(_check_list(generated, "generated"), "fcd") if p is not None]
    ref = [p[0] for p in _parse(_check_list(reference, "reference"), "fcd") if p is not None]
    for name, s in (("generated", gen), ("reference", ref)):
        if len(s) < 2:
            raise ValueError(f"FCD needs at least 2 valid molecules in {name}, got {len(s)}")
    return frechet_distance(
        chemnet_features(gen, device=device, batch_size=batch_size),
        chemnet_features(ref, device=device, batch_size=batch_size),
    )


def molecule_metrics(
    generated: Sequence[str],
    train: Iterable[str],
    test: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    *,
    assume_canonical: bool = False,
    device: str = "cpu",
) -> dict[str, float]:
    """Several molecule metrics at once, parsing every SMILES once.

    ``qed`` and ``sa`` are means over the valid molecules (``nan`` if none); ``qed_w1`` and ``sa_w1`` are
    1-Wasserstein distances between the generated and the test distributions of QED and SA (MOSES'
    property metrics); ``fcd`` is :func:`fcd` against ``test``.

    Args:
        generated: generated SMILES.
        train: training SMILES (for novelty).
        test: held-out SMILES (for ``fcd``, ``qed_w1``, ``sa_w1``).
        metrics: names from :data:`MOLECULE_METRICS`; ``None`` computes all that apply: those needing
            ``test`` only when it is given, and ``fcd`` only when ``fcd-torch`` is installed.
        assume_canonical: ``train`` is already RDKit-canonical (see :func:`novelty`).
        device: torch device for FCD's ChemNet.

    Returns:
        ``{name: float}`` in the order of ``metrics``.

    Example:
        >>> from flowforge.data.molecules import rdkit_available
        >>> m = molecule_metrics(["CCO", "OCC", "xyz", "CCN"], ["CCO"], metrics=("validity", "novelty")) if (
        ...     rdkit_available()) else {"validity": 0.75, "novelty": 0.5}
        >>> m
        {'validity': 0.75, 'novelty': 0.5}
    """
    gen = _check_list(generated, "generated")
    if metrics is None:
        names = [n for n in MOLECULE_METRICS if test is not None or n not in _NEED_TEST]
        if importlib.util.find_spec("fcd_torch") is None and "fcd" in names:
            names.remove("fcd")
    else:
        if isinstance(metrics, str):
            metrics = (metrics,)
        names = list(metrics)
        for n in names:
            if n not in MOLECULE_METRICS:
                raise unknown_choice("molecule metric", n, MOLECULE_METRICS)
            if n in _NEED_TEST and test is None:
                raise ValueError(f"metric {n!r} compares with a test set; pass test=<list of SMILES>")
    parsed = _parse(gen, "molecule_metrics")
    mols = [p[1] if p is not None else None for p in parsed]
    valid_mols = [m for m in mols if m is not None]
    cache: dict[str, list[float]] = {}

    def gen_prop(key: str) -> list[float]:
        if key not in cache:
            cache[key] = _qed(mols) if key == "qed" else _sa(mols)
        return cache[key]

    def test_prop(key: str) -> list[float]:
        tkey = "test_" + key
        if tkey not in cache:
            tmols = [p[1] for p in _parse(_check_list(test, "test"), "molecule_metrics") if p is not None]
            cache[tkey] = _qed(tmols) if key == "qed" else _sa(tmols)
        return cache[tkey]

    def mean_valid(values: list[float]) -> float:
        v = [x for x in values if not math.isnan(x)]
        return sum(v) / len(v) if v else math.nan

    def w1(key: str) -> float:
        a = [x for x in gen_prop(key) if not math.isnan(x)]
        b = test_prop(key)
        if not a or not b:
            return math.nan
        return wasserstein_1d(np.asarray(a), np.asarray(b), p=1)

    out: dict[str, float] = {}
    for n in names:
        if n == "validity":
            out[n] = len(valid_mols) / len(gen)
        elif n == "uniqueness":
            out[n] = _uniqueness(parsed)
        elif n == "novelty":
            out[n] = _novelty(parsed, _canonical_set(train, assume_canonical))
        elif n == "internal_diversity":
            out[n] = _internal_diversity(valid_mols, 2, 2048)
        elif n in ("qed", "sa"):
            out[n] = mean_valid(gen_prop(n))
        elif n == "quality":
            out[n] = _quality(parsed, gen_prop("qed"), gen_prop("sa"), 0.6, 4.0)
        elif n == "fcd":  # a model with fewer than 2 valid molecules has no FCD (nan), not an error
            valid = [p[0] for p in parsed if p is not None]
            out[n] = fcd(valid, test, device=device) if len(valid) >= 2 else float("nan")
        elif n in ("qed_w1", "sa_w1"):
            out[n] = w1(n[:-3])
    return out
