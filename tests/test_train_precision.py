"""The trainer's speed options (precision, compile, channels_last, tf32) and the recipes' monitor hook."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from flowforge.recipes import registry as registry_mod
from flowforge.recipes.registry import Recipe
from flowforge.recipes.runs import train_recipe
from flowforge.train import Run, TrainConfig, Trainer, train
from flowforge.train import trainer as trainer_mod
from flowforge.train.trainer import resolve_speed

FAST = dict(batch_size=16, lr=3e-3, warmup=2, log_every=5, progress=False)


class Regression(nn.Module):
    """A linear least-squares loss (a quadratic in the weights) that records the dtype its matmul ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.seen: list[torch.dtype] = []

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        pred = self.lin(x)
        self.seen.append(pred.dtype)
        return ((pred.float() - y) ** 2).mean()


def regression_data(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.7


class ConvFM(nn.Module):
    """A tiny convolutional flow-matching loss on (B, C, 8, 8) images; global-RNG noise and times."""

    def __init__(self, c: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(c + 1, 4, 3, padding=1), nn.SiLU(), nn.Conv2d(4, c, 3, padding=1))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.layouts: list[bool] = []

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        self.layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        x0 = torch.randn_like(x)
        t = torch.rand(x.shape[0], 1, 1, 1)
        xt = t * x + (1 - t) * x0
        v = self.net(torch.cat([xt, t.expand_as(xt[:, :1])], 1))
        return ((v - (x - x0)) ** 2).mean()


def images(n: int = 128, c: int = 1) -> torch.Tensor:
    return torch.randn(n, c, 8, 8, generator=torch.Generator().manual_seed(1)).tanh()


def states(run: Run) -> dict[str, torch.Tensor]:
    return {
        **{f"m.{k}": v.clone() for k, v in run.model.state_dict().items()},
        **{f"e.{k}": v.clone() for k, v in run.ema.state_dict().items()},
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Kill(Exception):
    pass


def kill_at(at: int):
    def cb(step: int, trainer: Trainer) -> None:
        if step == at:
            raise Kill

    return cb


# ----------------------------------------------------------------------------------------------------
# precision


def test_bf16_autocasts_the_loss_and_still_trains():
    data = regression_data()
    model = Regression()
    with torch.no_grad():
        before = model.loss(data).item()
    model.seen.clear()
    run = train(model, data, steps=150, precision="bf16", **{**FAST, "lr": 0.05})
    assert set(model.seen) == {torch.bfloat16}  # the matmul ran in bf16 inside the loss
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32
    assert all(v.dtype == torch.float32 for v in run.ema.state_dict().values())
    after = run.metrics()[-1]["loss"]
    assert after < 0.05 * before and after < 0.1

    fp32 = Regression()
    train(fp32, data, steps=3, precision="fp32", **FAST)
    assert set(fp32.seen) == {torch.float32}


def test_cpu_defaults_are_plain_fp32_bit_for_bit(tmp_path):
    default = train(ConvFM(), images(), steps=12, out=tmp_path / "d", **FAST)
    explicit = train(
        ConvFM(),
        images(),
        steps=12,
        out=tmp_path / "e",
        precision="fp32",
        compile=False,
        channels_last=False,
        tf32=False,
        **FAST,
    )
    assert_same(states(default), states(explicit))
    setup = json.loads((tmp_path / "d" / "trainer.json").read_text())
    assert setup["device"] == "cpu" and setup["start_step"] == 0
    assert {k: setup[k] for k in ("precision", "compile", "channels_last", "tf32")} == {
        "precision": "fp32",
        "compile": False,
        "channels_last": False,
        "tf32": False,
    }
    manifest = json.loads(next((tmp_path / "d").glob("ckpt-*/manifest.json")).read_text())
    assert manifest["config"]["trainer"]["precision"] == "fp32"
    assert manifest["config"]["setup"]["compile"] is False
    assert not any(default.model.layouts)  # batches left as they were


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"precision": "fp16"}, "unknown precision 'fp16'.*choose one of auto, fp32, bf16"),
        ({"precision": None}, "unknown precision None"),
        ({"compile": "yes"}, "compile must be True, False or None.*compile=False"),
        ({"channels_last": 1}, "channels_last must be True, False or None"),
        ({"tf32": "true"}, "tf32 must be True, False or None"),
    ],
)
def test_invalid_speed_settings_are_refused(setting, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(steps=10, **setting)
    with pytest.raises(ValueError, match=match):
        train(Regression(), regression_data(), steps=2, **setting, **FAST)


def test_resume_with_another_precision_is_refused(tmp_path):
    kw = dict(steps=10, ckpt_every=5, out=tmp_path, **FAST)
    with pytest.raises(Kill):
        train(ConvFM(), images(), callback=kill_at(7), **kw)
    with pytest.raises(ValueError, match="precision='fp32' in the checkpoint, 'bf16' now"):
        train(ConvFM(), images(), resume=True, precision="bf16", **kw)
    # compile / channels_last / tf32 are not part of the trajectory: a resume may change them
    resumed = train(ConvFM(), images(), resume=True, channels_last=True, tf32=True, **kw)
    assert resumed.step == 10
    setup = json.loads((tmp_path / "trainer.json").read_text())
    assert setup["start_step"] == 5 and setup["channels_last"] is True and setup["tf32"] is False  # CPU


def test_checkpoints_from_before_the_precision_option_resume_as_fp32(tmp_path):
    kw = dict(steps=10, ckpt_every=5, out=tmp_path, **FAST)
    full = train(ConvFM(), images(), **{**kw, "out": tmp_path / "full"})
    with pytest.raises(Kill):
        train(ConvFM(), images(), callback=kill_at(7), **kw)
    manifest = tmp_path / "ckpt-000005" / "manifest.json"
    old = json.loads(manifest.read_text())
    del old["config"]["trainer"]["precision"], old["config"]["setup"]  # what older versions wrote
    manifest.write_text(json.dumps(old))
    resumed = train(ConvFM(), images(), resume=True, **kw)
    assert_same(states(full), states(resumed))  # and the resume is still bit for bit


def test_channels_last_on_cpu_keeps_keys_and_converts_batches(tmp_path):
    model = ConvFM(c=2)  # with one channel the two layouts coincide
    run = train(model, images(c=2), steps=6, out=tmp_path, channels_last=True, **FAST)
    assert model.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.layouts == [True] * 6  # every batch arrived in channels_last
    fresh = Run(tmp_path).load_into(ConvFM(c=2))
    assert fresh.state_dict().keys() == run.model.state_dict().keys()


def test_resolve_speed_automatic_values_on_cuda_without_a_gpu():
    cuda, cfg = torch.device("cuda"), TrainConfig(steps=1)
    got = resolve_speed(cfg, ConvFM(), cuda)
    assert got["compile"] and got["channels_last"] and got["tf32"]
    assert got["precision"] == ("bf16" if torch.cuda.is_available() else "fp32")  # bf16 needs a device
    assert not resolve_speed(cfg, Regression(), cuda)["channels_last"]  # no convolution
    explicit = TrainConfig(steps=1, precision="fp32", compile=False, channels_last=False, tf32=False)
    assert resolve_speed(explicit, ConvFM(), cuda) == {
        "precision": "fp32",
        "compile": False,
        "channels_last": False,
        "tf32": False,
    }

    class Flow(ConvFM):
        cuda_defaults = {"precision": "fp32", "compile": False}

    got = resolve_speed(cfg, Flow(), cuda)
    assert got["precision"] == "fp32" and not got["compile"] and got["channels_last"]
    assert resolve_speed(TrainConfig(steps=1, compile=True), Flow(), cuda)["compile"]  # explicit wins

    class Bad(ConvFM):
        cuda_defaults = {"amp": True}

    with pytest.raises(TypeError, match="cuda_defaults must be a dict with keys among precision"):
        resolve_speed(cfg, Bad(), cuda)


def test_tf32_flags_untouched_on_cpu():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    seen = []
    train(
        Regression(),
        regression_data(),
        steps=2,
        tf32=True,
        callback=lambda s, t: seen.append(torch.backends.cuda.matmul.allow_tf32),
        **FAST,
    )
    assert seen == [before[0]] * 2
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


# ----------------------------------------------------------------------------------------------------
# compile


def test_automatic_compile_falls_back_to_eager_when_the_compiler_fails(monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed

    class Failed(BackendCompilerFailed):
        def __init__(self) -> None:  # the parent's arguments change between torch versions
            Exception.__init__(self, "no compiler")

    def broken(fn, *args, **kwargs):
        def call(batch):
            raise Failed

        return call

    monkeypatch.setattr(torch, "compile", broken)
    fell = []
    auto = trainer_mod._CompiledLoss(lambda b: b * 2, explicit=False, on_fallback=lambda: fell.append(1))
    with pytest.warns(UserWarning, match="torch.compile failed.*training continues without it"):
        assert auto(torch.ones(1)).item() == 2.0
    assert fell == [1] and auto(torch.ones(1)).item() == 2.0  # eager from then on
    explicit = trainer_mod._CompiledLoss(lambda b: b, explicit=True, on_fallback=lambda: None)
    with pytest.raises(Failed):
        explicit(torch.ones(1))


@pytest.mark.slow
@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("cc", "gcc", "clang", "c++")),
    reason="torch.compile on CPU needs a C compiler",
)
def test_compile_on_cpu_trains_and_saves_plain_keys(tmp_path):
    model = Regression()
    run = train(model, regression_data(), steps=20, out=tmp_path, compile=True, **{**FAST, "lr": 0.05})
    assert run.step == 20 and run.metrics()[-1]["loss"] < run.metrics()[0]["loss"]
    expected = {"lin.weight", "lin.bias"}
    assert set(run.model.state_dict()) == expected and set(run.ema.state_dict()) == expected
    from flowforge.train import load_checkpoint

    ckpt = load_checkpoint(tmp_path)
    assert set(ckpt.tensors["model"]) == expected and set(ckpt.tensors["ema"]) == expected
    assert json.loads((tmp_path / "trainer.json").read_text())["compile"] is True
    Run(tmp_path).load_into(Regression())  # loads strictly into an uncompiled model


