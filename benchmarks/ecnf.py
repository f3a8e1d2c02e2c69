"""Equivariant CNF Boltzmann generators on DW-4 and LJ-13 (issue 14, item 3): ESS and log Z by importance sampling.

An EGNN velocity trained by (equivariant-OT) flow matching on our cached parallel-tempering MALA reference
samples; proposals and exact log-densities from one forward solve of the augmented ODE (exact divergence);
weights ``log w = -E(x) - log q(x)`` against the ``com="gaussian"`` energies, so ``logz`` is comparable to
the ``dw4-bg`` / ``lj13-bg`` rows of BENCHMARKS.md section 9 (non-equivariant NSF, quoted, not rerun).
One thread, seeded. The standard error of log Z is a bootstrap over the weights (200 resamples).

    FLOWFORGE_CACHE=benchmarks/.cache python benchmarks/ecnf.py --system dw4 --steps 3000 --n-is 20000 \
        --is-steps 20 --n-nll 1000                                   # equivariant-OT pairs (--ot 1, default)
    FLOWFORGE_CACHE=benchmarks/.cache python benchmarks/ecnf.py --system dw4 --ot 0 --steps 3000 \
        --n-is 5000 --is-steps 20 --n-nll 1000 --check-n 2000         # independent pairs + ODE-error check
    FLOWFORGE_CACHE=benchmarks/.cache python benchmarks/ecnf.py --system lj13 --steps 1500 --batch 128 \
        --n-is 1000 --is-steps 10 --n-nll 200 [--ot 0]               # reduced budget (exact divergence: 39 VJPs)

Results: ``benchmarks/RESULTS-ecnf.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch

from flowforge.continuous import EquivariantFlowMatching
from flowforge.core.equivariant_ot import EquivariantOT
from flowforge.data.energies import DoubleWell4, LennardJones13
from flowforge.nn import EGNN
from flowforge.normalizing.importance import importance_sample

SYSTEMS = {
    "dw4": (DoubleWell4, 4, 2, 4.0, 50_000, 10_000, {"ess": 0.016, "logz": 31.45, "nll": 13.37}),
    "lj13": (LennardJones13, 13, 3, 1.0, 10_000, 5_000, {"ess": 1e-4, "logz": 27.16, "nll": 124.98}),
}


def bootstrap_logz_se(log_w: torch.Tensor, reps: int = 200, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    n = len(log_w)
    est = [
        float(torch.logsumexp(log_w[torch.randint(0, n, (n,), generator=g)], 0) - math.log(n))
        for _ in range(reps)
    ]
    return float(torch.tensor(est).std())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--system", choices=sorted(SYSTEMS), default="dw4")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ot", type=int, default=1, help="1: equivariant OT pairs, 0: independent")
    p.add_argument("--n-is", type=int, default=4000)
    p.add_argument("--solver", default="midpoint")
    p.add_argument("--is-steps", type=int, default=10)
    p.add_argument("--n-nll", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    p.add_argument("--save", default="", help="write the EMA weights here (safetensors)")
    p.add_argument(
        "--check-n",
        type=int,
        default=0,
        help="also IS with rk4 at 2x steps on this many proposals (ODE error)",
    )
    a = p.parse_args()
    torch.set_num_threads(1)
    cls, n, d, scale, n_train, n_test, nsf = SYSTEMS[a.system]
    energy = cls()
    x_train = energy.reference_samples(n_train, seed=0).float()
    x_test = energy.reference_samples(n_test, seed=1).float()
    torch.manual_seed(a.seed)
    net = EGNN(n, d, width=a.width, depth=a.depth, scale=scale)
    coupling = EquivariantOT(n, d) if a.ot else None
    model = EquivariantFlowMatching(net, n, d, coupling=coupling)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.steps)
    g = torch.Generator().manual_seed(a.seed)

    # pair cost of one batch: independent vs aligned (equivariant OT)
    xb = model.source.project(x_train[:256])
    x0 = model.source.sample(256, generator=g)
    a0, _ = EquivariantOT(n, d)(x0, xb)
    cost = {
        "independent": float((xb - x0).square().sum(1).mean()),
        "eq_ot": float((xb - a0).square().sum(1).mean()),
    }

    t0 = time.perf_counter()
    losses = []
    for step in range(a.steps):
        idx = torch.randint(0, n_train, (a.batch,), generator=g)
        loss = model.loss(x_train[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, a.steps // 5) == 0:
            print(
                f"step {step + 1} loss {sum(losses[-50:]) / len(losses[-50:]):.4f} {time.perf_counter() - t0:.0f}s",
                flush=True,
            )
    train_s = time.perf_counter() - t0

    ema.eval()
    gen = ema.generator(com="gaussian")
    t1 = time.perf_counter()
    opts = {"solver": a.solver, "steps": a.is_steps}

    class Proposal:  # boltzmann_metrics draws with sample_and_log_prob(m, generator=...)
        def sample_and_log_prob(self, m, generator=None):
            return gen.sample_and_log_prob(m, generator=generator, **opts)

    out = importance_sample(
        Proposal(), energy, a.n_is, generator=torch.Generator().manual_seed(1), batch_size=500
    )
    is_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    pts = x_test[torch.randperm(n_test, generator=torch.Generator().manual_seed(0))[: a.n_nll]]
    nll = float(-gen.log_prob(pts, **opts).mean())
    nll_s = time.perf_counter() - t2
    res = {
        "system": a.system,
        "params": sum(q.numel() for q in net.parameters()),
        "steps": a.steps,
        "batch": a.batch,
        "ot": a.ot,
        "train_s": round(train_s, 1),
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "pair_cost": cost,
        "n_is": a.n_is,
        "ess": out.ess,
        "logz": out.log_z,
        "logz_se_bootstrap": bootstrap_logz_se(out.log_weights.double()),
        "n_nonfinite": out.n_nonfinite,
        "mean_energy_proposals": float(out.energy.double().mean()),
        "mean_energy_reference": float(energy(x_test[:2000]).double().mean()),
        "is_s": round(is_s, 1),
        "nll": nll,
        "nll_points": a.n_nll,
        "nll_s": round(nll_s, 1),
        "sampler": opts,
        "nsf_quoted_BENCHMARKS_9": nsf,
    }
    if a.check_n:
        t3 = time.perf_counter()
        fine = {"solver": "rk4", "steps": 2 * a.is_steps}
        for label, o in (("coarse", opts), ("fine", fine)):
            opts_ = o

            class P:
                def sample_and_log_prob(self, m, generator=None, o=opts_):
                    return gen.sample_and_log_prob(m, generator=generator, **o)

            r = importance_sample(
                P(), energy, a.check_n, generator=torch.Generator().manual_seed(3), batch_size=500
            )
            res[f"check_{label}"] = {"sampler": o, "n": a.check_n, "ess": r.ess, "logz": r.log_z}
        res["check_s"] = round(time.perf_counter() - t3, 1)
    if a.save:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, a.save)
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
