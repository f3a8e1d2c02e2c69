"""Order-preserving TB vs reward-scalarised TB on the multi-objective hypergrid: Pareto-front share.

Claim checked: OP-GFN (Chen & Mauch, ICLR 2024, arXiv 2310.00386) finds a larger share of the Pareto
front than a reward-scalarised TB at equal trajectories.

Protocol (``torch.set_num_threads(1)``, float32):

- Task: :class:`~flowforge.gflownet.MultiObjectiveHyperGrid`, 2-D, height ``--height``
  (64: 4096 states, 73 of them on the exact Branin-Currin Pareto front), objectives ``--objectives``.
- Every method: the recipe's network (:func:`flowforge.recipes.gflownet_moo.build_moo_gflownet`):
  P_F MLP 64 x 3 hidden (ReLU, the authors' size), uniform P_B, 1% uniform exploration, Adam at
  lr 1e-3 with a constant rate, on-policy batches of 128, ``--steps`` iterations; the same seeds
  for initialisation and sampling.
- ``op``: OP-TB (Pareto order of each batch only, no reward).
- ``tb-dir16`` (the baseline, recipe ``hypergrid-moo-tb``): TB on
  :math:`\\frac1J\\sum_j (w_j^\\top f)^{16}/Z_j`, :math:`J = 64` Dirichlet(1.5) preferences, i.e. the
  marginal target of OP-GFN's preference-conditioned baseline (w ~ Dir(1.5), mean exponent 16).
- ``tb-eq16``: TB on :math:`((f_1 + f_2)/2)^{16}` (fixed equal weights);
  ``tb-dir4`` / ``tb-dir64``: the Dirichlet mixture with exponent 4 (flatter) / 64 (sharper; the
  strongest baseline found, reported so that the comparison is not against a weak exponent only).
- Metrics: ``visited`` = share of the true front among all terminal states visited during training
  (exploration), at several checkpoints; at the end, ``fresh128`` / ``fresh1024`` = share of the front
  among 128 / 1024 fresh samples of the trained policy (no exploration), and ``precision`` = fraction of
  the 1024 fresh samples that lie on the front. Mean ± std over ``--seeds``.

Run::

    python benchmarks/gfn_op.py            # 5 methods x 3 seeds, ~4-5 min on one thread
    python benchmarks/gfn_op.py --steps 1000 --methods op,tb-dir16,tb-dir64   # longer budget, ~5 min
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flowforge.gflownet import pareto_share
from flowforge.recipes.gflownet_moo import build_moo_gflownet

METHODS: dict[str, dict] = {
    "op": {"objective": "op", "kl_weight": 0.0},
    "tb-dir16": {"objective": "tb", "preferences": "dirichlet", "beta": 16.0},
    "tb-eq16": {"objective": "tb", "preferences": "equal", "beta": 16.0},
    "tb-dir4": {"objective": "tb", "preferences": "dirichlet", "beta": 4.0},
    "tb-dir64": {"objective": "tb", "preferences": "dirichlet", "beta": 64.0},
}
TB_KEYS = {"log_z_lr_scale": 100.0, "n_preferences": 64, "alpha": 1.5, "pref_seed": 0}


def run(method: str, seed: int, a: argparse.Namespace) -> dict[str, float]:
    config = {
        "ndim": 2,
        "height": a.height,
        "objectives": a.objectives,
        "width": 64,
        "depth": 3,
        "uniform_pb": True,
        "epsilon": 0.01,
        "temperature": 1.0,
        **METHODS[method],
    }
    if config["objective"] == "tb":
        config.update(TB_KEYS)
    torch.manual_seed(seed)
    model = build_moo_gflownet(config)
    env = model.env
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=a.lr)
    g = torch.Generator().manual_seed(seed)
    seen = torch.zeros(env.n_states, dtype=torch.bool)
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        tr = model.sample(a.batch, generator=g, epsilon=model.epsilon)
        seen[env.state_index(tr.terminal)] = True
        loss = model.objective(tr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in a.checkpoints:
            out[f"visited@{step * a.batch}"] = pareto_share(env, env.all_states()[seen])
    out["seconds"] = time.perf_counter() - t0
    with torch.no_grad():
        x = model.sample(1024, generator=torch.Generator().manual_seed(10_000 + seed)).terminal
    out["fresh128"] = pareto_share(env, x[:128])
    out["fresh1024"] = pareto_share(env, x)
    out["precision"] = float(env.mode_mask(x).double().mean())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--objectives", default="branin+currin")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS))
    a = p.parse_args()
    torch.set_num_threads(1)
    a.checkpoints = sorted({s for s in (25, 50, 100, 200, a.steps) if s <= a.steps})
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    from flowforge.gflownet import MultiObjectiveHyperGrid

    env = MultiObjectiveHyperGrid(2, a.height, a.objectives)
    print(
        f"# {a.objectives} hypergrid 2-D height {a.height}: {env.n_states} states, front {env.n_modes}; "
        f"batch {a.batch} x {a.steps} steps = {a.batch * a.steps} trajectories per run, {a.seeds} seeds",
        flush=True,
    )
    results: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    for seed in range(a.seeds):
        for m in methods:
            r = run(m, seed, a)
            results[m].append(r)
            print(f"{m:9s} seed {seed}: " + " ".join(f"{k}={v:.3f}" for k, v in r.items()), flush=True)

    cols = [f"visited@{s * a.batch}" for s in a.checkpoints] + [
        "fresh128",
        "fresh1024",
        "precision",
        "seconds",
    ]

    def fmt(vals: list[float]) -> str:
        if len(vals) == 1:
            return f"{vals[0]:.3f}"
        return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"

    print()
    print("| method | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for m in methods:
        print(f"| {m} | " + " | ".join(fmt([r[c] for r in results[m]]) for c in cols) + " |")


if __name__ == "__main__":
    main()
