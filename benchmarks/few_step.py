"""Few-step and one-step generation on 2-D toys (issue 11, "What it must show" items 1, 2, 4, 5, 7).

For each of moons, checkerboard and eight-gaussians (standardised; SWD reported in data units):

1. a plain flow-matching teacher (MLP 256x3, linear path, uniform t, EMA) and every few-step method on
   the same network size and the same fresh-sample data stream:

   - MeanFlow (from scratch, two-time MLP 256x3, the paper's defaults but p = 0, see MEANFLOW_P);
   - TwinFlow (from scratch, two-time MLP 256x3, the official defaults);
   - reflow, one round, rf++ defaults (U-shaped t, pseudo-Huber), the student initialised from the
     teacher, on (noise, sample) pairs from the teacher's Heun;
   - FreeFlow (data-free, from the teacher; the student starts as the teacher's Euler map);
   - FlowTurbo's velocity refiner (a 4-input MLP 64x2, ~3% of the teacher's FLOPs, dt_max 0.12) on the
     teacher, sampled with FlowTurbo's H1 P5 R3;
   - blockwise flow matching (K = 4 segment MLPs 128x3, together about the teacher's parameters);
   - PFGM++ (D = 16, EDM preconditioning, sigma_max = 20);

   scored by the sliced 2-Wasserstein distance (SWD) of ``--n`` samples against ``--n`` fresh data
   points (fixed projections), at 1, 2, 4, 8 and 100 network evaluations (NFE) where the method supports
   them, beside the teacher's Euler curve, the teacher's Dopri5 and the noise floor (a second fresh
   data draw against the data). Every row starts from i.i.d. N(0, I) source noise (one fixed draw,
   independent of the reflow pairs' noise; PFGM++ draws from its own Student-t prior).
   Training cost: median wall time per training step of each method, measured interleaved in one
   process on the same threads, relative to plain flow matching, with the network evaluations per step
   and the total cost including the teacher (and the reflow pairs) for distilled methods.
2. PASS/FAIL: 1-step MeanFlow and each 1-step distilled student within 1.3x of the teacher's 100-step
   Euler SWD, and at most half of the teacher's 1-step Euler SWD ("by a wide margin").
3. Reflow: straightness (Liu et al.'s S) and 1-step SWD before (teacher) and after, and rf++
   (U-shaped + pseudo-Huber) against uniform t + L2 at 1 step.
4. PFGM++ with D in {1 (beta_clip=1e-3), 4, 16, inf} under a fixed error in the denoiser's noise
   prediction (``perturb``), at two error sizes, EDM's Heun sampler with 18 steps (35 NFE).
5. TwinFlow at 1 step against MeanFlow and the distilled students on the same teacher budget.

Run (one thread, foreground):
    python benchmarks/few_step.py --quick       # smoke run, moons only (about a minute)
    python benchmarks/few_step.py               # full run; writes benchmarks/RESULTS-few_step.md

Trained weights are cached as safetensors + JSON in ``--cache`` (default ``benchmarks/.cache/few_step``),
so a second run only evaluates; ``--retrain`` ignores (and overwrites) the cache. Same seed, same numbers
(the training runs are seeded by the Trainer, every evaluation draws from explicit generators); only the
timings change from run to run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import flowforge as ff
from flowforge.continuous import PFGMPP, BlockwiseFlowMatching, FlowMatching, MeanFlow, TwinFlow
from flowforge.core import solvers as S
from flowforge.core.objectives import SquaredError
from flowforge.core.time import Uniform
from flowforge.data import Standardizer, toy2d
from flowforge.distill import FreeFlow, Reflow, VelocityRefiner, generate_pairs, load_pairs
from flowforge.metrics import sliced_wasserstein, straightness
from flowforge.nn import MLP
from flowforge.nn.flops import flops_per_eval
from flowforge.train import load_safetensors, save_safetensors

HERE = Path(__file__).resolve().parent
DATASETS = ("moons", "checkerboard", "eight-gaussians")
NFES = (1, 2, 4, 8, 100)
WIDTH, DEPTH = 256, 3
SEG_WIDTH = 128  # blockwise: 4 MLPs 128x3 have about the parameters of one MLP 256x3
REFINER_WIDTH, REFINER_DEPTH = 64, 2
# FlowTurbo's official gap. Tried once on moons: dt_max = 0.25 (which would allow 4-step schedules) gave
# SWD 0.085 at H1 P5 R3 against 0.042 with 0.12, and 0.08-0.19 at 2-4 NFE; refiner width 128 did not help.
TURBO_DT_MAX = 0.12
# MeanFlow's adaptive-weight power. The paper's p = 1 (tried first, moons: 1-step SWD 0.092, 100 jumps
# 0.155) weights each row by 1/(err + c), which does not estimate the conditional mean of a noisy
# target; p = 0 (the plain squared error) gave 0.076 at 1 step and 0.065-0.074 at 2-100 jumps.
MEANFLOW_P = 0.0
PFGM_D_MAIN = 16.0
PFGM_SIGMA_MAX = 20.0
PFGM_DS: tuple[tuple[str, float, float | None], ...] = (
    ("D=1 (beta_clip 1e-3)", 1.0, 1e-3),
    ("D=4", 4.0, None),
    ("D=16", 16.0, None),
    ("D=inf (EDM)", math.inf, None),
)
PERTURB = (0.1, 0.3)  # size alpha of the fixed error in the predicted noise
# schedules (n_H, n_P, n_R) of the turbo row by NFE column (teacher calls + refiner calls); with
# dt_max = 0.12 every schedule needs >= 9 steps; FlowTurbo's H1 P5 R3 costs 7 teacher calls + 6 light ones
TURBO_SCHEDULES = {8: (1, 5, 3)}
WIDE = 0.5  # "beats the teacher's 1-step Euler by a wide margin": at most this fraction of its SWD
WITHIN = 1.3

FIT_SEED, EVAL_DATA_SEED, FLOOR_DATA_SEED = 999, 10_001, 10_002
NOISE_SEED, PRIOR_SEED, SAMPLER_SEED, PAIRS_SEED, SWD_PROJ_SEED = 1234, 1235, 1236, 4321, 7


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------


def mlp(two_times: bool = False) -> MLP:
    return MLP(2, WIDTH, DEPTH, two_times=two_times)


def two_time_from(teacher: MLP) -> MLP:
    """A two-time MLP whose map is the teacher's Euler step: ``u(x, s, t) = v_T(x, s)``.

    The two-time MLP sees ``[x, t, t - s]``; the teacher ``[x, t]`` (raw time features). Copying the
    teacher and giving the gap the negated time weights makes the first layer see ``W_t s``.
    """
    if teacher.time.out_dim != 1:
        raise ValueError("two_time_from needs raw time features (time_freqs=0)")
    net = MLP(2, WIDTH, DEPTH, two_times=True)
    sd = {k: v.clone() for k, v in teacher.state_dict().items()}
    w = sd["inp.weight"]  # (width, 2 + 1)
    sd["inp.weight"] = torch.cat([w, -w[:, 2:3]], dim=1)
    net.load_state_dict(sd)
    return net


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------------
# training with a cache
# --------------------------------------------------------------------------------------------------


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fit(
    model: nn.Module, tag: str, data: Any, *, steps: int, lr: float, args: argparse.Namespace
) -> tuple[nn.Module, dict]:
    """Train ``model`` with ``ff.train`` (EMA weights loaded after) or load it from the cache."""
    cache = Path(args.cache)
    wpath, ipath = cache / f"{tag}.safetensors", cache / f"{tag}.json"
    if not args.retrain and wpath.is_file() and ipath.is_file():
        model.load_state_dict(load_safetensors(wpath))
        return model.eval(), json.loads(ipath.read_text()) | {"cached": True}
    w0, c0 = time.perf_counter(), time.process_time()
    run = ff.train(
        model,
        data,
        steps=steps,
        batch_size=args.batch,
        lr=lr,
        ema_decay=0.999,
        seed=args.seed,
        progress=False,
    )
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    run.load_into(model, ema=True)
    losses = [m["loss"] for m in run.metrics() if "loss" in m]
    info = {
        "steps": steps,
        "lr": lr,
        "train_wall_s": round(wall, 1),
        "train_cpu_s": round(cpu, 1),
        "final_loss": losses[-1] if losses else None,
    }
    cache.mkdir(parents=True, exist_ok=True)
    save_safetensors(wpath, {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()})
    _atomic_text(ipath, json.dumps(info, indent=1))
    return model.eval(), info | {"cached": False}


def stream(name: str, sc: Standardizer) -> Callable[[int, torch.Generator], Tensor]:
    def data(b: int, g: torch.Generator) -> Tensor:
        return sc.forward(toy2d(name, b, generator=g))

    return data


# --------------------------------------------------------------------------------------------------
# one data set
# --------------------------------------------------------------------------------------------------


class Models:
    """Builds (or loads) every model of one data set; each builder seeds the initial weights."""

    def __init__(self, name: str, sc: Standardizer, args: argparse.Namespace) -> None:
        self.name, self.sc, self.args = name, sc, args
        self.data = stream(name, sc)
        s, b = args.steps, args.batch
        self.base = f"{name}-s{s}-b{b}-seed{args.seed}"
        self.info: dict[str, dict] = {}

    def _seed(self) -> None:
        torch.manual_seed(self.args.seed)

    def teacher(self) -> FlowMatching:
        self._seed()
        fm, self.info["teacher"] = fit(
            FlowMatching(mlp()), f"fm-{self.base}", self.data, steps=self.args.steps, lr=1e-3, args=self.args
        )
        return fm  # type: ignore[return-value]

    def meanflow(self) -> MeanFlow:
        self._seed()
        mf, self.info["meanflow"] = fit(
            MeanFlow(mlp(True), p=MEANFLOW_P, event_shape=(2,)),
            f"meanflow-p{MEANFLOW_P:g}-{self.base}",
            self.data,
            steps=self.args.steps,
            lr=1e-3,
            args=self.args,
        )
        return mf  # type: ignore[return-value]

    def twinflow(self) -> TwinFlow:
        self._seed()
        tw, self.info["twinflow"] = fit(
            TwinFlow(mlp(True), event_shape=(2,)),
            f"twinflow-{self.base}",
            self.data,
            steps=self.args.steps,
            lr=1e-3,
            args=self.args,
        )
        return tw  # type: ignore[return-value]

    def pairs(self, teacher: FlowMatching) -> tuple[Tensor, ...]:
        a = self.args
        path = Path(a.cache) / f"pairs-{self.base}-n{a.pairs}-heun{a.pair_steps}.safetensors"
        if a.retrain and path.exists():
            path.unlink()
            path.with_suffix(".json").unlink(missing_ok=True)
        w0 = time.perf_counter()
        generate_pairs(
            teacher,
            a.pairs,
            path,
            solver="heun",
            steps=a.pair_steps,
            batch_size=5000,
            generator=torch.Generator().manual_seed(PAIRS_SEED),
        )
        self.info["pairs"] = {
            "n": a.pairs,
            "solver": f"heun x {a.pair_steps}",
            "wall_s": time.perf_counter() - w0,
        }
        return load_pairs(path)

    def reflow(self, teacher: FlowMatching, pairs: tuple[Tensor, ...], *, ablation: bool = False) -> Reflow:
        kw = {"time": Uniform(), "distance": SquaredError()} if ablation else {}
        key = "reflow-uniform-l2" if ablation else "reflow"
        rf, self.info[key] = fit(
            Reflow.from_teacher(teacher, **kw),
            f"{key}-{self.base}-n{self.args.pairs}-d{self.args.distill_steps}-lr{self.args.distill_lr:g}",
            pairs,
            steps=self.args.distill_steps,
            lr=self.args.distill_lr,
            args=self.args,
        )
        return rf  # type: ignore[return-value]

    def freeflow(self, teacher: FlowMatching) -> FreeFlow:
        self._seed()
        model = FreeFlow(two_time_from(teacher.net), copy.deepcopy(teacher.net), event_shape=(2,))
        model, self.info["freeflow"] = fit(
            model,
            f"freeflow-{self.base}-d{self.args.distill_steps}-lr{self.args.distill_lr:g}",
            None,
            steps=self.args.distill_steps,
            lr=self.args.distill_lr,
            args=self.args,
        )
        return model  # type: ignore[return-value]

    def turbo(self, teacher: FlowMatching) -> VelocityRefiner:
        self._seed()
        net = MLP(4, REFINER_WIDTH, REFINER_DEPTH, out_dim=2)
        model = VelocityRefiner(net, copy.deepcopy(teacher), dt_max=TURBO_DT_MAX, event_shape=(2,))
        model, self.info["turbo"] = fit(
            model,
            f"turbo-{self.base}-d{self.args.distill_steps}-dt{TURBO_DT_MAX:g}",
            self.data,
            steps=self.args.distill_steps,
            lr=1e-3,
            args=self.args,
        )
        return model  # type: ignore[return-value]

    def blockwise(self) -> BlockwiseFlowMatching:
        self._seed()
        model = BlockwiseFlowMatching.uniform(4, lambda k: MLP(2, SEG_WIDTH, DEPTH), event_shape=(2,))
        model, self.info["blockwise"] = fit(
            model, f"blockwise-{self.base}", self.data, steps=self.args.steps, lr=1e-3, args=self.args
        )
        return model  # type: ignore[return-value]

    def pfgm(self, D: float, clip: float | None) -> PFGMPP:
        self._seed()
        model = PFGMPP(mlp(), D=D, sigma_data=1.0, sigma_max=PFGM_SIGMA_MAX, beta_clip=clip, event_shape=(2,))
        key = f"pfgm-D{D:g}" + ("-clip" if clip else "")
        model, self.info[key] = fit(
            model, f"{key}-{self.base}", self.data, steps=self.args.steps, lr=1e-3, args=self.args
        )
        return model  # type: ignore[return-value]


def evaluate_dataset(name: str, args: argparse.Namespace) -> dict:
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    n = args.n
    sc = Standardizer.fit(toy2d(name, 100_000, seed=FIT_SEED))
    M = Models(name, sc, args)
    data = toy2d(name, n, seed=EVAL_DATA_SEED)
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(NOISE_SEED))

    def swd(x: Tensor, y: Tensor = data) -> float:
        g = torch.Generator().manual_seed(SWD_PROJ_SEED)
        return sliced_wasserstein(x, y, n_projections=args.proj, generator=g)

    def score(x: Tensor) -> float:
        x = sc.inverse(x.float())
        if not bool(torch.isfinite(x).all()):
            return math.nan
        return swd(x)

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(SAMPLER_SEED)

    rows: dict[str, dict[int, float]] = {}
    notes: dict[str, str] = {}
    res: dict[str, Any] = {"name": name, "rows": rows, "notes": notes}
    res["floor"] = swd(toy2d(name, n, seed=FLOOR_DATA_SEED))
    print(f"\n=== {name} (n = {n}, SWD floor {res['floor']:.4f}) ===", flush=True)

    def row(label: str, sampler: Callable[[int], Tensor | None], nfes: tuple[int, ...] = NFES) -> None:
        rows[label] = {}
        for k in nfes:
            with torch.no_grad():
                x = sampler(k)
            if x is not None:
                rows[label][k] = score(x)
        cells = "  ".join(f"{k}:{v:.4f}" for k, v in rows[label].items())
        print(f"  {label:<34} {cells}", flush=True)

    # -- teacher --------------------------------------------------------------------------------
    fm = M.teacher()
    tg = fm.generator()
    row("teacher, Euler", lambda k: tg.sample(n, x0=x0, solver="euler", steps=k))
    row("teacher, Heun (NFE/2 steps)", lambda k: tg.sample(n, x0=x0, solver="heun", steps=k // 2), (2, 4, 8))
    with torch.no_grad():
        r = S.solve(tg.field, x0, S.Dopri5(atol=args.dopri_tol, rtol=args.dopri_tol), S.uniform_grid(1))
    res["dopri"] = {"swd": score(r.x), "nfe": r.nfe, "tol": args.dopri_tol}
    print(
        f"  teacher, Dopri5 (tol {args.dopri_tol:g})          {res['dopri']['swd']:.4f} at NFE {r.nfe}",
        flush=True,
    )

    # -- from scratch -----------------------------------------------------------------------------
    mf = M.meanflow()
    mg = mf.generator()
    row("MeanFlow (jumps)", lambda k: mg.sample(n, x0=x0, steps=k))

    tw = M.twinflow()
    twg = tw.generator()
    row("TwinFlow (UCGM 'few')", lambda k: twg.sample(n, x0=x0, steps=k, generator=gen()))

    # -- distilled from the teacher ---------------------------------------------------------------
    pairs = M.pairs(fm)
    rf = M.reflow(fm, pairs)
    rg = rf.generator()
    row("reflow rf++ (Euler)", lambda k: rg.sample(n, x0=x0, solver="euler", steps=k))
    rf_abl = M.reflow(fm, pairs, ablation=True)
    ag = rf_abl.generator()
    row("reflow uniform + L2 (Euler)", lambda k: ag.sample(n, x0=x0, solver="euler", steps=k), (1, 2))
    m = min(args.n_straight, n)
    res["straightness"] = {
        "teacher": straightness(fm.velocity, x0[:m], steps=64),
        "reflow rf++": straightness(rf.velocity, x0[:m], steps=64),
        "reflow uniform + L2": straightness(rf_abl.velocity, x0[:m], steps=64),
    }
    print(
        "  straightness S: " + ", ".join(f"{k} {v:.3g}" for k, v in res["straightness"].items()), flush=True
    )

    fr = M.freeflow(fm)
    fg = fr.generator()
    row("FreeFlow (1 jump)", lambda k: fg.sample(n, x0=x0, steps=1) if k == 1 else None)
    notes["FreeFlow (1 jump)"] = "trained from the prior only (the paper's s = 0): composed jumps n/a"

    tu = M.turbo(fm)
    tug = tu.generator()
    teacher_flops = flops_per_eval(fm.net, x0[:4], torch.zeros(4))
    ref_flops = flops_per_eval(tu.net, torch.cat([x0[:4], x0[:4]], 1), torch.zeros(4))
    res["turbo"] = {"flops_ratio": ref_flops / teacher_flops, "schedules": {}}

    def turbo(k: int) -> Tensor | None:
        sched = TURBO_SCHEDULES.get(k)
        if sched is None:
            return None
        x, nfe = tug.sample(n, x0=x0, schedule=sched, return_nfe=True)
        eq = nfe["teacher"] + nfe["refiner"] * res["turbo"]["flops_ratio"]
        res["turbo"]["schedules"][k] = {"schedule": list(sched), **nfe, "teacher_equivalent": eq}
        return x

    row("FlowTurbo refiner (H P R)", turbo)

    # -- other families ---------------------------------------------------------------------------
    bw = M.blockwise()
    bg = bw.generator()
    cost: dict[int, Any] = {}

    def blockwise(k: int) -> Tensor | None:
        if k % 4:
            return None
        x, c = bg.sample(n, x0=x0, solver="euler", steps=k // 4, return_cost=True)
        cost[k] = c.flops_per_sample / teacher_flops
        return x

    row("blockwise FM, K=4 (Euler)", blockwise)
    res["blockwise"] = {"teacher_equivalent": cost, "params": n_params(bw), "teacher_params": n_params(fm)}

    pfgm_models = {label: M.pfgm(D, clip) for label, D, clip in PFGM_DS}
    pg_main = pfgm_models["D=16"].generator()
    prior = pg_main.prior(n, generator=torch.Generator().manual_seed(PRIOR_SEED))
    row("PFGM++ D=16 (Euler, EDM grid)", lambda k: pg_main.sample(n, x0=prior, solver="euler", steps=k))

    # -- item 5: PFGM++ under a fixed error ---------------------------------------------------------
    e = torch.tensor([1.0, 1.0]) / math.sqrt(2.0)
    n5 = min(args.n_pfgm, n)
    pf: dict[str, dict[str, float]] = {}
    for label, _, _ in PFGM_DS:
        g5 = pfgm_models[label].generator()
        p5 = g5.prior(n5, generator=torch.Generator().manual_seed(PRIOR_SEED))
        pf[label] = {}
        for alpha in (0.0, *PERTURB):
            # a fixed error alpha * e in the predicted noise eps = (x - D) / sigma, i.e. D += -alpha sigma e
            pert = None if alpha == 0 else (lambda x, s, a=alpha: -a * s[:, None] * e.to(x.dtype))
            x = g5.sample(n5, x0=p5, solver="heun", steps=18, ode="sigma", perturb=pert)
            pf[label][f"{alpha:g}"] = score(x) if n5 == n else swd(sc.inverse(x), data[:n5])
        print(
            f"  PFGM++ {label:<22} " + "  ".join(f"err {a}: {v:.4f}" for a, v in pf[label].items()),
            flush=True,
        )
    res["pfgm"] = {"n": n5, "swd": pf, "floor": swd(toy2d(name, n, seed=FLOOR_DATA_SEED)[:n5], data[:n5])}
    res["info"] = M.info
    res["wall_s"], res["cpu_s"] = time.perf_counter() - t_wall, time.process_time() - t_cpu
    print(f"  [{name}: {res['wall_s']:.0f} s wall, {res['cpu_s']:.0f} s CPU]", flush=True)
    res["_teacher"] = fm  # for the timing phase (not written)
    res["_sc"] = sc
    return res


# --------------------------------------------------------------------------------------------------
# training cost per step, interleaved
# --------------------------------------------------------------------------------------------------


class Counter:
    """Counts the rows that pass through some modules, per training step, in units of the batch."""

    def __init__(self, groups: dict[str, list[nn.Module]]) -> None:
        self.rows = dict.fromkeys(groups, 0)
        self.handles = []
        for g, mods in groups.items():
            for m in mods:
                self.handles.append(m.register_forward_pre_hook(self._hook(g)))

    def _hook(self, g: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple) -> None:
            self.rows[g] += int(inputs[0].shape[0])

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def time_costs(teacher: FlowMatching, sc: Standardizer, name: str, args: argparse.Namespace) -> dict:
    """Median ms per training step of every method (interleaved rounds) and evaluations per step."""
    torch.manual_seed(args.seed)
    data = stream(name, sc)
    b = args.batch
    x = data(b, torch.Generator().manual_seed(5))
    pairs = (torch.randn(b, 2, generator=torch.Generator().manual_seed(6)), x)
    t_net = teacher.net

    def frozen_teacher() -> FlowMatching:
        return copy.deepcopy(teacher)

    freeflow = FreeFlow(two_time_from(t_net), copy.deepcopy(t_net), event_shape=(2,))
    turbo = VelocityRefiner(
        MLP(4, REFINER_WIDTH, REFINER_DEPTH, out_dim=2),
        frozen_teacher(),
        dt_max=TURBO_DT_MAX,
        event_shape=(2,),
    )
    bw = BlockwiseFlowMatching.uniform(4, lambda k: MLP(2, SEG_WIDTH, DEPTH), event_shape=(2,))
    fm = FlowMatching(mlp())
    mf = MeanFlow(mlp(True), p=MEANFLOW_P, event_shape=(2,))
    tw = TwinFlow(mlp(True), event_shape=(2,))
    rf = Reflow.from_teacher(teacher)
    rf.net.requires_grad_(True)
    pf = PFGMPP(mlp(), D=PFGM_D_MAIN, sigma_data=1.0, sigma_max=PFGM_SIGMA_MAX, event_shape=(2,))
    tw_nets = [tw.net] + ([tw.ema_net] if tw.ema_net is not None else [])
    methods: dict[str, tuple[nn.Module, Any, dict[str, list[nn.Module]]]] = {
        "flow matching (teacher)": (fm, x, {"own": [fm.net]}),
        "MeanFlow": (mf, x, {"own": [mf.net]}),
        "TwinFlow": (tw, x, {"own": tw_nets}),
        "reflow rf++": (rf, pairs, {"own": [rf.net]}),
        "FreeFlow": (
            freeflow,
            b,
            {"own": [freeflow.student, freeflow.corrector], "teacher": [freeflow.teacher]},
        ),
        "FlowTurbo refiner": (
            turbo,
            x,
            {"own": [turbo.net], "teacher": [m.net for m in turbo._teacher_modules]},
        ),
        "blockwise FM, K=4": (bw, x, {"own": list(bw.velocity_net.nets)}),
        "PFGM++ D=16": (pf, x, {"own": [pf.net]}),
    }
    pair_teacher = frozen_teacher().eval()
    pair_gen = pair_teacher.generator()

    def make_pairs() -> None:  # the reflow pairs: b teacher samples by Heun
        with torch.no_grad():
            pair_gen.sample(b, x0=pairs[0], solver="heun", steps=args.pair_steps)

    opts = {
        k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
        for k, (m, _, _) in methods.items()
    }

    def step(k: str) -> None:
        model, batch, _ = methods[k]
        opts[k].zero_grad(set_to_none=True)
        model.loss(batch).backward()
        opts[k].step()

    evals: dict[str, dict[str, float]] = {}
    for k, (model, _, groups) in methods.items():
        model.train()
        step(k)  # warm-up
        c = Counter(groups)
        step(k)
        c.close()
        evals[k] = {g: v / b for g, v in c.rows.items()}
    make_pairs()
    times: dict[str, list[float]] = {k: [] for k in [*methods, "reflow pairs (per batch)"]}
    for _ in range(args.time_rounds):
        for k in methods:
            t0 = time.perf_counter()
            for _ in range(args.time_steps):
                step(k)
            times[k].append((time.perf_counter() - t0) / args.time_steps)
        t0 = time.perf_counter()
        make_pairs()
        times["reflow pairs (per batch)"].append(time.perf_counter() - t0)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    flops = {
        "teacher": flops_per_eval(t_net, x[:4], torch.zeros(4)),
        "refiner": flops_per_eval(turbo.net, torch.cat([x[:4], x[:4]], 1), torch.zeros(4)),
        "segment": flops_per_eval(bw.velocity_net.nets[0], x[:4], torch.zeros(4)),
    }
    return {
        "ms": ms,
        "evals": evals,
        "flops": flops,
        "params": {k: n_params(m) for k, (m, _, _) in methods.items()},
    }


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{v:.{digits}f}"


def quality_table(res: dict) -> list[str]:
    out = [
        f"**{res['name']}** (SWD to {res.get('n', '')} fresh points, data units; noise floor "
        f"{res['floor']:.4f}; teacher Dopri5 tol {res['dopri']['tol']:g}: {res['dopri']['swd']:.4f} at "
        f"NFE {res['dopri']['nfe']})",
        "",
        "| method | " + " | ".join(f"NFE {k}" for k in NFES) + " |",
        "| --- | " + " | ".join("---" for _ in NFES) + " |",
    ]
    out.append("| control: fresh data vs data | " + " | ".join(fmt(res["floor"]) for _ in NFES) + " |")
    for label, r in res["rows"].items():
        out.append(f"| {label} | " + " | ".join(fmt(r.get(k)) for k in NFES) + " |")
    out.append(
        f"| teacher, Dopri5 (NFE {res['dopri']['nfe']}) | "
        + " | ".join(fmt(res["dopri"]["swd"]) if k == 100 else "" for k in NFES)
        + " |"
    )
    tu = res["turbo"]["schedules"]
    bw = res["blockwise"]["teacher_equivalent"]
    out += [
        "",
        "FlowTurbo cells (H, P, R steps -> teacher + refiner calls, teacher-FLOP equivalent): "
        + "; ".join(
            f"NFE {k}: {tuple(s['schedule'])} -> {s['teacher']} + {s['refiner']} = {s['teacher_equivalent']:.2f}"
            for k, s in tu.items()
        )
        + f" (refiner/teacher FLOPs {res['turbo']['flops_ratio']:.3f}). Blockwise cells: K = 4 segment nets, "
        + f"{res['blockwise']['params']} parameters against the teacher's {res['blockwise']['teacher_params']}; "
        + "teacher-FLOP equivalent "
        + ", ".join(f"NFE {k}: {v:.2f}" for k, v in bw.items())
        + ". PFGM++ NFE 1 is its denoiser at sigma_max (the data mean). MeanFlow: adaptive-weight power "
        + f"p = {MEANFLOW_P:g} (see MEANFLOW_P), 1 = one jump u(x0, 0, 1); TwinFlow: the official UCGM sampler "
        + "('few', re-noising 1); reflow: Euler on the student; FreeFlow: one jump only (trained from the "
        + "prior, s = 0).",
    ]
    return out


def checks(res: dict) -> tuple[list[str], dict[str, bool]]:
    r = res["rows"]
    ref100 = r["teacher, Euler"][100]
    euler1 = r["teacher, Euler"][1]
    out = [
        f"**{res['name']}**: teacher Euler 100 steps {ref100:.4f} (bar {WITHIN} x = {WITHIN * ref100:.4f}); "
        f"teacher 1-step Euler {euler1:.4f} (wide margin: <= {WIDE} x = {WIDE * euler1:.4f})",
        "",
        "| 1-step model | SWD | / teacher 100 | / teacher Euler 1 | within 1.3x | wide margin | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = {}
    for label in ("MeanFlow (jumps)", "reflow rf++ (Euler)", "FreeFlow (1 jump)", "TwinFlow (UCGM 'few')"):
        v = r[label][1]
        a, b = v / ref100, v / euler1
        ok = a <= WITHIN and b <= WIDE
        verdicts[label] = ok
        tag = " (not distilled; item 7)" if label.startswith("TwinFlow") else ""
        out.append(
            f"| {label}{tag} | {v:.4f} | {a:.2f} | {b:.2f} | {'yes' if a <= WITHIN else 'no'} | "
            f"{'yes' if b <= WIDE else 'no'} | **{'PASS' if ok else 'FAIL'}** |"
        )
    return out, verdicts


def reflow_table(results: list[dict]) -> list[str]:
    out = [
        "| data | straightness S: teacher | reflow rf++ | uniform + L2 | 1-step SWD: teacher Euler | "
        "reflow rf++ | uniform + L2 | 2-step: rf++ | uniform + L2 | rf++ beats L2 at 1 step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for res in results:
        s, r = res["straightness"], res["rows"]
        a, b = r["reflow rf++ (Euler)"], r["reflow uniform + L2 (Euler)"]
        out.append(
            f"| {res['name']} | {s['teacher']:.3g} | {s['reflow rf++']:.3g} | {s['reflow uniform + L2']:.3g} | "
            f"{r['teacher, Euler'][1]:.4f} | {a[1]:.4f} | {b[1]:.4f} | {a[2]:.4f} | {b[2]:.4f} | "
            f"{'yes' if a[1] < b[1] else 'no'} |"
        )
    return out


def pfgm_table(results: list[dict]) -> list[str]:
    alphas = ("0", *(f"{a:g}" for a in PERTURB))
    out = [
        "| data | D | "
        + " | ".join(f"error {a}" for a in alphas)
        + " | degradation at "
        + " | ".join(f"{a}" for a in alphas[1:])
        + " |",
        "| --- | --- | "
        + " | ".join("---" for _ in alphas)
        + " | "
        + " | ".join("---" for _ in alphas[1:])
        + " |",
    ]
    for res in results:
        for label, v in res["pfgm"]["swd"].items():
            out.append(
                f"| {res['name']} | {label} | "
                + " | ".join(fmt(v[a]) for a in alphas)
                + " | "
                + " | ".join(f"x{v[a] / v['0']:.2f}" for a in alphas[1:])
                + " |"
            )
    return out


def cost_table(cost: dict, args: argparse.Namespace) -> list[str]:
    ms = cost["ms"]
    base = ms["flow matching (teacher)"]
    pair_fm = ms["reflow pairs (per batch)"] / base * (args.pairs / args.batch)
    S_, D_ = args.steps, args.distill_steps
    teacher = {"reflow rf++", "FreeFlow", "FlowTurbo refiner"}
    out = [
        "| method | params | steps | ms/step | x FM per step | net evals / step (own) | teacher evals / step | "
        "total cost in FM steps (incl. teacher) | x FM training |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k, v in ms.items():
        if k == "reflow pairs (per batch)":
            continue
        steps = D_ if k in teacher else S_
        per = v / base
        total = steps * per + (S_ if k in teacher else 0) + (pair_fm if k == "reflow rf++" else 0)
        ev = cost["evals"][k]
        out.append(
            f"| {k} | {cost['params'][k]} | {steps} | {v:.2f} | {per:.2f} | {ev.get('own', 0):.2f} | "
            f"{ev.get('teacher', 0):.2f} | {total:.0f} | {total / S_:.2f} |"
        )
    out += [
        "",
        f"Reflow pairs: {args.pairs} pairs by the teacher's Heun x {args.pair_steps} ({2 * args.pair_steps} NFE "
        f"each) cost {ms['reflow pairs (per batch)']:.1f} ms per {args.batch} pairs = {pair_fm:.0f} FM steps "
        "(included in reflow's total). Evaluations count forward calls in units of the batch: MeanFlow's "
        "JVP counts as one (it costs about two forwards), TwinFlow's include its EMA target net (the RCGM "
        "chain) and the rectify term's batched call; FreeFlow's own = student (JVP) + corrector; blockwise "
        f"segment nets cost {cost['flops']['segment'] / cost['flops']['teacher']:.2f} of a teacher evaluation, "
        f"the refiner {cost['flops']['refiner'] / cost['flops']['teacher']:.3f}.",
    ]
    return out


def twin_table(results: list[dict], cost: dict | None, args: argparse.Namespace) -> list[str]:
    labels = [
        ("TwinFlow (UCGM 'few')", "TwinFlow"),
        ("MeanFlow (jumps)", "MeanFlow"),
        ("reflow rf++ (Euler)", "reflow rf++"),
        ("FreeFlow (1 jump)", "FreeFlow"),
    ]
    out = [
        "| method | "
        + " | ".join(f"{r['name']} 1-step" for r in results)
        + " | training (steps) | x FM training |",
        "| --- | " + " | ".join("---" for _ in results) + " | --- | --- |",
    ]
    for label, key in labels:
        if cost is not None:
            ms = cost["ms"]
            base = ms["flow matching (teacher)"]
            distilled = key in ("reflow rf++", "FreeFlow")
            steps = args.distill_steps if distilled else args.steps
            total = steps * ms[key] / base + (args.steps if distilled else 0)
            if key == "reflow rf++":
                total += ms["reflow pairs (per batch)"] / base * (args.pairs / args.batch)
            tr = f"{total / args.steps:.2f}"
            how = f"teacher {args.steps} + {steps}" if distilled else f"{steps} from scratch"
        else:
            tr, how = "-", "-"
        out.append(
            f"| {key} | " + " | ".join(fmt(r["rows"][label][1]) for r in results) + f" | {how} | {tr} |"
        )
    out.append(
        "| teacher 1-step Euler | "
        + " | ".join(fmt(r["rows"]["teacher, Euler"][1]) for r in results)
        + " | - | 1.00 |"
    )
    out.append(
        "| teacher 100-step Euler | "
        + " | ".join(fmt(r["rows"]["teacher, Euler"][100]) for r in results)
        + " | - | 1.00 |"
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: moons, few steps, small n")
    p.add_argument("--datasets", nargs="+", default=None, choices=DATASETS)
    p.add_argument(
        "--steps", type=int, default=4000, help="training steps of the teacher and from-scratch methods"
    )
    p.add_argument("--distill-steps", type=int, default=2000, help="steps of reflow, FreeFlow, the refiner")
    p.add_argument(
        "--distill-lr", type=float, default=1e-3, help="lr of reflow and FreeFlow (3e-4 tried: worse)"
    )
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--pairs", type=int, default=20_000, help="reflow pairs")
    p.add_argument("--pair-steps", type=int, default=16, help="Heun steps of the teacher for the pairs")
    p.add_argument("--n", type=int, default=50_000, help="samples and fresh data points per SWD")
    p.add_argument("--n-pfgm", type=int, default=20_000, help="samples per cell of the PFGM++ error table")
    p.add_argument("--n-straight", type=int, default=5_000, help="trajectories for the straightness")
    p.add_argument("--proj", type=int, default=128, help="SWD projections (fixed seed)")
    p.add_argument("--dopri-tol", type=float, default=1e-4)
    p.add_argument("--time-rounds", type=int, default=5)
    p.add_argument("--time-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=str(HERE / ".cache" / "few_step"))
    p.add_argument("--retrain", action="store_true", help="ignore and overwrite cached weights")
    p.add_argument(
        "--results", default=None, help="markdown output (default RESULTS-few_step.md; quick: none)"
    )
    p.add_argument("--report", default=None, help="only re-render the tables from a saved results.json")
    args = p.parse_args()
    if args.quick:
        args.steps, args.distill_steps, args.pairs, args.n = 300, 150, 2000, 5000
        args.n_pfgm, args.n_straight, args.proj, args.time_rounds, args.time_steps = 2000, 1000, 64, 2, 3
        args.cache = args.cache + "-quick"
    datasets = args.datasets or (["moons"] if args.quick else list(DATASETS))
    results_path = args.results or (None if args.quick else str(HERE / "RESULTS-few_step.md"))
    torch.set_num_threads(args.threads)
    w0, c0 = time.perf_counter(), time.process_time()
    header = (
        f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared), threads {torch.get_num_threads()}; steps {args.steps} x batch "
        f"{args.batch} (distilled: {args.distill_steps} at lr {args.distill_lr:g}), {args.pairs} reflow pairs, "
        f"n = {args.n}, {args.proj} projections, seed {args.seed}"
    )
    print(header, flush=True)

    state_path = Path(args.cache) / "results.json"
    if args.report:
        state = json.loads(Path(args.report).read_text())
        for res in state["results"]:
            res["rows"] = {k: {int(n): v for n, v in r.items()} for k, r in res["rows"].items()}
            res["turbo"]["schedules"] = {int(k): v for k, v in res["turbo"]["schedules"].items()}
            res["blockwise"]["teacher_equivalent"] = {
                int(k): v for k, v in res["blockwise"]["teacher_equivalent"].items()
            }
        args = argparse.Namespace(**(state["args"] | {"report": args.report, "results": args.results}))
        results_path = args.results or (None if args.quick else str(HERE / "RESULTS-few_step.md"))
    else:
        results = []
        for name in datasets:
            res = evaluate_dataset(name, args)
            res["n"] = args.n
            results.append(res)
        first = results[0]
        print("\ntiming the training steps (interleaved)...", flush=True)
        cost = time_costs(first["_teacher"], first["_sc"], first["name"], args)
        for res in results:
            del res["_teacher"], res["_sc"]
        state = {
            "args": vars(args),
            "header": header,
            "results": results,
            "cost": cost,
            "wall_s": time.perf_counter() - w0,
            "cpu_s": time.process_time() - c0,
        }
        Path(args.cache).mkdir(parents=True, exist_ok=True)
        _atomic_text(state_path, json.dumps(state, indent=1))
    text, summary = render(state, args)
    print("\n" + text)
    print("\nitem 2 verdicts: " + " | ".join(summary))
    if results_path:
        cmd = "python benchmarks/few_step.py" + (
            "" if not args.datasets else " --datasets " + " ".join(args.datasets)
        )
        doc = "\n".join(
            [
                "# Few-step and one-step generation on 2-D toys (`benchmarks/few_step.py`)",
                "",
                f"Command: `OMP_NUM_THREADS={args.threads} {cmd}`; the numbers are saved in "
                f"`{_shown(Path(args.cache) / 'results.json')}`, `--report` that file re-renders this page.",
                "",
                f"Machine: {state['header']}.",
                "",
                text,
                "",
            ]
        )
        _atomic_text(Path(results_path), doc)
        print(f"wrote {results_path}")


def _shown(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it."""
    try:
        return str(path.resolve().relative_to(HERE.parent))
    except ValueError:
        return str(path)


