"""Few-step recipes end to end through the CLI: ``flowforge distill --teacher RUN --method reflow|turbo``
on tiny 2-D and digits teachers, ``sample --steps 1``, ``eval``, resuming a distillation killed during its
pair generation, and the errors for bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import flowforge.distill.reflow as reflow_module
from flowforge.cli.main import main
from flowforge.core.objectives import SquaredError
from flowforge.core.time import Uniform, UShaped
from flowforge.data import Standardizer
from flowforge.distill import load_pairs, pairs_metadata
from flowforge.recipes import load_run, read_config
from flowforge.train import latest_checkpoint, load_safetensors

TINY_2D = ["--set", "width=32", "depth=2", "warmup=0", "--quiet"]
TINY_DIGITS = ["--set", "dataset=digits", "channels=8", "mults=1-2", "attention=1", "blocks=1", "warmup=0"]
TINY_DIGITS += ["sample_every=0", "batch_size=16", "--quiet"]
#: a reflow student of the moons teacher: 1500 pairs by 8 Heun steps, 15 training steps
REFLOW_2D = ["--steps", "15", "--quiet", "--set", "pairs=1500", "pair_batch=500", "pair_steps=8", "warmup=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A folder with a tiny moons teacher (60 steps) and a tiny class-conditional digits teacher (4 steps)."""
    torch.set_num_threads(1)  # module fixtures run before conftest's one-thread fixture
    root = tmp_path_factory.mktemp("few-step")
    assert main(["train", "moons", "--steps", "60", "--out", str(root / "moons"), *TINY_2D]) == 0
    assert main(["train", "digits", "--steps", "4", "--out", str(root / "digits"), *TINY_DIGITS]) == 0
    return root


