"""The flowforge command end to end on tiny runs, and its error messages."""

import json

import numpy as np
import pytest
import torch

from flowforge.cli import main

TINY = ["--set", "width=32 depth=2", "--set", "warmup=10", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "moons"
    assert main(["train", "moons", "--steps", "150", "--out", str(out), *TINY]) == 0
    return out


def _err(capsys, argv):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_list_shows_every_recipe(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("moons", "checkerboard", "eight-gaussians", "spirals", "circles"):
        assert name in out


def test_train_writes_a_run_folder(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["recipe"] == "moons" and config["width"] == 32 and config["depth"] == 2
    assert config["standardizer"] is not None and config["dim"] == 2
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert lines and "loss" in json.loads(lines[-1])


def test_sample_npy_and_png(run_dir, tmp_path, capsys):
    npy = tmp_path / "s.npy"
    assert (
        main(["sample", str(run_dir), "--n", "300", "--solver", "turbo", "--steps", "4", "--out", str(npy)])
        == 0
    )
    x = np.load(npy)
    assert x.shape == (300, 2) and np.isfinite(x).all()
    # samples are in data units (standardisation undone): moons live in x in [-1.5, 2.5]
    assert -1.5 < x[:, 0].mean() < 1.5
    again = tmp_path / "s2.npy"
    main(["sample", str(run_dir), "--n", "300", "--solver", "turbo", "--steps", "4", "--out", str(again)])
    assert np.array_equal(x, np.load(again)), "the same seed must give the same samples"
    png = tmp_path / "s.png"
    assert main(["sample", str(run_dir), "--n", "200", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_eval_prints_every_metric_as_json(run_dir, tmp_path, capsys):
    from flowforge.data import toy2d

    data = tmp_path / "test.npy"
    np.save(data, toy2d("moons", 400, seed=3).numpy())
    capsys.readouterr()
    assert (
        main(
            ["eval", str(run_dir), "--data", str(data), "--metrics", "swd,w2,mmd,energy,nll", "--steps", "8"]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"swd", "w2", "mmd", "energy", "nll"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in res.values())
    # nll is per sample in data units: a moons density has entropy far below a unit Gaussian's 2.84 nats
    assert 0.0 < res["nll"] < 3.5


def test_nll_undoes_standardisation(run_dir):
    from flowforge.recipes import generator

    gen = generator(run_dir)
    x = torch.tensor([[0.5, 0.25], [1.0, -0.3]])
    scaled = gen.inner.log_prob(gen.std.forward(x))
    torch.testing.assert_close(gen.log_prob(x), scaled - torch.log(gen.std.std).sum())


def test_train_on_a_user_file(tmp_path):
    data = tmp_path / "pts.csv"
    rng = np.random.default_rng(0)
    np.savetxt(data, rng.normal(size=(500, 3)) * [1, 2, 3], delimiter=",", header="a,b,c", comments="")
    out = tmp_path / "run"
    assert main(["train", "moons", "--data", str(data), "--steps", "30", "--out", str(out), *TINY]) == 0
    assert json.loads((out / "config.json").read_text())["dim"] == 3


def test_errors_name_the_problem_and_the_fix(run_dir, tmp_path, capsys):
    assert "valid recipes" in _err(capsys, ["train", "moonz", "--steps", "1"])
    assert "did you mean 'moons'" in _err(capsys, ["train", "moonz", "--steps", "1"])
    assert "valid keys" in _err(capsys, ["train", "moons", "--steps", "1", "--set", "widht=3"])
    assert "expected a int" in _err(capsys, ["train", "moons", "--steps", "1", "--set", "width=wide"])
    assert "choose one of" in _err(
        capsys, ["sample", str(run_dir), "--solver", "rk45", "--out", str(tmp_path / "a.npy")]
    )
    assert "valid metrics" in _err(
        capsys, ["eval", str(run_dir), "--data", str(tmp_path / "x.npy"), "--metrics", "fid"]
    )
    bad = tmp_path / "nan.npy"
    x = np.zeros((10, 2), dtype=np.float32)
    x[7, 1] = np.nan
    np.save(bad, x)
    assert "row 7" in _err(
        capsys, ["train", "moons", "--data", str(bad), "--steps", "1", "--out", str(tmp_path / "r")]
    )
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((10, 5), dtype=np.float32))
    msg = _err(capsys, ["eval", str(run_dir), "--data", str(wrong), "--metrics", "swd"])
    assert "(10, 5)" in msg and "(N, 2)" in msg
    assert "no config.json" in _err(capsys, ["sample", str(tmp_path), "--out", str(tmp_path / "a.npy")])
    assert "no such file" in _err(capsys, ["train", "moons", "--data", str(tmp_path / "missing.npy")])


def test_corrupted_checkpoint_is_an_error_not_a_half_loaded_model(run_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    files = sorted(p for p in broken.rglob("*.safetensors"))
    assert files, "the run must hold safetensors checkpoints"
    for f in files:
        data = bytearray(f.read_bytes())
        data[-5] ^= 0xFF
        f.write_bytes(bytes(data))
    msg = _err(capsys, ["sample", str(broken), "--n", "10", "--out", str(tmp_path / "a.npy")])
    assert "safetensors" in msg or "checkpoint" in msg
    assert not (tmp_path / "a.npy").exists()
