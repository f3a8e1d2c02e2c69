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
    assert set(res) == {"swd", "w2", "mmd", "energy", "nll", "source_noise", "solver", "steps"}
    assert res["source_noise"] == "iid" and res["solver"] == "heun" and res["steps"] == 8
    assert all(
        isinstance(res[k], float) and np.isfinite(res[k]) for k in ("swd", "w2", "mmd", "energy", "nll")
    )
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
    assert "choose one of" in _err(capsys, ["train", "moonz", "--steps", "1"])
    assert "did you mean 'moons'" in _err(capsys, ["train", "moonz", "--steps", "1"])
    assert "valid keys" in _err(capsys, ["train", "moons", "--steps", "1", "--set", "widht=3"])
    assert "expected an int" in _err(capsys, ["train", "moons", "--steps", "1", "--set", "width=wide"])
    assert "choose one of" in _err(
        capsys, ["sample", str(run_dir), "--solver", "rk45", "--out", str(tmp_path / "a.npy")]
    )
    assert "choose one of swd, w2" in _err(
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


def test_eval_defaults_to_iid_noise_and_says_which(run_dir, capsys):
    base = ["eval", str(run_dir), "--metrics", "swd", "--n", "500", "--steps", "4"]
    runs = {}
    for name, extra in (("default", []), ("iid", ["--no-qmc"]), ("qmc", ["--qmc"])):
        assert main([*base, *extra]) == 0
        runs[name] = json.loads(capsys.readouterr().out)
    assert runs["default"] == runs["iid"] and runs["default"]["source_noise"] == "iid"
    assert runs["qmc"]["source_noise"] == "qmc" and runs["qmc"]["swd"] != runs["iid"]["swd"]


@pytest.fixture(scope="module")
def gfn_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "grid"
    assert (
        main(["train", "hypergrid-tb", "--steps", "5", "--out", str(out), "--quiet", "--set", "height=4"])
        == 0
    )
    return out


BAD_USAGE = [
    (["train", "moons", "--steps", "0"], "--steps: must be >= 1, got 0"),
    (["train", "moons", "--steps", "-3"], "--steps: must be >= 1, got -3"),
    (["sample", "{run}", "--n", "0", "--out", "{tmp}/a.npy"], "--n: must be >= 1, got 0"),
    (["sample", "{run}", "--steps", "0", "--out", "{tmp}/a.npy"], "--steps: must be >= 1"),
    (["eval", "{run}", "--n", "0"], "--n: must be >= 1, got 0"),
    (["eval", "{run}", "--steps", "0"], "--steps: must be >= 1"),
    (["train", "moons", "--out", ""], "--out '' names no folder"),
    (["sample", "{run}", "--out", ""], "is not a .npy, .png, .txt or .smi"),
    (["train", "moons", "--energy", "m:f", "--out", "{tmp}/r"], "--energy does not apply to moons runs"),
    (["train", "hypergrid-tb", "--data", "{tmp}/x.npy", "--out", "{tmp}/r"], "that do: none"),
    (["sample", "{gfn}", "--solver", "heun", "--out", "{tmp}/a.npy"], "--solver does not apply"),
    (["sample", "{gfn}", "--steps", "4", "--out", "{tmp}/a.npy"], "--steps does not apply"),
    (["sample", "{run}", "--method", "jacobi", "--out", "{tmp}/a.npy"], "do: --solver, --steps, --qmc"),
    (["sample", "{run}", "--label", "3", "--out", "{tmp}/a.npy"], "--label does not apply"),
    (["eval", "{run}", "--energy", "m:f"], "--energy does not apply to moons runs"),
    (["eval", "{gfn}", "--solver", "heun"], "the eval options that do: --n"),
    (["eval", "{gfn}", "--data", "{tmp}/x.npy"], "--data does not apply"),
    (["train", "moons", "--set"], "--set: expected at least one argument"),
    (["train", "moons", "--set", "=3"], "--set expects key=value pairs"),
    (["sample", "{run}"], "--out"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize(
    ("argv", "expect"), BAD_USAGE, ids=[" ".join(a[:3]) + f" [{i}]" for i, (a, _) in enumerate(BAD_USAGE)]
)
def test_bad_usage_is_one_line_and_exit_2(run_dir, gfn_dir, tmp_path, capsys, monkeypatch, argv, expect):
    monkeypatch.chdir(
        tmp_path
    )  # whatever a refused command might write by mistake lands here, and fails below
    argv = [a.format(run=run_dir, gfn=gfn_dir, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowforge: error: "), captured.err
    assert expect in lines[0]
    assert not list(tmp_path.iterdir()), "a refused command writes nothing"


def test_readme_set_takes_several_pairs(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "moons", "--steps", "3", "--out", str(out), "--quiet"]
    assert main([*argv, "--set", "width=16", "depth=1", "time=logit-normal", "--set", "warmup=1"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["width"], config["depth"], config["time"], config["warmup"]) == (16, 1, "logit-normal", 1)


def test_a_run_folder_never_takes_another_recipe(run_dir, capsys):
    before = (run_dir / "config.json").read_text()
    for extra in ([], ["--resume"]):
        err = _err(capsys, ["train", "moons-nsf", "--steps", "3", "--out", str(run_dir), "--quiet", *extra])
        assert "holds a run of recipe 'moons', not 'moons-nsf'" in err and "--out" in err
    assert (run_dir / "config.json").read_text() == before


def test_a_diverging_run_exits_2_and_its_nan_samples_are_refused(tmp_path, capsys):
    out = tmp_path / "div"
    argv = [
        "train",
        "moons",
        "--steps",
        "100",
        "--out",
        str(out),
        "--quiet",
        "--set",
        "lr=1e6",
        "grad_clip=0",
    ]
    err = _err(capsys, [*argv, "width=32", "depth=3", "warmup=0"])
    assert "training diverged" in err and "lower lr" in err and len(err.strip().splitlines()) == 1
    # the trainer stops before a non-finite checkpoint: sampling finds no checkpoint and says so
    err = _err(capsys, ["sample", str(out), "--n", "20", "--out", str(tmp_path / "s.npy")])
    assert "no checkpoint" in err and str(out) in err and not (tmp_path / "s.npy").exists()


def test_nan_samples_and_nan_metrics_are_refused(run_dir, tmp_path, capsys, monkeypatch):
    import dataclasses

    from flowforge.recipes import RECIPES

    class NaNs:
        dim = 2

        def sample(self, n, **kw):
            return torch.full((n, 2), float("nan"))

    moons = RECIPES["moons"]
    monkeypatch.setitem(RECIPES, "moons", dataclasses.replace(moons, generator=lambda model, config: NaNs()))
    err = _err(capsys, ["sample", str(run_dir), "--n", "5", "--out", str(tmp_path / "a.npy")])
    assert str(run_dir) in err and "NaN" in err and not (tmp_path / "a.npy").exists()
    monkeypatch.setitem(
        RECIPES,
        "moons",
        dataclasses.replace(moons, evaluate=lambda *a, **k: {"swd": float("nan"), "nll": 1.0}),
    )
    err = _err(capsys, ["eval", str(run_dir)])
    assert str(run_dir) in err and "swd=nan" in err
    assert capsys.readouterr().out == "", "no half-written JSON"


def test_ctrl_c_says_where_the_run_stopped_and_exits_130(tmp_path, capsys, monkeypatch):
    import flowforge.recipes.runs as runs

    real = runs.train

    def interrupted(*args, **kwargs):
        def stop(step, trainer):
            if step == 7:
                raise KeyboardInterrupt

        return real(*args, **kwargs, callback=stop)

    monkeypatch.setattr(runs, "train", interrupted)
    out = tmp_path / "run"
    argv = ["train", "moons", "--steps", "20", "--out", str(out), "--quiet", "--set", "width=16 depth=1"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "up to step 6" in err[0] and "--resume" in err[0], err
    monkeypatch.setattr(runs, "train", real)
    assert main([*argv, "--resume"]) == 0
