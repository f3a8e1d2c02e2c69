"""Discrete flows (issue 12): uniform against masked source, and flowforge against Meta's ``flow_matching``.

Two parts, one table each (markdown on stdout, progress on stderr; ``--json FILE`` appends one JSON line
per row).

**sources** -- ``python benchmarks/discrete.py sources --data expr|smiles|selfies [--steps S] [--n N]``

The ``<data>-uniform`` and ``<data>-masked`` recipes (:mod:`flowforge.recipes.discrete`) trained at equal
budget: the same steps, batch, network, learning rate, warm-up, clipping, EMA and seed; they differ only
in the source (uniform over the vocabulary, or all-mask). Runs go to ``--runs-dir`` (default
``runs/discrete``) as ``<recipe>-s<steps>-w<width>d<depth>h<heads>[-smoke]``; a finished run there is
reused (``--retrain`` trains it again), an interrupted one is resumed. Each model is sampled with 8,
16, 32, 64 and 128 CTMC Euler steps (``N`` samples, seed 0, temperature 1, no corrector) and scored
with the recipe's metrics:
validity (with its binomial standard error), uniqueness, novelty against the training split, and for
SMILES also internal diversity, mean QED and, when ``fcd_torch`` is importable, FCD against the held-out
split; bits per token (the ELBO of the held-out split, an upper bound) once per model. A control row
comes first: the held-out strings themselves, scored by the same metrics (novelty against the training
split). For SMILES the control's FCD is between two disjoint halves of the held-out split (the FCD of a
set against itself is 0); it is computed on half as many molecules as the models' FCD against the full
held-out split, and FCD grows as the sample shrinks, so it is a slightly pessimistic noise floor.
Training wall times come from each run's own log (``elapsed`` of its last line).

**meta** -- ``python benchmarks/discrete.py meta --data expr [--steps S] [--n N] [--source mask|uniform]``

flowforge against Meta's ``flow_matching`` (1.0.10) on the same workload. What each side gets:

- the same data: the recipe's training tokens ``(N_train, L)`` (``token_data``), the same vocabulary;
- the same network: two :class:`~flowforge.nn.TokenTransformer` with identical initial weights (one is
  built under ``--seed``, the other is its deep copy; checked equal), in train mode;
- the same optimiser: ``torch.optim.Adam(lr)``, plain (no warm-up, clipping or EMA on either side);
- the same batches: indices ``torch.randint(N_train, (B,))`` from one ``torch.Generator`` per side,
  both seeded with ``--seed``, so both sides see the same sequence of batches;
- the same source (``--source``, masked by default), the same time law ``t = (1 - 1e-3) U(0, 1)``, the
  same linear mixture path (``kappa_t = t``) and the same loss, the cross-entropy on all positions.
  flowforge: ``DiscreteFlowMatching(net, V, source=..., loss="ce")`` and ``loss(x1)`` (which draws
  ``x0``, ``t`` and ``x_t`` itself). Meta: the loop of their text example written out --
  ``x0`` (mask ids or ``randint``), ``t = rand(B) * (1 - 1e-3)``,
  ``MixtureDiscreteProbPath(PolynomialConvexScheduler(n=1.0)).sample(x0, x1, t).x_t``, the net,
  ``F.cross_entropy`` over all positions. The draws of ``x0``, ``t`` and ``x_t`` come from the global
  RNG on both sides (the same laws, not the same numbers). The flowforge step includes what its
  ``loss`` does besides (input checks on the tokens): that is part of the cost being compared.

Both train ``S`` steps, interleaved in ``--rounds`` rounds of ``S / rounds`` steps per side, the order
alternating each round, so load from other jobs hits both alike. One step is timed from drawing the
batch indices to ``opt.step()``; reported: the median wall (``perf_counter``) and thread-CPU
(``thread_time``; the one to trust on a shared machine) time per step of each side and the ratio
flowforge / Meta of those medians (target <= 1.02).

Then ``N`` sequences from each trained net, from the same ``x0`` (all mask, or one uniform draw), in
chunks whose order alternates: flowforge's ``DiscreteGenerator.sample(steps=64)`` (exponential jump
probability, final draw from the posterior, float64 categorical draws) and Meta's
``MixtureDiscreteEulerSolver(ModelWrapper, path, vocabulary_size).sample(x0, step_size=1/64,
dtype_categorical=float64)``, the net wrapped to return ``softmax(logits)`` (float32, cast to float64
by the solver) with a zero column for the mask id when the source is masked (``vocabulary_size =
V + 1``; ``V`` for the uniform source) -- the same 64 network calls on the same uniform grid. Validity
(with its standard error), uniqueness and novelty of both are scored by the recipe's metrics (target:
validity within 2 points) and the sampling times reported.

Defaults: ``S = 3000`` training steps, batch 128, Adam lr 3e-4, ``N = 2000`` samples, one intra-op
thread, and a ``TokenTransformer`` of width 64, depth 2, 4 heads in both parts -- smaller than the
recipes' 128 x 4 so that a part takes about 10 minutes for ``expr`` on a 2-core CPU (the recipes' net
costs ~4x more per step; ``--width 128 --depth 4`` to use it). ``--smoke``: 20 steps, 50 samples,
width 32, depth 1, 2 heads, 2000 training expressions (well under a minute a part for ``expr``; about
a minute for ``sources --data smiles``, whose sequences are up to 64 tokens and whose metrics load
RDKit and ChemNet). A full ``smiles`` part costs about three times an ``expr`` one (longer sequences).

Run::

    OMP_NUM_THREADS=1 python benchmarks/discrete.py sources --data expr --json runs/discrete.jsonl
    OMP_NUM_THREADS=1 python benchmarks/discrete.py sources --data smiles
    OMP_NUM_THREADS=1 python benchmarks/discrete.py meta --data expr --json runs/discrete.jsonl
    OMP_NUM_THREADS=1 python benchmarks/discrete.py meta --data expr --smoke   # < 1 min
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import flowforge
from flowforge.data.tokens import Vocabulary
from flowforge.discrete import DiscreteFlowMatching
from flowforge.nn import TokenTransformer
from flowforge.recipes import evaluate, get_recipe, read_config, train_recipe
from flowforge.recipes.discrete import corpus, token_data, token_metrics
from flowforge.recipes.registry import resolve_config
from flowforge.recipes.run_folder import last_step
from flowforge.train import Run

T_EPS = 1e-3  # both sides train on t in [0, 1 - 1e-3] (flowforge's t_max, Meta's time_epsilon)
SMOKE_NET = (32, 1, 2)  # width, depth, heads of --smoke
BENCH_NET = (64, 2, 4)  # the default: 3000 steps of it fit ~10 minutes a part on one thread


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


ORDER = (
    "model",
    "steps",
    "n",
    "validity",
    "validity_se",
    "uniqueness",
    "novelty",
    "internal_diversity",
    "qed",
)
ORDER += ("fcd", "bpt", "eval_s", "note")


def ordered(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with the sample-metric columns in one order (others after them)."""
    return {k: row[k] for k in (*ORDER, *row) if k in row}


