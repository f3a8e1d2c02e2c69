"""Equivariant augmented coupling flow against the equivariant CNF on DW-4 / LJ-13 (issue 14, item 3).

Trains, in one process on the same cached MCMC reference samples, batches (same generator seed), optimiser
(Adam, cosine decay, grad clip 1, EMA) and thread count:

1. ``AugmentedEquivariantFlow`` (normalizing/equivariant_coupling.py) by maximum likelihood of the joint
   ``(x, a)``; proposals from one pass through the layers; **joint** importance weights
   ``log w = -E(x) + log pi(a|x) - log q(x, a)``; NLL from the IS estimate of ``log q(x)`` over ``--n-aug``
   auxiliary draws (and over 4x as many, to see the estimator's bias);
2. with ``--ecnf-steps N > 0``: the ``EquivariantFlowMatching`` EGNN CNF (as in benchmarks/ecnf.py,
   independent pairs) for ``N`` steps, exact-divergence IS and NLL.

Weights are against the ``com="gaussian"`` energies, so log Z matches the ``-bg`` / ``-ecnf`` rows of
BENCHMARKS.md (sections 9 and 17.2; the NSF rows there are quoted, not rerun). No reference log Z exists;
the bound ``log Z <= NLL - E_p[E]`` (held-out reference energies) and a bootstrap SE (200 resamples of the
weights) stand in for it. One thread, seeded.

    FLOWFORGE_CACHE=benchmarks/.cache python benchmarks/eq_coupling.py --system dw4 --steps 1000 \
        --ecnf-steps 1000 --n-is 5000 --ecnf-n-is 2000 --n-nll 500
    FLOWFORGE_CACHE=benchmarks/.cache python benchmarks/eq_coupling.py --system lj13 --steps 300 --batch 128 \
        --n-is 2000 --n-nll 200

(The measured DW-4 run was cut by a 15-minute limit during its ECNF part; the ECNF row at the same budget
came from ``benchmarks/ecnf.py --system dw4 --ot 0 --steps 1000 --n-is 2000 --is-steps 20 --n-nll 500``.)
Results: ``benchmarks/RESULTS-eq_coupling.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch

from flowforge.continuous import EquivariantFlowMatching
from flowforge.data.energies import DoubleWell4, LennardJones13
from flowforge.nn import EGNN
from flowforge.normalizing import AugmentedEquivariantFlow
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


def train(model, x_train, steps, batch, lr, seed, label):
    """Adam + cosine decay + clip 1 + EMA (warm-up decay), batches from ``seed``; returns (ema, seconds, loss)."""
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    t0, losses = time.perf_counter(), []
    for step in range(steps):
        idx = torch.randint(0, len(x_train), (batch,), generator=g)
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
        if (step + 1) % max(1, steps // 5) == 0:
            print(f"{label} step {step + 1} loss {sum(losses[-50:]) / len(losses[-50:]):.4f} "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)  # fmt: skip
    ema.eval()
    return ema, time.perf_counter() - t0, sum(losses[-100:]) / len(losses[-100:])


def is_summary(out, t):
    return {
        "ess": out.ess,
        "logz": out.log_z,
        "logz_se_bootstrap": bootstrap_logz_se(out.log_weights.double()),
        "n_nonfinite": out.n_nonfinite,
        "is_s": round(time.perf_counter() - t, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--system", choices=sorted(SYSTEMS), default="dw4")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--aug-scale", type=float, default=0.5)
    p.add_argument("--n-is", type=int, default=5000)
    p.add_argument("--n-nll", type=int, default=500)
    p.add_argument("--n-aug", type=int, default=20)
    p.add_argument("--ecnf-steps", type=int, default=0, help="0: no ECNF rerun")
    p.add_argument("--ecnf-n-is", type=int, default=2000)
    p.add_argument("--ecnf-is-steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    a = p.parse_args()
    torch.set_num_threads(1)
    cls, n, d, scale, n_train, n_test, nsf = SYSTEMS[a.system]
    energy = cls()
    x_train = energy.reference_samples(n_train, seed=0).float()
    x_test = energy.reference_samples(n_test, seed=1).float()
    pts = x_test[torch.randperm(n_test, generator=torch.Generator().manual_seed(0))[: a.n_nll]]
    e_ref = float(energy(x_test[:2000]).double().mean())
    res = {"system": a.system, "seed": a.seed, "steps": a.steps, "batch": a.batch, "mean_energy_reference": e_ref,
           "nsf_quoted_BENCHMARKS_9": nsf}  # fmt: skip

    torch.manual_seed(a.seed)
    flow = AugmentedEquivariantFlow(
        n, d, blocks=a.blocks, width=a.width, depth=a.depth, scale=scale, aug_scale=a.aug_scale
    )
    ema, train_s, final = train(flow, x_train, a.steps, a.batch, a.lr, a.seed, "eqcoupling")
    gen = ema.generator(com="gaussian", n_aug=a.n_aug)
    t = time.perf_counter()
    with torch.no_grad():
        out = importance_sample(
            gen, energy, a.n_is, generator=torch.Generator().manual_seed(1), batch_size=1000
        )
    r = {"params": sum(q.numel() for q in flow.parameters()), "blocks": a.blocks, "depth": a.depth,
         "width": a.width, "aug_scale": a.aug_scale, "train_s": round(train_s, 1), "final_loss": final,
         "n_is": a.n_is, **is_summary(out, t)}  # fmt: skip
    t = time.perf_counter()
    g = torch.Generator().manual_seed(2)
    r["nll"] = float(-gen.log_prob(pts, n_aug=a.n_aug, generator=g).mean())
    r["nll_4x_aug"] = float(-gen.log_prob(pts, n_aug=4 * a.n_aug, generator=g).mean())
    r["nll_1_aug"] = float(-gen.log_prob(pts, n_aug=1, generator=g).mean())
    r["nll_s"] = round(time.perf_counter() - t, 1)
    r["bound_nll_minus_Ep_E"] = r["nll_4x_aug"] - e_ref
    res["eqcoupling"] = r
    print(json.dumps(r), flush=True)

    if a.ecnf_steps:
        torch.manual_seed(a.seed)
        net = EGNN(n, d, width=32, depth=3, scale=scale)
        model = EquivariantFlowMatching(net, n, d)
        ema, train_s, final = train(model, x_train, a.ecnf_steps, a.batch, a.lr, a.seed, "ecnf")
        egen = ema.generator(com="gaussian")
        opts = {"solver": "midpoint", "steps": a.ecnf_is_steps}

        class Proposal:
            def sample_and_log_prob(self, m, generator=None):
                return egen.sample_and_log_prob(m, generator=generator, **opts)

        t = time.perf_counter()
        out = importance_sample(
            Proposal(), energy, a.ecnf_n_is, generator=torch.Generator().manual_seed(1), batch_size=500
        )
        r = {"params": sum(q.numel() for q in net.parameters()), "steps": a.ecnf_steps, "train_s": round(train_s, 1),
             "final_loss": final, "n_is": a.ecnf_n_is, "sampler": opts, **is_summary(out, t)}  # fmt: skip
        t = time.perf_counter()
        r["nll"] = float(-egen.log_prob(pts, **opts).mean())
        r["nll_s"] = round(time.perf_counter() - t, 1)
        r["bound_nll_minus_Ep_E"] = r["nll"] - e_ref
        res["ecnf"] = r
        print(json.dumps(r), flush=True)
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
