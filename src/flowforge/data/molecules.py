"""Molecule data sets as SMILES: RDKit's bundled NCI 5K set, MOSES train/test, canonical SMILES.

RDKit is an optional dependency (``pip install 'flowforge[molecules]'``), imported inside the functions
that need it; :func:`rdkit_available` says whether it is there. MOSES (Polykovskiy et al., "Molecular
Sets (MOSES)", 2020) comes from the ``molsets`` wheel, which ships its splits as ``.csv.gz`` files;
its pinned dependencies (``pomegranate==0.12``) do not install on current Pythons, so install it with
``pip install --no-deps molsets``. :func:`moses` reads the files directly and never imports the
``moses`` package (whose ``__init__`` needs modules that current RDKit no longer has).

Example:
    >>> canonical("OCC") if rdkit_available() else "CCO"
    'CCO'
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import warnings
from pathlib import Path
from types import ModuleType

from flowforge.core.choices import unknown_choice

__all__ = ["rdkit_available", "require_rdkit", "canonical", "nci_5k", "moses", "MOSES_SPLITS"]

#: The MOSES splits shipped in the ``molsets`` wheel.
MOSES_SPLITS = ("train", "test", "test_scaffolds")


def rdkit_available() -> bool:
    """Whether RDKit can be imported (without importing it).

    Example:
        >>> isinstance(rdkit_available(), bool)
        True
    """
    return importlib.util.find_spec("rdkit") is not None


def require_rdkit(what: str) -> ModuleType:
    """Import RDKit's ``Chem`` module, or raise an ``ImportError`` saying how to install it.

    Args:
        what: what needs RDKit, for the message (e.g. ``"validity"``).

    Example:
        >>> require_rdkit("my function").__name__ if rdkit_available() else "rdkit.Chem"
        'rdkit.Chem'
    """
    try:
        from rdkit import Chem
    except ImportError:
        raise ImportError(
            f"{what} needs RDKit, which is not installed; install it with: pip install 'flowforge[molecules]' "
            "(or pip install rdkit)"
        ) from None
    return Chem


def _mol(smiles: str):
    """An RDKit molecule, or None for an unparsable or empty SMILES (RDKit's log is silenced by the caller)."""
    from rdkit import Chem

    if not isinstance(smiles, str) or not smiles.strip():
        return None
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    return mol


def canonical(smiles: str) -> str | None:
    """RDKit's canonical SMILES of ``smiles``, or ``None`` when RDKit cannot parse it (or it is empty).

    Example:
        >>> [canonical(s) for s in ["C(O)C", "c1ccccc1", "C1CC", ""]] if rdkit_available() else [
        ...     "CCO", "c1ccccc1", None, None]
        ['CCO', 'c1ccccc1', None, None]
    """
    Chem = require_rdkit("canonical")
    from rdkit.rdBase import BlockLogs

    with BlockLogs():
        mol = _mol(smiles)
        return None if mol is None else Chem.MolToSmiles(mol)


def _canonical_list(smiles: list[str]) -> list[str | None]:
    Chem = require_rdkit("canonical SMILES")
    from rdkit.rdBase import BlockLogs

    out: list[str | None] = []
    with BlockLogs():
        for s in smiles:
            mol = _mol(s)
            out.append(None if mol is None else Chem.MolToSmiles(mol))
    return out


def nci_5k() -> list[str]:
    """The first 5,000 molecules of the NCI database that ship with RDKit (``Data/NCI/first_5K.smi``).

    The file has one ``SMILES<TAB>id`` a line; the SMILES are canonicalised with RDKit, and those it cannot
    parse are dropped with a warning that counts them. Order is the file's; no deduplication.

    Returns:
        About 5,000 canonical SMILES.

    Example:
        >>> mols = nci_5k() if rdkit_available() else ["C"] * 4999
        >>> len(mols) > 4900
        True
    """
    require_rdkit("nci_5k")
    from rdkit import RDConfig

    path = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: this RDKit install lacks its data files; reinstall RDKit "
            "(pip install --force-reinstall --no-deps rdkit) or load your own file with load_sequences('x.smi')"
        )
    raw = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    canon = _canonical_list(raw)
    out = [c for c in canon if c is not None]
    if len(out) < len(raw):
        warnings.warn(
            f"nci_5k: dropped {len(raw) - len(out)} of {len(raw)} SMILES that RDKit could not parse",
            stacklevel=2,
        )
    return out


def _moses_data_dir() -> Path:
    spec = importlib.util.find_spec("moses")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "MOSES data needs the molsets package, which is not installed; install it without its pinned "
            "dependencies (they do not build on current Pythons): pip install --no-deps molsets"
        )
    for root in spec.submodule_search_locations:
        d = Path(root) / "dataset" / "data"
        if (d / "test.csv.gz").is_file():
            return d
    raise ImportError(
        f"the installed 'moses' package ({list(spec.submodule_search_locations)}) has no dataset/data/*.csv.gz; "
        "another package may use the name: pip uninstall it, then pip install --no-deps molsets"
    )


def moses(split: str = "train") -> list[str]:
    """A MOSES split as SMILES, read from the ``molsets`` wheel's ``.csv.gz`` files (no download).

    ``train`` has 1,584,663 molecules, ``test`` 176,074 and ``test_scaffolds`` 176,225 (scaffolds unseen
    in train). The SMILES are returned as stored (RDKit-canonical when MOSES was built); no RDKit needed.

    Args:
        split: ``"train"``, ``"test"`` or ``"test_scaffolds"``.

    Raises:
        ImportError: ``molsets`` is not installed (``pip install --no-deps molsets``).
    """
    if split not in MOSES_SPLITS:
        raise unknown_choice("MOSES split", split, MOSES_SPLITS)
    path = _moses_data_dir() / f"{split}.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the molsets install; reinstall: pip install --no-deps molsets"
        )
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or "SMILES" not in header:
            raise ValueError(f"{path} has no SMILES column (header {header!r}); reinstall molsets")
        col = header.index("SMILES")
        return [row[col] for row in reader if row]
