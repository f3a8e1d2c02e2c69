"""MeanFlow's time sampler, diagonal share and budget on the 2-D sets (issue 11, item 2).

The few-step benchmark trains MeanFlow with the paper's ImageNet sampler (both times logit-normal(0.4, 1)
in flowforge's direction, 75% of rows on the diagonal r = t) for 4,000 steps, like every other
from-scratch model there, and its 1-step moons SWD stays at 2.4x the teacher's 100-step figure. This
script trains the same network (MLP 256x3, two times, p = 0, AdamW 1e-3, batch 256, EMA 0.999, seed 0)
under other settings and scores 1- and 2-jump samples exactly as ``few_step.py`` does (50k samples from
its fixed noise against 50k fresh points, 128 fixed projections, data units), so the figures sit beside
that table. One thread.

    OMP_NUM_THREADS=1 python benchmarks/meanflow_settings.py                       # moons, every setting
    OMP_NUM_THREADS=1 python benchmarks/meanflow_settings.py --sets checkerboard eight-gaussians --configs F
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import flowforge as ff
from flowforge import MeanFlow
from flowforge.continuous import MeanFlowTimes
from flowforge.core.time import LogitNormal, Uniform
from flowforge.data import Standardizer, toy2d
from flowforge.metrics import sliced_wasserstein

try:  # the few-step benchmark's seeds and network, so the numbers are comparable
    import few_step as B
except ImportError:  # run from the repository root
    from benchmarks import few_step as B

#: label -> (share of r = t rows, law of the two times, training steps)
CONFIGS: dict[str, tuple[float, str, int]] = {
    "A": (0.75, "logit-normal(0.4, 1)", 4_000),  # the few-step table's row (paper ImageNet settings)
    "B": (0.25, "logit-normal(0.4, 1)", 4_000),
    "C": (0.50, "uniform", 4_000),
    "D": (0.75, "logit-normal(0.4, 1)", 16_000),
    "E": (0.25, "uniform", 16_000),
    "F": (0.25, "uniform", 32_000),
    "G": (0.00, "uniform", 16_000),
}


def run(name: str, label: str, proj: int) -> dict:
    diagonal, law, steps = CONFIGS[label]
    sc = Standardizer.fit(toy2d(name, 100_000, seed=B.FIT_SEED))
    data = toy2d(name, 50_000, seed=B.EVAL_DATA_SEED)
    x0 = torch.randn(50_000, 2, generator=torch.Generator().manual_seed(B.NOISE_SEED))
    torch.manual_seed(0)
    base = LogitNormal(0.4, 1.0) if law.startswith("logit") else Uniform()
    mf = MeanFlow(B.mlp(True), times=MeanFlowTimes(base, diagonal=diagonal), p=0.0, event_shape=(2,))
    t0 = time.process_time()
    trained = ff.train(
        mf, B.stream(name, sc), steps=steps, batch_size=256, lr=1e-3, ema_decay=0.999, seed=0, progress=False
    )
    cpu = time.process_time() - t0
    trained.load_into(mf, ema=True)
    mf.eval()
    out = {"set": name, "config": label, "diagonal": diagonal, "times": law, "steps": steps}
    for k in (1, 2):
        with torch.no_grad():
            x = sc.inverse(mf.generator().sample(50_000, x0=x0, steps=k))
        g = torch.Generator().manual_seed(B.SWD_PROJ_SEED)
        out[f"swd_{k}"] = float(sliced_wasserstein(x, data, n_projections=proj, generator=g))
    out["train_cpu_s"] = round(cpu)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="*", default=["moons"])
    p.add_argument("--configs", nargs="*", default=list(CONFIGS))
    p.add_argument("--proj", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.sets:
        for label in args.configs:
            rows.append(run(name, label, args.proj))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| set | config | r = t share | times | steps | 1-jump SWD | 2-jump SWD |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['set']} | {r['config']} | {r['diagonal']} | {r['times']} | {r['steps']:,} | "
            f"{r['swd_1']:.4f} | {r['swd_2']:.4f} |"
        )


if __name__ == "__main__":
    main()
