"""Molecule data (NCI 5K, MOSES, canonical SMILES) and metrics (validity ... FCD) on hand-made sets."""

import doctest
import importlib
import importlib.util
import math
import sys
import warnings

import pytest

import flowforge.data.molecules as dmol
import flowforge.metrics.molecules as mmol
from flowforge.data.molecules import canonical, moses, nci_5k, require_rdkit
from flowforge.metrics.molecules import (
    fcd,
    internal_diversity,
    molecule_metrics,
    novelty,
    qed,
    quality,
    sa_score,
    uniqueness,
    validity,
)

HAS_RDKIT = importlib.util.find_spec("rdkit") is not None
HAS_FCD = HAS_RDKIT and importlib.util.find_spec("fcd_torch") is not None
needs_rdkit = pytest.mark.skipif(not HAS_RDKIT, reason="needs rdkit (pip install 'flowforge[molecules]')")
needs_fcd = pytest.mark.skipif(not HAS_FCD, reason="needs fcd-torch and rdkit")

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
IBUPROFEN = "CC(C)Cc1ccc(C(C)C(=O)O)cc1"
CHOLESTEROL = "CC(C)CCCC(C)C1CCC2C1(CCC3C2CC=C4C3(CCC(C4)O)C)C"


@pytest.fixture(scope="module")
def nci():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nci_5k()


# ---------------------------------------------------------------------------------------------- no RDKit


def test_missing_rdkit_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdkit", None)
    with pytest.raises(ImportError, match=r"validity needs RDKit.*pip install 'flowforge\[molecules\]'"):
        validity(["CCO"])
    with pytest.raises(ImportError, match=r"flowforge\[molecules\]"):
        require_rdkit("x")
    assert dmol.rdkit_available() is False


