"""Does minibatch-OT coupling give straighter flows than the independent coupling? (eight-gaussians)

Two flow-matching models (linear path, uniform t, MLP 3x256) are trained per seed on fresh,
standardised eight-gaussians samples with identical initial weights, data stream, noise and times;
the only difference is the coupling: ``Independent()`` or ``MinibatchOT("exact")`` (OT-CFM, Tong et
al., 2024). For each model, from one fixed batch of noise:

- SWD (sliced 2-Wasserstein, 500 fixed projections, data units) to fresh data after 1, 2 and 4
  Euler steps, and after Dopri5 (atol = rtol = 1e-5; the model's own limit);
- straightness (Liu et al., 2023): mean over the 100 grid times of E|v(x_t, t) - (x_1 - x_0)|^2 along
  the model's own Euler-100 trajectory, in standardised units (0 for a straight path);
- transport cost E|x_1 - x_0|^2 of the learned map (Euler-100, standardised units), next to the
  squared W2 distance noise -> data estimated by exact OT on 2000 + 2000 samples, and "cost/OT": the
  map's own pairing cost divided by the exact OT cost between the same 2000 start and end points
  (>= 1; 1 means the learned map is the optimal pairing of its own endpoints);
- training time per step, and the time of one coupling call on a batch of 256.

Run:
    python benchmarks/ot_straightness.py            # full run, 3 seeds (a few minutes, 1 thread)
    python benchmarks/ot_straightness.py --quick    # smoke run

Trained weights are cached in ``benchmarks/.cache/`` (safetensors + JSON); ``--retrain`` ignores it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from _cache import train_or_load  # noqa: E402  (benchmarks/ is the script's folder)
from torch import Tensor

from flowforge.continuous import FlowMatching
from flowforge.core import solvers as S
from flowforge.core.couplings import Independent, MinibatchOT
from flowforge.data import Standardizer, toy2d
from flowforge.metrics import sliced_wasserstein
from flowforge.nn import MLP

DATASET = "eight-gaussians"
COUPLINGS = {"independent": Independent, "minibatch-OT": lambda: MinibatchOT("exact")}
EULER_STEPS = (1, 2, 4)
SWD_PROJ_SEED = 7
NOISE_SEED = 1234
EVAL_DATA_SEED = 10_001
FLOOR_DATA_SEED = 10_002
FIT_SEED = 999


def get_model(
    coupling: str, seed: int, steps: int, batch: int, read: bool, write: bool, sc: Standardizer
) -> tuple[FlowMatching, dict]:
    """Train (or load) one model; the initial weights depend on ``seed`` only, not on the coupling."""
    tag = f"ot-{DATASET}-{coupling}-mlp256x3-steps{steps}-b{batch}-seed{seed}"
    torch.manual_seed(seed)
    fm = FlowMatching(MLP(2, 256, 3), coupling=COUPLINGS[coupling]())
    return train_or_load(fm, tag, DATASET, sc, steps=steps, batch=batch, seed=seed, read=read, write=write)


def coupling_ms(batch: int, sc: Standardizer, reps: int) -> dict[str, float]:
    """Median wall time of one coupling call on a standardised batch (ms)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, make in COUPLINGS.items():
        c = make()
        times = []
        for _ in range(reps):
            x0 = torch.randn(batch, 2, generator=g)
            x1 = sc.forward(toy2d(DATASET, batch, generator=g))
            t0 = time.perf_counter()
            c(x0, x1)
            times.append(time.perf_counter() - t0)
        out[name] = 1e3 * statistics.median(times)
    return out


def exact_ot_cost(a: Tensor, b: Tensor) -> float:
    """Exact squared-Euclidean OT cost between two equal-size uniform point clouds."""
    import ot

    w = np.full(a.shape[0], 1.0 / a.shape[0])
    return float(ot.emd2(w, w, (torch.cdist(a, b) ** 2).numpy(), numItermax=10_000_000))


def evaluate(
    fm: FlowMatching, x0: Tensor, data: Tensor, sc: Standardizer, proj: int, n_ot: int
) -> dict[str, float]:
    f = fm.generator().field

    def swd(x: Tensor) -> float:
        g = torch.Generator().manual_seed(SWD_PROJ_SEED)
        return sliced_wasserstein(sc.inverse(x), data, n_projections=proj, generator=g)

    out: dict[str, float] = {}
    with torch.no_grad():
        for k in EULER_STEPS:
            out[f"swd{k}"] = swd(S.solve(f, x0, S.Euler(), S.uniform_grid(k)).x)
        out["swd_dopri"] = swd(S.solve(f, x0, S.Dopri5(atol=1e-5, rtol=1e-5), S.uniform_grid(1)).x)
        traj = S.solve(f, x0, S.Euler(), S.uniform_grid(100), return_trajectory=True).trajectory
    h = 1.0 / 100
    v = (traj[1:] - traj[:-1]) / h  # (100, B, 2): the velocity Euler used at each grid time
    chord = traj[-1] - traj[0]  # (B, 2)
    out["straight"] = float((v - chord).pow(2).sum(-1).mean())
    out["cost"] = float(chord.pow(2).sum(-1).mean())
    # Excess transport: the map's own pairing cost over the optimal re-pairing of the same points.
    m = min(n_ot, x0.shape[0])
    a, b = traj[0, :m].double(), traj[-1, :m].double()
    own = float((b - a).pow(2).sum(-1).mean())
    out["excess"] = own / exact_ot_cost(a, b)
    return out


