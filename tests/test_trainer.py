"""The training loop (flowforge.train.trainer / ema)."""

from __future__ import annotations

import doctest
import json
import math
import random
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

import flowforge.train
from flowforge.train import (
    EMA,
    BatchRequest,
    CheckpointError,
    Run,
    RunLockedError,
    TrainConfig,
    Trainer,
    lr_at,
    run_seeds,
    train,
)
from flowforge.train import checkpoint as ck_mod
from flowforge.train import ema as ema_mod
from flowforge.train import trainer as trainer_mod


class ToyFM(nn.Module):
    """A tiny flow-matching objective: its loss draws noise and times from torch's global RNG."""

    def __init__(self, seed: int = 0, dim: int = 2) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(dim + 1, 16), nn.SiLU(), nn.Linear(16, dim))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x0 = torch.randn_like(x)
        t = torch.rand(x.shape[0], 1)
        xt = t * x + (1 - t) * x0
        v = self.net(torch.cat([xt, t], dim=1))
        return ((v - (x - x0)) ** 2).mean()

    def generator(self) -> ToyFM:
        return self


def moons(n: int = 512) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.randn(n, 2, generator=g) * 0.5 + torch.tensor([2.0, -1.0])


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_equal_states(a, b) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def differ(a, b) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


FAST = dict(batch_size=32, lr=3e-3, warmup=4, log_every=8, progress=False)


def test_docstring_examples_run():
    for mod in (trainer_mod, ck_mod, ema_mod, flowforge.train):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, mod.__name__


def test_module_is_callable():
    run = flowforge.train(ToyFM(), moons(), steps=3, **FAST)
    assert isinstance(run, Run) and run.step == 3


# ----------------------------------------------------------------------------------------------------
# reproducibility and resume


def test_same_seed_same_weights_different_seed_different():
    a = train(ToyFM(0), moons(), steps=20, seed=1, **FAST)
    b = train(ToyFM(0), moons(), steps=20, seed=1, **FAST)
    c = train(ToyFM(0), moons(), steps=20, seed=2, **FAST)
    assert_equal_states(state(a.model), state(b.model))
    assert_equal_states(a.ema.state_dict(), b.ema.state_dict())
    assert differ(state(a.model), state(c.model))


class Kill(RuntimeError):
    pass


def killer(at: int):
    def cb(step: int, trainer: Trainer) -> None:
        if step == at:
            raise Kill(f"killed at {step}")

    return cb


