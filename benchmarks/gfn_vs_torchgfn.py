"""flowforge vs torchgfn 2.4.1 on the hypergrid: trajectory balance, time per iteration and exact L1.

Protocol (torchgfn's ``train_hypergrid.py`` defaults, both libraries in one process,
``torch.set_num_threads(1)``, float32):

- HyperGrid ``ndim`` in {2, 4}, height 8, rewards (0.1, 0.5, 2.0); K-hot encoding (``ndim * 8`` inputs).
- P_F: MLP 256 x 2 hidden (ReLU); P_B: a second linear head on the *same* trunk; log Z initialised at 0.
- Adam, lr 1e-3 for the policy and 1e-1 for log Z (flowforge: one Adam at 1e-3 with
  ``log_z_lr_scale=100``, which under Adam is the same step on log Z), constant learning rate, no clipping.
- On-policy, batch 16, ``--trajectories`` trajectories (default 32,000 = 2000 iterations).
  torchgfn: ``Sampler.sample_trajectories(env, n=16, save_logprobs=True)`` and
  ``TBGFlowNet.loss(env, trajs, recalculate_all_logprobs=False)``; flowforge:
  ``TrajectoryBalance.loss(BatchRequest)`` (sample with grad, then the TB objective).
- The two trainings run **interleaved** (one flowforge iteration, one torchgfn iteration, ...), so any
  load from other processes on the machine hits both alike. Time per iteration = the median over all
  iterations after the first 100 (sample + loss + backward + Adam step).
- Exact L1 (sum convention, torchgfn's ``l1_dist``): the exact terminal distribution of each trained
  P_F by dynamic programming over the grid (:func:`flowforge.gflownet.terminal_distribution`). For
  torchgfn an adapter feeds flowforge's ``(B, ndim)`` states through torchgfn's own ``KHotPreprocessor``
  and P_F module, masks with torchgfn's forward masks and log-softmaxes (what its
  ``DiscretePolicyEstimator`` does at temperature 1, no epsilon). Also |log Z error|. torchgfn's own
  ``env.validate`` (sample-based, ``--validate-samples``) is printed alongside for reference.

Run::

    bash ../shared/tools/install_peers.sh gfn     # torchgfn 2.4.1
    python benchmarks/gfn_vs_torchgfn.py             # 2-D and 4-D, 32k trajectories each
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flowforge.gflownet import (
    HyperGrid,
    TrajectoryBalance,
    exact_metrics,
    l1_sum,
    shared_trunk_policies,
    terminal_distribution,
)
from flowforge.train import BatchRequest


def make_flowforge(env: HyperGrid, width: int, depth: int) -> tuple[TrajectoryBalance, torch.optim.Optimizer]:
    pf, pb = shared_trunk_policies(env.obs_dim, env.n_actions, width, depth)
    model = TrajectoryBalance(env, pf, pb, log_z_lr_scale=100.0)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def make_torchgfn(ndim: int, height: int, width: int, depth: int):
    from gfn.estimators import DiscretePolicyEstimator
    from gfn.gflownet import TBGFlowNet
    from gfn.gym import HyperGrid as TGHyperGrid
    from gfn.preprocessors import KHotPreprocessor
    from gfn.samplers import Sampler
    from gfn.utils.modules import MLP

    env = TGHyperGrid(ndim=ndim, height=height, store_all_states=True, calculate_partition=True)
    pre = KHotPreprocessor(height=height, ndim=ndim)
    pf_mod = MLP(pre.output_dim, env.n_actions, hidden_dim=width, n_hidden_layers=depth)
    pb_mod = MLP(
        pre.output_dim, env.n_actions - 1, hidden_dim=width, n_hidden_layers=depth, trunk=pf_mod.trunk
    )
    pf = DiscretePolicyEstimator(pf_mod, env.n_actions, preprocessor=pre)
    pb = DiscretePolicyEstimator(pb_mod, env.n_actions, preprocessor=pre, is_backward=True)
    gfn = TBGFlowNet(pf=pf, pb=pb, init_logZ=0.0)
    opt = torch.optim.Adam(
        [{"params": gfn.pf_pb_parameters(), "lr": 1e-3}, {"params": gfn.logz_parameters(), "lr": 1e-1}]
    )
    return env, gfn, opt, Sampler(estimator=pf), pf_mod, pre


def torchgfn_log_pf(tg_env, pf_mod, pre):
    """flowforge ``(B, ndim)`` states -> ``(B, n_actions)`` masked log P_F of torchgfn's trained policy."""

    def fn(states: torch.Tensor) -> torch.Tensor:
        s = tg_env.states_from_tensor(states.long())
        logits = pf_mod(pre(s))
        return torch.log_softmax(logits.masked_fill(~s.forward_masks, float("-inf")), dim=-1)

    return fn


