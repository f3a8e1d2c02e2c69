"""Normalizing-flow, image and Boltzmann recipes end to end through the CLI, and their error messages."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from flowforge.cli import main

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def _err(capsys, argv):
    assert main(argv) == 2
    return capsys.readouterr().err


def _json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def nsf_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "nsf"
    argv = [
        "train",
        "moons-nsf",
        "--steps",
        "300",
        "--out",
        str(out),
        "--quiet",
        "--set",
        "transforms=3 hidden=32",
    ]
    assert main(argv) == 0
    return out


def test_moons_nsf_learns_and_reports_nll_in_data_units(nsf_run, capsys):
    assert main(["eval", str(nsf_run), "--metrics", "nll,swd"]) == 0
    res = _json(capsys)
    # a standard normal fitted to standardised moons scores ~2.0 nats; the flow must beat it after 300 steps
    from flowforge.data import Standardizer, toy2d

    x = toy2d("moons", 20_000, seed=1)
    gauss = 0.5 * 2 * math.log(2 * math.pi * math.e) - float(Standardizer.fit(x).log_det(x[:1]))
    assert res["nll"] < gauss - 0.3, (res, gauss)
    assert 0 < res["swd"] < 0.2


def test_moons_tarflow_trains_and_samples(tmp_path, capsys):
    out = tmp_path / "tar"
    argv = ["train", "moons-tarflow", "--steps", "60", "--out", str(out), "--quiet"]
    assert main([*argv, "--set", "blocks=2 width=16 layers=1 head_dim=8"]) == 0
    assert main(["sample", str(out), "--n", "100", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.isfinite(np.load(tmp_path / "s.npy")).all()
    assert main(["eval", str(out), "--metrics", "nll"]) == 0
    assert math.isfinite(_json(capsys)["nll"])


def test_digits_tarflow_bpd_and_image_samples(tmp_path, capsys):
    out = tmp_path / "digits"
    tiny = ["--set", "blocks=2 width=16 layers=1 head_dim=8 batch_size=32 ema_decay=0.9 lr=3e-3"]
    assert main(["train", "digits-tarflow", "--steps", "100", "--out", str(out), "--quiet", *tiny]) == 0
    assert main(["eval", str(out)]) == 0
    res = _json(capsys)
    assert set(res) == {"nll", "bpd"}
    # 17 levels: a uniform model scores log2(17) = 4.09 bits; a few steps already beat 4.5, none beats 0
    assert 0 < res["bpd"] < 4.5
    assert math.isclose(res["bpd"], res["nll"] / (64 * math.log(2)), rel_tol=1e-9)
    assert main(["sample", str(out), "--n", "16", "--out", str(tmp_path / "d.npy")]) == 0
    imgs = np.load(tmp_path / "d.npy")
    assert imgs.shape == (16, 1, 8, 8) and imgs.dtype == np.uint8 and imgs.max() <= 16
    assert main(["sample", str(out), "--n", "16", "--out", str(tmp_path / "d.png")]) == 0
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((4, 64), 0.5))
    assert "must be integers" in _err(capsys, ["eval", str(out), "--data", str(bad)])
    assert "unknown metric" in _err(capsys, ["eval", str(out), "--metrics", "ess"])


def test_conditional_digits_sampled_by_label_with_jacobi_and_guidance(tmp_path, capsys):
    out = tmp_path / "cdigits"
    sets = "blocks=2 width=16 layers=1 head_dim=8 batch_size=32 conditional=true"
    assert (
        main(["train", "digits-tarflow", "--steps", "20", "--out", str(out), "--quiet", "--set", sets]) == 0
    )
    seq, jac = tmp_path / "seq.npy", tmp_path / "jac.npy"
    base = ["sample", str(out), "--n", "8", "--label", "3", "--guidance", "1.5"]
    assert main([*base, "--out", str(seq)]) == 0
    assert main([*base, "--method", "jacobi", "--out", str(jac)]) == 0
    a, b = np.load(seq), np.load(jac)
    assert (
        a.shape == (8, 1, 8, 8) and (a.astype(int) - b.astype(int)).__abs__().max() <= 1
    )  # same up to rounding
    assert "--label must be" in _err(capsys, [*base[:4], "--label", "12", "--out", str(seq)])


def test_label_needs_a_conditional_tarflow(nsf_run, tmp_path, capsys):
    err = _err(
        capsys, ["sample", str(nsf_run), "--n", "4", "--method", "jacobi", "--out", str(tmp_path / "x.npy")]
    )
    assert "--method does not apply to moons-nsf runs" in err


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST files not found at {MNIST}")
def test_mnist_tarflow_reads_local_files(tmp_path, capsys):
    out = tmp_path / "mnist"
    sets = f"data_dir={MNIST} download=false blocks=1 width=16 layers=1 head_dim=8 batch_size=16"
    assert main(["train", "mnist-tarflow", "--steps", "5", "--out", str(out), "--quiet", "--set", sets]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["image_shape"] == [1, 28, 28] and cfg["levels"] == 256 and cfg["n_train"] == 60_000


def test_mnist_missing_folder_is_a_clear_error(tmp_path, capsys):
    sets = f"data_dir={tmp_path / 'nowhere'} download=false"
    err = _err(
        capsys, ["train", "mnist-tarflow", "--steps", "1", "--out", str(tmp_path / "m"), "--set", sets]
    )
    assert "MNIST" in err and "nowhere" in err


@pytest.fixture(scope="module")
def gmm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "gmm"
    sets = "transforms=2 hidden=32 n_train=4000 n_test=2000 eval_samples=3000"
    assert main(["train", "gmm40-bg", "--steps", "150", "--out", str(out), "--quiet", "--set", sets]) == 0
    return out


def test_gmm40_eval_reports_ess_logz_and_its_error(gmm_run, capsys):
    assert main(["eval", str(gmm_run), "--metrics", "nll,ess,logz"]) == 0
    res = _json(capsys)
    assert set(res) == {"nll", "ess", "logz", "logz_error"}
    assert 0 < res["ess"] <= 1
    assert math.isclose(res["logz_error"], abs(res["logz"]), rel_tol=1e-9)  # GMM-40 is normalised: log Z = 0


def _write(tmp_path, body):
    f = tmp_path / "my_energy.py"
    f.write_text("import torch\n" + body)
    return f


def test_user_energy_logz_of_a_gaussian_within_importance_sampling_error(gmm_run, tmp_path, capsys):
    f = _write(tmp_path, "def energy(x):\n    return 0.5 * (x / 10).square().sum(-1)\n")
    # the GMM-40 flow as a proposal for N(0, 10^2 I): log Z = log(2 pi 100) = 6.443. Not exact: an importance
    # sampling estimate, whose sd is ~ sqrt((1/ESS - 1) / n) (delta method). Measured over seeds 0-7 (n=4000):
    # ESS ~ 0.175, log Z - truth in [-0.036, +0.037], sd 0.027, against sqrt((1/0.175 - 1)/4000) = 0.034.
    n = 4000
    argv = ["eval", str(gmm_run), "--metrics", "logz,ess", "--energy", f"{f}:energy", "--n", str(n)]
    assert main(argv) == 0
    res = _json(capsys)
    assert "logz_error" not in res and res["ess"] > 0.1
    sd = math.sqrt((1 / res["ess"] - 1) / n)
    assert abs(res["logz"] - math.log(2 * math.pi * 100)) < 4 * sd, (res, sd)


@pytest.mark.parametrize(
    ("spec", "expect"),
    [
        ("no_such_module_xyz:energy", "could not import module"),
        ("{f}:missing", "has no attribute"),
        ("{f}:CONST", "not callable"),
        ("{f}:wrong_shape", "must return one energy per point"),
    ],
)
def test_user_energy_errors(gmm_run, tmp_path, capsys, spec, expect):
    f = _write(tmp_path, "CONST = 3\ndef wrong_shape(x):\n    return x.square()\n")
    err = _err(capsys, ["eval", str(gmm_run), "--metrics", "ess", "--energy", spec.format(f=f)])
    assert expect in err


def test_any_flow_weighted_towards_a_user_energy(nsf_run, tmp_path, capsys):
    # the moons flow as a proposal for a broad Gaussian in data units (log Z = log(2 pi 4))
    f = _write(tmp_path, "def energy(x):\n    return 0.5 * (x / 2).square().sum(-1)\n")
    assert "add --energy" in _err(capsys, ["eval", str(nsf_run), "--metrics", "ess"])
    argv = ["eval", str(nsf_run), "--metrics", "ess,logz,bpd", "--energy", f"{f}:energy", "--n", "20000"]
    assert main(argv) == 0
    res = _json(capsys)
    assert set(res) == {"ess", "logz", "bpd", "nll"} and 0 < res["ess"] < 0.5
    # the flow only covers the moons, so log Z is underestimated (Jensen, and the mass it misses)
    assert math.isfinite(res["logz"]) and res["logz"] < math.log(8 * math.pi)
    assert math.isclose(res["bpd"], res["nll"] / (2 * math.log(2)))
    assert main(["eval", str(nsf_run)]) == 0  # default metrics: no energy needed
    assert "ess" not in _json(capsys)


def test_user_energy_recipe_trains_by_reverse_kl(tmp_path, capsys):
    f = _write(tmp_path, "def energy(x):\n    return 0.5 * ((x - 3.0) / 0.5).square().sum(-1)\n")
    out = tmp_path / "bg"
    sets = "dim=2 transforms=2 hidden=16 eval_samples=2000 lr=5e-3"
    argv = ["train", "bg", "--energy", f"{f}:energy", "--steps", "300", "--out", str(out), "--quiet"]
    assert main([*argv, "--set", sets]) == 0
    assert main(["eval", str(out), "--data", str(_save_ref(tmp_path)), "--metrics", "ess,logz"]) == 0
    res = _json(capsys)
    assert res["ess"] > 0.5 and abs(res["logz"] - math.log(2 * math.pi * 0.25)) < 0.1
    assert main(["eval", str(out), "--metrics", "ess,logz"]) == 0  # weights need no held-out data
    assert set(_json(capsys)) == {"ess", "logz"}
    assert "--data FILE" in _err(capsys, ["eval", str(out)])  # nll needs samples; this energy has none
    assert "--set dim=" in _err(
        capsys, ["train", "bg", "--energy", f"{f}:energy", "--out", str(tmp_path / "x")]
    )


def _save_ref(tmp_path):
    p = tmp_path / "ref.npy"
    np.save(p, (3.0 + 0.5 * torch.randn(500, 2, generator=torch.Generator().manual_seed(0))).numpy())
    return p


def test_dw4_bg_mcmc_reference_is_cached_and_self_improvement_resumes_from_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOWFORGE_CACHE", str(tmp_path / "cache"))
    out, si = tmp_path / "dw4", tmp_path / "si"
    sets = "n_train=1000 n_test=500 eval_samples=1000 transforms=2 hidden=16"
    assert main(["train", "dw4-bg", "--steps", "50", "--out", str(out), "--quiet", "--set", sets]) == 0
    assert list((tmp_path / "cache" / "reference").glob("DoubleWell4-*.npy")), "reference samples are cached"
    si_sets = f"{sets} objective=self-improve init_from={out} buffer_size=500 refresh_every=2"
    assert main(["train", "dw4-bg", "--steps", "4", "--out", str(si), "--quiet", "--set", si_sets]) == 0
    assert main(["eval", str(si), "--metrics", "ess,logz"]) == 0
    res = _json(capsys)
    assert 0 < res["ess"] <= 1 and math.isfinite(res["logz"])
    err = _err(capsys, ["train", "dw4-bg", "--out", str(tmp_path / "x"), "--set", "objective=self-improve"])
    assert "init_from=RUN_DIR" in err
