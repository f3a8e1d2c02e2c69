"""flowforge against Meta's ``flow_matching`` on the MNIST UNet recipe: time per step, trajectories, FD/acc.

Workload: the ``mnist`` recipe (:mod:`flowforge.recipes.images`): ``UNet(channels=16, mults=(1, 2, 4),
blocks=2, attention=(2,), num_classes=10)``, class-conditional with label dropout 0.1 (null label 10),
linear path, uniform t, batch 64, AdamW (weight decay 0, i.e. Adam) at lr 1e-3 with 200 warm-up steps
and cosine decay, gradient clipping at 1.0, EMA 0.999 with warm-up. MNIST train images are uniformly
dequantised to ``[-1, 1]`` (``flowforge.data.dequantize``).

Fairness: ONE pre-drawn sequence of batches (indices, dequantisation noise, x0 noise, t, label-dropout
mask) feeds both sides, and both start from one initialised network (deep copies), so the two
trajectories see identical inputs.

- Side A, flowforge: ``flowforge.train`` (the Trainer: warm-up + cosine LR, clipping, AdamW, EMA,
  running sums, logging) on the recipe's ``FlowMatching``, whose loss takes x0, t and the dropout mask
  from the batch instead of drawing them (:class:`PreDrawnFlowMatching`; checked at start-up to give
  exactly ``FlowMatching.loss`` when fed the numbers that one would draw).
- Side B, Meta: a plain PyTorch loop with ``AffineProbPath(CondOTScheduler())`` for ``x_t`` and the
  target ``dx_t``, the same AdamW, the LR schedule, clipping and EMA written out.

The two sides run interleaved in one process: after ``--warmup-steps`` untimed steps each, rounds of
``--window`` steps per side alternate the order (A B, B A, ...), so load from other jobs on the machine
hits both alike. The trainer runs in its own thread and hands control back through its per-step
``callback`` (as in ``fm_overhead.py``); one trainer step is timed from the end of one callback to the
start of the next, i.e. everything ``train`` does per step. Times: thread CPU (``time.thread_time``,
the number to trust on a shared machine; with one intra-op thread autograd runs on the calling thread)
and wall. Reported: the median over windows of each window's mean s/step, and the paired ratio
(median over windows of flowforge/Meta).

Then ``--n`` class-balanced samples (classes 0..9 in turn, no guidance) from each side's EMA weights
with the same x0 noise: flowforge's ``FlowMatching.generator().sample(solver="midpoint", steps=S)``,
Meta's ``ODESolver(ModelWrapper(net)).sample(method="midpoint", step_size=1/S)`` (torchdiffeq), both
``2 S`` network calls per sample. Both are quantised alike (``quantize`` then ``2 q / 255 - 1``) and
scored with ``flowforge.metrics.image_features.image_metrics`` (FD in the shipped MNIST classifier's
features against the 10,000 test images, and class accuracy).

Run (one intra-op thread; progress goes to stderr)::

    PYTHONPATH=src python3 benchmarks/images_vs_meta.py --steps 600 --n 2000 --threads 1 \
        --json runs/images_vs_meta.json
    PYTHONPATH=src python3 benchmarks/images_vs_meta.py --smoke     # < 1 min
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from typing import Any

import torch
from torch import Tensor, nn

import flowforge
from flowforge.continuous import FlowMatching
from flowforge.core.objectives import regression_loss, regression_target
from flowforge.data import dequantize, load_mnist, quantize
from flowforge.metrics.image_features import image_metrics
from flowforge.recipes import get_recipe
from flowforge.recipes.images import build_image_fm
from flowforge.train import train

LEVELS = 256


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def import_meta():
    """Meta's path, scheduler, solver and model wrapper, or exit with how to install them."""
    try:
        import flow_matching
        from flow_matching.path import AffineProbPath
        from flow_matching.path.scheduler import CondOTScheduler
        from flow_matching.solver import ODESolver
        from flow_matching.utils import ModelWrapper
    except ImportError as e:
        raise SystemExit(
            f"Meta's flow_matching is missing ({e}). Install it without replacing the CPU torch:\n"
            "    bash ../shared/tools/install_peers.sh fm\n"
            "(flow-matching 1.0.10 with --no-deps; never `pip install torch`)"
        ) from e
    return flow_matching, AffineProbPath, CondOTScheduler, ODESolver, ModelWrapper


