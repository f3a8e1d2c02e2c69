"""Property optimisation of a uniform-source token flow for QED: GA + PPO vs GA alone vs the base model.

The base is a ``smiles-uniform`` or ``selfies-uniform`` run (``--recipe``; SELFIES samples are valid molecules
by construction, SMILES ones from a CPU-sized model mostly are not).

All three modes start from the same base run and spend the same oracle budget (PMO counting: each new canonical
molecule costs one call), for each seed. Prints a markdown table: mode, top-10 AUC (mean +- sd over seeds),
top-10 mean QED, validity of the flow's samples, wall time.

    python benchmarks/property_opt.py --base runs/discrete/smiles-uniform --budget 2000 --seeds 0 1 2
    python benchmarks/property_opt.py --base runs/discrete/selfies-uniform-s2000-w64d2h4 --budget 2000
    python benchmarks/property_opt.py --smoke [--recipe selfies-uniform]  # budget 100, one seed, tiny base

When ``--base`` holds no run, a base is trained first with ``train_recipe(RECIPE, ...)`` (``--recipe``,
default ``smiles-uniform``; the recipe's defaults, ``--smoke``: a tiny one) and the script says so.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from flowforge.apps.molecules import MODES, optimize
from flowforge.recipes import train_recipe
from flowforge.recipes.discrete import vocabulary
from flowforge.recipes.runs import load_run

TINY = {"width": 32, "depth": 1, "heads": 2, "batch_size": 32, "max_length": 40, "warmup": 5}
SMOKE_OPT = {"population": 32, "offspring": 32, "mutations": 8, "ppo_batch": 32, "reinforce_steps": 1,
             "num_timesteps": 2, "steps": 8}  # fmt: skip


def ensure_base(base: Path, smoke: bool, recipe: str = "smiles-uniform") -> None:
    if (base / "config.json").is_file():
        return
    if smoke:
        print(f"no run at {base}: training a tiny {recipe} base (50 steps) there first")
        train_recipe(recipe, overrides=TINY, steps=50, out=base, progress=False)
    else:
        print(f"no run at {base}: training {recipe} (recipe defaults) there first")
        train_recipe(recipe, out=base)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--base",
        default="runs/discrete/smiles-uniform",
        help="a trained smiles-uniform or selfies-uniform run folder",
    )
    p.add_argument(
        "--recipe",
        default="smiles-uniform",
        choices=("smiles-uniform", "selfies-uniform"),
        help="the base's recipe when --base holds no run yet (it is trained first)",
    )
    p.add_argument("--budget", type=int, default=2000, help="oracle calls per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--reward", default="qed", help="qed or module:function")
    p.add_argument("--lr", type=float, default=None, help="PPO learning rate (default: optimize's 1e-5)")
    p.add_argument("--reinforce-steps", type=int, default=None, help="PPO passes per round (default 5)")
    p.add_argument("--smoke", action="store_true", help="budget 100, seed 0, a tiny base (~50 steps)")
    a = p.parse_args()
    opts: dict = {}
    if a.smoke:
        a.budget, a.seeds = 100, [0]
        if a.base == p.get_default("base"):
            a.base = f"runs/benchmarks/property-opt-smoke-base-{a.recipe}"
        opts = dict(SMOKE_OPT)
    if a.lr is not None:
        opts["lr"] = a.lr
    if a.reinforce_steps is not None:
        opts["reinforce_steps"] = a.reinforce_steps
    torch.set_num_threads(1)
    base = Path(a.base)
    ensure_base(base, a.smoke, a.recipe)
    rows = []
    for mode in a.modes:
        aucs, means, vals, walls = [], [], [], []
        for seed in a.seeds:
            model, config = load_run(base)  # a fresh copy of the base for every run
            t0 = time.time()
            h = optimize(model, vocabulary(config), a.reward, budget=a.budget, mode=mode, seed=seed, **opts)
            walls.append(time.time() - t0)
            aucs.append(h.top10_auc)
            means.append(h.top10_mean)
            vals.append(h.validity)
            print(f"{mode} seed {seed}: auc {h.top10_auc:.4f}, top-10 {h.top10_mean:.4f}, validity "
                  f"{h.validity:.3f}, calls {h.oracle_calls}, stopped: {h.stopped}, {walls[-1]:.1f} s")  # fmt: skip
        sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        rows.append(
            (mode, statistics.mean(aucs), sd, statistics.mean(means), statistics.mean(vals), sum(walls))
        )
    print(f"\nreward {a.reward}, budget {a.budget}, seeds {a.seeds}, base {base}, options {opts}\n")
    print("| mode | top-10 AUC (mean ± sd) | top-10 mean | validity | wall time (s) |")
    print("|---|---|---|---|---|")
    for mode, auc, sd, mean, val, wall in rows:
        print(f"| {mode} | {auc:.4f} ± {sd:.4f} | {mean:.4f} | {val:.3f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
