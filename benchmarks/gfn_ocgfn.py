"""OC-GFN (Pan et al., ICLR 2024): pre-train one outcome-conditioned GFlowNet, adapt it to three new
rewards, compare with trajectory balance from scratch. Exact L1 (sum) over all 4,096 strings.

Set-up: append-only bit strings of length 12, word 3 (8 actions + stop, 4,096 outcomes,
4,681 states). Downstream rewards: R(x) = exp(-3 min_m d_H(x, m)) with 4 random modes, mode seeds 1,
2, 3. Every downstream policy network is the same PolicyMLP(36 -> 9, width 128, depth 2); batch 16,
Adam lr 1e-3 (log Z x100), uniform P_B, on-policy TB. Methods:

- ``scratch``: TB from a random initialisation.
- ``oc-amortized``: the amortised conversion (numerator N + outcome sampler Q) for ``--convert-steps``
  steps (16 rollouts of pi per step; each of their 64 moves gets one y ~ Q plus the rollout's own end
  point), then TB with P_F = softmax(N). Its first ``convert_steps * 16`` trajectories are conversion
  rollouts.
- ``oc-exact``: the exact marginal P_F^R (sum over all 4,096 outcomes: 4,096 reward evaluations, no
  trajectories), distilled into the policy network by cross-entropy (no reward), then TB.

Pre-training (reward-free) is counted separately. Run:

    python benchmarks/gfn_ocgfn.py --seeds 2
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch

from flowforge.gflownet import PolicyMLP, TrajectoryBalance
from flowforge.gflownet.envs import BitSequence
from flowforge.gflownet.exact import l1_sum, modes_found, terminal_distribution
from flowforge.gflownet.outcome import (
    AmortizedConversion,
    OutcomeConditionedGFlowNet,
    complete_states,
    distill_policy,
    exact_conversion,
    exact_log_z,
)

L, W, WIDTH, DEPTH, BS, LR = 12, 3, 128, 2, 16, 1e-3
CHECK = (0, 4000, 8000, 16000, 32000, 48000)  # trajectories


def l1(policy, env) -> float:
    return float(l1_sum(terminal_distribution(policy, env), env.true_distribution()))


def run_tb(tb, env, start_traj: int, log: dict, seed: int) -> int:
    """TB on-policy until CHECK[-1] trajectories (counting from start_traj); L1 at the checkpoints."""
    opt = torch.optim.Adam(tb.parameters(), lr=LR)
    g = torch.Generator().manual_seed(1000 + seed)
    traj = start_traj
    while True:
        if traj in CHECK and traj not in log:
            log[traj] = l1(tb, env)
        if traj >= CHECK[-1]:
            break
        loss = tb.loss(SimpleNamespace(size=BS, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        traj += BS
    with torch.no_grad():
        x = tb.sample(2000, generator=torch.Generator().manual_seed(7)).terminal
    return modes_found(env, x)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--pretrain-steps", type=int, default=4000)
    p.add_argument("--pretrain-batch", type=int, default=64)
    p.add_argument("--convert-steps", type=int, default=2000)
    a = p.parse_args()
    torch.set_num_threads(1)
    t_all = time.time()

    # -- pre-training (reward-free, once) --------------------------------------------------------
    env0 = BitSequence(L, W)
    torch.manual_seed(0)
    oc = OutcomeConditionedGFlowNet(env0, width=WIDTH, depth=DEPTH, log_floor=-20.0, epsilon=0.1)
    opt = torch.optim.Adam(oc.parameters(), lr=LR)
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    for i in range(a.pretrain_steps):
        loss = oc.loss(SimpleNamespace(size=a.pretrain_batch, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (i + 1) % 1000 == 0:
            print(
                f"pretrain step {i + 1}: loss {loss.item():.3f} success {oc.success_rate():.4f}", flush=True
            )
    oc.eval()
    succ = oc.success_rate()
    pre_time = time.time() - t0
    print(
        f"pre-training: {a.pretrain_steps} steps x {a.pretrain_batch} outcomes = "
        f"{a.pretrain_steps * a.pretrain_batch} trajectories (each also hindsight-relabelled), "
        f"{pre_time:.0f}s; exact success rate {succ:.4f}",
        flush=True,
    )

    # -- three downstream rewards ----------------------------------------------------------------
    envs = [BitSequence(L, W, modes=4, beta=3.0, seed=s) for s in (1, 2, 3)]
    y = complete_states(env0)
    lrs = torch.stack([e.log_reward(y, torch.float64) for e in envs])
    t0 = time.time()
    tables = exact_conversion(oc, lrs)
    lzs = exact_log_z(oc, lrs)
    print(f"exact conversion of 3 rewards: {time.time() - t0:.0f}s", flush=True)

    rows = []  # (reward, method, seed, {traj: l1}, queries, modes)
    for r, env in enumerate(envs):
        zero_shot = l1(lambda s, r=r, env=env: tables[r][env.state_index(s)], env)
        print(
            f"reward {r + 1}: log Z {env.log_partition:.3f} (exact-converted {float(lzs[r]):.3f}); "
            f"exact-conversion L1 {zero_shot:.4f}",
            flush=True,
        )
        for seed in range(a.seeds):
            t0 = time.time()
            # scratch
            torch.manual_seed(100 + seed)
            tb = TrajectoryBalance(env, PolicyMLP(env.obs_dim, env.n_actions, WIDTH, DEPTH), uniform_pb=True)
            log: dict[int, float] = {}
            modes = run_tb(tb, env, 0, log, seed)
            rows.append((r + 1, "scratch", seed, log, CHECK[-1], modes))
            # exact conversion, distilled, then TB
            tb = distill_policy(
                env, tables[r], log_z=float(lzs[r]), width=WIDTH, depth=DEPTH, steps=500, seed=100 + seed
            )
            log = {}
            modes = run_tb(tb, env, 0, log, seed)
            rows.append((r + 1, "oc-exact", seed, log, y.shape[0] + CHECK[-1], modes))
            # amortised conversion, then TB
            torch.manual_seed(100 + seed)
            conv = AmortizedConversion(oc, env, width=WIDTH, depth=DEPTH, epsilon=0.1)
            opt = torch.optim.Adam([q for q in conv.parameters() if q.requires_grad], lr=LR)
            g = torch.Generator().manual_seed(2000 + seed)
            log, traj, queries = {}, 0, 0
            for _ in range(a.convert_steps):
                if traj in CHECK:
                    log[traj] = l1(conv, env)
                res = conv.residuals(BS, g)
                loss = res.pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                traj += BS
                queries += BS + res.numel() // 2  # rollout end points + one y ~ Q per move
            modes = run_tb(conv.to_trajectory_balance(), env, traj, log, seed)
            rows.append((r + 1, "oc-amortized", seed, log, queries + CHECK[-1] - traj, modes))
            print(
                f"  seed {seed}: "
                + "; ".join(f"{m} {lg[CHECK[-1]]:.3f}" for (_, m, sd, lg, _, _) in rows[-3:])
                + f"  ({time.time() - t0:.0f}s)",
                flush=True,
            )

    # -- table -----------------------------------------------------------------------------------
    print(f"\ntotal {time.time() - t_all:.0f}s; pre-training success rate {succ:.4f}\n")
    head = " | ".join(f"L1 @{c // 1000}k traj" for c in CHECK)
    print(f"| reward | method | {head} | reward evals @48k | modes found @48k (2k samples, per seed) |")
    print("|" + "---|" * (len(CHECK) + 4))
    for r in (1, 2, 3):
        for m in ("scratch", "oc-amortized", "oc-exact"):
            sel = [row for row in rows if row[0] == r and row[1] == m]
            cells = []
            for c in CHECK:
                v = torch.tensor([row[3][c] for row in sel], dtype=torch.float64)
                cells.append(f"{v.mean():.3f} ± {v.std(unbiased=False):.3f}")
            q = sel[0][4]
            md = ", ".join(str(row[5]) for row in sel)
            print(f"| {r} | {m} | " + " | ".join(cells) + f" | {q} | {md} (of 4) |")


if __name__ == "__main__":
    main()
