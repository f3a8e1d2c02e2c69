"""``<toy>-meanflow`` and ``<toy>-twinflow``: train, sample in 1 and 2 jumps, evaluate, refuse ODE options."""

from __future__ import annotations

import pytest
import torch

from flowforge.recipes import evaluate, sample, train_recipe

TINY = {"width": 32, "depth": 2, "batch_size": 64, "warmup": 0, "threads": 1}


@pytest.mark.parametrize("name", ["moons-meanflow", "checkerboard-twinflow"])
def test_one_step_recipes_train_sample_and_evaluate(name, tmp_path):
    train_recipe(name, overrides=TINY, out=tmp_path / "run", steps=30, progress=False)
    one = sample(tmp_path / "run", 500, seed=1)
    assert one.shape == (500, 2) and torch.isfinite(one).all()
    assert torch.equal(one, sample(tmp_path / "run", 500, seed=1, steps=1))  # 1 jump is the default
    two = sample(tmp_path / "run", 500, seed=1, steps=2)
    assert not torch.equal(one, two)
    res = evaluate(tmp_path / "run", n_samples=500, seed=0, steps=2)
    assert res["steps"] == 2 and res["source_noise"] == "iid" and res["swd"] > 0
    with pytest.raises(ValueError, match="solver"):
        sample(tmp_path / "run", 10, solver="heun")


def test_meanflow_recipe_learns_a_one_step_map(tmp_path):
    """300 steps already beat a flow-matching teacher's single Euler step by far (SWD 0.6 on moons)."""
    train_recipe("moons-meanflow", overrides={"threads": 1}, out=tmp_path / "mf", steps=300, progress=False)
    assert evaluate(tmp_path / "mf", n_samples=2000, seed=0, metrics=["swd"])["swd"] < 0.3


def test_meanflow_time_law_by_name_and_old_configs():
    from flowforge.core.time import LogitNormal, Uniform
    from flowforge.recipes import get_recipe
    from flowforge.recipes.one_step2d import meanflow_times

    config = dict(get_recipe("moons-meanflow").defaults)
    assert isinstance(meanflow_times(config).base, Uniform) and meanflow_times(config).diagonal == 0.25
    config.pop("time")  # a run saved before the key existed drew logit-normal times
    assert isinstance(meanflow_times(config).base, LogitNormal)
    with pytest.raises(ValueError, match="unknown time 'beta'"):
        meanflow_times({**config, "time": "beta"})
