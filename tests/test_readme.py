"""The README's API tour runs as written (with fewer steps and a temporary run folder)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_tour_runs(tmp_path, monkeypatch):
    pytest.importorskip("ot")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README must keep its API tour"
    code = (
        blocks[0].replace("steps=5_000", "steps=60").replace('"runs/my-moons"', repr(str(tmp_path / "run")))
    )
    assert "steps=60" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["samples"].shape == (10_000, 2)
    assert namespace["logp"].shape == (256,)
    assert (tmp_path / "run" / "config.json").is_file()


def test_readme_normalizing_tour_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "the README must keep its normalizing-flow tour"
    code = (
        blocks[1]
        .replace("steps=3_000", "steps=40")
        .replace('"runs/moons-nsf"', repr(str(tmp_path / "nsf")))
        .replace("importance_sample(proposal, target, 10_000", "importance_sample(proposal, target, 2_000")
        .replace("smc(proposal, target, 2_000, steps=50", "smc(proposal, target, 300, steps=10")
    )
    assert code.count("steps=40") == 2 and "steps=10" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["imgs"].shape == (16, 1, 8, 8)
    assert 0 < namespace["w"].ess <= 1 and namespace["nll"] == namespace["nll"]


def test_readme_gflownet_tour_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3, "the README must keep its GFlowNet tour"
    code = (
        blocks[2]
        .replace("steps=2_000", "steps=30")
        .replace("steps=1_000", "steps=10")
        .replace("steps=300", "steps=5")
        .replace("height=64", "height=16")
    )
    assert code.count("steps=") == 3 and "steps=30" in code and "height=16" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["x"].shape == (1_000, 30)
    assert namespace["tb"].env.ndim == 4


def test_readme_few_step_tour_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (code,) = [b for b in blocks if "MeanFlow(" in b]
    code = (
        code.replace("steps=4_000", "steps=20")
        .replace("steps=2_000", "steps=20")
        .replace("20_000, ", "256, ")
        .replace("n=20_000", "n=2_000")
    )
    assert code.count("steps=20") == 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["one_step"].shape == (10_000, 2)
    assert (tmp_path / "pairs.safetensors").is_file()


def test_readme_discrete_tour_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (code,) = [b for b in blocks if "ff.discrete" in b]
    code = (
        code.replace("steps=3_000", "steps=30")
        .replace("expressions(20_000", "expressions(400")
        .replace("sample(1_000", "sample(50")
        .replace("x[:500]", "x[:20]")
    )
    assert "steps=30" in code and "sample(50" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert len(namespace["strings"]) == 50 and all(isinstance(s, str) for s in namespace["strings"])
    assert namespace["bpt"].shape == (20,) and bool((namespace["bpt"] > 0).all())
