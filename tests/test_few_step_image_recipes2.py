"""``digits-blockwise`` / ``digits-pfgm`` (and their MNIST twins): train, sample, evaluate, resume, refuse
bad settings; the blockwise sampler uses segment k's network exactly on [k/K, (k+1)/K), and PFGM++ sampling
through the recipe with the exact denoiser of a Gaussian dataset (D = 16, Student-t kernel) recovers its
mean and variance."""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from flowforge.nn.flops import flops_per_eval
from flowforge.recipes import evaluate, get_recipe, load_run, sample, train_recipe
from flowforge.recipes.blockwise_images import blockwise_generator
from flowforge.recipes.images import build_image_net
from flowforge.recipes.pfgm_images import pfgm_generator

TINY = {"channels": 8, "mults": "1-2", "attention": "1", "blocks": 1, "batch_size": 16, "warmup": 0}
TINY |= {"sample_every": 0, "threads": 1, "lr": 0.02}
NAMES = ("digits-blockwise", "digits-pfgm")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fs-img")
    for name in NAMES:
        train_recipe(name, overrides=TINY, out=root / name, steps=3, progress=False)
    return root


def _weights(run: Path) -> dict[str, torch.Tensor]:
    model, _ = load_run(run)
    return model.state_dict()


# ---------------------------------------------------------------------------------------------------
# both recipes


@pytest.mark.parametrize("name", NAMES)
def test_train_sample_evaluate(runs, name):
    run = runs / name
    x = sample(run, 20, seed=1, label=4)
    assert x.shape == (20, 1, 8, 8) and x.dtype == torch.uint8 and int(x.max()) <= 16
    assert torch.equal(x, sample(run, 20, seed=1, label=4))
    res = evaluate(run, n_samples=40, seed=0, steps=4)
    assert {"fd", "acc", "precision", "recall"} <= set(res) and math.isfinite(res["fd"])
    assert (res["solver"], res["steps"], res["nfe"], res["n"]) == ("euler", 4, 4, 40)
    heun = evaluate(run, n_samples=20, seed=0, metrics=["fd"], solver="heun", steps=4)
    assert heun["nfe"] == (8 if name.endswith("blockwise") else 7)  # PFGM++: the last interval is Euler


@pytest.mark.parametrize("name", NAMES)
def test_resume_ends_on_the_same_weights(runs, name, tmp_path):
    cut = tmp_path / name
    shutil.copytree(runs / name, cut)
    for step in (2, 3):
        shutil.rmtree(cut / f"ckpt-{step:06d}")
    (cut / "latest").write_text("ckpt-000001")
    train_recipe(name, overrides=TINY, out=cut, steps=3, resume=True, progress=False)
    whole, resumed = _weights(runs / name), _weights(cut)
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_mnist_defaults_match_the_mnist_recipe_budget():
    teacher = get_recipe("mnist").defaults
    for name in ("mnist-blockwise", "mnist-pfgm"):
        d = get_recipe(name).defaults
        for key in ("dataset", "steps", "batch_size", "lr", "warmup", "ema_decay", "label_dropout", "mults"):
            assert d[key] == teacher[key], (name, key)
        assert (d["solver"], d["sample_steps"]) == ("euler", 8)
    assert get_recipe("mnist-pfgm").defaults["channels"] == teacher["channels"]
    assert get_recipe("mnist-pfgm").defaults["D"] == 16.0


def test_blockwise_segment_nets_hold_about_the_mnist_unets_parameters():
    d = dict(get_recipe("mnist-blockwise").defaults, image_shape=[1, 28, 28])
    one = sum(p.numel() for p in build_image_net({**d, "net": "unet"}).parameters())
    ref = sum(p.numel() for p in build_image_net({**get_recipe("mnist").defaults, "image_shape": [1, 28, 28]}).parameters())  # fmt: skip
    assert d["segments"] * one / ref == pytest.approx(1.0, abs=0.02)


