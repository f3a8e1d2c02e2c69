"""Per-step overhead of flowforge's flow-matching objective and trainer against plain PyTorch and peers.

Workload (as in section 6 of ``shared/reference/flow-matching-libraries.md``): N(0, I) -> two moons
(standardised), the flowforge ``MLP(2, 256, 3)`` ([x, t] -> 256 -> 256 -> 256 -> 2, SiLU), AdamW
(weight decay 0, i.e. Adam) at lr 1e-3, batch 256, linear path with sigma = 0. Every variant gets an
identical copy of one initialised network and the same pre-generated data batch at step ``i``, and
starts its own global-RNG stream from ``train``'s global seed for ``seed=0``, so variants that draw ``x0`` then ``t``
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
    ... (thread)   that loop run exactly as the trainers are run here (own thread, per-step callback)
    ff.train(dflt) ``train`` with its defaults: warm-up + cosine LR, clipping at 1.0, EMA 0.999 (warm-up)
    plain+clip+ema the plain loop plus the same warm-up + cosine LR, clipping at 1.0 and foreach EMA

Method (the machine is shared, so CPU time per thread is the number to trust): one intra-op thread,
``--warmup`` untimed steps per variant, then ``--blocks`` rounds in which every variant runs ``--steps``
consecutive steps, in a new random order each round (so no variant keeps a position or a
predecessor). Many short rounds (default 600 x 3) pair the variants in time far better than a few
long ones: with 6 x 300 the per-round ratio of two identical loops wandered by +-15% as other jobs
came and went, with 60 x 30 by +-8%. Each step is timed with ``time.thread_time()`` (CPU of the thread that runs it; on CPU autograd runs backward on the calling
thread) and ``time.perf_counter()`` (wall). The ``train`` calls run in their own threads and hand
control back and forth through their ``callback``, so they interleave with the other variants without
being restarted; a trainer step is timed from the end of one callback to the start of the next, i.e.
everything ``train`` does per step. Reported: median per-step time over all timed steps, its ratio to
the reference, and the paired ratio (median over rounds of the per-round ratio of medians, with a 95%
bootstrap interval); "plain (A/A)" is a second copy of the plain loop, i.e. the noise floor. A
breakdown then times each flowforge piece against its hand-written equivalent, call by call.

Run:  python benchmarks/fm_overhead.py                 (defaults: 600 rounds x 3 steps, ~2-3 min)
      python benchmarks/fm_overhead.py --quick         (smoke test, seconds)
Peers: bash ../shared/tools/install_peers.sh fm        (flow_matching 1.0.10, torchcfm 1.0.7, no-deps)
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import random
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
from flowforge.train import run_seeds, train

BATCH = 256
LR = 1e-3
EMA_DECAY = 0.999
CLIP = 1.0

# the global-RNG seed train(seed=0) uses, so hand-written loops draw the same noise and times
GLOBAL_SEED = run_seeds(0)[1]


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
            "    bash ../shared/tools/install_peers.sh fm\n"
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
    params: list[Tensor] = field(default_factory=list)  # the trained parameters, to compare at the end

    def run_block(self, batches: list[Tensor], start: int, n: int, timed: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LoopVariant(Variant):
    """A hand-written training loop; ``step(x1) -> loss`` does one full optimizer step."""

    def __init__(self, name: str, step: Callable[[Tensor], Tensor]) -> None:
        super().__init__(name)
        self.step = step
        self.params = step.params
        torch.manual_seed(GLOBAL_SEED)
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


class ThreadVariant(Variant):
    """A whole training run in its own thread, paused in its per-step callback between blocks.

    ``run(data, callback)`` trains for all steps, drawing batches with ``data(batch_size, generator)``
    and calling ``callback(step, obj)`` after each step, with ``obj.last_loss`` set (``train``'s
    contract). It must seed the global RNG itself (``train`` does, with ``run_seeds(seed)[1]``).
    """

    def __init__(
        self,
        name: str,
        params: list[Tensor],
        batches: list[Tensor],
        run: Callable[[Callable[[int, torch.Generator], Tensor], Callable[[int, object], None]], object],
    ) -> None:
        super().__init__(name)
        self.params = params
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
                run(data, self._callback)
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
            self.rng = torch.get_rng_state()  # the run seeded the global RNG; keep its stream
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

        step.params = params
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

    def trainer(name: str, **kwargs) -> ThreadVariant:
        model = FlowMatching(copy.deepcopy(base))

        def run(data: Callable, callback: Callable) -> object:
            return train(
                model, data, steps=total, callback=callback, progress=False, out=None, seed=0, **kwargs
            )

        return ThreadVariant(name, list(model.parameters()), batches, run)

    def threaded(name: str, step: Callable[[Tensor], Tensor]) -> ThreadVariant:
        """A plain loop run exactly like the trainers (own thread, callback): controls for the harness."""

        class Holder:
            last_loss: Tensor | None = None

        def run(data: Callable, callback: Callable) -> None:
            torch.manual_seed(GLOBAL_SEED)
            holder = Holder()
            for i in range(total):
                holder.last_loss = step(data(BATCH, None)).detach()
                callback(i + 1, holder)

        return ThreadVariant(name, step.params, batches, run)

    variants: list[Variant] = [
        LoopVariant("plain", loop(plain)),
        LoopVariant("plain (A/A)", loop(plain)),  # a second identical copy: the noise floor
        LoopVariant("flow_matching", loop(meta)),
        LoopVariant("torchcfm", loop(tcfm)),
        LoopVariant("ff.loss", loop(ff_loss, wrap=FlowMatching)),
        trainer(
            "ff.train(min)",
            warmup=0,
            schedule="constant",
            grad_clip=None,
            ema_decay=EMA_DECAY,
            ckpt_every=0,
        ),
        LoopVariant("plain+norm+ema", loop(plain, "norm")),
        threaded("plain+norm+ema (thread)", loop(plain, "norm")),
        trainer("ff.train(dflt)"),
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
    ("plain+norm+ema (thread)", "plain+norm+ema", "harness control: same loop run like a trainer"),
    ("ff.train(min)", "plain+norm+ema (thread)", "trainer vs the same harness"),
    ("plain+norm+ema", "plain", "cost of EMA + grad norm"),
    ("ff.train(dflt)", "plain+clip+ema", "trainer defaults, like for like  [req <= 1.05]"),
    ("plain+clip+ema", "plain", "cost of EMA + clip + cosine"),
]


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def bootstrap_ci(xs: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of ``xs`` (resampling rounds)."""
    rng = random.Random(seed)
    meds = sorted(med(rng.choices(xs, k=len(xs))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def report(variants: list[Variant], steps: int, blocks: int) -> list[str]:
    by = {v.name: v for v in variants}
    flat = {v.name: (sum(v.cpu, []), sum(v.wall, [])) for v in variants}
    lines = [
        f"per-step times over {blocks} rounds x {steps} steps per variant (medians; ms)",
        "",
        "| variant | reference | CPU ms/step | wall ms/step | CPU ratio | paired CPU ratio [95% CI] "
        "| per-round IQR | wall ratio | comparison |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    verdict: list[str] = []
    aa = [med(a) / med(b) for a, b in zip(by["plain (A/A)"].cpu, by["plain"].cpu)]
    noise = abs(med(aa) - 1.0)
    for name, ref, what in COMPARISONS:
        c, w = flat[name]
        rc, rw = flat[ref]
        rounds = [med(a) / med(b) for a, b in zip(by[name].cpu, by[ref].cpu)]
        q1, _, q3 = statistics.quantiles(rounds, n=4) if len(rounds) > 1 else rounds * 3
        paired, lo, hi = med(rounds), *bootstrap_ci(rounds)
        lines.append(
            f"| {name} | {ref} | {1e3 * med(c):.3f} | {1e3 * med(w):.3f} | {med(c) / med(rc):.3f} | "
            f"{paired:.3f} [{lo:.3f}, {hi:.3f}] | {q1:.3f}-{q3:.3f} | {med(w) / med(rw):.3f} | {what} |"
        )
        if "req" in what:
            lo, hi = lo - noise, hi + noise  # widen by the A/A deviation: a systematic error the CI misses
            verdict.append(
                f"- {name} / {ref}: paired median {paired:.3f} (95% CI widened by the A/A deviation: "
                f"{lo:.3f}-{hi:.3f}): "
                + (
                    "meets the 1.05x requirement"
                    if hi <= 1.05
                    else "MISSES the 1.05x requirement"
                    if lo > 1.05
                    else "inconclusive against 1.05x (the interval straddles it)"
                )
            )
    lines += ["", "requirement (flowforge <= 1.05x the like-for-like plain loop, CPU time):", *verdict]
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
        ("plain+norm+ema", "plain+norm+ema (thread)"),
        ("plain+clip+ema", "ff.train(dflt)"),
    ]
    for a, b in pairs:
        la, lb = torch.stack(by[a].losses), torch.stack(by[b].losses)
        diff = (la - lb).abs()
        same = torch.nonzero(diff != 0)
        first = "never (bit-identical)" if same.numel() == 0 else f"step {same[0].item()}"
        dtheta = max((p - q).abs().max().item() for p, q in zip(by[a].params, by[b].params))
        lines.append(
            f"- {a} vs {b}: losses first differ at {first}, max |diff| {diff.max().item():.3g}, "
            f"final |diff| {diff[-1].item():.3g}; final weights max |diff| {dtheta:.3g}"
        )
    return lines


# ----------------------------------------------------------------------------------------------------
# breakdown: where flowforge's extra microseconds go (each piece against its hand-written equivalent)


def paired_us(fa: Callable[[], object], fb: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median thread CPU time (us) of ``fa`` and ``fb``, called alternately ``reps`` times after warm-up."""
    for _ in range(max(reps // 10, 20)):
        fa()
        fb()
    ta, tb, tc = [], [], time.thread_time_ns
    for _ in range(reps):
        c0 = tc()
        fa()
        c1 = tc()
        fb()
        c2 = tc()
        ta.append(c1 - c0)
        tb.append(c2 - c1)
    return med(ta) / 1e3, med(tb) / 1e3


def breakdown(reps: int) -> list[str]:
    from flowforge.core.objectives import SquaredError, regression_loss
    from flowforge.core.paths import AffinePath
    from flowforge.core.schedules import Linear
    from flowforge.train.ema import EMA
    from flowforge.train.trainer import _to_device, lr_at

    torch.manual_seed(0)
    x1 = torch.randn(BATCH, 2)
    t = torch.rand(BATCH)
    x0 = torch.randn(BATCH, 2)

    class Tiny(nn.Module):  # a network that costs nothing, so only the objective's own work remains
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))

        def forward(self, x: Tensor, t: Tensor) -> Tensor:
            return x * self.w

    tiny = Tiny()
    fm_tiny = FlowMatching(tiny)
    path = AffinePath(Linear())
    pred = torch.randn(BATCH, 2, requires_grad=True)
    target = torch.randn(BATCH, 2)

    def hand_objective() -> None:
        x0 = torch.randn_like(x1)
        t = torch.rand(BATCH)
        tt = t[:, None]
        (tiny(tt * x1 + (1 - tt) * x0, t) - (x1 - x0)).pow(2).mean().backward()

    def hand_path() -> None:
        tt = t[:, None]
        _ = tt * x1 + (1 - tt) * x0, x1 - x0

    fm = FlowMatching(MLP(2, 256, 3))
    params = list(fm.parameters())
    ema = EMA(fm, EMA_DECAY)
    shadow = [p.detach().clone() for p in params]

    def hand_ema() -> None:
        with torch.no_grad():
            d = min(EMA_DECAY, 11.0 / 20.0)
            torch._foreach_mul_(shadow, d)
            torch._foreach_add_(shadow, params, alpha=1.0 - d)

    loss_acc = torch.zeros((), dtype=torch.float64)
    gn_acc = torch.zeros((), dtype=torch.float64)
    loss1, gn1 = torch.ones(()), torch.ones(())

    def accumulate() -> None:
        nonlocal loss_acc, gn_acc
        last_loss, last_gn = loss1.detach(), gn1.detach()
        loss_acc += last_loss.reshape(())
        gn_acc += last_gn

    opt = torch.optim.AdamW(params, lr=LR)
    cpu = torch.device("cpu")

    def lr_and_batch() -> None:
        lr = lr_at(500, lr=LR, steps=2000, warmup=100, schedule="cosine")
        for g in opt.param_groups:
            g["lr"] = lr
        _to_device(x1, cpu)

    rows = [
        (
            "FlowMatching.loss fwd+bwd, network excluded (continuous/flow_matching.py:110-131)",
            lambda: fm_tiny.loss(x1).backward(),
            hand_objective,
        ),
        (
            "  of which AffinePath(Linear).sample (core/paths.py:110-113, core/schedules.py:45-46)",
            lambda: path.sample(x0, x1, t),
            hand_path,
        ),
        (
            "  of which regression_loss(SquaredError) fwd+bwd (core/objectives.py:48, 103-106)",
            lambda: regression_loss(pred, target, t, SquaredError()).backward(),
            lambda: (pred - target).pow(2).mean().backward(),
        ),
        (
            "EMA.update (train/ema.py:66-82) vs foreach mul_/add_ on cached lists",
            lambda: ema.update(fm),
            hand_ema,
        ),
        ("loss / grad-norm accumulators (train/trainer.py:708-710)", accumulate, lambda: None),
        ("lr_at + set lr + _to_device (train/trainer.py:692-695)", lr_and_batch, lambda: None),
    ]
    lines = [
        f"breakdown: median thread CPU per call over {reps} alternating calls (us)",
        "",
        "| piece | flowforge us | hand-written us | extra us |",
        "|---|---|---|---|",
    ]
    for label, fa, fb in rows:
        a, b = paired_us(fa, fb, reps)
        lines.append(f"| {label} | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
    return lines


# ----------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    ap.add_argument("--blocks", type=int, default=600, help="rounds (each variant runs --steps per round)")
    ap.add_argument("--warmup", type=int, default=100, help="untimed warm-up steps per variant")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (2 rounds x 20 steps)")
    ap.add_argument("--breakdown-reps", type=int, default=3000, help="calls per piece in the breakdown")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.blocks, args.warmup = 20, 2, 5
        args.breakdown_reps = min(args.breakdown_reps, 200)
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
    shuffler = random.Random(0)
    t0 = time.perf_counter()
    try:
        if args.warmup:
            for v in variants:
                v.run_block(batches, 0, args.warmup, timed=False)
        for r in range(args.blocks):
            start = args.warmup + r * args.steps
            order = variants[:]
            shuffler.shuffle(order)  # a fresh random order every round: no fixed position or predecessor
            for v in order:
                v.run_block(batches, start, args.steps, timed=True)
            print(f"round {r + 1}/{args.blocks} done ({time.perf_counter() - t0:.0f}s)", flush=True)
    finally:
        for v in variants:
            v.close()
    print(f"load avg at end {os.getloadavg()}; wall {time.perf_counter() - t0:.0f}s\n")
    print("\n".join(report(variants, args.steps, args.blocks)))
    if args.breakdown_reps > 0:
        print()
        print("\n".join(breakdown(args.breakdown_reps)))


if __name__ == "__main__":
    main()
