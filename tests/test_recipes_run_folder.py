"""The run folder (``recipes/run_folder.py``), and recipes that own their hooks: one file adds a recipe."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flowforge.cli import main
from flowforge.recipes import load_run, read_config

SRC = Path(__file__).resolve().parents[1] / "src" / "flowforge"


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (None, "no config.json"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "a JSON list, not an object"),
        ('{"width": 3}', 'no "recipe" entry'),
        ('{"recipe": 7}', 'no "recipe" entry'),
        ('{"recipe": "moonz"}', "unknown recipe 'moonz' (did you mean 'moons'?)"),
        ('{"recipe": "moons", "width": "wide"}', "width='wide' is not a int"),
        ('{"recipe": "moons", "qmc": 1}', "qmc=1 is not a bool"),
        ('{"recipe": "moons", "seed": "3"}', "seed='3' must be an int"),
    ],
)
def test_read_config_says_what_is_wrong(tmp_path, capsys, content, expect):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=None) as e:
        read_config(tmp_path)
    assert expect in str(e.value)
    with pytest.raises(type(e.value)):
        load_run(tmp_path)
    assert main(["sample", str(tmp_path), "--out", str(tmp_path / "a.npy")]) == 2
    err = capsys.readouterr().err
    assert expect in err and len(err.strip().splitlines()) == 1


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        read_config(tmp_path / "nowhere")


def test_a_run_from_before_a_new_recipe_key_still_loads(tmp_path):
    """A key that a later version adds to a recipe's defaults takes its default in older run folders."""
    from flowforge.recipes import train_recipe

    out = tmp_path / "run"
    train_recipe("moons", overrides={"width": 8, "depth": 1}, out=out, steps=2, progress=False)
    config = json.loads((out / "config.json").read_text())
    del config["sample_steps"]  # as if the run predates the key
    (out / "config.json").write_text(json.dumps(config))
    assert read_config(out)["sample_steps"] == 25
    model, loaded = load_run(out)
    assert loaded["sample_steps"] == 25 and loaded["width"] == 8


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def _code_words(path: Path) -> str:
    """Names, attributes and string constants of a file's code (not its docstrings, help texts or comments)."""
    tree = ast.parse(path.read_text())
    skip = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.keyword) and n.arg == "help"}
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            skip.add(id(body[0].value))
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.append(node.id)
        elif isinstance(node, ast.Attribute):
            words.append(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            words.append(node.value)
    return " ".join(words).lower()


@pytest.mark.parametrize("path", ["recipes/runs.py", "cli/main.py"])
def test_runs_and_cli_know_no_family(path):
    recipe_modules = {p.stem for p in (SRC / "recipes").glob("*.py")} - {
        "__init__",
        "registry",
        "run_folder",
        "runs",
    }
    imported = {m for m in _imports(SRC / path) if m.startswith("flowforge.recipes.")}
    assert not {m for m in imported if m.split(".")[2] in recipe_modules}, imported
    code = _code_words(SRC / path)
    for word in ("tarflow", "levels", "gflownet", "boltzmann", "kind", "conditional", "standardizer"):
        assert word not in code, f"{path} branches on {word!r}: that belongs to a recipe's hooks"


NEW_RECIPE = '''
"""A recipe added as one file: nothing else lists it."""
from flowforge.recipes.flows2d import FLOW2D_DEFAULTS, build_flow_matching, flow_data, toy_reference
from flowforge.recipes.flows2d import flow_evaluate, flow_sample_kwargs, flow_sample_options, METRICS
from flowforge.recipes.common import data_space_generator
from flowforge.recipes.registry import Recipe, register

register(Recipe(name="my-moons", summary="one new file", defaults={**FLOW2D_DEFAULTS, "width": 8, "depth": 1},
    build=build_flow_matching, data=flow_data, generator=data_space_generator, evaluate=flow_evaluate,
    metrics=METRICS, sample_options=flow_sample_options, sample_kwargs=flow_sample_kwargs,
    reference=toy_reference))
'''


def test_a_new_recipe_is_one_new_file(tmp_path):
    shutil.copytree(SRC, tmp_path / "flowforge", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "flowforge" / "recipes" / "my_recipe.py").write_text(NEW_RECIPE)
    out = tmp_path / "run"
    code = (
        "import sys; from flowforge.cli import main; "
        f"sys.exit(main(['list']) or main(['train', 'my-moons', '--steps', '2', '--quiet', '--out', {str(out)!r}]) "
        f"or main(['sample', {str(out)!r}, '--n', '5', '--steps', '2', '--out', {str(tmp_path / 's.npy')!r}]))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(tmp_path), "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "my-moons" in res.stdout and json.loads((out / "config.json").read_text())["recipe"] == "my-moons"
