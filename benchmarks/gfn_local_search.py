"""Local search GFlowNets (LS-GFN, Kim et al. 2024) on a deceptive hypergrid: TB with and without local
search at equal reward evaluations, and time per iteration against torchgfn 2.4.1's ``LocalSearchSampler``.

Protocol (both libraries in one process, ``torch.set_num_threads(1)``, float32):

- HyperGrid 2-D, height 32, rewards (r0, r1, r2) = (1e-3, 0.5, 2.0): the four modes sit in the
  corners behind a near-zero plateau. P_F: MLP 256 x 2 (ReLU) with P_B a second head on the same trunk;
  Adam lr 1e-3, log Z at 1e-1 (flowforge: ``log_z_lr_scale=100``).
- **Equal reward evaluations**: plain TB samples ``2n`` trajectories a step; LS-TB samples ``n`` and
  refines them once (``n`` candidates, ``back_ratio`` 0.5, deterministic filter), so both evaluate
  ``2n`` new terminal states a step and train on ``2n`` trajectories.
- Modes found: distinct modes among all terminal states evaluated during training (for LS-TB the
  on-policy and the refined ones). Exact L1 (sum): the trained P_F's exact terminal distribution.
- Time per iteration (median after 50 warm-up iterations, sample + refine + loss + backward + step),
  flowforge LS-TB against torchgfn's ``LocalSearchSampler.sample_trajectories(n, n_local_search_loops=1,
  back_ratio=0.5, use_metropolis_hastings=False)`` + ``TBGFlowNet.loss(recalculate_all_logprobs=True)``
  on the same grid and network sizes, interleaved iteration by iteration.

Run::

    python benchmarks/gfn_local_search.py [--steps 1000 --batch 16 --seeds 0 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flowforge.gflownet import (
    HyperGrid,
    LocalSearch,
    TrajectoryBalance,
    exact_metrics,
    modes_found,
    shared_trunk_policies,
)
from flowforge.train import BatchRequest


def make(
    env: HyperGrid, ls: LocalSearch | None, seed: int
) -> tuple[TrajectoryBalance, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    pf, pb = shared_trunk_policies(env.obs_dim, env.n_actions, 256, 2)
    model = TrajectoryBalance(env, pf, pb, log_z_lr_scale=100.0, local_search=ls)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def train_ff(env: HyperGrid, ls: LocalSearch | None, steps: int, batch: int, seed: int) -> dict:
    model, opt = make(env, ls, seed)
    g = torch.Generator().manual_seed(seed)
    seen, times = [], []
    n = batch if ls is not None else 2 * batch
    for _ in range(steps):
        t0 = time.perf_counter()
        tr = model.sample(n, generator=g)
        trs = [tr]
        if ls is not None:
            refined, _ = ls.refine(model, tr, generator=g)
            trs.append(refined)
        loss = torch.stack([model.objective(t) for t in trs]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        seen.extend(t.terminal for t in trs)
    m = exact_metrics(model, env)
    return {
        "l1": m["l1_sum"],
        "logz_err": m["logz_error"],
        "modes": modes_found(env, torch.cat(seen)),
        "ms": 1e3 * statistics.median(times[50:]),
    }


def time_vs_torchgfn(height: int, r0: float, steps: int, batch: int, seed: int) -> tuple[float, float]:
    from gfn.estimators import DiscretePolicyEstimator
    from gfn.gflownet import TBGFlowNet
    from gfn.gym import HyperGrid as TGHyperGrid
    from gfn.preprocessors import KHotPreprocessor
    from gfn.samplers import LocalSearchSampler
    from gfn.utils.modules import MLP

    env = HyperGrid(2, height, r0=r0)
    ls = LocalSearch(back_ratio=0.5, iterations=1)
    ff, ff_opt = make(env, ls, seed)
    torch.manual_seed(seed)
    tg_env = TGHyperGrid(ndim=2, height=height, reward_fn_kwargs={"R0": r0, "R1": 0.5, "R2": 2.0})
    pre = KHotPreprocessor(height=height, ndim=2)
    pf_mod = MLP(pre.output_dim, tg_env.n_actions, hidden_dim=256, n_hidden_layers=2)
    pb_mod = MLP(pre.output_dim, tg_env.n_actions - 1, hidden_dim=256, n_hidden_layers=2, trunk=pf_mod.trunk)
    pf = DiscretePolicyEstimator(pf_mod, tg_env.n_actions, preprocessor=pre)
    pb = DiscretePolicyEstimator(pb_mod, tg_env.n_actions, preprocessor=pre, is_backward=True)
    tg = TBGFlowNet(pf=pf, pb=pb, init_logZ=0.0)
    tg_opt = torch.optim.Adam(
        [{"params": tg.pf_pb_parameters(), "lr": 1e-3}, {"params": tg.logz_parameters(), "lr": 1e-1}]
    )
    sampler = LocalSearchSampler(pf_estimator=pf, pb_estimator=pb)
    g = torch.Generator().manual_seed(seed)
    t_ff, t_tg = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = ff.loss(BatchRequest(batch, g, torch.device("cpu")))
        ff_opt.zero_grad(set_to_none=True)
        loss.backward()
        ff_opt.step()
        t1 = time.perf_counter()
        trajs = sampler.sample_trajectories(
            tg_env, n=batch, n_local_search_loops=1, back_ratio=0.5, use_metropolis_hastings=False
        )
        tl = tg.loss(tg_env, trajs, recalculate_all_logprobs=True)
        tg_opt.zero_grad(set_to_none=True)
        tl.backward()
        tg_opt.step()
        t2 = time.perf_counter()
        t_ff.append(t1 - t0)
        t_tg.append(t2 - t1)
    return 1e3 * statistics.median(t_ff[50:]), 1e3 * statistics.median(t_tg[50:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--r0", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--timing-steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = HyperGrid(2, args.height, r0=args.r0)
    print(f"HyperGrid 2-D height {args.height} r0 {args.r0}: {env.n_modes} modes; {args.steps} steps")
    print("| method | seed | reward evals | exact L1 | abs logZ err | modes found | ms / iter |")
    print("|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        for name, ls in (
            (f"TB, batch {2 * args.batch}", None),
            (f"LS-TB, batch {args.batch} + {args.batch} refined", LocalSearch(back_ratio=0.5, iterations=1)),
        ):
            r = train_ff(env, ls, args.steps, args.batch, seed)
            evals = 2 * args.batch * args.steps
            print(
                f"| {name} | {seed} | {evals} | {r['l1']:.3f} | {r['logz_err']:.3f} | {r['modes']}/{env.n_modes} "
                f"| {r['ms']:.2f} |",
                flush=True,
            )
    try:
        ms_ff, ms_tg = time_vs_torchgfn(args.height, args.r0, args.timing_steps, args.batch, args.seeds[0])
    except ImportError as e:  # torchgfn not installed
        print(f"torchgfn timing skipped: {e}")
        return
    print(
        f"\ntime per LS-TB iteration (batch {args.batch}, 1 local-search loop, back_ratio 0.5, deterministic), "
        f"median of {args.timing_steps - 50}: flowforge {ms_ff:.2f} ms, torchgfn {ms_tg:.2f} ms "
        f"(ratio {ms_tg / ms_ff:.2f}x)"
    )


if __name__ == "__main__":
    main()
