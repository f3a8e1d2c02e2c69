"""Per-step overhead of flowforge's flow-matching objective and trainer against plain PyTorch and peers.

Workload (as in section 6 of ``shared/reference/flow-matching-libraries.md``): N(0, I) -> two moons
(standardised), the flowforge ``MLP(2, 256, 3)`` ([x, t] -> 256 -> 256 -> 256 -> 2, SiLU), AdamW
(weight decay 0, i.e. Adam) at lr 1e-3, batch 256, linear path with sigma = 0. Every variant gets an
identical copy of one initialised network and the same pre-generated data batch at step ``i``, and
starts its own global-RNG stream from ``torch.manual_seed(0)``, so variants that draw ``x0`` then ``t``
in the same order see the same random numbers.

Variants
    plain          hand-written path x_t = t x1 + (1 - t) x0, target x1 - x0, MSE, AdamW step
    flow_matching  Meta's ``AffineProbPath(CondOTScheduler())`` in the same loop
    torchcfm       ``ConditionalFlowMatcher(sigma=0).sample_location_and_conditional_flow`` (t, x) -> lambda
    ff.loss        flowforge ``FlowMatching(net).loss(x1)`` in the same loop
    ff.train(min)  ``flowforge.train.train`` with constant LR, no warm-up, ``grad_clip=None``, no
                   checkpoints, no progress. The trainer cannot switch off its EMA update or the gradient
                   norm it logs, so it is compared with ...
    plain+norm+ema the plain loop plus ``clip_grad_norm_(params, inf)`` and a foreach EMA (the same work)
    ff.train(dflt) ``train`` with its defaults: warm-up + cosine LR, clipping at 1.0, EMA 0.999 (warm-up)
    plain+clip+ema the plain loop plus the same warm-up + cosine LR, clipping at 1.0 and foreach EMA

Method (the machine is shared, so CPU time per thread is the number to trust): one intra-op thread,
warm-up steps untimed, then ``--blocks`` rounds in which every variant runs ``--steps`` consecutive
steps; the order of variants rotates from round to round. Each step is timed with
``time.thread_time()`` (CPU of the thread that runs it; on CPU autograd runs backward on the calling
thread) and ``time.perf_counter()`` (wall). The two ``train`` calls run in their own threads and hand
control back and forth through their ``callback``, so they interleave with the other variants without
being restarted; a trainer step is timed from the end of one callback to the start of the next, i.e.
everything ``train`` does per step. Reported: median per-step time over all timed steps, the ratio
of medians to the reference variant, and the range of per-round ratios of medians.

Run:  python benchmarks/fm_overhead.py                 (defaults: 6 rounds x 300 steps, ~3-5 min)
      python benchmarks/fm_overhead.py --quick         (smoke test, seconds)
Peers: bash ../shared/tools/install_peers.sh fm        (flow_matching 1.0.10, torchcfm 1.0.7, no-deps)
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import flowforge
from flowforge.continuous import FlowMatching
from flowforge.data import toy2d
from flowforge.nn import MLP
from flowforge.train import train

BATCH = 256
LR = 1e-3
EMA_DECAY = 0.999
CLIP = 1.0


def import_peers():
    """Import Meta's flow_matching and torchcfm, or exit with how to install them."""
    try:
        import flow_matching
        import torchcfm
        from flow_matching.path import AffineProbPath
        from flow_matching.path.scheduler import CondOTScheduler
        from torchcfm.conditional_flow_matching import ConditionalFlowMatcher
    except ImportError as e:
        raise SystemExit(
            f"peer library missing ({e}). Install the peers without replacing the CPU torch:\n"
            "    bash /work/shared/tools/install_peers.sh fm\n"
            "(flow-matching 1.0.10 and torchcfm 1.0.7 with --no-deps; never `pip install torch`)"
        ) from e
    versions = {
        "flow_matching": getattr(flow_matching, "__version__", "?"),
        "torchcfm": getattr(torchcfm, "__version__", "?"),
    }
    return AffineProbPath, CondOTScheduler, ConditionalFlowMatcher, versions


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 0 (hand-written, the schedule train() uses by default)."""
    if step < warmup:
        return LR * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(total - warmup, 1))
    return LR * 0.5 * (1.0 + math.cos(math.pi * p))


# ----------------------------------------------------------------------------------------------------
# variants


@dataclass
class Variant:
    name: str
    cpu: list[list[float]] = field(default_factory=list)  # per round: per-step CPU seconds
    wall: list[list[float]] = field(default_factory=list)
    losses: list[Tensor] = field(default_factory=list)  # every step's loss (detached), warm-up included

    def run_block(self, batches: list[Tensor], start: int, n: int, timed: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LoopVariant(Variant):
    """A hand-written training loop; ``step(x1) -> loss`` does one full optimizer step."""

    def __init__(self, name: str, step: Callable[[Tensor], Tensor]) -> None:
        super().__init__(name)
        self.step = step
        torch.manual_seed(0)
        self.rng = torch.get_rng_state()  # this variant's own stream of the global RNG

    def run_block(self, batches: list[Tensor], start: int, n: int, timed: bool) -> None:
        torch.set_rng_state(self.rng)
        step, losses, cpu, wall = self.step, self.losses, [], []
        tc, tw = time.thread_time, time.perf_counter
        for i in range(start, start + n):
            x1 = batches[i]
            c0, w0 = tc(), tw()
            loss = step(x1)
            c1, w1 = tc(), tw()
            cpu.append(c1 - c0)
            wall.append(w1 - w0)
            losses.append(loss.detach())
        self.rng = torch.get_rng_state()
        if timed:
            self.cpu.append(cpu)
            self.wall.append(wall)


class _Stop(Exception):
    pass


class TrainVariant(Variant):
    """``flowforge.train.train`` running in its own thread, paused in its callback between blocks."""

    def __init__(self, name: str, model: nn.Module, batches: list[Tensor], total: int, **kwargs) -> None:
        super().__init__(name)
        self.go, self.done = threading.Event(), threading.Event()
        self.quota, self.stop, self.error = 0, False, None
        self._cpu: list[float] = []
        self._wall: list[float] = []
        self._i = 0

        def data(batch_size: int, generator: torch.Generator) -> Tensor:
            x1 = batches[self._i]  # the same pre-generated batch as every other variant's step i
            self._i += 1
            return x1

        def body() -> None:
            try:
                self.go.wait()
                self.go.clear()
                if self.stop:
                    return
                self._c, self._w = time.thread_time(), time.perf_counter()
                train(model, data, steps=total, callback=self._callback, progress=False, out=None, **kwargs)
            except _Stop:
                pass
            except BaseException as e:  # surface it in the main thread
                self.error = e
            finally:
                self.done.set()

        self.thread = threading.Thread(target=body, name=name, daemon=True)
        self.thread.start()

    def _callback(self, step: int, trainer) -> None:
        c, w = time.thread_time(), time.perf_counter()
        self._cpu.append(c - self._c)
        self._wall.append(w - self._w)
        self.losses.append(trainer.last_loss)
        self.quota -= 1
        if self.quota == 0:
            self.rng = torch.get_rng_state()  # train() seeded the global RNG; keep its stream
            self.done.set()
            self.go.wait()
            self.go.clear()
            if self.stop:
                raise _Stop
            torch.set_rng_state(self.rng)
        self._c, self._w = time.thread_time(), time.perf_counter()

    def run_block(self, batches: list[Tensor], start: int, n: int, timed: bool) -> None:
        if self._i != start:
            raise RuntimeError(f"{self.name}: out of step ({self._i} != {start})")
        self._cpu, self._wall = [], []
        self.quota = n
        self.done.clear()
        self.go.set()
        self.done.wait()
        if self.error is not None:
            raise RuntimeError(f"{self.name} failed") from self.error
        if timed:
            self.cpu.append(self._cpu)
            self.wall.append(self._wall)

    def close(self) -> None:
        self.stop = True  # the thread returns (or leaves train() early) when it wakes
        self.go.set()
        self.thread.join(timeout=60)


def build_variants(base: MLP, batches: list[Tensor], total: int) -> tuple[list[Variant], dict[str, str]]:
    AffineProbPath, CondOTScheduler, ConditionalFlowMatcher, versions = import_peers()
    warm = min(1000, total // 20)  # train()'s default warm-up, reproduced by the plain+clip+ema loop

    def loop(
        objective: Callable[[nn.Module, Tensor], Tensor],
        extras: str = "",
        wrap: Callable[[nn.Module], nn.Module] = lambda net: net,
    ) -> Callable:
        net = wrap(copy.deepcopy(base))
        params = list(net.parameters())
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
        shadow = [p.detach().clone() for p in params]
        state = {"n": 0}

        def step(x1: Tensor) -> Tensor:
            if extras == "clip":
                lr = warmup_cosine(state["n"], total, warm)
                for g in opt.param_groups:
                    g["lr"] = lr
            loss = objective(net, x1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if extras:
                torch.nn.utils.clip_grad_norm_(params, CLIP if extras == "clip" else math.inf)
            opt.step()
            if extras:
                n = state["n"]
                d = min(EMA_DECAY, (1.0 + n) / (10.0 + n))
                with torch.no_grad():
                    torch._foreach_mul_(shadow, d)
                    torch._foreach_add_(shadow, params, alpha=1.0 - d)
            state["n"] += 1
            return loss

        return step

    def plain(net: nn.Module, x1: Tensor) -> Tensor:
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0])
        tt = t[:, None]
        x_t = tt * x1 + (1 - tt) * x0
        u_t = x1 - x0
        return (net(x_t, t) - u_t).pow(2).mean()

    fm_path = AffineProbPath(scheduler=CondOTScheduler())

    def meta(net: nn.Module, x1: Tensor) -> Tensor:
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0])
        ps = fm_path.sample(x_0=x0, x_1=x1, t=t)
        return (net(ps.x_t, ps.t) - ps.dx_t).pow(2).mean()

    cfm = ConditionalFlowMatcher(sigma=0.0)

    def tcfm(net: nn.Module, x1: Tensor) -> Tensor:
        velocity = lambda t, x: net(x, t)  # torchcfm's (t, x) convention onto net(x, t)
        x0 = torch.randn_like(x1)
        t, x_t, u_t = cfm.sample_location_and_conditional_flow(x0, x1)
        return (velocity(t, x_t) - u_t).pow(2).mean()

    def ff_loss(fm: FlowMatching, x1: Tensor) -> Tensor:
        return fm.loss(x1)

    variants: list[Variant] = [
        LoopVariant("plain", loop(plain)),
        LoopVariant("plain (A/A)", loop(plain)),  # a second identical copy: the noise floor
        LoopVariant("flow_matching", loop(meta)),
        LoopVariant("torchcfm", loop(tcfm)),
        LoopVariant("ff.loss", loop(ff_loss, wrap=FlowMatching)),
        TrainVariant(
            "ff.train(min)",
            FlowMatching(copy.deepcopy(base)),
            batches,
            total,
            warmup=0,
            schedule="constant",
            grad_clip=None,
            ema_decay=EMA_DECAY,
            ckpt_every=0,
            seed=0,
        ),
        LoopVariant("plain+norm+ema", loop(plain, "norm")),
        TrainVariant("ff.train(dflt)", FlowMatching(copy.deepcopy(base)), batches, total, seed=0),
        LoopVariant("plain+clip+ema", loop(plain, "clip")),
    ]
    return variants, versions


# ----------------------------------------------------------------------------------------------------
# report

COMPARISONS = [  # (variant, reference, what the ratio says)
    ("plain", "plain", "reference"),
    ("plain (A/A)", "plain", "identical work: noise floor"),
    ("flow_matching", "plain", "objective"),
    ("torchcfm", "plain", "objective"),
    ("ff.loss", "plain", "objective  [req <= 1.05]"),
    ("ff.train(min)", "plain", "trainer vs bare loop (EMA+norm not switchable)"),
    ("ff.train(min)", "plain+norm+ema", "trainer, like for like  [req <= 1.05]"),
    ("plain+norm+ema", "plain", "cost of EMA + grad norm"),
    ("ff.train(dflt)", "plain+clip+ema", "trainer defaults, like for like  [req <= 1.05]"),
    ("plain+clip+ema", "plain", "cost of EMA + clip + cosine"),
]


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def report(variants: list[Variant], steps: int, blocks: int) -> list[str]:
    by = {v.name: v for v in variants}
    flat = {v.name: (sum(v.cpu, []), sum(v.wall, [])) for v in variants}
    lines = [
        f"per-step times over {blocks} rounds x {steps} steps per variant (medians; ms)",
        "",
        "| variant | reference | CPU ms/step | wall ms/step | CPU ratio | paired CPU ratio [IQR] "
        "| wall ratio | comparison |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, ref, what in COMPARISONS:
        c, w = flat[name]
        rc, rw = flat[ref]
        rounds = [med(a) / med(b) for a, b in zip(by[name].cpu, by[ref].cpu)]
        q1, q2, q3 = statistics.quantiles(rounds, n=4) if len(rounds) > 1 else rounds * 3
        lines.append(
            f"| {name} | {ref} | {1e3 * med(c):.3f} | {1e3 * med(w):.3f} | {med(c) / med(rc):.3f} | "
            f"{q2:.3f} [{q1:.3f}, {q3:.3f}] | {med(w) / med(rw):.3f} | {what} |"
        )
    lines += ["", "losses (mean of the last 100 steps; final step)", ""]
    lines += ["| variant | mean last 100 | final |", "|---|---|---|"]
    for v in variants:
        tail = torch.stack(v.losses[-100:])
        lines.append(f"| {v.name} | {tail.mean().item():.5f} | {v.losses[-1].item():.5f} |")
    lines += ["", "loss trajectories compared step by step:"]
    pairs = [
        ("plain", "flow_matching"),
        ("plain", "ff.loss"),
        ("plain", "torchcfm"),
        ("plain+norm+ema", "ff.train(min)"),
        ("plain+clip+ema", "ff.train(dflt)"),
    ]
    for a, b in pairs:
        la, lb = torch.stack(by[a].losses), torch.stack(by[b].losses)
        diff = (la - lb).abs()
        same = torch.nonzero(diff != 0)
        first = "never (bit-identical)" if same.numel() == 0 else f"step {same[0].item()}"
        lines.append(
            f"- {a} vs {b}: first differing step {first}; max |diff| over steps "
            f"{diff.max().item():.3g}; |diff| of final losses {diff[-1].item():.3g}"
        )
    return lines


# ----------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="timed steps per variant per round")
    ap.add_argument("--blocks", type=int, default=6, help="rounds (each variant runs --steps per round)")
    ap.add_argument("--warmup", type=int, default=100, help="untimed warm-up steps per variant")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (2 rounds x 20 steps)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.blocks, args.warmup = 20, 2, 5
    if args.steps < 1 or args.blocks < 1 or args.warmup < 0:
        ap.error("--steps and --blocks must be >= 1, --warmup >= 0")

    torch.set_num_threads(1)
    total = args.warmup + args.blocks * args.steps
    x = toy2d("moons", total * BATCH, seed=0)
    x = (x - x.mean(0)) / x.std(0)
    batches = list(x.reshape(total, BATCH, 2).unbind(0))
    torch.manual_seed(0)
    base = MLP(2, 256, 3)
    variants, versions = build_variants(base, batches, total)

    env = (
        f"torch {torch.__version__}, flowforge {getattr(flowforge, '__version__', '?')}, flow_matching "
        f"{versions['flow_matching']}, torchcfm {versions['torchcfm']}, Python {platform.python_version()}, "
        f"torch threads {torch.get_num_threads()}, os.cpu_count {os.cpu_count()}, "
        f"load avg at start {os.getloadavg()}"
    )
    print(env, flush=True)
    t0 = time.perf_counter()
    try:
        if args.warmup:
            for v in variants:
                v.run_block(batches, 0, args.warmup, timed=False)
        for r in range(args.blocks):
            start = args.warmup + r * args.steps
            k = r % len(variants)
            for v in variants[k:] + variants[:k]:  # rotate the order from round to round
                v.run_block(batches, start, args.steps, timed=True)
            print(f"round {r + 1}/{args.blocks} done ({time.perf_counter() - t0:.0f}s)", flush=True)
    finally:
        for v in variants:
            v.close()
    print(f"load avg at end {os.getloadavg()}; wall {time.perf_counter() - t0:.0f}s\n")
    print("\n".join(report(variants, args.steps, args.blocks)))


if __name__ == "__main__":
    main()