def test_benchmark_gives_blockwise_and_pfgm_rows():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "few_step_mnist.py"
    spec = importlib.util.spec_from_file_location("few_step_mnist", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod._method({"recipe": "mnist-blockwise"}) == "blockwise"
    assert mod._method({"recipe": "mnist-pfgm"}) == "pfgm"
    assert mod._method({"recipe": "mnist"}) == "teacher"


# ---------------------------------------------------------------------------------------------------
# blockwise


class _Const(nn.Module):
    """v_k(x, t) = c + t in every entry; records the times and labels it saw."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c, self.times, self.labels = c, [], []

    def forward(self, x, t, y=None):
        self.times += t.tolist()
        self.labels.append(y)
        return torch.full_like(x, self.c) + t.reshape(-1, 1, 1, 1)


def test_blockwise_euler_uses_segment_k_net_exactly_on_its_interval(runs):
    model, config = load_run(runs / "digits-blockwise")
    cs = (0.1, -0.2, 0.3, 0.05)
    nets = [_Const(c) for c in cs]
    for k, net in enumerate(nets):
        model.velocity_net.nets[k] = net
    gen = blockwise_generator(model, config)
    x0 = 0.05 * torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6)
    x = gen.sample_unit(6, steps=8, solver="euler", x0=x0, cond={"y": y})
    h = 1 / 8  # 2 Euler steps a segment, at t = j h: sum_j h (c_k(j) + j h)
    want = x0 + sum(c / 4 for c in cs) + h * h * sum(range(8))
    assert torch.allclose(x, want, atol=1e-6)
    assert gen.nfe == 8 and gen.nfe_per_segment == (2, 2, 2, 2)
    for k, net in enumerate(nets):
        assert sorted(set(round(t, 6) for t in net.times)) == [k / 4, k / 4 + h]
        batch = [lab for lab in net.labels if len(lab) == 6]  # (the others: the FLOP count's one sample)
        assert len(batch) == 2 and all(torch.equal(lab, y) for lab in batch)


def test_blockwise_nfe_flops_weights_calls_by_segment_flops(runs):
    run = runs / "digits-blockwise"
    model, config = load_run(run)
    res = evaluate(run, n_samples=10, seed=0, metrics=["fd"], steps=8)
    x, t, y = torch.zeros(1, 1, 8, 8), torch.zeros(1), torch.zeros(1, dtype=torch.long)
    seg = flops_per_eval(model.velocity_net.nets[0], x, t, y=y)
    ref = flops_per_eval(build_image_net({**config, "net": "unet", "channels": 32}), x, t, y=y)
    assert res["nfe_per_segment"] == [2, 2, 2, 2] and res["segments"] == 4
    assert res["nfe_flops"] == pytest.approx(8 * seg / ref, rel=1e-9) and res["nfe_flops"] < 8
    assert res["params"] == sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------
# PFGM++


class _ExactF(nn.Module):
    """The F_theta whose preconditioned denoiser is E[y | x] for data N(m, c^2 I) under the D-kernel.

    The kernel is a scale mixture, n = sigma g / sqrt(u), u ~ Gamma(D/2, rate D/2); given u,
    x ~ N(m, (c^2 + sigma^2/u) I) and E[y | x, u] = m + c^2/(c^2 + sigma^2/u) (x - m). The mixture over u
    is integrated on a fine log grid (float64).
    """

    def __init__(self, model, m: float, c: float) -> None:
        super().__init__()
        self.model, self.m, self.c = [model], m, c  # a list: not a submodule
        d = model.D
        self.logu = torch.linspace(-6.0, 3.0, 601, dtype=torch.float64)
        u = self.logu.exp()
        # log prior density in log u: Gamma(d/2, rate d/2) times the Jacobian u
        self.logp = (d / 2) * math.log(d / 2) - math.lgamma(d / 2) + (d / 2) * self.logu - (d / 2) * u

    def forward(self, xin, tau, y=None):
        model = self.model[0]
        assert model.net_time == "log_sigma"
        s = torch.exp(4 * tau.double())
        c_skip, c_out, c_in, _ = model.preconditioning(s)
        x = xin.double() / c_in.reshape(-1, 1, 1, 1)
        n = x[0].numel()
        sq = (x - self.m).flatten(1).square().sum(1)  # (B,)
        v = self.c**2 + s[:, None] ** 2 / self.logu.exp()[None]  # (B, U)
        logw = self.logp[None] - 0.5 * n * torch.log(v) - 0.5 * sq[:, None] / v
        shrink = (torch.softmax(logw, 1) * (self.c**2 / v)).sum(1)  # E[c^2 / v | x]
        den = self.m + shrink.reshape(-1, 1, 1, 1) * (x - self.m)
        f = (den - c_skip.reshape(-1, 1, 1, 1) * x) / c_out.reshape(-1, 1, 1, 1)
        return f.to(xin.dtype)


def test_pfgm_sampling_with_the_exact_gaussian_denoiser_recovers_mean_and_variance(runs):
    model, config = load_run(runs / "digits-pfgm")
    assert model.D == 16.0 and model.sigma_max == 80.0
    m, c = 0.1, 0.25
    model.net = _ExactF(model, m, c)
    gen = pfgm_generator(model, config)
    n = 800
    x = gen.sample_unit(n, steps=40, solver="heun", generator=torch.Generator().manual_seed(0))
    assert gen.nfe == 79
    assert abs(float(x.mean()) - m) < 0.01
    var = x.flatten(1).var(0)  # per pixel, over samples (observed: 1.5% high; 24 steps: 7%)
    assert float(var.mean()) == pytest.approx(c**2, rel=0.04)


# ---------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "name, sets, match",
    [
        ("digits-blockwise", {"segments": 0}, "segments must be an integer K >= 1"),
        ("digits-blockwise", {"segments": 3}, r"--set sample_steps=8 does not split over segments=3.*6 or"),
        ("digits-pfgm", {"D": 0}, r"D \(PFGM\+\+'s augmented dimensions\) must be > 0.*--set D=16"),
        ("digits-pfgm", {"D": -4}, "must be > 0"),
        ("digits-pfgm", {"ode": "r"}, "unknown ode 'r'; choose one of sigma, t"),
    ],
)
def test_bad_settings_get_clear_errors(name, sets, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        train_recipe(name, overrides={**TINY, **sets}, out=tmp_path / "run", steps=1, progress=False)


def test_bad_sampling_options_get_clear_errors(runs):
    bw, pf = runs / "digits-blockwise", runs / "digits-pfgm"
    with pytest.raises(ValueError, match=r"--steps 6 does not split over segments=4.*--steps 4 or --steps 8"):
        sample(bw, 4, steps=6)
    with pytest.raises(ValueError, match="an NFE below 4 is not possible"):
        sample(bw, 4, steps=2)
    with pytest.raises(ValueError, match="unknown solver 'sde'"):
        sample(bw, 4, solver="sde")
    with pytest.raises(ValueError, match="unknown solver 'dopri5'"):
        sample(pf, 4, solver="dopri5")
    with pytest.raises(ValueError, match="--steps must be an integer >= 1"):
        sample(pf, 4, steps=0)
    with pytest.raises(ValueError, match="guidance"):
        sample(pf, 4, guidance=2.0)
