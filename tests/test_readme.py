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
