"""SELFIES tokens (``SelfiesTokenizer``), the ``selfies-*`` recipes and property optimisation from a SELFIES base."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("rdkit")
pytest.importorskip("selfies")

from flowforge.apps.molecules import encode_prompts, optimize  # noqa: E402
from flowforge.data.molecules import canonical, nci_5k  # noqa: E402
from flowforge.data.tokens import TOKENIZERS, SelfiesTokenizer, SmilesTokenizer, Vocabulary  # noqa: E402
from flowforge.recipes import evaluate, get_recipe, load_run, train_recipe  # noqa: E402
from flowforge.recipes.discrete import corpus, vocabulary  # noqa: E402


@pytest.fixture(scope="module")
def nci():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nci_5k()


@pytest.fixture(scope="module")
def nci_vocab(nci):
    tok = SelfiesTokenizer()
    good = []
    for s in nci[:1500]:
        try:
            tok.split(s)
        except ValueError:
            continue
        good.append(s)
    return Vocabulary.build(good, tok), good


def test_tokens_are_selfies_symbols():
    toks = SelfiesTokenizer().split("CC(=O)Oc1ccccc1C(=O)O")  # aspirin
    assert all(t.startswith("[") and t.endswith("]") for t in toks)
    assert {"[C]", "[=O]", "[O]"} <= set(toks)
    assert any("Branch" in t for t in toks) and "[Ring1]" in toks
    assert SelfiesTokenizer().split("CCO.Cl") == ["[C]", "[C]", "[O]", ".", "[Cl]"]


def test_round_trip_on_nci_molecules(nci_vocab):
    """Every encodable NCI molecule comes back as the same canonical SMILES through ids."""
    v, good = nci_vocab
    assert len(good) >= 0.99 * 1500
    length = max(v.lengths(good))
    ids = v.encode(good, length)
    back = v.decode(ids)
    same = sum(a == canonical(b) for a, b in zip(back, good))
    assert same == len(good), [(a, b) for a, b in zip(back, good) if a != canonical(b)][:3]
    # the vocabulary survives its JSON description
    assert Vocabulary.from_dict(v.to_dict()) == v and TOKENIZERS["selfies"] is SelfiesTokenizer


def test_random_token_sequences_are_molecules(nci_vocab):
    """The SELFIES grammar: random ids (no padding) decode to RDKit-valid molecules, bar rare valence
    disagreements between SELFIES' and RDKit's rules for charged hypervalent atoms (measured: 99.7%);
    SMILES tokens drawn the same way are almost never valid."""
    v, good = nci_vocab
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, len(v), (500, 40), generator=g)
    out = v.decode(ids)
    valid = sum(canonical(s) is not None for s in out) / len(out)
    assert valid >= 0.97
    assert all(s == canonical(s) for s in out if canonical(s) is not None)  # canonical SMILES come out
    vs = Vocabulary.build(good, SmilesTokenizer())
    out_s = vs.decode(torch.randint(1, len(vs), (500, 40), generator=g))
    assert sum(canonical(s) is not None for s in out_s) / 500 < 0.05
    # a leading pad or tokens that add no atom give the empty molecule: "" (invalid), never an error
    lone = v.tokenize("C1CCCCC1")[-1:]  # a ring token alone
    assert v.decode(torch.tensor([[0] * 5, lone + [0] * 4])) == ["", ""]


def test_bad_input_says_what_to_do():
    tok = SelfiesTokenizer()
    with pytest.raises(ValueError, match="cannot encode"):
        tok.split("C[S](C)(C)(C)(C)(C)(C)C")  # S with valence 8: above SELFIES' limits
    with pytest.raises(ValueError, match="non-empty SMILES"):
        tok.split("")
    v = Vocabulary.build(["CCO"], tok)
    with pytest.raises(ValueError, match="unknown token"):
        v.tokenize("CCN")


def test_selfies_recipes_train_and_every_sample_is_a_molecule(tmp_path):
    tiny = {"n_test": 100, "max_length": 40, "width": 32, "depth": 1, "heads": 2, "batch_size": 32}
    tiny |= {"warmup": 0, "eval_n": 40, "sample_steps": 4}
    for name in ("selfies-uniform", "selfies-masked"):
        r = get_recipe(name)
        assert r.defaults["tokenizer"] == "selfies" and r.defaults["dataset"] == "nci"
        run = tmp_path / name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_recipe(name, overrides=tiny, out=run, steps=2, progress=False)
            res = evaluate(run, n_samples=32, steps=4, metrics=["validity", "uniqueness", "novelty"])
        _, config = load_run(run)
        assert config["tokenizer"] == "selfies" and config["length"] <= 40
        # two steps of training: the net is nearly random, yet samples are molecules (empty ones aside)
        assert res["validity"] >= 0.8, res
    train, test = corpus(config)
    assert all(canonical(s) == s for s in test[:50])
    assert vocabulary(config).tokenizer.name == "selfies"
    # the optimisation recipe takes a selfies-uniform base as it takes a smiles-uniform one
    opt = {"budget": 30, "population": 16, "offspring": 16, "mutations": 4, "ppo_batch": 16}
    opt |= {
        "reinforce_steps": 1,
        "num_timesteps": 2,
        "sample_steps": 4,
        "init_from": str(tmp_path / "selfies-uniform"),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_recipe("smiles-optimize", overrides=opt, out=tmp_path / "opt", progress=False)
    res = evaluate(tmp_path / "opt")
    assert res["oracle_calls"] <= 30 and res["validity"] >= 0.8, res


def test_genetic_prompts_and_optimize_through_the_selfies_vocabulary(nci_vocab):
    """GA children (SMILES) enter a SELFIES flow as x0 through the vocabulary, and optimize runs on it."""
    v, good = nci_vocab
    x0, k = encode_prompts(["CCO", "c1ccccc1N"], v, 12, torch.full((2, 12), 3))
    assert k == 2 and v.decode(x0) == ["CCO", "Nc1ccccc1"]
    from flowforge.discrete import DiscreteFlowMatching
    from flowforge.nn import TokenTransformer

    dfm = DiscreteFlowMatching(TokenTransformer(len(v), 16, width=16, depth=1, heads=2), len(v), length=16)
    h = optimize(dfm, v, "qed", budget=40, mode="ga+ppo", population=16, offspring=16, mutations=4,
                 ppo_batch=16, reinforce_steps=1, num_timesteps=2, steps=4, seed=0)  # fmt: skip
    assert h.oracle_calls <= 40 and h.validity >= 0.8 and 0 < h.top10_mean <= 1