# ----------------------------------------------------------------------------------------------------
# the shared inputs


def predraw(x: Tensor, y: Tensor, steps: int, batch: int, p_drop: float, seed: int) -> list[tuple]:
    """``steps`` batches ``(x1, y, x0, t, drop)``, all drawn here from one generator.

    ``x1: (B, 1, 28, 28)`` dequantised images in ``[-1, 1]``, ``y: (B,)`` labels, ``x0`` the source
    noise, ``t: (B,)`` uniform times, ``drop: (B,)`` bool label-dropout mask (``u < p_drop``).
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        x1 = dequantize(x[idx], LEVELS, generator=g)
        x0 = torch.randn(x1.shape, generator=g)
        t = torch.rand(batch, generator=g)
        drop = torch.rand(batch, generator=g) < p_drop
        out.append((x1, y[idx], x0, t, drop))
    return out


class PreDrawnFlowMatching(FlowMatching):
    """``FlowMatching`` whose loss reads ``x0``, ``t`` and the label-dropout mask from the batch.

    ``loss((x1, y, x0, t, drop))`` does what :meth:`FlowMatching.loss` does after its three random
    draws (path sample, null label where ``drop``, network, regression target and loss).
    """

    def loss(self, batch: Any) -> Tensor:
        x1, y, x0, t, drop = batch
        ps = self.path.sample(x0, x1, t)
        y = torch.where(drop, torch.full_like(y, self.null_label), y)
        pred = self.net(ps.x_t, t, y=y)
        return regression_loss(pred, regression_target(ps, self.prediction), t, self.distance, self.weighting)


def check_predrawn(fm: FlowMatching, pre: PreDrawnFlowMatching, x1: Tensor, y: Tensor) -> None:
    """``pre.loss`` equals ``fm.loss`` bit for bit when given the numbers ``fm.loss`` draws.

    Checked on a perturbed copy of the network: the UNet's zero-initialised layers would otherwise hide
    the labels (and so a wrong dropout mask) from the loss.
    """
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        fm, pre = copy.deepcopy(fm), copy.deepcopy(pre)
        with torch.no_grad():
            for p in fm.net.parameters():
                p.add_(0.1 * torch.randn_like(p))
        pre.net = fm.net
        torch.manual_seed(1234)
        ref = fm.loss((x1, y))
        torch.manual_seed(1234)  # FlowMatching.loss draws x0, then t (Uniform), then the dropout uniforms
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0])
        drop = torch.rand(y.shape) < fm.label_dropout
        got = pre.loss((x1, y, x0, t, drop))
    if not torch.equal(ref, got):
        raise RuntimeError(f"PreDrawnFlowMatching.loss {got.item()} != FlowMatching.loss {ref.item()}")


# ----------------------------------------------------------------------------------------------------
# the two sides


class _Stop(Exception):
    pass


class FlowforgeSide:
    """``flowforge.train`` in its own thread, paused in its per-step callback between windows."""

    name = "flowforge"

    def __init__(self, model: PreDrawnFlowMatching, batches: list[tuple], settings: dict[str, Any]) -> None:
        self.model, self.batches = model, batches
        self.losses: list[Tensor] = []
        self.run = None
        self.go, self.done = threading.Event(), threading.Event()
        self.quota, self.stop, self.error, self._i = 0, False, None, 0
        self._cpu: list[float] = []
        self._wall: list[float] = []

        def data(batch_size: int, generator: torch.Generator) -> tuple:
            b = batches[self._i]  # the pre-drawn batch of this step (the trainer's generator is unused)
            self._i += 1
            return b

        def body() -> None:
            try:
                self.go.wait()
                self.go.clear()
                if self.stop:
                    return
                self._c, self._w = time.thread_time(), time.perf_counter()
                self.run = train(model, data, callback=self._callback, **settings)
            except _Stop:
                pass
            except BaseException as e:  # surfaced in the main thread
                self.error = e
            finally:
                self.done.set()

        self.thread = threading.Thread(target=body, name="flowforge-train", daemon=True)
        self.thread.start()

    def _callback(self, step: int, trainer) -> None:
        c, w = time.thread_time(), time.perf_counter()
        self._cpu.append(c - self._c)
        self._wall.append(w - self._w)
        self.losses.append(trainer.last_loss)
        self.quota -= 1
        if self.quota == 0:
            self.done.set()
            self.go.wait()
            self.go.clear()
            if self.stop:
                raise _Stop
        self._c, self._w = time.thread_time(), time.perf_counter()

    def run_window(self, n: int) -> tuple[list[float], list[float]]:
        self._cpu, self._wall = [], []
        self.quota = n
        self.done.clear()
        self.go.set()
        self.done.wait()
        if self.error is not None:
            raise RuntimeError("flowforge side failed") from self.error
        return self._cpu, self._wall

    def finish(self) -> None:
        """Let ``train`` return (after its last callback) and keep the Run."""
        self.go.set()
        self.thread.join(timeout=600)
        if self.error is not None:
            raise RuntimeError("flowforge side failed") from self.error

    def close(self) -> None:
        if self.thread.is_alive():
            self.stop = True
            self.go.set()
            self.thread.join(timeout=60)

    def ema_net(self) -> nn.Module:
        """The UNet with the trainer's EMA weights."""
        model = copy.deepcopy(self.run.model)
        self.run.load_into(model, ema=True)
        return model.net


