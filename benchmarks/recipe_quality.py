"""Issue check: `flowforge train RECIPE` with its defaults against the SWD noise floor of i.i.d. data.

Trains the recipe through the CLI's code path (`train_recipe`), times it, draws ``--n`` samples with the
recipe's sampler from **i.i.d.** source noise (the headline) and from quasi-random (scrambled Sobol)
source noise (a second column), and divides their sliced Wasserstein distance (2,000 projections) to
a fresh i.i.d. draw of `flowforge.data.toy2d(RECIPE)` by the SWD between two independent i.i.d.
draws of the same size (the floor). `toy2d("moons")` draws the angles uniformly (sklearn's
`make_moons` puts them on a linspace grid, so two sklearn samples sit far closer together than two
i.i.d. ones; the script prints both floors once, as a check). An exact i.i.d. sampler scores about 1
against this floor; the script also prints that ratio for a third independent draw of the data.

In 2-D the SWD between two i.i.d. samples shrinks like ``n^{-1/2}``, so the ratio is only readable
with many points: use ``--n 50000`` or more (the default).

    python benchmarks/recipe_quality.py [--recipe moons] [--seeds 0 1 2] [--draws 2] [--n 50000]
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


def swd(x: torch.Tensor, y: torch.Tensor, seed: int) -> float:
    return sliced_wasserstein(x, y, n_projections=2000, generator=torch.Generator().manual_seed(seed))


def check_floor(recipe: str, n: int) -> None:
    """Print SWD between two i.i.d. toy2d draws and, for moons, between two sklearn draws."""
    line = f"floor check, n={n}: toy2d/toy2d {swd(toy2d(recipe, n, seed=1), toy2d(recipe, n, seed=2), 0):.4f}"
    if recipe == "moons":
        try:
            from sklearn.datasets import make_moons
        except ImportError:
            make_moons = None
        if make_moons is not None:
            a, b = (
                torch.as_tensor(make_moons(n_samples=n, noise=0.05, random_state=s)[0], dtype=torch.float32)
                for s in (1, 2)
            )
            line += f", sklearn/sklearn {swd(a, b, 0):.4f} (angles on a grid)"
    print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="moons")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    ap.add_argument("--draws", type=int, default=2, help="sampling seeds per trained model")
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--n", type=int, default=50_000, help="model and reference samples (>= 50k in 2-D)")
    a = ap.parse_args()
    t_start = time.perf_counter()
    check_floor(a.recipe, a.n)
    rows = []
    for seed in a.seeds:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            run = train_recipe(
                a.recipe, out=out, steps=a.steps, seed=seed, overrides=parse_sets(a.set), progress=False
            )
            train_s = time.perf_counter() - t0
            cfg, gen = run.config, generator(out)
            ratios: dict[str, list[float]] = {"iid": [], "qmc": [], "exact": []}
            for d in range(a.draws):
                base = 100_000 + 1000 * seed + 10 * d  # disjoint from the training data's seeds
                ref, ref2, ref3 = (toy2d(a.recipe, a.n, seed=base + k) for k in range(3))
                floor = swd(ref, ref2, d)
                ratios["exact"].append(swd(ref3, ref, d) / floor)
                for qmc in (False, True):  # explicit: eval's default may change
                    t1 = time.perf_counter()
                    x = gen.sample(
                        a.n,
                        generator=torch.Generator().manual_seed(d),
                        solver=cfg["solver"],
                        steps=cfg["sample_steps"],
                        qmc=qmc,
                    )
                    sample_s = time.perf_counter() - t1
                    ratios["qmc" if qmc else "iid"].append(swd(x.float(), ref, d) / floor)
        rows.append((seed, train_s, sample_s, *(statistics.mean(ratios[k]) for k in ("iid", "qmc", "exact"))))
        print(f"seed {seed}: train {train_s:.1f}s, {ratios}", flush=True)
    print(
        f"\n{a.recipe}: SWD(samples, i.i.d. data) / SWD(i.i.d. data, i.i.d. data), n={a.n}, "
        f"mean over {a.draws} draws; total {time.perf_counter() - t_start:.0f} s"
    )
    print("seed  train_s  sample_s  ratio_iid  ratio_qmc  ratio_exact_iid_sampler")
    for r in rows:
        print(f"{r[0]:>4}  {r[1]:7.1f}  {r[2]:8.2f}  {r[3]:9.2f}  {r[4]:9.2f}  {r[5]:9.2f}")
    if len(rows) > 1:
        m = [statistics.mean(r[k] for r in rows) for k in (1, 3, 4, 5)]
        print(f"mean  {m[0]:7.1f}  {'':8}  {m[1]:9.2f}  {m[2]:9.2f}  {m[3]:9.2f}")


if __name__ == "__main__":
    main()