# ----------------------------------------------------------------------------------------------------
# the recipes' monitor hook


def _dummy_recipe(monitor) -> Recipe:
    return Recipe(
        name="dummy-monitor",
        summary="a test recipe",
        defaults={"steps": 6, "batch_size": 16, "lr": 0.01, "precision": "bf16"},  # a TRAIN_KEY
        build=lambda config: Regression(),
        data=lambda config: (regression_data(), {"dim": 4}),
        generator=lambda model, config: model,
        evaluate=lambda *a, **k: {},
        metrics=(),
        monitor=monitor,
    )


def test_recipe_monitor_hook_is_called_every_step(tmp_path, monkeypatch):
    calls: list[tuple[int, int]] = []
    made: list[tuple[dict, Path]] = []

    def monitor(config, run_dir):
        made.append((config, run_dir))

        def cb(step: int, trainer: Trainer) -> None:
            assert isinstance(trainer, Trainer) and trainer.ema is not None
            assert trainer.resolved["precision"] == "bf16"  # the recipe's training key reached the trainer
            calls.append((step, trainer.step))

        return cb

    monkeypatch.setitem(registry_mod.RECIPES, "dummy-monitor", _dummy_recipe(monitor))
    run = train_recipe("dummy-monitor", out=tmp_path / "r", progress=False)
    assert run.step == 6
    assert calls == [(s, s) for s in range(1, 7)]
    ((config, run_dir),) = made
    assert config["recipe"] == "dummy-monitor" and config["dim"] == 4 and run_dir == tmp_path / "r"

    # a monitor may decline (None), and recipes without one train as before
    monkeypatch.setitem(registry_mod.RECIPES, "dummy-monitor", _dummy_recipe(lambda c, d: None))
    assert train_recipe("dummy-monitor", out=tmp_path / "none", progress=False).step == 6
    monkeypatch.setitem(registry_mod.RECIPES, "dummy-monitor", _dummy_recipe(None))
    assert train_recipe("dummy-monitor", out=tmp_path / "no", progress=False).step == 6