def table(rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n## {title}\n")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |")
    sys.stdout.flush()


def append_json(path: str, part: str, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tags = {"bench": "discrete", "part": part, "data": args.data, "steps": args.steps, "n": args.n}
    tags |= {"smoke": args.smoke, "threads": args.threads, "torch": torch.__version__}
    tags |= {
        "width": args.width,
        "depth": args.depth,
        "heads": args.heads,
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "ema": getattr(args, "ema", 0.0),
    }
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({**tags, **r}) + "\n")


def validity_se(p: float | None, n: int) -> float | None:
    return None if p is None else math.sqrt(max(p * (1 - p), 0.0) / n)


def environment() -> str:
    meta = importlib.util.find_spec("flow_matching")
    fm = __import__("flow_matching").__version__ if meta is not None else "not installed"
    return (
        f"flowforge {getattr(flowforge, '__version__', '?')}, flow_matching {fm}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}"
    )


# ----------------------------------------------------------------------------------------------------
# part 1: uniform against masked source


def _metrics(data: str) -> list[str]:
    if data == "expr":
        return ["validity", "uniqueness", "novelty"]
    names = ["validity", "uniqueness", "novelty", "internal_diversity", "qed"]
    return names + (["fcd"] if importlib.util.find_spec("fcd_torch") is not None else [])


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"batch_size": args.batch, "lr": args.lr, "threads": args.threads}
    out |= {"width": args.width, "depth": args.depth, "heads": args.heads}
    if args.smoke:
        out |= {"bpt_n": 100, "bpt_steps": 8, "warmup": 5}
        if args.data == "expr":
            out |= {"n_train": 2000, "n_test": 200}
    return out