class MetaSide:
    """A plain PyTorch loop on Meta's ``AffineProbPath(CondOTScheduler())`` with the trainer's extras."""

    name = "meta"

    def __init__(self, net: nn.Module, batches: list[tuple], cfg: dict[str, Any], null_label: int) -> None:
        _, AffineProbPath, CondOTScheduler, _, _ = import_meta()
        self.net, self.batches, self.null = net, batches, null_label
        self.path = AffineProbPath(scheduler=CondOTScheduler())
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg["lr"], betas=(0.9, 0.999), weight_decay=0.0)
        self.steps, self.warmup, self.lr = cfg["steps"], cfg["warmup"], cfg["lr"]
        self.clip, self.decay = cfg["grad_clip"], cfg["ema_decay"]
        names = {n for n, _ in net.named_parameters()}
        self.shadow = {k: v.detach().clone() for k, v in net.state_dict().items()}
        live = net.state_dict(keep_vars=True)
        self.avg_s = [self.shadow[k] for k in self.shadow if k in names]
        self.avg_p = [live[k].detach() for k in self.shadow if k in names]
        self.copies = [(self.shadow[k], live[k].detach()) for k in self.shadow if k not in names]
        self.n = 0
        self.losses: list[Tensor] = []
        net.train()

    def lr_at(self, s: int) -> float:
        """Linear warm-up, then cosine decay to 0."""
        if s < self.warmup:
            return self.lr * (s + 1) / self.warmup
        p = min(1.0, (s - self.warmup) / (self.steps - self.warmup))
        return self.lr * (0.5 * (1.0 + math.cos(math.pi * p)))

    def step(self) -> Tensor:
        x1, y, x0, t, drop = self.batches[self.n]
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.n)
        ps = self.path.sample(x_0=x0, x_1=x1, t=t)
        y = torch.where(drop, torch.full_like(y, self.null), y)
        loss = (self.net(ps.x_t, ps.t, y=y) - ps.dx_t).pow(2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        d = min(self.decay, (1.0 + self.n) / (10.0 + self.n))  # EMA with warm-up
        with torch.no_grad():
            torch._foreach_mul_(self.avg_s, d)
            torch._foreach_add_(self.avg_s, self.avg_p, alpha=1.0 - d)
            for s, v in self.copies:
                s.copy_(v)
        self.n += 1
        return loss.detach()

    def run_window(self, n: int) -> tuple[list[float], list[float]]:
        cpu, wall, tc, tw = [], [], time.thread_time, time.perf_counter
        for _ in range(n):
            c0, w0 = tc(), tw()
            loss = self.step()
            c1, w1 = tc(), tw()
            cpu.append(c1 - c0)
            wall.append(w1 - w0)
            self.losses.append(loss)
        return cpu, wall

    def ema_net(self) -> nn.Module:
        net = copy.deepcopy(self.net)
        net.load_state_dict(self.shadow)
        return net


# ----------------------------------------------------------------------------------------------------
# sampling and scoring


class Counter:
    """Counts calls of a module (a forward pre-hook): the NFE of a sampler."""

    def __init__(self, net: nn.Module) -> None:
        self.calls = 0
        net.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any) -> None:
        self.calls += 1