def bench(
    ndim: int, height: int, trajectories: int, batch: int, width: int, depth: int, seed: int, n_val: int
):
    torch.manual_seed(seed)
    ff_env = HyperGrid(ndim, height)
    ff, ff_opt = make_flowforge(ff_env, width, depth)
    torch.manual_seed(seed)
    tg_env, tg, tg_opt, sampler, pf_mod, pre = make_torchgfn(ndim, height, width, depth)
    g = torch.Generator().manual_seed(seed)
    iters = trajectories // batch
    t_ff, t_tg = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        loss = ff.loss(BatchRequest(batch, g, torch.device("cpu")))
        ff_opt.zero_grad(set_to_none=True)
        loss.backward()
        ff_opt.step()
        t1 = time.perf_counter()
        trajs = sampler.sample_trajectories(tg_env, n=batch, save_logprobs=True)
        tl = tg.loss(tg_env, trajs, recalculate_all_logprobs=False)
        tg_opt.zero_grad(set_to_none=True)
        tl.backward()
        tg_opt.step()
        t2 = time.perf_counter()
        t_ff.append(t1 - t0)
        t_tg.append(t2 - t1)
    warm = min(100, iters // 2)
    ms_ff, ms_tg = 1e3 * statistics.median(t_ff[warm:]), 1e3 * statistics.median(t_tg[warm:])
    ff.eval()
    m_ff = exact_metrics(ff, ff_env)
    with torch.no_grad():
        p_tg = terminal_distribution(torchgfn_log_pf(tg_env, pf_mod, pre), ff_env)
        l1_tg = float(l1_sum(p_tg, ff_env.true_distribution()))
        lz_tg = abs(float(tg.logZ) - ff_env.log_partition)
    val = {}
    if n_val:
        val = tg_env.validate(tg, n_validation_samples=n_val)[0]
    return {
        "ndim": ndim,
        "height": height,
        "iters": iters,
        "ms_ff": ms_ff,
        "ms_tg": ms_tg,
        "l1_ff": m_ff["l1_sum"],
        "l1_tg": l1_tg,
        "lz_ff": m_ff["logz_error"],
        "lz_tg": lz_tg,
        "tg_validate_l1": float(val.get("l1_dist", float("nan"))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ndims", default="2,4", help="comma-separated grid dimensions")
    ap.add_argument("--height", type=int, default=8)
    ap.add_argument("--trajectories", type=int, default=32_000, help="per run (iterations = this / batch)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--validate-samples", type=int, default=0, help="also torchgfn's sampled env.validate")
    a = ap.parse_args()
    torch.set_num_threads(1)
    import gfn

    print(f"torch {torch.__version__}, torchgfn {gfn.__version__}, threads 1, seed {a.seed}")
    hdr = "| grid | iters | ms/iter flowforge | ms/iter torchgfn | speed-up | exact L1 flowforge | exact L1 torchgfn | logZ err ff | logZ err tg |"
    rows = [hdr, "|" + "---|" * 9]
    for ndim in [int(d) for d in a.ndims.split(",")]:
        t0 = time.time()
        r = bench(ndim, a.height, a.trajectories, a.batch, a.width, a.depth, a.seed, a.validate_samples)
        rows.append(
            f"| {ndim}-D/{a.height} | {r['iters']} | {r['ms_ff']:.2f} | {r['ms_tg']:.2f} | "
            f"{r['ms_tg'] / r['ms_ff']:.2f}x | {r['l1_ff']:.4f} | {r['l1_tg']:.4f} | {r['lz_ff']:.4f} | {r['lz_tg']:.4f} |"
        )
        extra = (
            f", torchgfn validate L1 ({a.validate_samples} samples) {r['tg_validate_l1']:.4f}"
            if a.validate_samples
            else ""
        )
        print(
            f"{ndim}-D: time ratio flowforge/torchgfn {r['ms_ff'] / r['ms_tg']:.3f}, "
            f"L1 ratio {r['l1_ff'] / max(r['l1_tg'], 1e-12):.3f}{extra} ({time.time() - t0:.0f}s)",
            flush=True,
        )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