def _finished(run_dir: Path, steps: int) -> bool:
    return (run_dir / "config.json").is_file() and last_step(run_dir) == steps


def train_or_reuse(name: str, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``name`` into ``run_dir`` unless a finished run with the same settings is there."""
    overrides = _overrides(args)
    want = resolve_config(get_recipe(name), {**overrides, "steps": args.steps})
    if args.retrain and run_dir.exists():
        shutil.rmtree(run_dir)
    cached = _finished(run_dir, args.steps)
    if (run_dir / "config.json").is_file():
        have = read_config(run_dir)
        keys = [k for k in (*overrides, "steps", "source") if k != "threads"]  # threads: same trajectory
        diff = {k: (have.get(k), want[k]) for k in keys if have.get(k) != want[k]}
        if diff or int(have.get("seed", 0)) != args.seed:
            raise SystemExit(
                f"{run_dir} holds a run with other settings {diff} (seed {have.get('seed')}); pass --retrain "
                "or another --runs-dir"
            )
    t0 = time.perf_counter()
    if not cached:
        resume = (run_dir / "config.json").is_file() and last_step(run_dir) is not None
        log(f"training {name} for {args.steps} steps into {run_dir}{' (resuming)' if resume else ''}")
        train_recipe(
            name,
            overrides=overrides,
            out=run_dir,
            steps=args.steps,
            seed=args.seed,
            resume=resume,
            progress=False,
        )
    else:
        log(f"reusing the finished run {run_dir}")
    wall = time.perf_counter() - t0
    logged = Run(run_dir).metrics()
    elapsed = float(logged[-1]["elapsed"]) if logged and "elapsed" in logged[-1] else wall
    loss = float(logged[-1]["loss"]) if logged else math.nan
    return {
        "model": name,
        "train_steps": args.steps,
        "train_wall_s": elapsed,
        "ms_per_step": 1e3 * elapsed / args.steps,
        "final_loss": loss,
        "cached": cached,
    }


def control_row(config: dict[str, Any], metrics: list[str], data: str) -> dict[str, Any]:
    """The held-out strings scored like samples (novelty against train); SMILES FCD between two halves."""
    train, test = corpus(config)
    row: dict[str, Any] = {"model": "control: held-out data", "steps": "", "n": len(test)}
    res = token_metrics(test, train, test, config, [m for m in metrics if m != "fcd"])
    row |= res | {"validity_se": validity_se(res.get("validity"), len(test))}
    if "fcd" in metrics:
        from flowforge.metrics.molecules import fcd

        h = len(test) // 2
        row["fcd"] = fcd(test[:h], test[h : 2 * h])
        row["note"] = f"FCD between two disjoint halves of the held-out split ({h} vs {h})"
    return row


def _evaluate_samples(run: Path, metrics: list[str], n: int, seed: int, steps: int) -> dict[str, Any]:
    """The recipe's sample metrics; FCD is nan when under 2 samples are valid molecules (fcd() refuses)."""
    try:
        return evaluate(run, metrics=metrics, n_samples=n, seed=seed, steps=steps)
    except ValueError as e:
        if "fcd" not in metrics or not any(w in str(e) for w in ("empty", "FCD needs at least")):
            raise
        rest = [m for m in metrics if m != "fcd"]
        return evaluate(run, metrics=rest, n_samples=n, seed=seed, steps=steps) | {"fcd": math.nan}


def sources(args: argparse.Namespace) -> None:
    runs_dir = Path(args.runs_dir)
    metrics = _metrics(args.data)
    names = [f"{args.data}-{source}" for source in args.sources]
    suffix = f"-s{args.steps}-w{args.width}d{args.depth}h{args.heads}" + ("-smoke" if args.smoke else "")
    trainings, rows = [], []
    for name in names:
        trainings.append(train_or_reuse(name, runs_dir / f"{name}{suffix}", args))
        log(str(trainings[-1]))
    config = read_config(runs_dir / f"{names[0]}{suffix}")
    rows.append(ordered(control_row(config, metrics, args.data)))
    log(str(rows[-1]))
    for name in names:
        run = runs_dir / f"{name}{suffix}"
        t0 = time.perf_counter()
        bpt = evaluate(run, metrics=["bpt"], seed=args.seed)
        bpt_s = time.perf_counter() - t0
        for k in args.sample_steps:
            t0 = time.perf_counter()
            res = _evaluate_samples(run, metrics, args.n, args.seed, k)
            row = {"model": name, "steps": k, "n": args.n}
            row |= {m: res.get(m) for m in metrics}
            row["validity_se"] = validity_se(res.get("validity"), args.n)
            row["bpt"] = bpt["bpt"] if k == args.sample_steps[0] else None
            row["eval_s"] = time.perf_counter() - t0 + (bpt_s if k == args.sample_steps[0] else 0.0)
            rows.append(ordered(row))
            log(str(rows[-1]))
    print(f"\n{environment()}")
    table(
        trainings,
        f"{args.data}: training at equal budget (batch {args.batch}, lr {args.lr}, TokenTransformer width "
        f"{args.width} depth {args.depth} heads {args.heads}, seed {args.seed})",
    )
    extra = ", FCD against the held-out split" if "fcd" in metrics else ""
    table(
        rows,
        f"{args.data}: uniform vs masked source against sampling steps (N = {args.n} samples, seed "
        f"{args.seed}; bpt = ELBO bits per token of the held-out split, once per model{extra})",
    )
    append_json(args.json, "sources-train", args, trainings)
    append_json(args.json, "sources", args, rows)


# ----------------------------------------------------------------------------------------------------
# part 2: flowforge against Meta's flow_matching


def import_meta():
    try:
        from flow_matching.path import MixtureDiscreteProbPath
        from flow_matching.path.scheduler import PolynomialConvexScheduler
        from flow_matching.solver import MixtureDiscreteEulerSolver
        from flow_matching.utils import ModelWrapper
    except ImportError as e:
        raise SystemExit(
            f"Meta's flow_matching is missing ({e}). Install it without replacing the CPU torch:\n"
            "    pip install --no-deps flow-matching==1.0.10"
        ) from e
    return MixtureDiscreteProbPath, PolynomialConvexScheduler, MixtureDiscreteEulerSolver, ModelWrapper


def meta(args: argparse.Namespace) -> None:
    MetaPath, MetaPoly, MetaSolver, ModelWrapper = import_meta()
    masked = args.source == "mask"
    name = f"{args.data}-{'masked' if masked else 'uniform'}"
    over = _overrides(args)
    over.pop("threads")
    config = resolve_config(get_recipe(name), {k: v for k, v in over.items() if not k.startswith("bpt")})
    data, updates = token_data(config)
    config.update(updates)
    v, length, n_train = int(config["vocab_size"]), int(config["length"]), data.shape[0]
    vocab = Vocabulary.from_dict(config["vocab"])
    train_strings, test_strings = corpus(config)
    log(f"{name}: {n_train} training sequences, L = {length}, V = {v}, source {args.source}")

    torch.manual_seed(args.seed)
    net_ff = TokenTransformer(v, length, int(config["width"]), int(config["depth"]), int(config["heads"]))
    net_meta = copy.deepcopy(net_ff)
    same = all(
        torch.equal(a, b) for a, b in zip(net_ff.state_dict().values(), net_meta.state_dict().values())
    )
    assert same, "the two networks must start from identical weights"
    n_params = sum(p.numel() for p in net_ff.parameters())

    # flowforge: the library's loss
    dfm = DiscreteFlowMatching(net_ff, v, source=args.source, loss="ce", t_max=1.0 - T_EPS, length=length)
    opt_ff = torch.optim.Adam(net_ff.parameters(), lr=args.lr)
    g_ff = torch.Generator().manual_seed(args.seed)

    def ff_step() -> float:
        idx = torch.randint(0, n_train, (args.batch,), generator=g_ff)
        loss = dfm.loss(data[idx])
        opt_ff.zero_grad(set_to_none=True)
        loss.backward()
        opt_ff.step()
        return loss.item()

    # Meta: their text example's training step, written out
    path = MetaPath(MetaPoly(n=1.0))
    opt_meta = torch.optim.Adam(net_meta.parameters(), lr=args.lr)
    g_meta = torch.Generator().manual_seed(args.seed)

    def meta_step() -> float:
        idx = torch.randint(0, n_train, (args.batch,), generator=g_meta)
        x_1 = data[idx]
        x_0 = torch.full_like(x_1, v) if masked else torch.randint_like(x_1, high=v)
        t = torch.rand(x_1.shape[0]) * (1.0 - T_EPS)
        x_t = path.sample(t=t, x_0=x_0, x_1=x_1).x_t
        logits = net_meta(x_t, t)
        loss = F.cross_entropy(logits.flatten(0, 1), x_1.flatten(0, 1)).mean()
        opt_meta.zero_grad(set_to_none=True)
        loss.backward()
        opt_meta.step()
        return loss.item()

    sides = {"flowforge": ff_step, "meta": meta_step}
    # --ema D: both sides keep an exponential moving average (updated outside the timed step) and sample
    # from it, as the recipes do; read at the last iterate, two runs differ by their last few batches
    nets = {"flowforge": net_ff, "meta": net_meta}
    emas = {s: copy.deepcopy(nets[s]).requires_grad_(False) for s in sides} if args.ema > 0 else {}

    def ema_update(side: str) -> None:
        with torch.no_grad():
            for e, q in zip(emas[side].parameters(), nets[side].parameters(), strict=True):
                e.lerp_(q, 1.0 - args.ema)

    wall: dict[str, list[float]] = {s: [] for s in sides}
    cpu: dict[str, list[float]] = {s: [] for s in sides}
    losses: dict[str, list[float]] = {s: [] for s in sides}
    rounds = max(1, min(args.rounds, args.steps))
    per_round = [args.steps // rounds + (i < args.steps % rounds) for i in range(rounds)]
    net_ff.train()
    net_meta.train()
    t_start = time.perf_counter()
    for r, k in enumerate(per_round):
        order = ["flowforge", "meta"] if r % 2 == 0 else ["meta", "flowforge"]
        for side in order:
            for _ in range(k):
                w0, c0 = time.perf_counter(), time.thread_time()
                losses[side].append(sides[side]())
                cpu[side].append(time.thread_time() - c0)
                wall[side].append(time.perf_counter() - w0)
                if emas:
                    ema_update(side)
        if (r + 1) % max(1, rounds // 5) == 0:
            done = sum(per_round[: r + 1])
            msg = ", ".join(f"{s} {1e3 * statistics.median(wall[s]):.1f} ms/step" for s in sides)
            log(f"round {r + 1}/{rounds}: {done} steps a side, {time.perf_counter() - t_start:.0f} s; {msg}")

    # sampling: same x0, same grid, chunks in alternating order
    class Probs(ModelWrapper):
        """Meta's solver wants posterior probabilities over its state space (a zero mask column)."""

        def forward(self, x: Tensor, t: Tensor, **extras: Any) -> Tensor:
            p = torch.softmax(self.model(x, t).float(), dim=-1)
            return F.pad(p, (0, 1)) if masked else p

    if emas:
        net_ff, net_meta = emas["flowforge"], emas["meta"]
    net_ff.eval()
    net_meta.eval()
    k = args.sample_with

    def ff_sampler(net: torch.nn.Module) -> Any:
        gen = DiscreteFlowMatching(net, v, source=args.source, loss="ce", length=length).generator()
        return lambda x0, g: gen.sample(x0.shape[0], steps=k, generator=g, x0=x0)

    def meta_sampler(net: torch.nn.Module) -> Any:
        solver = MetaSolver(model=Probs(net), path=path, vocabulary_size=v + 1 if masked else v)
        return lambda x0, g: solver.sample(x0.clone(), step_size=1.0 / k, dtype_categorical=torch.float64)

    # each side's own sampler on its own net, then the two crossed: the same net under both samplers
    # tells a sampler difference from a difference between the two trained nets
    combos = {
        "flowforge": ff_sampler(net_ff),
        "meta": meta_sampler(net_meta),
        "flowforge sampler, Meta-trained net": ff_sampler(net_meta),
        "Meta solver, flowforge-trained net": meta_sampler(net_ff),
    }
    g_x0 = torch.Generator().manual_seed(args.seed + 1)
    g_ff_s = torch.Generator().manual_seed(args.seed + 2)
    out: dict[str, list[Tensor]] = {s: [] for s in combos}
    s_wall: dict[str, float] = {s: 0.0 for s in combos}
    s_cpu: dict[str, float] = {s: 0.0 for s in combos}
    chunk = max(1, min(args.chunk, args.n))
    torch.manual_seed(args.seed + 3)  # Meta's solver draws from the global RNG
    for j, start in enumerate(range(0, args.n, chunk)):
        m = min(chunk, args.n - start)
        x0 = (
            torch.full((m, length), v, dtype=torch.long)
            if masked
            else torch.randint(0, v, (m, length), generator=g_x0)
        )
        order = list(combos) if j % 2 == 0 else list(reversed(combos))
        for side in order:
            w0, c0 = time.perf_counter(), time.thread_time()
            with torch.no_grad():
                x = combos[side](x0, g_ff_s)
            s_cpu[side] += time.thread_time() - c0
            s_wall[side] += time.perf_counter() - w0
            out[side].append(x)

    rows = []
    for side in combos:
        x = torch.cat(out[side])
        if int(x.max()) >= v:
            raise RuntimeError(f"{side} sampled the mask id; the posterior wrapper is wrong")
        res = token_metrics(
            vocab.decode(x), train_strings, test_strings, config, ["validity", "uniqueness", "novelty"]
        )
        row: dict[str, Any] = {"side": side}
        if side in sides:
            tail = losses[side][-max(1, len(losses[side]) // 10) :]
            row |= {
                "ms_per_step_wall": 1e3 * statistics.median(wall[side]),
                "ms_per_step_cpu": 1e3 * statistics.median(cpu[side]),
                "final_loss": sum(tail) / len(tail),
            }
        rows.append(
            row
            | {
                "validity": res["validity"],
                "validity_se": validity_se(res["validity"], x.shape[0]),
                "uniqueness": res["uniqueness"],
                "novelty": res["novelty"],
                f"sample_s_wall ({k} steps)": s_wall[side],
                "sample_s_cpu": s_cpu[side],
            }
        )
    ff, mt = rows[:2]
    ratio = {
        "side": "flowforge / meta",
        "ms_per_step_wall": ff["ms_per_step_wall"] / mt["ms_per_step_wall"],
        "ms_per_step_cpu": ff["ms_per_step_cpu"] / mt["ms_per_step_cpu"],
        "validity": ff["validity"] - mt["validity"],
        "validity_se": math.hypot(ff["validity_se"], mt["validity_se"]),
        f"sample_s_wall ({k} steps)": ff[f"sample_s_wall ({k} steps)"] / mt[f"sample_s_wall ({k} steps)"],
        "sample_s_cpu": ff["sample_s_cpu"] / mt["sample_s_cpu"],
    }
    rows.append(ratio)
    ok_time = ratio["ms_per_step_cpu"] <= 1.02
    ok_val = abs(ratio["validity"]) <= 0.02
    print(f"\n{environment()}")
    table(
        rows,
        f"{name}: flowforge vs Meta flow_matching ({args.steps} steps a side in {rounds} interleaved rounds, "
        f"batch {args.batch}, Adam lr {args.lr}, EMA {args.ema or 'none'}, net width {config['width']} depth {config['depth']} "
        f"({n_params} parameters), L = {length}, V = {v}; {args.n} samples with {k} Euler steps; "
        "last row: time ratios and the validity difference with its standard error)",
    )
    print(
        f"\ntargets: time per step flowforge/Meta <= 1.02 (thread CPU): {ratio['ms_per_step_cpu']:.3f} "
        f"{'met' if ok_time else 'NOT met'}; |validity difference| <= 0.02: {ratio['validity']:+.3f} "
        f"(SE {ratio['validity_se']:.3f}) {'met' if ok_val else 'NOT met'}"
    )
    append_json(args.json, "meta", args, rows)


# ----------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("sources", "meta"))
    p.add_argument("--data", choices=("expr", "smiles", "selfies"), default="expr")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 3000; --smoke 20)")
    p.add_argument("--n", type=int, default=None, help="samples to score (default 2000; --smoke 50)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=None, help="net width (default 64; --smoke 32; recipe 128)")
    p.add_argument("--depth", type=int, default=None, help="net depth (default 2; --smoke 1; recipe 4)")
    p.add_argument("--heads", type=int, default=None, help="attention heads (default 4; --smoke 2)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="tiny: 20 steps, 50 samples, a small net")
    p.add_argument("--json", default="", help="append one JSON line per row to this file")
    g = p.add_argument_group("sources")
    g.add_argument("--runs-dir", default="runs/discrete")
    g.add_argument("--retrain", action="store_true", help="train again even when a finished run is there")
    g.add_argument("--sample-steps", type=int, nargs="*", default=[8, 16, 32, 64, 128])
    g.add_argument(
        "--sources",
        nargs="+",
        choices=("uniform", "masked"),
        default=["uniform", "masked"],
        help="which recipes <data>-<source> to train and score (default both)",
    )
    g = p.add_argument_group("meta")
    g.add_argument("--source", choices=("mask", "uniform"), default="mask")
    g.add_argument(
        "--rounds", type=int, default=None, help="interleaved timing rounds (default 20; --smoke 4)"
    )
    g.add_argument("--sample-with", type=int, default=64, help="Euler steps when sampling")
    g.add_argument("--ema", type=float, default=0.0, help="EMA decay for both sides, sampled from (0: none)")
    g.add_argument("--chunk", type=int, default=500, help="samples per sampling call")
    args = p.parse_args()
    args.steps = args.steps or (20 if args.smoke else 3000)
    args.n = args.n or (50 if args.smoke else 2000)
    args.rounds = args.rounds or (4 if args.smoke else 20)
    net = SMOKE_NET if args.smoke else BENCH_NET
    args.width, args.depth, args.heads = (a or b for a, b in zip((args.width, args.depth, args.heads), net))
    if args.smoke:
        args.chunk = min(args.chunk, 25)
    torch.set_num_threads(args.threads)
    if args.part == "sources":
        sources(args)
    else:
        meta(args)


if __name__ == "__main__":
    main()
