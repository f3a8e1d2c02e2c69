"""Image rewards (``ClassifierReward``, ``StrokeThickness``) against hand-computed values, and reward fine-tuning
recipes on a tiny class-conditional digits base through the CLI (``flowforge finetune RUN --reward digit``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from flowforge.cli.main import main
from flowforge.finetune import ClassifierReward, DanceGRPO, StrokeThickness, total_reward
from flowforge.metrics.image_features import load_classifier
from flowforge.recipes import evaluate, load_run, read_config
from flowforge.recipes.reward_finetune import branch_samples, fine_tuned_label

TINY_DIGITS = ["--set", "dataset=digits", "channels=8", "mults=1-2", "attention=1", "blocks=1", "warmup=0"]
TINY_DIGITS += ["sample_every=0", "batch_size=16", "--quiet"]


def _sum_classifier() -> nn.Module:
    """Two logits of a 1x2x2 image: (sum of pixels, 0)."""
    lin = nn.Linear(4, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
        lin.bias.zero_()
    return nn.Sequential(nn.Flatten(), lin)


# ------------------------------------------------------------------------------------------------ rewards


def test_classifier_reward_hand_computed():
    r = ClassifierReward(_sum_classifier(), 0, image_shape=(1, 2, 2))
    x = torch.stack([torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), -1.0)]).double()
    # logits (s, 0) with s = 0, 2, -4: p(class 0) = 1 / (1 + e^-s)
    want = torch.tensor([0.5, 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(4.0))], dtype=torch.float64)
    torch.testing.assert_close(r(x), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        ClassifierReward(_sum_classifier(), 0, log=True, image_shape=(1, 2, 2))(x), want.log()
    )
    # pixels beyond [-1, 1] are clamped first: 3.0 scores like 1.0 (s = 4)
    torch.testing.assert_close(
        r(torch.full((1, 1, 2, 2), 3.0, dtype=torch.float64)), want.new_tensor([1 / (1 + math.exp(-4.0))])
    )
    # the log-probability is clipped below at floor
    far = torch.full((1, 1, 2, 2), -1.0, dtype=torch.float64)
    assert (
        ClassifierReward(_sum_classifier(), 0, log=True, floor=-2.0, image_shape=(1, 2, 2))(far).item()
        == -2.0
    )


def test_classifier_reward_is_the_shipped_classifiers_softmax():
    net = load_classifier("digits").double()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    for target in (0, 3, 9):
        r = ClassifierReward(net, target)
        torch.testing.assert_close(r(x), net(x).softmax(-1)[:, target], rtol=1e-12, atol=1e-12)
    assert ClassifierReward(net, 3)(x.float()).dtype == torch.float32
    assert total_reward([ClassifierReward(net, 3), StrokeThickness()], x).shape == (6,)


def test_stroke_thickness_hand_computed():
    x = -torch.ones(3, 1, 4, 4, dtype=torch.float64)
    x[1, 0, :2] = 1.0  # half the pixels ink
    x[2] = 0.0  # all grey
    torch.testing.assert_close(StrokeThickness()(x), torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64))
    area = StrokeThickness("area", threshold=0.0, sharpness=10.0)(x)
    s = 1 / (1 + math.exp(10.0))  # sigmoid(-10) for background pixels
    torch.testing.assert_close(area, torch.tensor([s, 0.5 * s + 0.5 * (1 - s), 0.5], dtype=torch.float64))
    torch.testing.assert_close(
        StrokeThickness(target=0.2)(x), torch.tensor([-0.2, -0.3, -0.3], dtype=torch.float64)
    )
    # d(mean ink)/dx = 1 / (2 * 16) inside (-1, 1)
    g = torch.zeros(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    StrokeThickness()(g).sum().backward()
    torch.testing.assert_close(g.grad, torch.full_like(g, 1 / 32))


def test_image_rewards_bad_inputs():
    net = load_classifier("digits")
    with pytest.raises(ValueError, match=r"target must be a class in 0..9, got 10"):
        ClassifierReward(net, 10)
    with pytest.raises(ValueError, match="target must be a class"):
        ClassifierReward(net, -1)
    with pytest.raises(TypeError, match="nn.Module"):
        ClassifierReward(lambda x: x, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"images \(B, 1, 8, 8\).*unsqueeze"):
        ClassifierReward(net, 3)(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"images \(B, 1, 8, 8\).*got \(2, 1, 28, 28\)"):
        ClassifierReward(net, 3)(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="unknown stroke-thickness mode"):
        StrokeThickness("bold")
    with pytest.raises(ValueError, match=r"images \(B, C, H, W\)"):
        StrokeThickness()(torch.zeros(2, 64))
    with pytest.raises(ValueError, match="target must be a share"):
        StrokeThickness(target=2.0)


# ------------------------------------------------------------------------------------------------ recipes


@pytest.fixture(scope="module")
def digits_base(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("rw-img") / "digits"
    assert main(["train", "digits", "--steps", "4", "--out", str(out), *TINY_DIGITS]) == 0
    return out


@pytest.mark.parametrize("method", ["grpo", "orw", "acflow"])
def test_finetune_digits_base_writes_a_run(digits_base, method, tmp_path):
    out = tmp_path / method
    sets = {"grpo": ["groups=1", "group_size=8", "sde_steps=2"], "orw": ["policy_batch=8", "policy_steps=2"],
            "acflow": ["policy_batch=8", "policy_steps=2", "critic_warmup=1"]}[method]  # fmt: skip
    assert main(["finetune", str(digits_base), "--method", method, "--reward", "digit", "--steps", "2",
                 "--out", str(out), "--quiet", "--set", "target=3", *sets]) == 0  # fmt: skip
    config = read_config(out)
    assert config["recipe"] == f"digits-{method}" and config["label"] == "null" and config["target"] == 3
    res = evaluate(out, metrics=["reward", "branch_fd"], n_samples=40)
    assert 0 <= res["reward"] <= 1 and res["branch_fd"] > 0


def test_finetune_fixed_label_and_thickness(digits_base, tmp_path):
    out = tmp_path / "thick"
    assert main(["finetune", str(digits_base), "--method", "grpo", "--reward", "thickness", "--steps", "1",
                 "--out", str(out), "--quiet", "--set", "label=7", "groups=1", "group_size=4", "sde_steps=2"]) == 0  # fmt: skip
    config = read_config(out)
    assert fine_tuned_label(config) == 7
    model, _ = load_run(out)
    x = branch_samples(model.flow, config, 5, seed=0)
    assert x.shape == (5, 1, 8, 8) and x.abs().max() <= 1
    assert fine_tuned_label({**config, "label": "null"}) == 10


def test_finetune_image_bad_inputs(digits_base, tmp_path, capsys):
    base = ["finetune", str(digits_base), "--steps", "1", "--quiet", "--out", str(tmp_path / "x")]
    assert main([*base, "--method", "grpo", "--reward", "digit", "--set", "target=12"]) == 2
    assert "--set target=12: give the digit to reward, 0..9" in capsys.readouterr().err
    assert main([*base, "--method", "grpo", "--reward", "modes"]) == 2
    assert "an image base takes --reward digit or thickness" in capsys.readouterr().err
    assert main([*base, "--method", "orw", "--set", "label=11"]) == 2
    assert "--set label=11: give a class 0..9 or 'null'" in capsys.readouterr().err
    assert main([*base, "--method", "mle"]) == 2
    assert "--method mle fine-tunes 2-D runs only" in capsys.readouterr().err


def test_grpo_raises_ink_of_a_tiny_digits_flow(digits_base):
    """A few DanceGRPO steps on the mean-ink reward raise the mean ink of the null branch (fixed noise)."""
    torch.manual_seed(0)
    flow, _ = load_run(digits_base)
    flow.train()
    cond = lambda n, g: {"y": torch.full((n,), 10, dtype=torch.long)}  # noqa: E731
    reward = StrokeThickness()
    z = torch.randn(200, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    def ink() -> float:
        with torch.no_grad():
            y = torch.full((200,), 10, dtype=torch.long)
            return float(
                reward(flow.generator().sample(200, cond={"y": y}, x0=z, solver="euler", steps=4)).mean()
            )

    before = ink()
    grpo = DanceGRPO(flow, reward, groups=2, group_size=8, steps=4, eta=0.7, clip_eps=0.2, inner_epochs=1,
                     cond_sampler=cond, generator=torch.Generator().manual_seed(0))  # fmt: skip
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for _ in range(12):
        opt.zero_grad()
        grpo.loss().backward()
        opt.step()
    assert ink() > before + 0.03  # 0.496 -> 0.570 here; a flipped advantage sign gives 0.423