def test_doc_examples_are_guarded_without_rdkit(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdkit", None)
    monkeypatch.setitem(sys.modules, "fcd_torch", None)
    for mod in (dmol, mmol):
        r = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert r.attempted >= 5 and r.failed == 0, mod.__name__


def test_missing_molsets_says_no_deps(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "moses" else real(name, *a)
    )
    with pytest.raises(ImportError, match="pip install --no-deps molsets"):
        moses("test")
    with pytest.raises(ValueError, match="unknown MOSES split 'tset'.*did you mean 'test'"):
        moses("tset")


@pytest.mark.skipif(importlib.util.find_spec("moses") is None, reason="molsets not installed")
def test_moses_test_split_from_wheel_files():
    test = moses("test")
    assert len(test) == 176_074
    assert test[0] == "CC1C2CCC(C2)C1CN(CCO)C(=O)c1ccc(Cl)cc1"
    assert all(isinstance(s, str) and s for s in test[:1000])


# ---------------------------------------------------------------------------------------------- data


@needs_rdkit
def test_canonical():
    assert canonical("OCC") == canonical("C(O)C") == "CCO"
    assert canonical("C1=CC=CC=C1") == "c1ccccc1"
    for bad in ["C1CC", "xyz", "", "   ", "c1cccc1"]:  # unclosed ring, garbage, empty, bad aromaticity
        assert canonical(bad) is None, bad


@needs_rdkit
def test_nci_5k(nci):
    assert 4900 < len(nci) <= 5000
    assert nci[0] == "CC1=CC(=O)C=CC1=O"  # the file's first line, canonicalised
    assert all(canonical(s) == s for s in nci[:300])
    with pytest.warns(UserWarning, match=r"dropped \d+ of 4999 SMILES"):
        nci_5k()


# ---------------------------------------------------------------------------------------------- metrics


@needs_rdkit
def test_validity_uniqueness_novelty_known_values():
    assert validity(["CCO", "xyz"]) == 0.5
    assert validity(["CCO", "", "C1CC", "c1ccccc1"]) == 0.5
    assert uniqueness(["CCO", "OCC"]) == 0.5
    assert uniqueness(["CCO", "CCN", "xyz"]) == 1.0
    assert uniqueness(["xyz"]) == 0.0
    gen = ["OCC", "CCN", "NCC", "c1ccccc1", "xyz"]  # distinct valid: CCO, CCN, benzene
    assert novelty(gen, ["CCO"]) == pytest.approx(2 / 3)
    assert novelty(gen, ["C(O)C", "C1=CC=CC=C1"]) == pytest.approx(1 / 3)  # train is canonicalised too
    assert novelty(gen, ["C(O)C"], assume_canonical=True) == 1.0  # ... unless told it already is
    assert novelty(gen, []) == 1.0
    with pytest.raises(TypeError, match=r"not one string; write \['CCO'\]"):
        validity("CCO")
    with pytest.raises(ValueError, match="empty"):
        validity([])


def _fps(smiles):
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    return [gen.GetFingerprint(Chem.MolFromSmiles(s)) for s in smiles]


@needs_rdkit
def test_internal_diversity_matches_rdkit_tanimoto(monkeypatch, nci):
    from rdkit import DataStructs

    assert internal_diversity(["CCO", "OCC", "C(O)C"]) == 0.0
    a, b = _fps(["CCO", "c1ccccc1O"])
    t = DataStructs.TanimotoSimilarity(a, b)
    assert 0 < t < 1
    # all ordered pairs including each with itself: (2 + 2t) / 4
    assert internal_diversity(["CCO", "c1ccccc1O", "xyz"]) == pytest.approx(1 - (2 + 2 * t) / 4, abs=1e-12)
    mols = nci[:40]
    fps = _fps(mols)
    ref = 1 - sum(sum(DataStructs.BulkTanimotoSimilarity(f, fps)) for f in fps) / len(fps) ** 2
    monkeypatch.setattr(mmol, "_PAIR_ROWS", 7)  # several row blocks
    assert internal_diversity(mols) == pytest.approx(ref, abs=1e-9)
    assert internal_diversity(["xyz"]) == 0.0


@needs_rdkit
def test_qed_and_sa(nci):
    q = qed([ASPIRIN, "xyz", IBUPROFEN])
    assert (
        q[0] == pytest.approx(0.5501, abs=1e-3)
        and math.isnan(q[1])
        and q[2] == pytest.approx(0.8216, abs=1e-3)
    )
    s = sa_score(nci[:100] + ["xyz"])
    assert all(1 <= v <= 10 for v in s[:-1]) and math.isnan(s[-1])
    ethanol, chol = sa_score(["CCO", CHOLESTEROL])
    assert ethanol == pytest.approx(1.98, abs=0.01) and chol > ethanol + 1.5
    assert qed([]) == [] and sa_score(["xyz"])[0] != sa_score(["xyz"])[0]


@needs_rdkit
def test_quality():
    # ibuprofen passes (QED 0.82, SA 2.2) and counts once; aspirin QED 0.55 < 0.6; ethanol QED 0.41
    assert quality([IBUPROFEN, IBUPROFEN, ASPIRIN, "CCO", "xyz"]) == pytest.approx(1 / 5)
    assert quality([ASPIRIN], qed_min=0.5) == 1.0
    assert quality([IBUPROFEN], sa_max=2.0) == 0.0


@needs_rdkit
def test_molecule_metrics_agree_with_single_functions(nci):
    gen = nci[:30] + ["xyz", nci[0], "OCC"]
    train = nci[10:100]
    m = molecule_metrics(gen, train)
    assert list(m) == ["validity", "uniqueness", "novelty", "internal_diversity", "qed", "sa", "quality"]
    assert m["validity"] == validity(gen)
    assert m["uniqueness"] == uniqueness(gen)
    assert m["novelty"] == novelty(gen, train)
    assert m["internal_diversity"] == pytest.approx(internal_diversity(gen), abs=1e-12)
    qs = [v for v in qed(gen) if not math.isnan(v)]
    assert m["qed"] == pytest.approx(sum(qs) / len(qs))
    assert m["quality"] == quality(gen)
    sub = molecule_metrics(gen, train, test=nci[200:260], metrics=("novelty", "qed_w1"))
    assert list(sub) == ["novelty", "qed_w1"] and sub["qed_w1"] > 0
    same = molecule_metrics(nci[200:260], train, test=nci[200:260], metrics=("qed_w1", "sa_w1"))
    assert same == {"qed_w1": 0.0, "sa_w1": 0.0}
    with pytest.raises(ValueError, match="unknown molecule metric 'fdc'.*did you mean 'fcd'"):
        molecule_metrics(gen, train, metrics=("fdc",))
    with pytest.raises(ValueError, match="'fcd' compares with a test set; pass test="):
        molecule_metrics(gen, train, metrics=("fcd",))


@needs_fcd
@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")  # fcd-torch's own FCD, below
def test_fcd(nci):
    from fcd_torch import FCD

    a, b = nci[:150], nci[150:300]
    assert fcd(a, a) == pytest.approx(0.0, abs=1e-6)
    d_ab = fcd(a, b)
    ref = FCD(device="cpu", n_jobs=1)(a, b)  # fcd-torch's own scipy-sqrtm computation
    assert d_ab == pytest.approx(ref, rel=1e-3)
    chains = ["C" * k for k in range(2, 40)] + ["C" * k + "O" for k in range(2, 40)]
    d_far = fcd(a, chains)  # 43 against 14.6 for two disjoint NCI halves (150 molecules carry a bias)
    assert d_far > 2.5 * d_ab
    # invalid SMILES are left out, not fed to ChemNet
    assert fcd(a + ["xyz", "C1CC"], b) == pytest.approx(d_ab, rel=1e-9)
    with pytest.raises(ValueError, match="at least 2 valid molecules in generated, got 1"):
        fcd(["CCO", "xyz"], b)
    m = molecule_metrics(a, b, test=b)
    assert m["fcd"] == pytest.approx(d_ab, rel=1e-9)
    # a model with fewer than 2 valid molecules has no FCD: nan, not an error in the middle of an eval
    assert math.isnan(molecule_metrics(["CCO", "xyz"], b, test=b, metrics=("validity", "fcd"))["fcd"])


@needs_rdkit
def test_smiles_tokenizer_on_nci_and_brics_fragments(nci):
    from rdkit import Chem
    from rdkit.Chem import BRICS

    from flowforge.data.tokens import SmilesTokenizer, Vocabulary

    t = SmilesTokenizer()
    assert all(t.join(t.split(s)) == s for s in nci)
    v = Vocabulary.build(nci, t)
    assert (
        {"Cl", "Br", "%10", "[N+]", "[O-]"} <= set(v.tokens) and "l" not in v.tokens and "r" not in v.tokens
    )
    # InVirtuoGen-style fragment strings: BRICS fragments with [k*] attachment points, joined by spaces
    frags = [" ".join(sorted(BRICS.BRICSDecompose(Chem.MolFromSmiles(s)))) for s in nci[:150]]
    frags = [f for f in frags if " " in f]
    assert len(frags) > 50
    fv = Vocabulary.build(frags, t)
    assert " " in fv.tokens and "[16*]" in fv.tokens and "*" not in fv.tokens
    ids = fv.encode(frags, max(fv.lengths(frags)))
    assert fv.decode(ids) == frags