def callable_source(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(n, 2, generator=g) + 1.0


@pytest.mark.parametrize("source", ["tensor", "callable"])
def test_resume_is_bit_for_bit(tmp_path, source):
    data = moons() if source == "tensor" else callable_source
    N = 20
    kw = dict(steps=2 * N, ckpt_every=N, seed=5, config={"name": "toy", "dims": [2, 16]}, **FAST)
    full = train(ToyFM(0), data, out=tmp_path / "full", **kw)

    with pytest.raises(Kill):
        train(ToyFM(0), data, out=tmp_path / "cut", callback=killer(N + 7), **kw)
    # the killed run logged past its checkpoint (steps 24) ...
    assert [r["step"] for r in Run(tmp_path / "cut").metrics()] == [8, 16, 24]
    assert Run(tmp_path / "cut").step == N
    # ... resume into a differently initialised model: the lost steps are recomputed identically
    resumed = train(ToyFM(99), data, out=tmp_path / "cut", resume=True, **kw)

    assert resumed.step == 2 * N
    assert_equal_states(state(full.model), state(resumed.model))
    assert_equal_states(full.ema.state_dict(), resumed.ema.state_dict())
    fo, ro = full.model, resumed.model
    assert fo is not ro
    # optimizer moments too (through the saved checkpoints)
    a = ck_mod.load_checkpoint(tmp_path / "full").tensors["optimizer"]
    b = ck_mod.load_checkpoint(tmp_path / "cut").tensors["optimizer"]
    assert_equal_states(a, b)

    # metrics: same lines, no duplicates, and the interval that spans the kill has the same mean loss
    mf, mr = Run(tmp_path / "full").metrics(), Run(tmp_path / "cut").metrics()
    assert [r["step"] for r in mr] == [8, 16, 24, 32, 40]
    for x, y in zip(mf, mr):
        assert x["loss"] == y["loss"] and x["lr"] == y["lr"] and x["grad_norm"] == y["grad_norm"]
    assert set(mr[0]) == {"step", "loss", "lr", "grad_norm", "steps_per_sec", "elapsed"}
    assert json.loads((tmp_path / "cut" / "config.json").read_text()) == {"name": "toy", "dims": [2, 16]}


def test_resume_messages(tmp_path):
    kw = dict(steps=10, ckpt_every=5, **FAST)
    with pytest.warns(UserWarning, match="holds no checkpoint; starting a fresh run"):
        fresh = train(ToyFM(0), moons(), out=tmp_path / "r", resume=True, **kw)
    plain = train(ToyFM(0), moons(), **kw)
    assert_equal_states(state(fresh.model), state(plain.model))

    with pytest.raises(FileExistsError, match="pass resume=True"):
        train(ToyFM(0), moons(), out=tmp_path / "r", **kw)

    model = ToyFM(3)
    with pytest.warns(UserWarning, match=r"already finished \(10/10 steps\)"):
        done = train(model, moons(), out=tmp_path / "r", resume=True, **kw)
    assert done.step == 10
    assert_equal_states(state(model), state(fresh.model))  # the final weights were loaded
    assert_equal_states(done.ema.state_dict(), fresh.ema.state_dict())

    with pytest.raises(ValueError, match=r"lr=0\.003 in the checkpoint, 0\.001 now"):
        train(ToyFM(0), moons(), out=tmp_path / "r", resume=True, **{**kw, "lr": 1e-3})
    with pytest.raises(ValueError, match=r"config differs in \['width'\]"):
        train(ToyFM(0), moons(), out=tmp_path / "r", resume=True, config={"width": 8}, **kw)
    with pytest.raises(ValueError, match="needs the run folder"):
        train(ToyFM(0), moons(), resume=True, **kw)


def test_resume_from_corrupted_checkpoint_leaves_model_untouched(tmp_path):
    kw = dict(steps=20, ckpt_every=5, **FAST)
    with pytest.raises(Kill):
        train(ToyFM(0), moons(), out=tmp_path, callback=killer(12), **kw)
    f = tmp_path / "ckpt-000010" / "optimizer.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    model = ToyFM(4)
    before = state(model)
    with pytest.raises(CheckpointError, match=r"ckpt-000010/optimizer.safetensors is truncated.*ckpt-000005"):
        train(model, moons(), out=tmp_path, resume=True, **kw)
    assert_equal_states(before, state(model))


# ----------------------------------------------------------------------------------------------------
# pieces of the update


def test_ema_closed_form_recursion():
    lin = nn.Linear(1, 1, bias=False)
    lin.register_buffer("count", torch.tensor(0.0))
    with torch.no_grad():
        lin.weight.fill_(2.0)
    ema = EMA(lin, decay=0.9, warmup=True)
    values = [5.0, -1.0, 3.0, 0.5, 7.0, 1.0, 2.0]
    expected, decays = 2.0, []
    for n, v in enumerate(values):
        with torch.no_grad():
            lin.weight.fill_(v)
            lin.count.fill_(n + 1)
        d = min(0.9, (1 + n) / (10 + n))
        decays.append(d)
        ema.update(lin)
    # closed form: e_n = prod(d) e_0 + sum_k (1 - d_k) prod_{j>k} d_j v_k
    expected = math.prod(decays) * 2.0 + sum(
        (1 - decays[k]) * math.prod(decays[k + 1 :]) * values[k] for k in range(len(values))
    )
    assert ema.state_dict()["weight"].item() == pytest.approx(expected, rel=1e-6)
    assert ema.state_dict()["count"].item() == len(values)  # buffers are copied, not averaged
    assert decays[0] == pytest.approx(0.1) and ema.current_decay() == pytest.approx(8 / 17)

    plain = EMA(lin, decay=0.5, warmup=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    plain.update(lin)
    assert plain.state_dict()["weight"].item() == pytest.approx(1.0)  # 0.5 * 2 + 0.5 * 0
    with plain.swapped(lin):
        assert lin.weight.item() == pytest.approx(1.0)
    assert lin.weight.item() == 0.0


def test_trainer_ema_follows_the_recursion():
    seen: list[torch.Tensor] = []

    def record(step: int, trainer: Trainer) -> None:
        seen.append(trainer.model.net[0].weight.detach().double().clone())

    model = ToyFM(0)
    w0 = model.net[0].weight.detach().double().clone()
    run = train(model, moons(), steps=15, ema_decay=0.8, callback=record, **FAST)
    e = w0
    for n, w in enumerate(seen):
        d = min(0.8, (1 + n) / (10 + n))
        e = d * e + (1 - d) * w
    assert torch.allclose(run.ema.state_dict()["net.0.weight"].double(), e, atol=1e-6)
    assert not torch.allclose(e, seen[-1], atol=1e-4)  # the EMA is not just the last weights


def test_lr_schedule_values():
    kw = dict(lr=1.0, steps=110, warmup=10)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(4, **kw) == pytest.approx(0.5)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(35, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_at(60, **kw) == pytest.approx(0.5)
    assert lr_at(60, **kw, min_lr_ratio=0.2) == pytest.approx(0.2 + 0.8 * 0.5)
    assert lr_at(109, **kw) < 0.001
    assert lr_at(80, **kw, schedule="constant") == 1.0
    with pytest.raises(ValueError, match="'cosine' or 'constant'"):
        lr_at(50, **kw, schedule="linear")

    seen = []
    train(
        ToyFM(),
        moons(),
        steps=30,
        callback=lambda s, t: seen.append(t.optimizer.param_groups[0]["lr"]),
        **FAST,
    )
    want = [lr_at(s, lr=FAST["lr"], steps=30, warmup=FAST["warmup"]) for s in range(30)]
    assert seen == pytest.approx(want)


def test_grad_clipping_caps_the_norm():
    norms = []

    def grads(step: int, trainer: Trainer) -> None:
        total = torch.sqrt(sum((p.grad**2).sum() for p in trainer.model.parameters()))
        norms.append((trainer.last_grad_norm.item(), total.item()))

    train(ToyFM(), moons() * 50, steps=6, grad_clip=0.01, callback=grads, **FAST)
    assert all(before > 0.01 for before, _ in norms)  # clipping had something to do ...
    assert all(after <= 0.01 * (1 + 1e-4) for _, after in norms)  # ... and did it
    norms.clear()
    train(ToyFM(), moons() * 50, steps=3, grad_clip=None, callback=grads, **FAST)
    assert all(after == pytest.approx(before, rel=1e-5) and after > 0.01 for before, after in norms)


# ----------------------------------------------------------------------------------------------------
# outputs


def test_metrics_checkpoints_and_run_reopened(tmp_path):
    run = train(ToyFM(0), moons(), steps=20, ckpt_every=4, keep=2, out=tmp_path, config={"a": 1}, **FAST)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert [r["step"] for r in recs] == [8, 16, 20]
    assert all(r["steps_per_sec"] > 0 and r["elapsed"] > 0 and r["grad_norm"] > 0 for r in recs)
    assert recs[0]["lr"] == pytest.approx(lr_at(7, lr=3e-3, steps=20, warmup=4))
    assert [p.name for p in ck_mod.list_checkpoints(tmp_path)] == ["ckpt-000016", "ckpt-000020"]

    reopened = Run(tmp_path)
    assert reopened.step == 20 and reopened.config == {"a": 1} and reopened.metrics() == recs
    m = reopened.load_into(ToyFM(7))
    assert_equal_states(state(m), run.ema.state_dict())
    raw = reopened.load_into(ToyFM(7), ema=False)
    assert_equal_states(state(raw), state(run.model))
    with pytest.raises(RuntimeError, match="holds no model"):
        reopened.generator()
    g = reopened.generator(ToyFM(8))
    assert_equal_states(state(g), run.ema.state_dict()) and not g.training

    gen = run.generator()  # a copy with the EMA weights; the trained model keeps its raw weights
    assert gen is not run.model
    assert_equal_states(state(gen), run.ema.state_dict())
    assert differ(state(run.model), run.ema.state_dict())


def test_in_memory_run():
    run = train(ToyFM(0), moons(), steps=9, **FAST)
    assert run.out is None and [r["step"] for r in run.metrics()] == [8, 9]
    assert_equal_states(state(run.load_into(ToyFM(2))), run.ema.state_dict())


def test_progress_outputs(capsys):
    train(ToyFM(), moons(), steps=8, **FAST)
    assert capsys.readouterr().err == ""  # progress=False: silent
    train(ToyFM(), moons(), steps=8, **{**FAST, "progress": True})
    err = capsys.readouterr().err
    assert "8/8" in err and "step/s" in err


# ----------------------------------------------------------------------------------------------------
# data contract and errors


class Conditional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(3, 2)
        self.seen = None

    def loss(self, batch):
        x, y = batch
        self.seen = (x.shape, y.shape)
        return ((x - self.emb(y)) ** 2).mean()


class SelfSampling(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(2))
        self.requests = []

    def loss(self, req: BatchRequest):
        self.requests.append(req)
        x = torch.randn(req.size, 2, generator=req.generator, device=req.device) + 1.0
        return ((x - self.mu) ** 2).mean()


def test_data_contract():
    x, y = torch.randn(50, 2), torch.randint(0, 3, (50,))
    m = Conditional()
    train(m, (x, y), steps=2, **FAST)
    assert m.seen == (torch.Size([32, 2]), torch.Size([32]))

    s = SelfSampling()
    train(s, None, steps=3, **FAST)
    assert [r.size for r in s.requests] == [32, 32, 32]
    assert isinstance(s.requests[0].generator, torch.Generator)

    with pytest.raises(TypeError, match="data must be a Tensor"):
        train(ToyFM(), {"x": 1}, steps=2, **FAST)
    with pytest.raises(ValueError, match="shared, non-empty first dimension"):
        train(Conditional(), (x, y[:10]), steps=2, **FAST)
    with pytest.raises(TypeError, match="loss"):
        train(nn.Linear(2, 2), x, steps=2, **FAST)


def test_bad_losses_are_reported():
    class VectorLoss(ToyFM):
        def loss(self, x):
            return (x - self.net[0].bias[:2]) ** 2

    with pytest.raises(ValueError, match=r"scalar Tensor, got \(32, 2\)"):
        train(VectorLoss(), moons(), steps=2, **FAST)

    class NanLoss(ToyFM):
        def loss(self, x):
            return super().loss(x) * float("nan")

    with pytest.raises(FloatingPointError, match="lower lr"):
        train(NanLoss(), moons(), steps=8, **FAST)


def test_data_stream_and_global_rng_are_independent():
    """Seeded alike, the data's uniforms would equal the loss's (e.g. flow-matching times)."""
    seen: dict[str, list] = {"data": [], "loss": []}

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def loss(self, batch):
            seen["loss"].append(torch.rand(8))
            return (self.w - batch.mean()) ** 2

    def data(n, g):
        u = torch.rand(8, generator=g)
        seen["data"].append(u)
        return u

    train(Probe(), data, steps=3, seed=0, progress=False)
    for a, b in zip(seen["data"], seen["loss"]):
        assert not torch.allclose(a, b)
    assert len({run_seeds(s, r) for s in range(3) for r in range(3)}) == 9
    assert len(set(run_seeds(0, 0))) == 2


# ----------------------------------------------------------------------------------------------------
# TrainConfig, seeds, threads, run folders


def test_train_config_is_the_one_place_settings_are_checked():
    cfg = TrainConfig(steps=100, grad_clip=0, out="runs/x", device="cpu")
    assert cfg.grad_clip is None and cfg.warmup == 5 and cfg.ckpt_every == 10
    assert cfg.out.name == "x" and cfg.device == torch.device("cpu")
    with pytest.raises(Exception, match="cannot assign"):
        cfg.lr = 1.0  # frozen
    with pytest.raises(
        ValueError, match=r"steps must be an int >= 1, got 0; write e\.g\. steps=1000 \(--steps"
    ):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="lr must be a number > 0"):
        TrainConfig(steps=5, lr=-1)
    with pytest.raises(ValueError, match=r"unknown schedule 'cosin' \(did you mean 'cosine'\?\)"):
        TrainConfig(steps=5, schedule="cosin")
    with pytest.raises(ValueError, match=r"--out runs/name on the command line"):
        TrainConfig(steps=5, resume=True)
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        TrainConfig(steps=5, threads=0)
    # keywords: unknown names list the valid ones; a TrainConfig object works, keywords override it
    with pytest.raises(
        ValueError, match=r"unknown training setting 'step' \(did you mean 'steps'\?\); choose one of"
    ):
        train(ToyFM(), moons(), step=3, **FAST)
    with pytest.raises(TypeError, match="steps=1000"):
        train(ToyFM(), moons(), **FAST)
    a = train(ToyFM(0), moons(), TrainConfig(steps=6, **FAST))
    b = train(ToyFM(0), moons(), TrainConfig(steps=99, **FAST), steps=6)
    assert a.step == b.step == 6 and not differ(state(a.model), state(b.model))
    # the keyword names the recipes use
    recipe_kw = dict(steps=2, out=None, seed=0, resume=False, progress=False, device="cpu", threads=1)
    recipe_kw.update(
        batch_size=8, lr=1e-3, warmup=0, grad_clip=1.0, ema_decay=0.9, schedule="cosine", ckpt_every=0
    )
    assert train(ToyFM(), moons(), config={"name": "r"}, **recipe_kw).step == 2


class GlobalRngFM(ToyFM):
    """A loss that also draws from numpy's and Python's global RNGs."""

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        shift = float(np.random.standard_normal()) + random.gauss(0.0, 1.0)
        return super().loss(x + shift)


def test_fresh_runs_seed_numpy_and_python_too():
    np.random.seed(1)
    random.seed(1)
    a = train(GlobalRngFM(0), moons(), steps=10, seed=3, **FAST)
    np.random.seed(2)  # a different global state before the second run changes nothing
    random.seed(2)
    b = train(GlobalRngFM(0), moons(), steps=10, seed=3, **FAST)
    assert_equal_states(state(a.model), state(b.model))


def test_resume_restores_numpy_and_python_rngs(tmp_path):
    kw = dict(steps=16, ckpt_every=8, seed=1, **FAST)
    full = train(GlobalRngFM(0), moons(), out=tmp_path / "full", **kw)
    with pytest.raises(Kill):
        train(GlobalRngFM(0), moons(), out=tmp_path / "cut", callback=killer(11), **kw)
    resumed = train(GlobalRngFM(5), moons(), out=tmp_path / "cut", resume=True, **kw)
    assert_equal_states(state(full.model), state(resumed.model))


def test_threads_are_set_for_the_run_and_restored():
    torch.set_num_threads(2)  # conftest runs tests on one thread; the fixture restores it
    before = torch.get_num_threads()
    seen = []
    train(
        ToyFM(),
        moons(),
        steps=2,
        threads=1,
        callback=lambda s, t: seen.append(torch.get_num_threads()),
        **FAST,
    )
    assert seen == [1, 1] and torch.get_num_threads() == before
    seen.clear()
    train(ToyFM(), moons(), steps=1, callback=lambda s, t: seen.append(torch.get_num_threads()), **FAST)
    assert seen == [1]  # automatic: a small model on CPU trains on one thread
    big = nn.Linear(1200, 1000)  # 1.2M parameters: torch's default
    assert trainer_mod.auto_threads(big, torch.device("cpu")) is None
    assert trainer_mod.auto_threads(ToyFM(), torch.device("cuda")) is None


class OwnBatches(SelfSampling):
    makes_own_batches = True

    def __init__(self) -> None:
        super().__init__()
        self.env = object()


def test_models_that_make_their_own_batches_get_a_batch_request():
    m = OwnBatches()
    train(m, "ignored: the model makes its batches", steps=2, **FAST)
    assert [type(r) for r in m.requests] == [BatchRequest, BatchRequest]

    with pytest.raises(TypeError, match="data must be a Tensor"):  # no attribute: data must be real data
        train(SelfSampling(), object(), steps=2, **FAST)


def test_a_diverging_run_stops_before_a_bad_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match=r"diverged: .* by step \d+ \(lr .*\); lower lr") as info:
        train(
            ToyFM(0),
            moons() * 1e3,
            steps=200,
            out=tmp_path,
            lr=1e6,
            grad_clip=0,
            ckpt_every=1,
            **{k: v for k, v in FAST.items() if k != "lr"},
        )
    assert "last good checkpoint, ckpt-" in str(info.value)
    ckpt = ck_mod.load_checkpoint(tmp_path)
    for group in ("model", "ema", "optimizer"):
        for name, t in ckpt.tensors[group].items():
            assert torch.isfinite(t).all(), (ckpt.path.name, group, name)


def test_keyboard_interrupt_releases_the_lock_and_names_the_step(tmp_path):
    def interrupt(step: int, trainer: Trainer) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match=r"interrupted at step 5/20.*--resume"):
        train(ToyFM(), moons(), steps=20, out=tmp_path, ckpt_every=5, callback=interrupt, **FAST)
    assert not (tmp_path / ".lock").exists()
    assert train(ToyFM(), moons(), steps=20, out=tmp_path, ckpt_every=5, resume=True, **FAST).step == 20


