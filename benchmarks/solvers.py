"""ODE solvers at equal evaluation budgets on trained 2-D flow-matching models.

For each dataset (moons, checkerboard) one flow-matching model (linear path, uniform t, MLP 3x256) is
trained on fresh standardised samples every step. From one fixed batch of noise, every solver
(Euler, midpoint, Heun, RK4, FlowTurbo's pseudo-corrector "turbo", Dopri5 at a few tolerances) is run
at NFE budgets of about 2 ... 64 and scored by

- SWD: sliced 2-Wasserstein distance (500 fixed projections) to fresh data, in data units;
- err: mean L2 distance (data units) to a reference endpoint from the same noise (Dopri5 at
  atol = rtol = 1e-7 in float64, checked against RK4 with 400 steps on a subset).

It then checks the FlowTurbo claim that the pseudo-corrector beats Heun at equal evaluations and, for
a few solvers at low NFE, compares time grids (uniform, SD3-shifted, EDM).

Run:
    python benchmarks/solvers.py            # full run (a few minutes on 1 CPU thread)
    python benchmarks/solvers.py --quick    # smoke run (seconds)

Trained weights are cached in ``benchmarks/.cache/`` (safetensors + JSON); ``--retrain`` ignores it.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from collections.abc import Callable

import torch
from _cache import CACHE, train_or_load  # noqa: E402  (benchmarks/ is the script's folder)
from torch import Tensor

from flowforge.continuous import FlowMatching
from flowforge.core import solvers as S
from flowforge.data import Standardizer, toy2d
from flowforge.metrics import sliced_wasserstein
from flowforge.nn import MLP

BUDGETS = (2, 4, 6, 8, 12, 16, 32, 64)
DOPRI_TOLS = (1e-2, 1e-3, 1e-4, 1e-5)
# name -> (solver factory, evaluations per step, extra evaluations once)
FIXED: dict[str, tuple[Callable[[], S.Solver], int, int]] = {
    "euler": (S.Euler, 1, 0),
    "midpoint": (S.Midpoint, 2, 0),
    "heun": (S.Heun, 2, 0),
    "rk4": (S.RK4, 4, 0),
    "turbo": (S.PseudoCorrector, 1, 1),
}
SWD_PROJ_SEED = 7
NOISE_SEED = 1234
EVAL_DATA_SEED = 10_001
FLOOR_DATA_SEED = 10_002
FIT_SEED = 999


# --------------------------------------------------------------------------------------------------
# Model: train or load from the cache
# --------------------------------------------------------------------------------------------------


def build(seed: int) -> FlowMatching:
    torch.manual_seed(seed)
    return FlowMatching(MLP(2, 256, 3))


def get_model(
    name: str, steps: int, batch: int, seed: int, use_cache: bool, sc: Standardizer
) -> tuple[FlowMatching, dict]:
    """The EMA model for ``name`` and a dict of training info (seconds, ms/step, cached or not)."""
    tag = f"solvers-{name}-mlp256x3-steps{steps}-b{batch}-seed{seed}"
    return train_or_load(
        build(seed), tag, name, sc, steps=steps, batch=batch, seed=seed, read=use_cache, write=use_cache
    )


def integrate(f: Callable, x0: Tensor, solver: S.Solver, grid: Tensor) -> tuple[Tensor, int]:
    with torch.no_grad():
        res = S.solve(f, x0, solver, grid)
    return res.x, res.nfe


def steps_for(budget: int, cost: int, extra: int) -> int:
    return max(1, round((budget - extra) / cost))


def evaluate_dataset(name: str, args: argparse.Namespace) -> dict:
    n = args.n
    sc = Standardizer.fit(toy2d(name, 100_000, seed=FIT_SEED))
    fm, info = get_model(name, args.steps, args.batch, args.seed, not args.no_cache, sc)
    gen = fm.generator()
    f = gen.field

    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(NOISE_SEED))
    data = toy2d(name, n, seed=EVAL_DATA_SEED)

    def swd(x: Tensor, y: Tensor = data) -> float:
        g = torch.Generator().manual_seed(SWD_PROJ_SEED)
        return sliced_wasserstein(x, y, n_projections=args.proj, generator=g)

    def to_data(x: Tensor) -> Tensor:
        return sc.inverse(x.float())

    floor = swd(toy2d(name, n, seed=FLOOR_DATA_SEED))

    # Reference endpoint: Dopri5 in float64 on a float64 copy of the model.
    fm64 = copy.deepcopy(fm).double()
    f64 = fm64.generator().field
    t0 = time.perf_counter()
    ref_tol = args.ref_tol
    ref64, ref_nfe = integrate(f64, x0.double(), S.Dopri5(atol=ref_tol, rtol=ref_tol), S.uniform_grid(1))
    ref_secs = time.perf_counter() - t0
    m = min(1000, n)
    rk_check, _ = integrate(f64, x0[:m].double(), S.RK4(), S.uniform_grid(400))
    ref_check = float((sc.inverse(rk_check) - sc.inverse(ref64[:m])).norm(dim=1).max())
    ref = to_data(ref64)
    ref_swd = swd(ref)

    def score(x: Tensor) -> tuple[float, float]:
        xd = to_data(x)
        return swd(xd), float((xd - ref).norm(dim=1).mean())

    rows = []
    for sname, (make, cost, extra) in FIXED.items():
        for k in sorted({steps_for(b, cost, extra) for b in args.budgets}):
            x, nfe = integrate(f, x0, make(), S.uniform_grid(k))
            s, e = score(x)
            rows.append({"solver": sname, "steps": k, "nfe": nfe, "swd": s, "err": e})
    for tol in args.dopri_tols:
        x, nfe = integrate(f, x0, S.Dopri5(atol=tol, rtol=tol), S.uniform_grid(1))
        s, e = score(x)
        rows.append({"solver": f"dopri5@{tol:g}", "steps": None, "nfe": nfe, "swd": s, "err": e})

    # Sanity: the Generator's named "turbo" solver is the same pseudo-corrector we drive directly.
    via_gen = gen.sample(n, solver="turbo", steps=3, x0=x0)
    direct, _ = integrate(f, x0, S.PseudoCorrector(), S.uniform_grid(3))
    # (gen.sample casts the grid to float32, so allow for rounding of 1/3 and 2/3.)
    gap = float((via_gen - direct).abs().max())
    assert gap < 1e-4, f"gen.sample(solver='turbo') differs from PseudoCorrector by {gap:.2e}"

    # Time grids at low NFE for the best fixed-step solver at NFE 8 plus Heun and turbo.
    fixed_rows = [r for r in rows if r["steps"] is not None and r["nfe"] == 8]
    best = min(fixed_rows, key=lambda r: r["err"])["solver"] if fixed_rows else "turbo"
    grid_solvers = list(dict.fromkeys([best, "turbo", "heun"]))
    grids: dict[str, Callable[[int], Tensor]] = {
        "uniform": S.uniform_grid,
        "shift 1/3": lambda k: S.shifted_grid(k, 1 / 3),
        "shift 3": lambda k: S.shifted_grid(k, 3.0),
        "edm": S.edm_grid,
    }
    grid_rows = []
    for sname in grid_solvers:
        make, cost, extra = FIXED[sname]
        for b in args.grid_budgets:
            k = steps_for(b, cost, extra)
            if k < 2:  # a single step from 0 to 1 is the same on every grid (edm aside)
                continue
            for gname, gfun in grids.items():
                if gname == "uniform":  # already in the main table
                    r = next(r for r in rows if r["solver"] == sname and r["steps"] == k)
                    nfe, s, e = r["nfe"], r["swd"], r["err"]
                else:
                    x, nfe = integrate(f, x0, make(), gfun(k).float())
                    s, e = score(x)
                grid_rows.append({"solver": sname, "grid": gname, "steps": k, "nfe": nfe, "swd": s, "err": e})

    return {
        "name": name,
        "info": info,
        "floor": floor,
        "ref_tol": ref_tol,
        "ref_nfe": ref_nfe,
        "ref_secs": ref_secs,
        "ref_swd": ref_swd,
        "ref_check": ref_check,
        "rows": rows,
        "grid_rows": grid_rows,
    }


# --------------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------------


def print_dataset(res: dict) -> None:
    info = res["info"]
    src = "cached" if info["cached"] else "trained"
    print(f"\n=== {res['name']} ===")
    print(
        f"model: {src}, {info['train_seconds']} s ({info['ms_per_step']} ms/step, "
        f"{info['threads']} thread(s)), final loss {info['final_loss']:.4f}"
    )
    print(f"SWD floor (data vs fresh data): {res['floor']:.4f}")
    print(
        f"reference: dopri5 float64 tol {res['ref_tol']:g}, NFE {res['ref_nfe']}, {res['ref_secs']:.1f} s, "
        f"SWD {res['ref_swd']:.4f}; max |ref - rk4(400)| on 1000 pts = {res['ref_check']:.1e}"
    )
    fixed = [r for r in res["rows"] if r["steps"] is not None]
    nfes = sorted({r["nfe"] for r in fixed})
    print("\nuniform grid, cells: SWD / err (columns are the actual NFE; '-': not reachable)")
    print(f"{'solver':<9}" + "".join(f"{'NFE ' + str(b):>17}" for b in nfes))
    for sname in FIXED:
        cells = []
        for b in nfes:
            r = next((r for r in fixed if r["solver"] == sname and r["nfe"] == b), None)
            cell = "-" if r is None else f"{r['swd']:.4f} / {r['err']:.4f}"
            cells.append(f"{cell:>17}")
        print(f"{sname:<9}" + "".join(cells))
    print("\nadaptive:")
    for r in res["rows"]:
        if r["steps"] is None:
            print(f"  {r['solver']:<14} NFE {r['nfe']:>4}   SWD {r['swd']:.4f}   err {r['err']:.2e}")
    print("\ntime grids (SWD / err):")
    gnames = list(dict.fromkeys(r["grid"] for r in res["grid_rows"]))
    print(f"{'solver':<9}{'NFE':>5}" + "".join(f"{g:>20}" for g in gnames))
    keys = list(dict.fromkeys((r["solver"], r["nfe"]) for r in res["grid_rows"]))
    for sname, nfe in keys:
        cells = []
        for g in gnames:
            r = next(r for r in res["grid_rows"] if (r["solver"], r["nfe"], r["grid"]) == (sname, nfe, g))
            cells.append(f"{format(r['swd'], '.4f') + ' / ' + format(r['err'], '.4f'):>20}")
        print(f"{sname:<9}{nfe:>5}" + "".join(cells))


def claim_table(results: list[dict]) -> None:
    print("\n=== claim: pseudo-corrector (turbo) vs Heun at equal NFE, uniform grid ===")
    print(
        f"{'dataset':<13}{'NFE':>4}{'heun SWD':>10}{'turbo SWD':>11}{'heun err':>10}{'turbo err':>11}"
        f"{'err ratio':>10}  winner(err/SWD)"
    )
    for res in results:
        heun = {r["nfe"]: r for r in res["rows"] if r["solver"] == "heun"}
        turbo = {r["nfe"]: r for r in res["rows"] if r["solver"] == "turbo"}
        for nfe in sorted(set(heun) & set(turbo)):
            h, t = heun[nfe], turbo[nfe]
            w_err = "tie" if t["err"] == h["err"] else ("turbo" if t["err"] < h["err"] else "heun")
            w_swd = "tie" if t["swd"] == h["swd"] else ("turbo" if t["swd"] < h["swd"] else "heun")
            print(
                f"{res['name']:<13}{nfe:>4}{h['swd']:>10.4f}{t['swd']:>11.4f}{h['err']:>10.4f}"
                f"{t['err']:>11.4f}{t['err'] / h['err']:>10.2f}  {w_err}/{w_swd}"
            )
        print(f"{'':<13}SWD floor {res['floor']:.4f}, reference SWD {res['ref_swd']:.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny training, few budgets")
    p.add_argument("--datasets", nargs="+", default=["moons", "checkerboard"])
    p.add_argument("--steps", type=int, default=None, help="training steps (default 8000; quick 300)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=None, help="samples per evaluation (default 10000)")
    p.add_argument("--proj", type=int, default=500, help="SWD projections (fixed across all runs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-cache", action="store_true", help="neither read nor write benchmarks/.cache")
    p.add_argument("--retrain", action="store_true", help="train again and overwrite the cache")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.steps = args.steps or 300
        args.n = args.n or 2000
        args.budgets, args.grid_budgets, args.dopri_tols, args.ref_tol = (2, 4, 8), (4, 8), (1e-3,), 1e-5
        args.no_cache = True
    else:
        args.steps = args.steps or 8000
        args.n = args.n or 10_000
        args.budgets, args.grid_budgets, args.dopri_tols, args.ref_tol = BUDGETS, (4, 8, 16), DOPRI_TOLS, 1e-7
    if args.retrain:
        for name in args.datasets:
            tag = f"solvers-{name}-mlp256x3-steps{args.steps}-b{args.batch}-seed{args.seed}"
            for suffix in (".safetensors", ".json"):
                (CACHE / f"{tag}{suffix}").unlink(missing_ok=True)
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
        f"threads {torch.get_num_threads()}; steps {args.steps}, batch {args.batch}, n {args.n}, "
        f"SWD projections {args.proj}"
    )
    t0 = time.perf_counter()
    results = []
    for name in args.datasets:
        res = evaluate_dataset(name, args)
        print_dataset(res)
        results.append(res)
    claim_table(results)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
