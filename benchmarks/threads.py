"""Seconds per training step of the README's models through the API, by thread setting.

``python benchmarks/threads.py [--steps 300]``: the README's moons flow-matching model (MLP 3x256, minibatch
OT) and NSF (5 transforms, 64x64), each trained through ``ff.train`` with ``threads=None`` (the trainer's
automatic rule), ``threads=1`` and ``threads=2``, interleaved, 3 repeats; prints the median seconds and the
ratio to ``threads=None``. The CLI recipes pass their own ``threads`` key, so they run as ``threads=1``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import flowforge as ff


def _models() -> dict[str, callable]:
    return {
        "FM MLP 3x256 + OT": lambda: ff.FlowMatching(
            ff.nn.MLP(dim=2, width=256, depth=3),
            path=ff.AffinePath(ff.schedules.Linear()),
            time=ff.time.LogitNormal(),
            coupling=ff.couplings.MinibatchOT(),
        ),
        "NSF 5 x (64, 64)": lambda: ff.NSF(dim=2, transforms=5, hidden=(64, 64)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    x = ff.data.toy2d("moons", n=20_000, seed=0)
    settings = {"auto (None)": None, "1": 1, "2": 2}
    print(f"torch {torch.__version__}, default threads {torch.get_num_threads()}, {a.steps} steps, batch 256")
    print("| model | threads | s/step (median) | ratio to auto |")
    print("|---|---|---|---|")
    for name, make in _models().items():
        times: dict[str, list[float]] = {k: [] for k in settings}
        for _ in range(a.repeats):
            for label, threads in settings.items():
                torch.manual_seed(0)
                model = make()
                t0 = time.perf_counter()
                ff.train(model, x, steps=a.steps, progress=False, threads=threads, ema_decay=0.999)
                times[label].append((time.perf_counter() - t0) / a.steps)
        auto = statistics.median(times["auto (None)"])
        for label in settings:
            med = statistics.median(times[label])
            print(f"| {name} | {label} | {med * 1e3:.2f} ms | {med / auto:.2f} |")


if __name__ == "__main__":
    main()