def _eval(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["eval", *argv]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err


def _tensors(out: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(out)
    assert ckpt is not None
    return {
        f"{f.stem}/{k}": v for f in sorted(ckpt.glob("*.safetensors")) for k, v in load_safetensors(f).items()
    }


# ---------------------------------------------------------------------------------------------------
# reflow


def test_reflow_pairs_are_the_teachers_ode_and_one_step_samples_are_one_euler_step(runs, tmp_path, capsys):
    teacher, out = runs / "moons", tmp_path / "student"
    assert (
        main(["distill", "--teacher", str(teacher), "--method", "reflow", "--out", str(out), *REFLOW_2D]) == 0
    )
    config = read_config(out)
    assert config["recipe"] == "moons-reflow" and config["teacher"]["recipe"] == "moons"
    assert config["teacher_run"] == str(teacher.resolve())
    # stage 1: the pairs in the run folder are the teacher's Heun integration of their noise
    x0, x1 = load_pairs(out / "pairs.safetensors")
    assert x0.shape == x1.shape == (1500, 2) and pairs_metadata(out / "pairs.safetensors")["steps"] == 8
    fm, _ = load_run(teacher)
    with torch.no_grad():
        ref = fm.generator().sample(len(x0), x0=x0, solver="heun", steps=8)
    torch.testing.assert_close(x1, ref, rtol=1e-5, atol=1e-5)
    # stage 2: rf++ defaults (U-shaped times, pseudo-Huber); sampling defaults to one Euler step
    model, _ = load_run(out)
    assert isinstance(model.time, UShaped) and model._distance is None  # None: rf++'s C = 0.00054 d
    npy = tmp_path / "s.npy"
    argv = ["sample", str(out), "--n", "200", "--seed", "3", "--no-qmc", "--out", str(npy)]
    assert main([*argv, "--steps", "1"]) == 0
    got = torch.from_numpy(np.load(npy))
    z0 = torch.randn((200, 2), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z1 = z0 + model.flow.velocity(z0, torch.zeros(200))
    std = Standardizer.from_dict(config["teacher"]["standardizer"])
    torch.testing.assert_close(got, std.inverse(z1))
    assert main(argv) == 0  # the run's default (euler, 1 step) is the same draw
    assert torch.equal(torch.from_numpy(np.load(npy)), got)
    res = _eval(capsys, str(out), "--n", "300")
    assert res["method"] == "reflow" and res["teacher"] == "moons"
    assert (res["solver"], res["steps"], res["source_noise"]) == ("euler", 1, "iid")
    assert res["swd"] > 0 and res["straightness"] >= 0
    assert set(_eval(capsys, str(out), "--n", "300", "--steps", "4", "--metrics", "swd,nll")) >= {
        "swd",
        "nll",
    }


def test_reflow_ablation_keys_reach_the_student(runs, tmp_path):
    out = tmp_path / "ablation"
    argv = ["distill", "--teacher", str(runs / "moons"), "--method", "reflow", "--out", str(out), *REFLOW_2D]
    assert main([*argv, "--set", "time=uniform", "loss=mse"]) == 0
    model, _ = load_run(out)
    assert isinstance(model.time, Uniform) and isinstance(model.distance(2), SquaredError)


@pytest.mark.filterwarnings("ignore:resume=True but .* holds no checkpoint")  # killed before training began
def test_killed_during_pair_generation_resumes_to_the_same_bits(runs, tmp_path, monkeypatch, capsys):
    argv = ["distill", "--teacher", str(runs / "moons"), "--method", "reflow", *REFLOW_2D]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main([*argv, "--out", str(whole)]) == 0

    writes = []
    real = reflow_module._atomic_bytes

    def dies_on_the_third_write(path, data):  # progress.json, chunk 0, then the "kill"
        writes.append(path.name)
        if len(writes) == 3:
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(reflow_module, "_atomic_bytes", dies_on_the_third_write)
    capsys.readouterr()
    assert main([*argv, "--out", str(killed)]) == 130
    assert "--resume" in capsys.readouterr().err
    parts = killed / "pairs.safetensors.parts"
    assert sorted(p.name for p in parts.glob("chunk-*")) == ["chunk-000000.safetensors"]
    assert not (killed / "pairs.safetensors").exists() and latest_checkpoint(killed) is None
    monkeypatch.setattr(reflow_module, "_atomic_bytes", real)
    assert main([*argv, "--out", str(killed), "--resume"]) == 0
    assert not parts.exists()
    assert (killed / "pairs.safetensors").read_bytes() == (whole / "pairs.safetensors").read_bytes()
    a, b = _tensors(whole), _tensors(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------------
# turbo


def test_turbo_keeps_the_frozen_teacher_and_samples_by_its_schedule(runs, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    shutil.copytree(runs / "moons", teacher)
    out = tmp_path / "turbo"
    sets = ["--set", "refiner_width=16", "warmup=0"]
    assert main(["distill", "--teacher", str(teacher), "--method", "turbo", "--out", str(out), "--steps", "10", "--quiet", *sets]) == 0  # fmt: skip
    fm, _ = load_run(teacher)
    model, config = load_run(out)
    for k, v in fm.state_dict().items():  # the teacher's EMA weights, untouched by training
        assert torch.equal(model.teacher.state_dict()[k], v), k
    shutil.rmtree(teacher)  # the student's run folder stands alone
    npy = tmp_path / "t.npy"
    assert (
        main(["sample", str(out), "--n", "100", "--seed", "1", "--no-qmc", "--steps", "1", "--out", str(npy)])
        == 0
    )
    z0 = torch.randn((100, 2), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # steps=1: schedule H1 P0 R0, one Heun step of the teacher
        ref = fm.generator().sample(100, x0=z0, solver="heun", steps=1)
    std = Standardizer.from_dict(config["teacher"]["standardizer"])
    torch.testing.assert_close(torch.from_numpy(np.load(npy)), std.inverse(ref))
    res = _eval(capsys, str(out), "--n", "200")
    assert (res["method"], res["solver"], res["schedule"]) == ("turbo", "turbo", "1-5-3")
    assert (res["nfe_teacher"], res["nfe_refiner"]) == (7, 6) and res["swd"] > 0
    res = _eval(capsys, str(out), "--n", "200", "--steps", "4")  # 1/4 > dt_max: Heun and P steps only
    assert (res["schedule"], res["nfe_teacher"], res["nfe_refiner"]) == ("1-3-0", 5, 0)
    err = _error(capsys, ["sample", str(out), "--n", "10", "--solver", "heun", "--out", str(npy)])
    assert "--solver does not apply to moons-turbo runs" in err
    assert "nll" in _error(capsys, ["eval", str(out), "--metrics", "nll"])


# ---------------------------------------------------------------------------------------------------
# digits (class-conditional image teacher)


def test_digits_teacher_reflow_and_turbo(runs, tmp_path, capsys):
    teacher = runs / "digits"
    reflow, turbo = tmp_path / "reflow", tmp_path / "turbo"
    common = ["--steps", "2", "--quiet", "--set", "batch_size=8", "warmup=0"]
    assert main(["distill", "--teacher", str(teacher), "--method", "reflow", "--out", str(reflow), *common, "pairs=40", "pair_batch=20", "pair_steps=2"]) == 0  # fmt: skip
    x0, x1, y = load_pairs(reflow / "pairs.safetensors")
    assert x0.shape == (40, 1, 8, 8) and torch.equal(y, torch.arange(40) % 10)  # pairs with class labels
    model, config = load_run(reflow)
    teacher_fm, _ = load_run(teacher)
    assert (
        type(model.net) is type(teacher_fm.net)
        and model.flow.label_dropout == config["teacher"]["label_dropout"]
    )
    npy = tmp_path / "r.npy"
    assert main(["sample", str(reflow), "--n", "6", "--steps", "1", "--label", "3", "--out", str(npy)]) == 0
    x = np.load(npy)
    assert x.shape == (6, 1, 8, 8) and x.dtype == np.uint8 and x.max() <= 16
    res = _eval(capsys, str(reflow), "--n", "30", "--steps", "1")
    assert {"fd", "acc", "precision", "recall"} <= set(res) and res["nfe"] == 1 and res["method"] == "reflow"

    assert main(["distill", "--teacher", str(teacher), "--method", "turbo", "--out", str(turbo), *common, "refiner_channels=8"]) == 0  # fmt: skip
    assert main(["sample", str(turbo), "--n", "4", "--steps", "1", "--label", "5", "--out", str(npy)]) == 0
    assert np.load(npy).shape == (4, 1, 8, 8)
    res = _eval(capsys, str(turbo), "--n", "20", "--metrics", "fd,acc")
    assert {"fd", "acc"} <= set(res) and (res["schedule"], res["nfe_refiner"]) == ("1-5-3", 6)
    assert "--guidance does not apply" in _error(
        capsys, ["sample", str(turbo), "--guidance", "2", "--out", str(npy)]
    )


# ---------------------------------------------------------------------------------------------------
# freeflow (no data)


def test_freeflow_student_starts_as_the_teacher_and_jumps(runs, tmp_path, capsys):
    teacher, out = runs / "moons", tmp_path / "ff"
    argv = ["distill", "--teacher", str(teacher), "--method", "freeflow", "--out", str(out), "--quiet"]
    assert main([*argv, "--steps", "3", "--set", "warmup=0", "batch_size=64"]) == 0
    model, config = load_run(out)
    fm, _ = load_run(teacher)
    assert config["recipe"] == "moons-freeflow" and model.corrector is not None
    z0 = torch.randn((100, 2), generator=torch.Generator().manual_seed(1))
    for k, v in fm.net.state_dict().items():  # the frozen teacher is the teacher run's EMA net
        assert torch.equal(model.teacher.state_dict()[k], v), k
    assert model.student.two_times and not any(p.requires_grad for p in model.teacher.parameters())
    npy = tmp_path / "f.npy"
    cmd = ["sample", str(out), "--n", "100", "--seed", "1", "--no-qmc", "--out", str(npy)]
    assert main(cmd) == 0
    with torch.no_grad():  # the default is one jump x0 + u(x0, 0, 1)
        ref = z0 + model.average_velocity(z0, torch.zeros(100), torch.ones(100))
    std = Standardizer.from_dict(config["teacher"]["standardizer"])
    torch.testing.assert_close(torch.from_numpy(np.load(npy)), std.inverse(ref))
    res = _eval(capsys, str(out), "--n", "300")
    assert (res["method"], res["solver"], res["steps"]) == ("freeflow", "jump", 1) and res["swd"] > 0
    assert "--solver does not apply" in _error(capsys, [*cmd[:-2], "--solver", "heun", "--out", str(npy)])
    assert "corrector_fraction" in _error(capsys, [*argv[:-1], "--set", "corrector_fraction=1"])


def test_freeflow_of_a_class_conditional_image_teacher(runs, tmp_path, capsys):
    out = tmp_path / "ff"
    assert main(["distill", "--teacher", str(runs / "digits"), "--method", "freeflow", "--out", str(out), "--steps", "2", "--quiet", "--set", "batch_size=8", "warmup=0"]) == 0  # fmt: skip
    model, _ = load_run(out)
    assert model.num_classes == 10 and model.student.two_times
    npy = tmp_path / "f.npy"
    assert main(["sample", str(out), "--n", "6", "--label", "3", "--out", str(npy)]) == 0
    x = np.load(npy)
    assert x.shape == (6, 1, 8, 8) and x.dtype == np.uint8
    res = _eval(capsys, str(out), "--n", "20", "--metrics", "fd,acc")
    assert {"fd", "acc"} <= set(res) and res["nfe"] == 1 and res["method"] == "freeflow"


# ---------------------------------------------------------------------------------------------------
# sample --steps 1 of a flow-matching run, and bad inputs


def test_one_step_sampling_of_a_flow_matching_teacher(runs, tmp_path):
    npy = tmp_path / "fm.npy"
    assert main(["sample", str(runs / "moons"), "--n", "50", "--steps", "1", "--out", str(npy)]) == 0
    assert np.load(npy).shape == (50, 2) and np.isfinite(np.load(npy)).all()


def test_bad_inputs_get_one_line_errors(runs, tmp_path, capsys):
    moons = str(runs / "moons")
    err = _error(capsys, ["distill", "--teacher", str(tmp_path / "nothing"), "--method", "reflow"])
    assert "no run folder there" in err and "flowforge train moons" in err
    err = _error(capsys, ["distill", "--teacher", moons, "--method", "reflo"])
    assert "unknown distillation method 'reflo' (did you mean 'reflow'?); choose one of reflow, turbo" in err
    err = _error(
        capsys, ["distill", "--teacher", moons, "--method", "turbo", "--set", "turbo_schedule=1-x-3"]
    )
    assert "n_H-n_P-n_R" in err and "1-5-3" in err
    err = _error(
        capsys, ["distill", "--teacher", moons, "--method", "turbo", "--set", "turbo_schedule=1-0-2"]
    )
    assert "longer than the gap the refiner is trained on" in err
    err = _error(capsys, ["distill", "--teacher", moons, "--method", "reflow", "--set", "teacher_run=x"])
    assert "drop --set teacher_run" in err
    assert not list(runs.glob("moons-*"))  # nothing was trained by the refused commands
    # a teacher of the wrong kind: a moons run for a checkerboard student, a student as a teacher
    out = tmp_path / "cb"
    err = _error(capsys, ["train", "checkerboard-reflow", "--out", str(out), "--set", f"teacher_run={moons}"])
    assert (
        "is a moons run, but checkerboard-reflow distils a checkerboard run" in err and "moons-reflow" in err
    )
    err = _error(
        capsys, ["train", "moons-reflow", "--out", str(out), "--set", f"teacher_run={tmp_path / 'no'}"]
    )
    assert "no teacher run in" in err and "flowforge train moons" in err
    student = tmp_path / "student"
    assert main(["distill", "--teacher", moons, "--method", "turbo", "--out", str(student), "--steps", "1", "--quiet"]) == 0  # fmt: skip
    err = _error(capsys, ["distill", "--teacher", str(student), "--method", "reflow"])
    assert "is a moons-turbo run; reflow distils flow-matching runs of moons, checkerboard" in err