def w2_squared(sc: Standardizer, n: int) -> float:
    """Exact-OT estimate of W2^2(N(0, I), data) in standardised units from ``n`` + ``n`` samples."""
    a = torch.randn(n, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    b = sc.forward(toy2d(DATASET, n, seed=6, dtype=torch.float64))
    return exact_ot_cost(a, b)


def fmt(xs: list[float], digits: int = 4) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, tiny training")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 3000; quick 200)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (quick: 0)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--n", type=int, default=None, help="evaluation samples (default 10000)")
    p.add_argument("--proj", type=int, default=500, help="SWD projections (fixed across all runs)")
    p.add_argument("--n-ot", type=int, default=2000, help="points for the exact-OT excess-cost ratio")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-cache", action="store_true", help="neither read nor write benchmarks/.cache")
    p.add_argument("--retrain", action="store_true", help="train again and overwrite the cache")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.seeds, args.n = args.steps or 200, args.seeds or [0], args.n or 2000
        args.n_ot = min(args.n_ot, 500)
        args.no_cache = True
    else:
        args.steps, args.seeds, args.n = args.steps or 3000, args.seeds or [0, 1, 2], args.n or 10_000
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
        f"threads {torch.get_num_threads()}; {DATASET}, steps {args.steps}, batch {args.batch}, "
        f"seeds {args.seeds}, n {args.n}, SWD projections {args.proj}"
    )
    t_start = time.perf_counter()
    sc = Standardizer.fit(toy2d(DATASET, 100_000, seed=FIT_SEED))
    x0 = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(NOISE_SEED))
    data = toy2d(DATASET, args.n, seed=EVAL_DATA_SEED)
    g = torch.Generator().manual_seed(SWD_PROJ_SEED)
    floor = sliced_wasserstein(
        toy2d(DATASET, args.n, seed=FLOOR_DATA_SEED), data, n_projections=args.proj, generator=g
    )
    w2 = w2_squared(sc, args.n_ot)
    cms = coupling_ms(args.batch, sc, reps=200 if not args.quick else 20)

    results: dict[str, list[dict[str, float]]] = {c: [] for c in COUPLINGS}
    print(
        f"\n{'coupling':<14}{'seed':>5}{'ms/step':>9}{'loss':>8}{'SWD e1':>9}{'SWD e2':>9}{'SWD e4':>9}"
        f"{'SWD dp5':>9}{'straight':>10}{'cost':>8}{'cost/OT':>9}"
    )
    for seed in args.seeds:
        for name in COUPLINGS:
            read, write = not (args.no_cache or args.retrain), not args.no_cache
            fm, info = get_model(name, seed, args.steps, args.batch, read, write, sc)
            r = evaluate(fm, x0, data, sc, args.proj, args.n_ot) | {
                "ms_per_step": info["ms_per_step"],
                "loss": info["final_loss"],
            }
            results[name].append(r)
            print(
                f"{name:<14}{seed:>5}{r['ms_per_step']:>9.2f}{r['loss']:>8.3f}{r['swd1']:>9.4f}"
                f"{r['swd2']:>9.4f}{r['swd4']:>9.4f}{r['swd_dopri']:>9.4f}{r['straight']:>10.4f}"
                f"{r['cost']:>8.3f}{r['excess']:>9.3f}" + ("  (cached)" if info["cached"] else "")
            )

    print(f"\nSWD floor (data vs fresh data, n={args.n}): {floor:.4f}")
    print(
        f"W2^2(noise, data) by exact OT on {args.n_ot}+{args.n_ot} fresh samples (standardised units, "
        f"biased up by sampling): {w2:.3f}"
    )
    print("coupling call on a batch of", args.batch, "(median ms):", {k: round(v, 2) for k, v in cms.items()})
    print(f"total {time.perf_counter() - t_start:.0f} s")

    n_seeds = len(args.seeds)
    print(f"\n=== {DATASET}: mean ± std over {n_seeds} seed(s) ===")
    cols = [
        ("SWD Euler-1", "swd1"),
        ("SWD Euler-2", "swd2"),
        ("SWD Euler-4", "swd4"),
        ("SWD dopri5", "swd_dopri"),
        ("straightness", "straight"),
        ("E|x1-x0|^2", "cost"),
        ("cost / OT cost", "excess"),
        ("train ms/step", "ms_per_step"),
    ]
    print(f"{'metric':<15}" + "".join(f"{c:>22}" for c in COUPLINGS))
    for label, key in cols:
        digits = 2 if key == "ms_per_step" else (3 if key in ("cost", "excess") else 4)
        print(f"{label:<15}" + "".join(f"{fmt([r[key] for r in results[c]], digits):>22}" for c in COUPLINGS))


if __name__ == "__main__":
    main()
