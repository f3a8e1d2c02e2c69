"""FFJORD against NSF of about equal parameter count on standardised moons.

Both are trained by maximum likelihood with the same steps, batches (same generator) and Adam settings;
reported: test NLL (nats, standardised units) on 20k fresh points and wall time per training step.
FFJORD's test NLL uses the exact trace and the training solver.

Usage: ``python benchmarks/ffjord_vs_nsf.py [--steps 2000] [--batch 256] [--smoke]``
(``--smoke``: a few steps on small nets, to check the script runs).
"""

from __future__ import annotations

import argparse
import time

import torch

from flowforge.data import Standardizer, toy2d
from flowforge.normalizing import FFJORD, NSF


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def train(model: torch.nn.Module, data: torch.Tensor, steps: int, batch: int, lr: float) -> float:
    """Adam on ``model.loss``; returns seconds per step."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, data.shape[0], (batch,), generator=g)
        opt.zero_grad()
        model.loss(data[idx]).backward()
        opt.step()
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def test_nll(model: torch.nn.Module, test: torch.Tensor) -> float:
    return float(torch.cat([-model.log_prob(x) for x in test.split(4096)]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.batch = 5, 64
    torch.manual_seed(0)
    train_x = toy2d("moons", 20_000, seed=0)
    test_x = toy2d("moons", 2_000 if args.smoke else 20_000, seed=1)
    s = Standardizer.fit(train_x)
    train_x, test_x = s.forward(train_x), s.forward(test_x)

    width = 16 if args.smoke else 64
    ffjord = FFJORD(2, width=width, depth=3, steps=8, time_freqs=0)
    # NSF sized to match: search the hidden width for the closest parameter count
    target = n_params(ffjord)
    best = min(
        (abs(n_params(NSF(2, transforms=4, hidden=(h, h), bins=8)) - target), h) for h in range(4, 129, 2)
    )[1]
    nsf = NSF(2, transforms=4, hidden=(best, best), bins=8)

    rows = []
    for name, model in (("FFJORD (rk4, 8 steps, exact trace)", ffjord), (f"NSF (4 x MADE {best}x2)", nsf)):
        sec = train(model, train_x, args.steps, args.batch, args.lr)
        rows.append((name, n_params(model), test_nll(model, test_x), 1e3 * sec))
    print(f"moons (standardised), {args.steps} steps, batch {args.batch}, Adam lr {args.lr}\n")
    print("| model | params | test NLL (nats) | ms / step |")
    print("|---|---:|---:|---:|")
    for name, p, nll, ms in rows:
        print(f"| {name} | {p} | {nll:.3f} | {ms:.1f} |")


if __name__ == "__main__":
    main()