def make_samplers(ff_net: nn.Module, meta_net: nn.Module, template: FlowMatching, steps: int):
    """Two functions ``(x0, y) -> x1`` in ``[-1, 1]``-ish floats, and their call counters."""
    _, _, _, ODESolver, ModelWrapper = import_meta()

    class Velocity(ModelWrapper):
        """Meta's wrapper onto ``net(x, t, y=...)``: their solver passes a 0-dim t; ours wants ``(B,)``."""

        def forward(self, x: Tensor, t: Tensor, **extras: Tensor) -> Tensor:
            return self.model(x, t.reshape(-1).expand(x.shape[0]).to(x.dtype), **extras)

    fm = FlowMatching(ff_net, path=template.path, event_shape=tuple(template.event_shape)).eval()
    gen = fm.generator()
    solver = ODESolver(velocity_model=Velocity(meta_net.eval()))
    counters = Counter(ff_net), Counter(meta_net)

    def ff(x0: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            return gen.sample(len(x0), cond={"y": y}, x0=x0, solver="midpoint", steps=steps)

    def meta(x0: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            return solver.sample(x_init=x0, step_size=1.0 / steps, method="midpoint", y=y)

    return (ff, meta), counters


def to_scored(x: Tensor) -> Tensor:
    """Generated floats -> integer pixels -> ``2 q / 255 - 1`` (how real test images are scaled)."""
    return quantize(x.clamp(-1.0, 1.0), LEVELS).float() * (2.0 / (LEVELS - 1)) - 1.0


# ----------------------------------------------------------------------------------------------------


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="../shared/data/mnist", help="folder with the four MNIST IDX files")
    ap.add_argument("--steps", type=int, default=600, help="training steps per side")
    ap.add_argument("--n", type=int, default=2000, help="class-balanced samples per side")
    ap.add_argument("--sample-steps", type=int, default=10, help="midpoint steps S (NFE = 2 S)")
    ap.add_argument("--warmup-steps", type=int, default=20, help="untimed steps per side before timing")
    ap.add_argument("--window", type=int, default=10, help="steps per side per interleaved window")
    ap.add_argument("--lr-warmup", type=int, default=None, help="LR warm-up (default: the recipe's, 200)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--smoke", action="store_true", help="tiny run (< 1 min): 10 steps, 40 samples")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.n, args.sample_steps, args.warmup_steps, args.window = 10, 40, 2, 2, 2
        args.lr_warmup = 2
    if args.steps <= args.warmup_steps or args.window < 1 or args.n < 10 or args.sample_steps < 1:
        ap.error("need --steps > --warmup-steps, --window >= 1, --n >= 10 and --sample-steps >= 1")

    torch.set_num_threads(args.threads)
    meta_mod = import_meta()[0]
    recipe = dict(get_recipe("mnist").defaults)
    cfg = {
        "steps": args.steps,
        "batch_size": recipe["batch_size"],
        "lr": recipe["lr"],
        "warmup": recipe["warmup"] if args.lr_warmup is None else args.lr_warmup,
        "grad_clip": recipe["grad_clip"],
        "ema_decay": recipe["ema_decay"],
    }
    env = (
        f"torch {torch.__version__}, flowforge {getattr(flowforge, '__version__', '?')}, flow_matching "
        f"{getattr(meta_mod, '__version__', '?')}, Python {platform.python_version()}, torch threads "
        f"{torch.get_num_threads()}, os.cpu_count {os.cpu_count()}, load avg at start {os.getloadavg()}"
    )
    log(env)

    train_set = load_mnist(args.data_dir, "train", download=False)
    test_set = load_mnist(args.data_dir, "test", download=False)
    batches = predraw(
        train_set.x, train_set.y, args.steps, cfg["batch_size"], recipe["label_dropout"], args.seed
    )

    torch.manual_seed(args.seed)  # the network's initialisation (this script's only global-RNG use)
    fm_recipe = build_image_fm({**recipe, "image_shape": [1, 28, 28]})
    base = fm_recipe.net
    log(f"UNet: {sum(p.numel() for p in base.parameters()) / 1e6:.3f} M parameters; config {cfg}")

    def predrawn(net: nn.Module) -> PreDrawnFlowMatching:
        return PreDrawnFlowMatching(
            net,
            path=fm_recipe.path,
            time=fm_recipe.time,
            distance=fm_recipe.distance,
            label_dropout=fm_recipe.label_dropout,
            event_shape=tuple(fm_recipe.event_shape),
        )

    check_predrawn(fm_recipe, predrawn(base), batches[0][0][:8], batches[0][1][:8])
    log("check: PreDrawnFlowMatching.loss == FlowMatching.loss on the same draws (bit for bit)")

    settings = {
        "steps": cfg["steps"],
        "batch_size": cfg["batch_size"],
        "lr": cfg["lr"],
        "warmup": cfg["warmup"],
        "grad_clip": cfg["grad_clip"],
        "ema_decay": cfg["ema_decay"],
        "threads": args.threads,
        "progress": False,
        "out": None,
        "device": "cpu",
        "seed": args.seed,
    }
    side_a = FlowforgeSide(predrawn(copy.deepcopy(base)), batches, settings)
    side_b = MetaSide(copy.deepcopy(base), batches, cfg, fm_recipe.null_label)
    sides = (side_a, side_b)
    times: dict[str, dict[str, list[float]]] = {s.name: {"cpu": [], "wall": []} for s in sides}
    t0 = time.perf_counter()
    try:
        for s in sides:
            s.run_window(args.warmup_steps)
        done, r = args.warmup_steps, 0
        while done < args.steps:
            n = min(args.window, args.steps - done)
            for s in sides if r % 2 == 0 else sides[::-1]:
                cpu, wall = s.run_window(n)
                times[s.name]["cpu"].append(sum(cpu) / n)
                times[s.name]["wall"].append(sum(wall) / n)
            done, r = done + n, r + 1
            if r % 5 == 0 or done == args.steps:
                log(
                    f"step {done}/{args.steps} ({time.perf_counter() - t0:.0f}s): loss flowforge "
                    f"{side_a.losses[-1].item():.4f}, meta {side_b.losses[-1].item():.4f}"
                )
        side_a.finish()
    finally:
        side_a.close()
    train_wall = time.perf_counter() - t0

    # trajectories
    la, lb = torch.stack(side_a.losses), torch.stack(side_b.losses)
    differ = torch.nonzero(la != lb)
    first = None if differ.numel() == 0 else int(differ[0].item())
    raw_a, raw_b = side_a.run.model.net.state_dict(), side_b.net.state_dict()
    net_a, net_b = side_a.ema_net(), side_b.ema_net()
    ema_a, ema_b = net_a.state_dict(), net_b.state_dict()
    raw_diff = max((raw_a[k] - raw_b[k]).abs().max().item() for k in raw_a)
    ema_diff = max((ema_a[k] - ema_b[k]).abs().max().item() for k in ema_a)
    ema_scale = max(v.abs().max().item() for v in ema_a.values())
    log(
        f"trained both sides in {train_wall:.0f}s; losses first differ at "
        f"{'never' if first is None else f'step {first}'}; max |dloss| {(la - lb).abs().max().item():.3g}; "
        f"final weights max |diff| raw {raw_diff:.3g}, EMA {ema_diff:.3g} (max |w| {ema_scale:.3g})"
    )

    # sampling: same x0 and labels for both sides, chunks interleaved
    (samp_a, samp_b), (cnt_a, cnt_b) = make_samplers(net_a, net_b, fm_recipe, args.sample_steps)
    g = torch.Generator().manual_seed(args.seed + 1)
    x0 = torch.randn((args.n, 1, 28, 28), generator=g)
    labels = torch.arange(args.n) % 10
    out = {"flowforge": [], "meta": []}
    stime = {"flowforge": [0.0, 0.0], "meta": [0.0, 0.0]}
    nfe = {}
    chunk = 500
    for i, start in enumerate(range(0, args.n, chunk)):
        xc, yc = x0[start : start + chunk], labels[start : start + chunk]
        pairs = [("flowforge", samp_a, cnt_a), ("meta", samp_b, cnt_b)]
        for name, fn, cnt in pairs if i % 2 == 0 else pairs[::-1]:
            before = cnt.calls
            c0, w0 = time.thread_time(), time.perf_counter()
            out[name].append(fn(xc, yc))
            stime[name][0] += time.thread_time() - c0
            stime[name][1] += time.perf_counter() - w0
            nfe[name] = cnt.calls - before
        log(f"sampled {min(start + chunk, args.n)}/{args.n} per side")
    xs = {k: torch.cat(v) for k, v in out.items()}
    sample_diff = (xs["flowforge"] - xs["meta"]).abs().max().item()

    # solver check: both samplers on the SAME (flowforge EMA) network and x0
    (chk_a, chk_b), _ = make_samplers(net_a, net_a, fm_recipe, args.sample_steps)
    solver_diff = (chk_a(x0[:50], labels[:50]) - chk_b(x0[:50], labels[:50])).abs().max().item()

    ref = test_set.x.float() * (2.0 / (LEVELS - 1)) - 1.0
    rows = []
    for s in sides:
        m = image_metrics(to_scored(xs[s.name]), ref, dataset="mnist", metrics=("fd", "acc"), labels=labels)
        tm = times[s.name]
        rows.append(
            {
                "side": s.name,
                "cpu_s_per_step": med(tm["cpu"]),
                "wall_s_per_step": med(tm["wall"]),
                "fd": float(m["fd"]),
                "acc": float(m["acc"]),
                "nfe": nfe[s.name],  # network calls per chunk = per sample
                "sample_cpu_s": stime[s.name][0],
                "sample_wall_s": stime[s.name][1],
                "final_loss_mean_last50": (la if s is side_a else lb)[-50:].mean().item(),
            }
        )
    ta, tb = times["flowforge"], times["meta"]
    ratio_cpu = [a / b for a, b in zip(ta["cpu"], tb["cpu"], strict=True)]
    ratio_wall = [a / b for a, b in zip(ta["wall"], tb["wall"], strict=True)]
    q = statistics.quantiles(ratio_cpu, n=4) if len(ratio_cpu) > 1 else ratio_cpu * 3
    result = {
        "command": " ".join(sys.argv),
        "env": env,
        "load_avg_end": os.getloadavg(),
        "config": cfg,
        "sample_steps": args.sample_steps,
        "n": args.n,
        "windows": len(ratio_cpu),
        "window": args.window,
        "warmup_steps": args.warmup_steps,
        "rows": rows,
        "paired_ratio_cpu": med(ratio_cpu),
        "paired_ratio_cpu_iqr": [q[0], q[2]],
        "paired_ratio_wall": med(ratio_wall),
        "losses_first_differ_at": first,
        "loss_max_abs_diff": (la - lb).abs().max().item(),
        "raw_weights_max_abs_diff": raw_diff,
        "ema_weights_max_abs_diff": ema_diff,
        "ema_weights_max_abs": ema_scale,
        "samples_max_abs_diff": sample_diff,
        "solver_check_max_abs_diff": solver_diff,
        "train_wall_s": train_wall,
    }

    print(env)
    print(
        f"\n{cfg['steps']} steps per side (batch {cfg['batch_size']}), {args.warmup_steps} untimed, then "
        f"{len(ratio_cpu)} interleaved windows of {args.window}; s/step = median over windows of the "
        f"window mean; ratio = median over windows of flowforge/meta (CPU IQR {q[0]:.3f}-{q[2]:.3f})\n"
    )
    print("| side | CPU s/step | wall s/step | CPU ratio | wall ratio | FD | acc | NFE | sampling CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ff = row["side"] == "flowforge"
        print(
            f"| {row['side']} | {row['cpu_s_per_step']:.4f} | {row['wall_s_per_step']:.4f} | "
            f"{result['paired_ratio_cpu'] if ff else 1.0:.3f} | {result['paired_ratio_wall'] if ff else 1.0:.3f} "
            f"| {row['fd']:.3f} | {row['acc']:.4f} | {row['nfe']} | {row['sample_cpu_s']:.1f} |"
        )
    print(
        f"\nlosses first differ at {'never (bit-identical)' if first is None else f'step {first}'}; "
        f"final weights max |diff|: raw {raw_diff:.3g}, EMA {ema_diff:.3g} (max |w| {ema_scale:.3g}); "
        f"samples max |diff| {sample_diff:.3g}; solver check (same net, same x0) max |diff| {solver_diff:.3g}"
    )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
