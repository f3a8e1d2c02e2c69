"""Modes found against trajectories on a hard hypergrid, for every GFlowNet objective.

The second standard hypergrid plot (Bengio et al. 2021; Malkin et al. 2022): the number of distinct
modes among the terminal states *visited during training* against the number of training trajectories,
plus the exact L1 (sum) of the final policy by dynamic programming. Default grid: 2-D, height 64,
R0 = 1e-3 (Malkin et al.'s hardest 2-D setting), batch 16, MLP 256 x 2 with a shared P_B head,
lr 1e-3 (log Z at 1e-1), on-policy.

    python benchmarks/gfn_modes.py [--ndim 2 --height 64 --r0 1e-3 --steps 2000 --seeds 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from flowforge.gflownet import (
    DetailedBalance,
    HyperGrid,
    SubTrajectoryBalance,
    TrajectoryBalance,
    exact_metrics,
    shared_trunk_policies,
)

METHODS = {
    "tb": (TrajectoryBalance, {}),
    "db": (DetailedBalance, {}),
    "subtb": (SubTrajectoryBalance, {}),
    "fldb": (DetailedBalance, {"forward_looking": True}),
}


def run(
    env: HyperGrid, method: str, steps: int, seed: int, every: int, epsilon: float = 0.0
) -> tuple[list[int], dict, float]:
    cls, kw = METHODS[method]
    torch.manual_seed(seed)
    pf, pb = shared_trunk_policies(env.obs_dim, env.n_actions, 256, 2)
    model = cls(env, pf, pb, **kw)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    found: set[int] = set()
    curve = []
    t0 = time.perf_counter()
    for i in range(steps):
        tr = model.sample(16, generator=g, epsilon=epsilon)
        loss = model.objective(tr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ids = env.mode_id(tr.terminal)
        found.update(ids[ids >= 0].tolist())
        if (i + 1) % every == 0:
            curve.append(len(found))
    return curve, exact_metrics(model, env), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ndim", type=int, default=2)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--r0", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--epsilon", type=float, default=0.0, help="uniform exploration while training")
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = HyperGrid(args.ndim, args.height, r0=args.r0)
    print(f"{env}: {env.n_states} states, {env.n_modes} modes, log Z = {env.log_partition:.4f}")
    rows = []
    for m in args.methods.split(","):
        for s in range(args.seeds):
            curve, final, sec = run(env, m, args.steps, s, args.every, args.epsilon)
            rows.append((m, s, curve, final))
            print(f"{m} seed {s}: {sec:.0f} s, modes {curve}, l1_sum {final['l1_sum']:.4f}", flush=True)
    ticks = [(i + 1) * args.every * 16 for i in range(args.steps // args.every)]
    print(f"\nmodes found (of {env.n_modes}) among visited terminal states vs training trajectories")
    print("| method | seed | " + " | ".join(f"{t:,}" for t in ticks) + " | exact L1 | logZ err |")
    print("|---" * (len(ticks) + 4) + "|")
    for m, s, curve, final in rows:
        cells = " | ".join(str(c) for c in curve)
        print(f"| {m} | {s} | {cells} | {final['l1_sum']:.4f} | {final['logz_error']:.4f} |")


if __name__ == "__main__":
    main()
