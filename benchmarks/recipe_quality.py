"""Issue check: `flowforge train RECIPE` with its defaults against the SWD noise floor of fresh data.

Trains the recipe through the CLI's code path (`train_recipe`), times it, draws 10,000 samples with the
recipe's sampler, with i.i.d. and with quasi-random (scrambled Sobol) source noise, and divides their
sliced Wasserstein distance to fresh data by the SWD between two fresh data samples of the same size.
For moons the fresh data is `sklearn.datasets.make_moons(noise=0.05)`, as the issue specifies (its
angles lie on a grid, so two such samples are about 3.5x closer than two i.i.d. samples: an i.i.d.
sampler of the exact distribution scores about 3.4 against that floor); other recipes use
`flowforge.data.toy2d`.

    python benchmarks/recipe_quality.py [--recipe moons] [--seeds 0 1 2] [--steps N] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from flowforge.data import toy2d
from flowforge.metrics import sliced_wasserstein
from flowforge.recipes import generator, parse_sets, train_recipe


def fresh(recipe: str, n: int, seed: int) -> torch.Tensor:
    if recipe == "moons":
        from sklearn.datasets import make_moons

        x, _ = make_moons(n_samples=n, noise=0.05, random_state=seed)
        return torch.as_tensor(x, dtype=torch.float32)
    return toy2d(recipe, n, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="moons")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    ap.add_argument("--draws", type=int, default=4, help="sampling seeds per trained model")
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--n", type=int, default=10_000)
    a = ap.parse_args()
    swd = lambda x, y, s: sliced_wasserstein(
        x, y, n_projections=2000, generator=torch.Generator().manual_seed(s)
    )  # noqa: E731
    rows = []
    for seed in a.seeds:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            run = train_recipe(
                a.recipe, out=out, steps=a.steps, seed=seed, overrides=parse_sets(a.set), progress=False
            )
            train_s = time.perf_counter() - t0
            cfg, gen = run.config, generator(out)
            ratios: dict[bool, list[float]] = {False: [], True: []}
            for d in range(a.draws):
                ref, ref2 = (
                    fresh(a.recipe, a.n, 1000 + 10 * seed + d),
                    fresh(a.recipe, a.n, 5000 + 10 * seed + d),
                )
                floor = swd(ref, ref2, d)
                for qmc in (False, True):
                    t1 = time.perf_counter()
                    x = gen.sample(
                        a.n,
                        generator=torch.Generator().manual_seed(d),
                        solver=cfg["solver"],
                        steps=cfg["sample_steps"],
                        qmc=qmc,
                    )
                    sample_s = time.perf_counter() - t1
                    ratios[qmc].append(swd(x, ref, d) / floor)
        rows.append((seed, train_s, sample_s, statistics.mean(ratios[False]), statistics.mean(ratios[True])))
        print(f"seed {seed}: train {train_s:.1f}s, iid {ratios[False]}, qmc {ratios[True]}", flush=True)
    print(f"\n{a.recipe}: SWD(samples, fresh data) / SWD(fresh data, fresh data), mean over {a.draws} draws")
    print("seed  train_s  sample_s  ratio_iid  ratio_qmc")
    for r in rows:
        print(f"{r[0]:>4}  {r[1]:7.1f}  {r[2]:8.2f}  {r[3]:9.2f}  {r[4]:9.2f}")
    if len(rows) > 1:
        print(
            f"mean  {statistics.mean(r[1] for r in rows):7.1f}  {'':8}  "
            f"{statistics.mean(r[3] for r in rows):9.2f}  {statistics.mean(r[4] for r in rows):9.2f}"
        )


if __name__ == "__main__":
    main()