HOLDER = """
import sys, time, pathlib, torch
from torch import nn
from flowforge.train import train

class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))
    def loss(self, x):
        return ((x - self.w) ** 2).mean()

go = pathlib.Path(sys.argv[2])
def wait(step, trainer):
    while step == 1 and not go.exists():
        time.sleep(0.05)
train(M(), torch.ones(8, 2), steps=3, out=sys.argv[1], batch_size=4, progress=False, callback=wait)
"""


def test_two_processes_cannot_train_into_one_folder(tmp_path):
    out, go = tmp_path / "run", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(go)])
    try:
        for _ in range(600):
            if (out / ".lock").exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert (out / ".lock").exists(), "the first process never took the lock"
        with pytest.raises(RunLockedError, match=rf"process {proc.pid} on .* is training into it") as info:
            train(ToyFM(), moons(), steps=3, out=out, **FAST)
        assert isinstance(info.value, FileExistsError)
        assert "--out" in str(info.value)
    finally:
        go.touch()
        assert proc.wait(timeout=60) == 0
    assert not (out / ".lock").exists() and Run(out).step == 3


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match=f"left by process {dead.pid}, which is no longer running"):
        assert train(ToyFM(), moons(), steps=2, out=tmp_path, **FAST).step == 2
    assert not (tmp_path / ".lock").exists()
    # a lock held by a process on another host is never taken over
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": "elsewhere"}))
    with pytest.raises(RunLockedError, match="on elsewhere"):
        train(ToyFM(), moons(), steps=4, out=tmp_path, resume=True, **FAST)
