"""``digits-meanflow`` / ``digits-twinflow`` (and their MNIST twins): train, sample by jumps (one by
default: ``x0 + u(x0, 0, 1)``), evaluate with FD/accuracy, refuse ODE options."""

from __future__ import annotations

import pytest
import torch

from flowforge.data import quantize
from flowforge.recipes import evaluate, get_recipe, load_run, sample, train_recipe

TINY = {"channels": 8, "mults": "1-2", "attention": "1", "blocks": 1, "batch_size": 16, "warmup": 0}
TINY |= {"sample_every": 0, "threads": 1, "lr": 0.02}  # a large lr: the jumps move off x0 in 3 steps


@pytest.mark.parametrize("name", ["digits-meanflow", "digits-twinflow"])
def test_jump_recipes_train_sample_and_evaluate(name, tmp_path):
    run = tmp_path / "run"
    train_recipe(name, overrides=TINY, out=run, steps=3, progress=False)
    model, config = load_run(run)
    one = sample(run, 20, seed=1, label=4)
    assert one.shape == (20, 1, 8, 8) and one.dtype == torch.uint8 and int(one.max()) <= 16
    x0 = torch.randn((20, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    y = torch.full((20,), 4)
    with torch.no_grad():
        ref = x0 + model.average_velocity(x0, torch.zeros(20), torch.ones(20), y=y)
    assert (ref - x0).abs().mean() > 0.05  # a map that moves the noise, so the check below can fail
    assert torch.equal(one, quantize(ref.clamp(-1, 1), config["levels"]))
    assert torch.equal(one, sample(run, 20, seed=1, label=4, steps=1))
    assert sample(run, 20, seed=1, label=4, steps=2).shape == one.shape
    res = evaluate(run, n_samples=40, seed=0, steps=2)
    assert {"fd", "acc"} <= set(res) and (res["nfe"], res["steps"], res["source_noise"]) == (2, 2, "iid")
    with pytest.raises(ValueError, match="solver"):
        sample(run, 4, solver="heun")


def test_mnist_recipes_use_the_mnist_unet_with_a_second_time():
    for name in ("mnist-meanflow", "mnist-twinflow"):
        d = get_recipe(name).defaults
        assert (d["dataset"], d["channels"], d["mults"], d["sample_steps"]) == ("mnist", 16, "1-2-4", 1)


def test_bad_settings_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown loss 'l1'; choose one of mse, barron"):
        train_recipe(
            "digits-twinflow", overrides={**TINY, "loss": "l1"}, out=tmp_path / "a", steps=1, progress=False
        )
    with pytest.raises(ValueError, match="diagonal"):
        train_recipe(
            "digits-meanflow", overrides={**TINY, "diagonal": 2}, out=tmp_path / "b", steps=1, progress=False
        )
