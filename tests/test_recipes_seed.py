"""``--seed`` reproduces a run: every recipe, and a run killed mid-way and resumed through the CLI."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flowforge.recipes import RECIPES, train_recipe
from flowforge.train import latest_checkpoint, load_safetensors

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
ALDP = MNIST.parent / "alanine_dipeptide"

#: shrinks every recipe to a few tiny steps (keys a recipe lacks are left out)
TINY = {
    "steps": 3,
    "batch_size": 8,
    "warmup": 0,
    "width": 8,
    "depth": 1,
    "hidden": 8,
    "hidden_layers": 1,
    "transforms": 1,
    "blocks": 1,
    "layers": 1,
    "head_dim": 8,
    "bins": 4,
    "n_train": 64,
    "n_test": 32,
    "eval_samples": 16,
    "buffer_size": 16,
    "refresh_every": 1,
    "height": 4,
    "n_preferences": 4,
    "threads": 1,
    "pairs": 64,
    "pair_batch": 32,
    "pair_steps": 2,
    "refiner_width": 8,
    "refiner_channels": 8,
}
#: what a recipe needs on top (a target for the user-energy recipe, local MNIST files)
EXTRA = {
    "bg": {"energy": "gmm40", "dim": 2},
    "manywell-bg": {"dim": 4},
    "mnist-tarflow": {"data_dir": str(MNIST), "download": False},
    # their maximum-likelihood data are MCMC runs (a minute or more); reverse KL trains the same flow
    "dw4-bg": {"objective": "kl"},
    "lj13-bg": {"objective": "kl"},
    "turbulence-sr": {"n": 32, "flows": 2, "snapshots": 4, "burn_in": 1.0, "channels": 8, "patch": 2},
    "audio-sep": {"ae_steps": 1, "eval_n": 4},  # the autoencoder phase must end before the 3 steps do
    "audio-sep-mask": {"eval_n": 4},
    "sprites-latent-starflow-v": {"ae_steps": 1, "ae_channels": "8"},  # autoencoder, then 2 flow steps
    "aldp-bg": {"objective": "kl", "data_dir": str(ALDP)},  # its ML data are OpenMM MD (minutes)
    "torus-aldp": {"data_dir": str(ALDP)},  # 64 MD frames (or the cached trajectory's first 64)
    "ising-ebgfn": {"side": 3, "n_data": 64, "gibbs_sweeps": 5},  # its Gibbs data: seconds at full size
    "chains-transfer": {"train_lengths": "4", "per_length": 2},  # PT reference of 2 chains, not 12
    # their frozen encoders (a feature classifier, a 3-D reconstructor) pretrain in the data step
    "digits-fae": {"feature_steps": 2, "feature_dim": 16},
    "gaussians3d-latent": {"rec_steps": 2, "rec_width": 4, "image_size": 8},
    # the whole oracle budget runs in the trainer's one step
    "smiles-optimize": {
        "budget": 40,
        "population": 16,
        "offspring": 16,
        "mutations": 4,
        "ppo_batch": 16,
        "reinforce_steps": 1,
        "num_timesteps": 2,
        "sample_steps": 4,
        "steps": 1,
    },  # fmt: skip
}
# policy recipes: a few expert episodes (MuJoCo's Reacher steps are Python calls)
for _name in RECIPES:
    if _name.startswith(("reach-", "reacher-")):
        EXTRA[_name] = {"n_demos": 4}
#: image recipes shrink to sklearn's digits (no file needed) and a tiny network
_TINY_IMAGES = {
    "dataset": "digits",
    "channels": 8,
    "mults": "1-2",
    "attention": "1",
    "blocks": 1,
    "patch": 2,
    "seg_size": 4,
    "sample_every": 0,
    "ae_channels": "8-8",
    "latent_channels": 2,
}
for _name, _recipe in RECIPES.items():
    if _recipe.kind == "image" and not _name.endswith("-tarflow"):
        EXTRA[_name] = {
            **{k: v for k, v in _TINY_IMAGES.items() if k in _recipe.defaults},
            **EXTRA.get(_name, {}),
        }
#: recipes that build on an autoencoder run (trained once, tiny, by the ``tiny_ae`` fixture)
NEEDS_AE = {name for name, r in RECIPES.items() if "ae_run" in r.defaults}
#: recipes that build on a digits-fae run (trained once, tiny, by the ``tiny_fae`` fixture)
NEEDS_FAE = {name for name, r in RECIPES.items() if "fae_run" in r.defaults}
#: distillation recipes: their teacher run's recipe (trained once, tiny, by the ``tiny_teacher`` fixture)
NEEDS_TEACHER = {
    name: r.defaults["teacher_run"].removeprefix("runs/")
    for name, r in RECIPES.items()
    if "teacher_run" in r.defaults
}
#: recipes that start from a trained smiles-uniform run (trained once, tiny, by the ``tiny_smiles_base`` fixture)
NEEDS_SMILES_BASE = {"smiles-optimize"}
SKIP = {
    **({} if importlib.util.find_spec("rdkit") else {"smiles-optimize": "rdkit is not installed"}),
    **(
        {}
        if importlib.util.find_spec("rdkit") and importlib.util.find_spec("selfies")
        else {k: "rdkit or selfies is not installed" for k in ("selfies-uniform", "selfies-masked")}
    ),
    **(
        {}
        if importlib.util.find_spec("gymnasium") and importlib.util.find_spec("mujoco")
        else {k: "gymnasium[mujoco] is not installed" for k in RECIPES if k.startswith("reacher-")}
    ),
    **({} if MNIST.is_dir() else {"mnist-tarflow": f"MNIST files not found at {MNIST}"}),
    **(
        {}
        if ALDP.is_dir()
        else {k: f"alanine-dipeptide files not found at {ALDP}" for k in ("aldp-bg", "torus-aldp")}
    ),
    **(
        {}
        if importlib.util.find_spec("openmm")
        else {k: "openmm is not installed (pip install openmm)" for k in ("aldp-bg", "torus-aldp")}
    ),
}


def _overrides(name: str) -> dict:
    defaults = RECIPES[name].defaults
    return {**{k: v for k, v in TINY.items() if k in defaults}, **EXTRA.get(name, {})}


def _final_tensors(out: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(out)
    assert ckpt is not None, f"{out} holds no checkpoint"
    tensors = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        for k, v in load_safetensors(f).items():
            tensors[f"{f.stem}/{k}"] = v
    assert tensors
    return tensors


def _differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
    """The names of the tensors (under ``prefix``) that differ; every RNG state included."""
    assert a.keys() == b.keys()
    return [k for k in a if k.startswith(prefix) and not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "run"
    train_recipe("mnist-ae", overrides=_overrides("mnist-ae"), out=out, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_fae(tmp_path_factory):
    out = tmp_path_factory.mktemp("fae") / "run"
    train_recipe("digits-fae", overrides=_overrides("digits-fae"), out=out, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    trained: dict[str, Path] = {}

    def get(teacher: str) -> Path:
        if teacher not in trained:
            out = tmp_path_factory.mktemp("teacher") / teacher
            train_recipe(teacher, overrides=_overrides(teacher), out=out, seed=0, progress=False)
            trained[teacher] = out
        return trained[teacher]

    return get


@pytest.fixture(scope="module")
def tiny_smiles_base(tmp_path_factory):
    out = tmp_path_factory.mktemp("smiles") / "base"
    train_recipe("smiles-uniform", overrides=_overrides("smiles-uniform"), out=out, seed=0, progress=False)
    return out


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_same_seed_same_run_bit_for_bit(name, tmp_path, monkeypatch, request):
    if name in SKIP:
        pytest.skip(SKIP[name])
    monkeypatch.setenv("FLOWFORGE_CACHE", str(tmp_path.parent.parent / "flowforge-cache"))
    overrides = _overrides(name)
    if name in NEEDS_AE:
        overrides["ae_run"] = str(request.getfixturevalue("tiny_ae"))
    if name in NEEDS_FAE:
        overrides["fae_run"] = str(request.getfixturevalue("tiny_fae"))
    if name in NEEDS_SMILES_BASE:
        overrides["init_from"] = str(request.getfixturevalue("tiny_smiles_base"))
    if name in NEEDS_TEACHER:
        teacher = NEEDS_TEACHER[name]
        if teacher in SKIP:
            pytest.skip(SKIP[teacher])
        overrides["teacher_run"] = str(request.getfixturevalue("tiny_teacher")(teacher))
    runs = {}
    for tag, seed in (("a", 3), ("b", 3), ("c", 4)):
        train_recipe(name, overrides=overrides, out=tmp_path / tag, seed=seed, progress=False)
        runs[tag] = _final_tensors(tmp_path / tag)
    assert _differing(runs["a"], runs["b"]) == [], (
        "the same recipe, config and seed must give the same tensors"
    )
    assert _differing(runs["a"], runs["c"], "model/"), "a different seed must give different weights"


# -- killed and resumed through the CLI ------------------------------------------------------------

KILLED = {
    "moons": ["width=16", "depth=2", "warmup=0"],
    "moons-nsf": ["transforms=2", "hidden=16", "warmup=0"],
    "hypergrid-tb": ["height=4", "width=16"],
}
STEPS = 100  # a checkpoint every 10 steps: the kill lands after the first, long before the end


def _cli(name: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flowforge", "train", name, "--steps", str(STEPS), "--seed", "5",
            "--out", str(out), "--quiet", "--set", *KILLED[name], *extra]  # fmt: skip


def test_sigkill_then_resume_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}

    def start(name: str, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(_cli(name, tmp_path / name, *extra), env=env, stdout=subprocess.DEVNULL)

    procs = {name: start(name) for name in KILLED}
    deadline = time.monotonic() + 240
    while procs and time.monotonic() < deadline:
        for name, proc in list(procs.items()):
            if (tmp_path / name / "latest").exists():  # written once a checkpoint is complete
                os.kill(proc.pid, signal.SIGKILL)
                assert proc.wait() == -signal.SIGKILL
                del procs[name]
            elif proc.poll() is not None:
                pytest.fail(f"{name} ended (rc {proc.returncode}) before its first checkpoint was seen")
        time.sleep(0.005)
    assert not procs, f"no checkpoint appeared in time for {sorted(procs)}"
    for name in KILLED:
        step = int(latest_checkpoint(tmp_path / name).name.split("-")[-1])
        assert step < STEPS, f"{name} was killed after it finished; the test would prove nothing"
    resumed = {name: start(name, "--resume") for name in KILLED}
    for name, sets in KILLED.items():  # meanwhile, the uninterrupted runs (through the API: the same run)
        overrides = dict(s.split("=", 1) for s in sets)
        train_recipe(
            name, overrides=overrides, out=tmp_path / f"{name}-whole", steps=STEPS, seed=5, progress=False
        )
    for name, proc in resumed.items():
        assert proc.wait(timeout=300) == 0, name
        whole, again = _final_tensors(tmp_path / f"{name}-whole"), _final_tensors(tmp_path / name)
        assert not _differing(whole, again), f"{name}: killed + --resume differs from a whole run"
