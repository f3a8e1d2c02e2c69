"""Forward-looking DB vs DB (and TB) on FL-GFN's set-generation task (Pan et al. 2023, §5.1).

The paper's protocol: choose 20 of 30 items with an additive energy, R(x) = exp(-sum of energies);
policy MLP 256 x 2, Adam lr 1e-3, batch 16; uniform exploration epsilon = 1 for DB and FL-DB (the small
task), TB on-policy with log Z at lr 1e-1. After each training step 16 more sets are drawn from the
policy without exploration; the curve is the mean reward of the top-100 unique sets drawn so far
against the number of training trajectories. ``fldb-incomplete`` trains FL-DB only on trajectories cut
at a uniform random move before their stop (they never stop, and never see a terminal reward as such).

    python benchmarks/gfn_fl.py [--steps 2000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch

from flowforge.gflownet import (
    DetailedBalance,
    SetGeneration,
    TopKTracker,
    TrajectoryBalance,
    exact_metrics,
    shared_trunk_policies,
)

METHODS = {
    "fldb": dict(cls=DetailedBalance, forward_looking=True, epsilon=1.0),
    "db": dict(cls=DetailedBalance, forward_looking=False, epsilon=1.0),
    "fldb-incomplete": dict(cls=DetailedBalance, forward_looking=True, epsilon=1.0, incomplete=1.0),
    # the FL-GFN reference code: no stop edge, free terminal flow (biased; see free_terminal_flow)
    "fldb-ref": dict(cls=DetailedBalance, forward_looking=True, epsilon=1.0, free_terminal_flow=True),
    "tb": dict(cls=TrajectoryBalance, epsilon=0.0),
    "fldb-eps0.5": dict(cls=DetailedBalance, forward_looking=True, epsilon=0.5),
    "db-eps0.5": dict(cls=DetailedBalance, forward_looking=False, epsilon=0.5),
    "fldb-eps0.1": dict(cls=DetailedBalance, forward_looking=True, epsilon=0.1),
    "db-eps0.1": dict(cls=DetailedBalance, forward_looking=False, epsilon=0.1),
}


def run(
    env: SetGeneration, method: str, steps: int, seed: int, every: int, exact: bool = False
) -> tuple[list[float], float]:
    """The top-100 curve (or, with ``exact``, the exact L1 of the terminal distribution) every ``every`` steps."""
    kw = dict(METHODS[method])
    cls = kw.pop("cls")
    torch.manual_seed(seed)
    pf, pb = shared_trunk_policies(env.obs_dim, env.n_actions, 256, 2)
    model = cls(env, pf, pb, **kw)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    top = TopKTracker(100)
    curve = []
    t0 = time.perf_counter()
    for i in range(steps):
        loss = model.loss(SimpleNamespace(size=16, generator=g, device="cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if exact:
            if (i + 1) % every == 0:
                curve.append(exact_metrics(model, env)["l1_sum"])
            continue
        with torch.no_grad():
            tr = model.sample(16, generator=g)
        top.add(tr.terminal, tr.log_reward)
        if (i + 1) % every == 0:
            curve.append(top.mean_top_k())
    return curve, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument(
        "--exact", action="store_true", help="16 items, sets of 8: exact L1 curve instead of top-100"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = SetGeneration(16, 8, seed=0) if args.exact else SetGeneration(30, 20, seed=0)
    print(f"{env}: best R = {torch.tensor(env.best_log_reward).exp():.3f}, log Z = {env.log_partition:.3f}")
    res: dict[str, list[list[float]]] = {}
    for m in args.methods.split(","):
        for s in range(args.seeds):
            curve, sec = run(env, m, args.steps, s, args.every, args.exact)
            res.setdefault(m, []).append(curve)
            print(f"{m} seed {s}: {sec:.0f} s, " + " ".join(f"{v:.3f}" for v in curve), flush=True)
    ticks = [(i + 1) * args.every * 16 for i in range(args.steps // args.every)]
    what = "exact L1 (sum) of the terminal distribution" if args.exact else "mean top-100 reward"
    print(f"\n{what} (mean +- sd over seeds) vs training trajectories")
    print("| method | " + " | ".join(f"{t:,}" for t in ticks) + " |")
    print("|---" * (len(ticks) + 1) + "|")
    for m, curves in res.items():
        c = torch.tensor(curves, dtype=torch.float64)
        cells = [
            f"{a:.3f} ± {b:.3f}"
            for a, b in zip(c.mean(0).tolist(), c.std(0, unbiased=len(curves) > 1).tolist())
        ]
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
