"""Bad input through the ``flowforge`` command: ONE line ``flowforge: error: <what>; <fix>``, exit 2.

Each case is a distinct mistake a user makes (data files of the wrong shape, dtype, extension or content,
pickles, unknown names, bad values, damaged run folders). The command runs in-process through
:func:`flowforge.cli.main`; a few cases also run as ``python -m flowforge`` to check that no traceback
reaches the terminal. Cases whose fix lies outside ``flowforge.data`` (recipes, CLI, trainer, GFlowNet
environments) are fixed where they arise; every case must pass.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from flowforge.cli import main

TINY = ["--set", "width=8 depth=1 warmup=0 batch_size=8", "--quiet"]
PREFIX = "flowforge: error: "


# --------------------------------------------------------------------------------------------- bad files


def _write(text: str | bytes) -> Callable[[Path], None]:
    def make(p: Path) -> None:
        p.write_bytes(text.encode() if isinstance(text, str) else text)

    return make


def _npy(arr: np.ndarray, **kw) -> Callable[[Path], None]:
    return lambda p: np.save(p, arr, **kw)


def _truncated_npy(p: Path) -> None:
    np.save(p, np.zeros((100, 2)))
    p.write_bytes(p.read_bytes()[:200])


def _safetensors(tensors: dict[str, torch.Tensor]) -> Callable[[Path], None]:
    def make(p: Path) -> None:
        from safetensors.torch import save_file

        save_file(tensors, str(p))

    return make


def _pickle(p: Path) -> None:
    import pickle

    p.write_bytes(pickle.dumps(np.zeros((4, 2))))


#: file name -> how to write it
FILES: dict[str, Callable[[Path], None]] = {
    "flat.npy": _npy(np.arange(5.0)),
    "cube.npy": _npy(np.zeros((4, 3, 2))),
    "strings.npy": _npy(np.array([["a", "b"], ["c", "d"]])),
    "objects.npy": _npy(np.array([[1.0, None]], dtype=object), allow_pickle=True),
    "complex.npy": _npy(np.ones((4, 2), dtype=np.complex64)),
    "bools.npy": _npy(np.ones((4, 2), dtype=bool)),
    "points.txt": _write("1,2\n3,4\n"),
    "points.json": _write("[[1, 2], [3, 4]]"),
    "points": _npy(np.zeros((4, 2))),  # np.save adds .npy: renamed below
    "zero.npy": _write(b""),
    "zero.csv": _write(b""),
    "zero.npz": _write(b""),
    "zero.safetensors": _write(b""),
    "truncated.npy": _truncated_npy,
    "none.npz": lambda p: np.savez(p),
    "several.npz": lambda p: np.savez(p, a=np.zeros((4, 2)), b=np.ones((4, 2))),
    "header_only.csv": _write("a,b\n"),
    "ragged.csv": _write("1,2\n3,4\n5\n"),
    "text.csv": _write("1,2\n3,four\n"),
    "nan.npy": _npy(np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, 4.0]])),
    "inf.csv": _write("0,1\n2,inf\n3,4\n"),
    "huge.npy": _npy(np.full((8, 2), 1e39)),  # finite in float64, overflows float32
    "near_max.npy": _npy(np.array([[1e30, -1e30], [2e30, 1e30], [-1e30, 3e30], [0.0, 1e30]])),
    "torch.pt": lambda p: torch.save(torch.zeros(4, 2), p),
    "torch.pth": lambda p: torch.save({"x": torch.zeros(4, 2)}, p),
    "pickled.pkl": _pickle,
    "two.safetensors": _safetensors({"a": torch.zeros(4, 2), "b": torch.zeros(4, 2)}),
    "vector.safetensors": _safetensors({"x": torch.zeros(4)}),
    "garbage.safetensors": _write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"),
    "wide.npy": _npy(np.zeros((10, 5), dtype=np.float32)),
    "good.npy": _npy(np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("files")
    for name, make in FILES.items():
        make(d / name)
    (d / "points.npy").rename(d / "points")
    (d / "folder.npy").mkdir()
    (d / "mnist_empty").mkdir()
    (d / "mnist_broken").mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (d / "mnist_broken" / name).write_bytes(b"\x1f\x8b\x08not really gzip")
    (d / "broken_energy.py").write_text("1 / 0\n")
    (d / "my_energy.py").write_text(
        "import torch\n"
        "CONSTANT = 3.0\n"
        "def fine(x):\n    return 0.5 * x.square().sum(-1)\n"
        "def wrong_shape(x):\n    return x\n"
        "def nan(x):\n    return x.sum(-1) * float('nan')\n"
        "def as_list(x):\n    return x.sum(-1).tolist()\n"
    )
    return d


# ------------------------------------------------------------------------------------------- run folders


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "moons"
    assert main(["train", "moons", "--steps", "1", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def runs(run, tmp_path_factory) -> Path:
    """Damaged copies of :func:`run`, one folder each."""
    d = tmp_path_factory.mktemp("damaged")
    (d / "no_config").mkdir()
    config = json.loads((run / "config.json").read_text())
    for name, text in {
        "not_json": "{'recipe': moons",
        "list_json": "[1, 2, 3]",
        "unknown_recipe": json.dumps({**config, "recipe": "moonz"}),
        "missing_keys": json.dumps({"recipe": "moons"}),
        "no_checkpoint": json.dumps(config),
    }.items():
        (d / name).mkdir()
        (d / name / "config.json").write_text(text)
    shutil.copytree(run, d / "truncated")
    for f in (d / "truncated").rglob("*.safetensors"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return d


# ------------------------------------------------------------------------------------------------ cases


def _case(id_: str, argv: str, *expect: str, marks=()):
    return pytest.param(argv, expect, id=id_, marks=marks)


TRAIN = "train moons --steps 1 --out {tmp}/r"
TRAIN_ON = TRAIN + " --data {files}/"
BG = "train bg --steps 1 --out {tmp}/r --set dim=2 --energy "
EVAL_ON = "eval {run} --metrics swd --n 16 --data {files}/"

CASES = [
    # data files: shape
    _case("1-D array", TRAIN_ON + "flat.npy", "1-D", "reshape(-1, 1)"),
    _case("3-D array", TRAIN_ON + "cube.npy", "(4, 3, 2)", "reshape"),
    _case(
        "wrong D for the run",
        EVAL_ON + "wide.npy",
        "(10, 5)",
        "(N, 2)",
    ),
    # dtype
    _case("strings", TRAIN_ON + "strings.npy", "non-numeric", "float"),
    _case("object array (pickle)", TRAIN_ON + "objects.npy", "pickle", "float"),
    _case("complex", TRAIN_ON + "complex.npy", "complex", "real"),
    _case("bool", TRAIN_ON + "bools.npy", "booleans", "astype(np.float32)"),
    # extension
    _case(".txt", TRAIN_ON + "points.txt", ".txt", ".csv"),
    _case(".json", TRAIN_ON + "points.json", ".json", ".npy"),
    _case("no extension", TRAIN_ON + "points", "(none)", ".npy"),
    _case("a directory", EVAL_ON + "folder.npy", "directory", "file"),
    _case("missing file", TRAIN_ON + "missing.npy", "missing.npy", "no such file"),
    # content
    _case("0-byte .npy", TRAIN_ON + "zero.npy", "0 bytes", "np.save"),
    _case("0-byte .csv", TRAIN_ON + "zero.csv", "empty", "row"),
    _case("0-byte .npz", TRAIN_ON + "zero.npz", "0 bytes", "np.savez"),
    _case("0-byte .safetensors", TRAIN_ON + "zero.safetensors", "0 bytes", "save_file"),
    _case("truncated .npy", TRAIN_ON + "truncated.npy", "truncated", "np.save"),
    _case(".npz with no arrays", TRAIN_ON + "none.npz", "no arrays", "np.savez"),
    _case(".npz with several arrays", TRAIN_ON + "several.npz", "['a', 'b']", "key 'x'"),
    _case("CSV with only a header", TRAIN_ON + "header_only.csv", "header", "data rows"),
    _case("ragged CSV", TRAIN_ON + "ragged.csv", "line 3", "same number"),
    _case("CSV with text cells", TRAIN_ON + "text.csv", "line 2", "numbers only"),
    _case("NaN in .npy", TRAIN_ON + "nan.npy", "row 1", "nan", "remove"),
    _case("inf in .csv", TRAIN_ON + "inf.csv", "row 1", "inf", "remove"),
    _case("values overflowing float32", TRAIN_ON + "huge.npy", "float32", "1e+39", "rescale"),
    _case(
        "values near 1e30, not standardised",
        TRAIN_ON + "near_max.npy --set standardize=false",
        "loss became inf",
        "lower lr",
    ),
    # pickles: never unpickled
    _case(".pt from torch.save", TRAIN_ON + "torch.pt", "pickle", "numpy.save", "safetensors"),
    _case(".pth from torch.save", TRAIN_ON + "torch.pth", "pickle", "numpy.save", "safetensors"),
    _case(".pkl", TRAIN_ON + "pickled.pkl", "pickle", "numpy.save", "safetensors"),
    # safetensors
    _case(".safetensors with two tensors", TRAIN_ON + "two.safetensors", "['a', 'b']", "key 'x'"),
    _case(".safetensors holding a vector", TRAIN_ON + "vector.safetensors", "1-D", "(N, 1)"),
    _case(".safetensors damaged", TRAIN_ON + "garbage.safetensors", "safetensors", "save_file"),
    # unknown names
    _case("unknown recipe", "train moonz --steps 1", "unknown recipe 'moonz'", "did you mean 'moons'"),
    _case("unknown --set key", TRAIN + " --set widht=3", "unknown key 'widht'", "did you mean 'width'"),
    _case("unknown metric", "eval {run} --metrics fid", "fid", "swd"),
    _case("unknown solver", "sample {run} --n 4 --solver rk45 --out {tmp}/s.npy", "rk45", "heun"),
    _case("unknown dataset", TRAIN + " --set dataset=moonz", "moonz", "moons"),
    _case("unknown path", TRAIN + " --set path=curvy", "curvy", "linear"),
    _case(
        "energy module not found",
        "train bg --steps 1 --out {tmp}/r --energy no_such_mod_xyz:energy --set dim=2",
        "no_such_mod_xyz",
        "PYTHONPATH",
    ),
    _case(
        "energy function not found",
        "train bg --steps 1 --out {tmp}/r --energy flowforge.data.energies:nope --set dim=2",
        "'nope'",
        "energies:<name>",
    ),
    _case("energy file missing", BG + "{files}/nowhere.py:energy", "nowhere.py", "path/to/file.py"),
    _case(
        "energy file that fails to import", BG + "{files}/broken_energy.py:energy", "ZeroDivisionError", "fix"
    ),
    _case("energy returns the wrong shape", BG + "{files}/my_energy.py:wrong_shape", "(8, 2)", "(8,)"),
    _case("energy returns NaN", BG + "{files}/my_energy.py:nan", "non-finite", "finite everywhere"),
    _case("energy returns a list", BG + "{files}/my_energy.py:as_list", "list", "torch.Tensor"),
    _case("energy is not callable", BG + "{files}/my_energy.py:CONSTANT", "not callable", "def energy"),
    _case(
        "user energy without a dim",
        "train bg --steps 1 --out {tmp}/r --energy {files}/my_energy.py:fine",
        "dim",
        "--set dim=2",
    ),
    _case(
        "ManyWell with an odd dim",
        "train manywell-bg --steps 1 --out {tmp}/r --set dim=3",
        "even dim",
        "dim=32",
    ),
    _case(
        "MNIST folder without the files",
        "train mnist-tarflow --steps 1 --out {tmp}/r --set 'data_dir={files}/mnist_empty download=false'",
        "not found",
        "download=true",
    ),
    _case(
        "MNIST file that is not gzip",
        "train mnist-tarflow --steps 1 --out {tmp}/r --set 'data_dir={files}/mnist_broken download=false'",
        "gzip",
        "re-download",
    ),
    # bad values
    _case("--set width without =", TRAIN + " --set width", "key=value", "width=128"),
    _case(
        "--set width=abc",
        TRAIN + " --set width=abc",
        "width=abc",
        "int",
    ),
    _case("--set noise=nan", TRAIN + " --set noise=nan", "noise", "nan"),
    _case("--set noise=-1", TRAIN + " --set noise=-1", "noise", ">= 0"),
    _case("--set noise=inf", TRAIN + " --set noise=inf", "noise", "finite"),
    _case(
        "--set width=0",
        TRAIN + " --set width=0",
        "width",
        ">= 1",
    ),
    _case(
        "--set depth=-2",
        TRAIN + " --set depth=-2",
        "depth",
        ">= 1",
    ),
    _case(
        "--set lr=-1",
        TRAIN + " --set lr=-1",
        "lr",
        "> 0",
    ),
    _case(
        "--set batch_size=0",
        TRAIN + " --set batch_size=0",
        "batch_size",
        ">= 1",
    ),
    _case(
        "--set lr=1e6 grad_clip=0",
        "train moons --steps 40 --out {tmp}/r --set 'lr=1e6 grad_clip=0 warmup=0'",
        "diverged",
        "lower lr",
    ),
    _case(
        "--steps 0",
        "train moons --steps 0 --out {tmp}/r",
        "--steps",
        ">= 1",
    ),
    _case(
        "hypergrid r0=nan",
        "train hypergrid-tb --steps 1 --out {tmp}/r --set r0=nan",
        "r0",
        "nan",
    ),
    _case(
        "bitseq n_modes=0",
        "train bitseq-tb --steps 1 --out {tmp}/r --set n_modes=0",
        "n_modes",
        ">= 1",
    ),
    _case(
        "sample --n 0",
        "sample {run} --n 0 --out {tmp}/s.npy",
        "--n",
        ">= 1",
    ),
    _case(
        "sample --out ''",
        "sample {run} --n 4 --out ''",
        "--out",
        ".npy",
    ),
    _case(
        "sample --out .csv",
        "sample {run} --n 4 --out {tmp}/s.csv",
        "s.csv",
        ".npy",
    ),
    _case(
        "--label on a flow-matching run",
        "sample {run} --n 4 --label 3 --out {tmp}/s.npy",
        "--label",
        "tarflow",
    ),
    _case(
        "--energy on a toy recipe",
        TRAIN + " --energy flowforge.data.energies:_example_energy",
        "--energy",
        "bg",
    ),
    _case(
        "--data on a recipe without data files",
        "train hypergrid-tb --steps 1 --out {tmp}/r --data {files}/good.npy",
        "--data does not apply to hypergrid-tb runs",
        "the train options that do",
    ),
    _case(
        "second training into a busy --out",
        "train moons --steps 1 --out {run}",
        "already",
        "--resume",
    ),
    # run folders
    _case("run folder without config.json", "sample {runs}/no_config --out {tmp}/s.npy", "config.json"),
    _case("run folder that does not exist", "sample {tmp}/nowhere --out {tmp}/s.npy", "nowhere"),
    _case("config.json not JSON", "sample {runs}/not_json --out {tmp}/s.npy", "not valid JSON"),
    _case(
        "config.json is a list",
        "sample {runs}/list_json --out {tmp}/s.npy",
        "config.json",
        "object",
    ),
    _case(
        "config.json lacks keys",
        "eval {runs}/missing_keys --metrics swd",
        "config.json",
        "lacks the key",
    ),
    _case("config names an unknown recipe", "eval {runs}/unknown_recipe", "moonz"),
    _case(
        "config but no checkpoint",
        "sample {runs}/no_checkpoint --n 4 --out {tmp}/s.npy",
        "checkpoint",
    ),
    _case("truncated checkpoint", "eval {runs}/truncated --metrics swd --n 16", "checkpoint"),
    _case(
        "--steps abc",
        "train moons --steps abc",
        "--steps",
        "int",
    ),
]


def _argv(template: str, **where: Path) -> list[str]:
    argv = shlex.split(template.format(**{k: str(v) for k, v in where.items()}))
    if argv[0] == "train":  # tiny sizes first: a case's own --set comes later and wins
        argv[2:2] = TINY if argv[1] == "moons" else ["--quiet"]
    return argv


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    line = lines[0]
    assert line.startswith(PREFIX), line
    assert "; " in line[len(PREFIX) :], f"no '; <what to write instead>' in {line!r}"
    return line


@pytest.mark.parametrize(("template", "expect"), CASES)
def test_bad_input_gets_one_clear_line(template, expect, files, run, runs, tmp_path, capsys) -> None:
    argv = _argv(template, files=files, run=run, runs=runs, tmp=tmp_path)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    line = _one_line(err)
    for piece in expect:
        assert piece.lower() in line.lower(), f"{piece!r} not in {line!r}"


def test_cases_are_distinct() -> None:
    assert len(CASES) >= 40
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids)
    assert len({c.values[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    "template",
    [
        TRAIN_ON + "torch.pt",
        TRAIN_ON + "truncated.npy",
        "sample {runs}/not_json --out {tmp}/s.npy",
    ],
    ids=["pt", "truncated", "config-not-json"],
)
def test_no_traceback_from_the_command(template, files, runs, tmp_path) -> None:
    argv = _argv(template, files=files, runs=runs, tmp=tmp_path)
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "flowforge", *argv], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    _one_line(proc.stderr)
