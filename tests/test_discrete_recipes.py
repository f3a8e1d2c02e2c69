"""Token-flow recipes (``expr-*``, ``tokens-*``, ``smiles-*``): train, sample ids and text through the CLI,
evaluate validity / uniqueness / novelty / bits per token, a user's file, and clear refusals."""

from __future__ import annotations

import json

import pytest
import torch

from flowforge.cli import main
from flowforge.data.tokens import is_valid_expression
from flowforge.recipes import decode, evaluate, get_recipe, load_run, sample, train_recipe

TINY = {"n_train": 400, "n_test": 40, "width": 32, "depth": 1, "heads": 2, "batch_size": 32, "warmup": 0}
TINY |= {"eval_n": 40, "bpt_n": 20, "bpt_steps": 4, "sample_steps": 8}


@pytest.mark.parametrize("name", ["expr-uniform", "expr-masked"])
def test_expr_recipes_train_sample_and_evaluate(name, tmp_path):
    run = tmp_path / "run"
    train_recipe(name, overrides=TINY, out=run, steps=3, progress=False)
    model, config = load_run(run)
    assert config["source"] == ("mask" if name.endswith("masked") else "uniform")
    x = sample(run, 16, seed=3, steps=4)
    assert x.shape == (16, config["length"]) and x.dtype == torch.int64
    assert int(x.min()) >= 0 and int(x.max()) < config["vocab_size"]  # no mask id comes out
    assert torch.equal(x, sample(run, 16, seed=3, steps=4))  # same seed, same bits
    text = decode(run, x)
    assert len(text) == 16 and all(isinstance(s, str) and "<pad>" not in s for s in text)
    res = evaluate(run, n_samples=20, seed=0, steps=4, temperature=0.5)
    assert {"validity", "uniqueness", "novelty", "bpt"} <= set(res)
    assert (res["nfe"], res["temperature"]) == (4, 0.5) and res["bpt"] > 0
    with pytest.raises(ValueError, match="solver"):
        sample(run, 4, solver="heun")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample(run, 4, temperature=0.0)


def test_training_makes_valid_expressions(tmp_path):
    """A short run on the grammar: most samples parse, far more than an untrained model's."""
    run = tmp_path / "run"
    over = {**TINY, "n_train": 4000, "width": 64, "depth": 2, "lr": 2e-3, "max_length": 12}
    train_recipe("expr-masked", overrides=over, out=run, steps=1, progress=False)
    before = evaluate(run, metrics=["validity"], n_samples=200, steps=16)["validity"]
    train_recipe("expr-masked", overrides=over, out=tmp_path / "trained", steps=300, progress=False)
    after = evaluate(tmp_path / "trained", metrics=["validity", "bpt"], n_samples=200, steps=16)
    assert before < 0.15 and after["validity"] > 0.35, (before, after)


def test_cli_writes_text_and_refuses_wrong_suffixes(tmp_path, capsys):
    run = tmp_path / "run"
    args = [f"{k}={v}" for k, v in TINY.items()]
    assert main(["train", "expr-uniform", "--steps", "2", "--out", str(run), "--quiet", "--set", *args]) == 0
    assert "samples.txt" in capsys.readouterr().out
    out = tmp_path / "s.txt"
    assert (
        main(["sample", str(run), "--n", "12", "--steps", "4", "--temperature", "0.8", "--out", str(out)])
        == 0
    )
    lines = out.read_text().splitlines()
    assert len(lines) == 12
    ids = tmp_path / "s.npy"
    assert (
        main(["sample", str(run), "--n", "12", "--steps", "4", "--temperature", "0.8", "--out", str(ids)])
        == 0
    )
    import numpy as np

    assert decode(run, torch.from_numpy(np.load(ids))) == lines
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.png")]) == 2
    assert "is a token run: write --out samples.txt" in capsys.readouterr().err
    assert main(["eval", str(run), "--n", "16", "--steps", "4", "--metrics", "validity,uniqueness"]) == 0
    assert set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])) >= {"validity", "uniqueness"}


def test_text_output_is_refused_for_array_runs(tmp_path, capsys):
    run = tmp_path / "moons"
    train_recipe("moons", overrides={"threads": 1}, out=run, steps=2, progress=False)
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.txt")]) == 2
    assert "samples arrays, not text" in capsys.readouterr().err
    assert not (tmp_path / "s.txt").exists()
    with pytest.raises(ValueError, match="temperature"):
        sample(run, 4, temperature=0.5)


def test_a_users_text_file(tmp_path):
    words = ["abba", "baab", "abab", "bbaa", "aabb", "baba"] * 20
    data = tmp_path / "words.txt"
    data.write_text("\n".join(words) + "\n")
    run = tmp_path / "run"
    assert main(["train", "tokens-masked", "--data", str(data), "--steps", "2", "--out", str(run), "--quiet",
                 "--set", *[f"{k}={v}" for k, v in TINY.items()]]) == 0  # fmt: skip
    _, config = load_run(run)
    assert config["length"] == 4 and config["vocab_size"] == 3  # <pad>, a, b
    res = evaluate(run, n_samples=10, steps=4, metrics=["validity", "uniqueness", "novelty"])
    assert res["validity"] is None  # a text file has no grammar
    bad = tmp_path / "bad.txt"
    bad.write_text("abzz\n")
    with pytest.raises(ValueError, match="'z'"):
        evaluate(run, data=bad, metrics=["bpt"])
    with pytest.raises(ValueError, match="molecules"):
        evaluate(run, n_samples=4, steps=2, metrics=["qed"])


def test_tokens_recipe_without_data_trains_on_the_grammar(tmp_path):
    run = tmp_path / "run"
    train_recipe("tokens-uniform", overrides=TINY, out=run, steps=1, progress=False)
    x = sample(run, 50, steps=2)
    assert all(set(s) <= set("0123456789+-*()") for s in decode(run, x))
    assert callable(is_valid_expression)


def test_smiles_recipe(tmp_path):
    pytest.importorskip("rdkit")
    run = tmp_path / "run"
    over = {**TINY, "n_test": 100, "max_length": 40}
    train_recipe("smiles-uniform", overrides=over, out=run, steps=2, progress=False)
    _, config = load_run(run)
    assert config["tokenizer"] == "smiles" and config["length"] <= 40
    res = evaluate(run, n_samples=16, steps=4, metrics=["validity", "uniqueness", "internal_diversity"])
    assert 0.0 <= res["validity"] <= 1.0
    assert get_recipe("moses-uniform").defaults["dataset"] == "moses"