def render(state: dict, args: argparse.Namespace) -> tuple[str, list[str]]:
    """The markdown report of a finished run and the item-2 verdicts, one line per data set."""
    results, cost = state["results"], state["cost"]
    first = results[0]
    lines = ["## 1. Sample quality against network evaluations (SWD, lower is better)", ""]
    for res in results:
        lines += quality_table(res) + [""]
    lines += [
        "## 1b. Training cost relative to plain flow matching "
        f"(measured on {first['name']}, {args.time_rounds} interleaved rounds x {args.time_steps} steps, median)",
        "",
    ]
    lines += cost_table(cost, args) + [""]
    lines += ["## 2. 1-step models against the teacher (issue 11, item 2)", ""]
    summary = []
    for res in results:
        tab, verdicts = checks(res)
        lines += tab + [""]
        summary.append(
            f"{res['name']}: "
            + ", ".join(f"{k.split(' (')[0]} {'PASS' if v else 'FAIL'}" for k, v in verdicts.items())
        )
    lines += ["## 4. Reflow straightens paths; rf++ against uniform + L2 (item 4)", ""]
    lines += reflow_table(results) + [""]
    lines += [
        "## 5. PFGM++ under a fixed denoiser error (item 5)",
        "",
        f"SWD of {results[0]['pfgm']['n']} samples (EDM Heun, 18 steps = 35 NFE, sigma in "
        f"[0.002, {PFGM_SIGMA_MAX:g}]) to as many fresh points (floor "
        + ", ".join(f"{r['name']} {r['pfgm']['floor']:.4f}" for r in results)
        + "); the error is a constant alpha * (1, 1)/sqrt(2) added to the denoiser's noise prediction "
        "eps = (x - D)/sigma, i.e. D -> D - alpha sigma e. Same net, steps and data for every D.",
        "",
    ]
    lines += pfgm_table(results) + [""]
    lines += ["## 7. TwinFlow at 1 step against MeanFlow and distilled students (item 7)", ""]
    lines += twin_table(results, cost, args) + [""]
    lines += ["## Training runs (wall under a shared, loaded CPU; CPU = process time)", ""]
    train_cpu = 0.0
    for res in results:
        parts = []
        for k, v in res["info"].items():
            if "train_wall_s" in v:
                train_cpu += v["train_cpu_s"]
                parts.append(
                    f"{k} {v['train_wall_s']} s wall / {v['train_cpu_s']} s CPU, loss {v['final_loss']:.4g}"
                    + (" (cached)" if v.get("cached") else "")
                )
        lines.append(f"- {res['name']}: " + "; ".join(parts))
    lines += [
        "",
        f"This run: {state['wall_s']:.0f} s wall, {state['cpu_s']:.0f} s CPU (cached models are loaded, not "
        f"retrained); the training of all models took {train_cpu:.0f} s CPU when they were trained.",
    ]
    return "\n".join(lines), summary


if __name__ == "__main__":
    main()
