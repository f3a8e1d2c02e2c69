"""Transferable Boltzmann generator on 2-D bead chains (Prose's idea at toy scale): zero-shot IS / SMC on unseen
chains, self-improvement, against MALA-only samplers at equal energy evaluations.

One TransferableTARFlow is trained by maximum likelihood on a family of 12 chains (lengths 4, 5, 6, 8; PT-MALA
reference samples), then used on two chains it never saw: BCACAB (length 6, unseen sequence) and CABBCAC
(length 7, an unseen length). For each, at a budget of B target-energy evaluations (gradient evaluations count
as one each), we compare

- IS (zero-shot): B flow proposals, self-normalised IS;
- SMC (flow): the library's SMC from the flow with MALA moves, K annealing steps, B / (1 + K) particles;
- AIS-MALA (Gaussian): the same SMC from a Gaussian N(0, s^2 I) base, no flow (MALA only);
- MALA: B / L chains of L steps started from flow samples (log Z unavailable; ESS from the energy's
  integrated autocorrelation time);
- IS after self-improvement: Prose's IS-weighted fine-tune on the chain's energy only, then B proposals
  (the fine-tune's own energy evaluations are reported beside it);
- control: IS with the exact repulsion-free chain as proposal (physics knowledge, not learnable).

Reference log Z: exact quadrature of the bonded chain times an IS mean of exp(-E_rep) over 1e6 exact
bonded samples (standard error printed). Energy-W2 against 4000 PT samples of the chain (seed 1), with a
control: PT seed 2 against seed 1.

Run: PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/transfer.py [--steps 2000] [--budget 20000]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from flowforge.core.mcmc import mala
from flowforge.data.chains import BeadChain, ChainFamilyData, chain_family
from flowforge.metrics.boltzmann import energy_w2
from flowforge.normalizing import SelfImprovement, importance_sample, smc
from flowforge.normalizing.transferable import TransferableTARFlow
from flowforge.train.trainer import BatchRequest

TESTS = ["BCACAB", "CABBCAC"]


class Gaussian(torch.nn.Module):
    """N(0, s^2 I) on R^D as a proposal with the flow interface (for AIS-MALA without a flow)."""

    def __init__(self, dim: int, s: float) -> None:
        super().__init__()
        self.dim, self.s = dim, s

    def sample_and_log_prob(self, n: int, *, generator: torch.Generator | None = None):
        x = self.s * torch.randn(n, self.dim, generator=generator)
        return x, self.log_prob(x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return -0.5 * (x / self.s).square().sum(-1) - self.dim * math.log(self.s * math.sqrt(2 * math.pi))


def train(args: argparse.Namespace) -> tuple[TransferableTARFlow, float]:
    fam = chain_family([4, 5, 6, 8], 3, seed=0, exclude=TESTS)
    chains = [BeadChain(s) for s in fam]
    refs = [c.reference_samples(4000, seed=0) for c in chains]
    data = ChainFamilyData(refs, [c.types for c in chains])
    torch.manual_seed(0)
    flow = TransferableTARFlow(3, blocks=4, width=64, layers=2, head_dim=16)
    ck = Path(args.cache) / f"transfer-flow-{args.steps}.pt"
    if ck.is_file():
        flow.load_state_dict(torch.load(ck, weights_only=True))
        return flow, float("nan")
    opt = torch.optim.AdamW(flow.parameters(), lr=2e-3, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps, pct_start=0.05)
    g = torch.Generator().manual_seed(1)
    t0 = time.process_time()
    for i in range(args.steps):
        loss = flow.loss(data(256, g))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 1.0)
        opt.step()
        sched.step()
        if i % 250 == 0:
            print(f"  step {i} nll/coord {loss.item():.3f}", flush=True)
    ck.parent.mkdir(parents=True, exist_ok=True)
    torch.save(flow.state_dict(), ck)
    print(f"  family: {fam}")
    return flow, time.process_time() - t0


def autocorr_ess(e: torch.Tensor) -> float:
    """ESS of chains ``(L, M)`` from the energy's integrated autocorrelation time (Geyer's initial sequence)."""
    x = e - e.mean(0)
    L = x.shape[0]
    var = x.square().mean()
    tau = 1.0
    for lag in range(1, L // 2):
        rho = float((x[lag:] * x[:-lag]).mean() / var)
        if rho < 0.05:
            break
        tau += 2 * rho
    return e.numel() / tau


def evaluate(flow: TransferableTARFlow, name: str, args: argparse.Namespace, seeds: list[int]) -> dict:
    chain = BeadChain(name)
    B = args.budget
    lz, se = chain.reference_log_z(1_000_000, seed=0)
    lz2, _ = chain.reference_log_z(1_000_000, seed=1)
    ref = chain.reference_samples(4000, seed=1).double()
    ref2 = chain.reference_samples(4000, seed=2).double()
    e_ref = chain(ref)
    out: dict = {"chain": name, "ref_logz": lz, "ref_se": se, "ref_logz_seed1_diff": abs(lz2 - lz),
                 "control_ew2_pt_vs_pt": energy_w2(e_ref, chain(ref2))}  # fmt: skip
    bound = flow.bind(chain.types)

    def row(key: str, log_z: float | None, ess: float | None, x: torch.Tensor, evals: int, extra: int = 0):
        out.setdefault(key, []).append(
            {
                "logz_err": None if log_z is None else abs(log_z - lz),
                "ess": ess,
                "ew2": energy_w2(e_ref, chain(x.double())),
                "evals": evals,
                "extra_evals": extra,
            }  # fmt: skip
        )

    for s in seeds:
        g = torch.Generator().manual_seed(s)
        isz = importance_sample(bound, chain, B, generator=g, quantile_filter=0.0)
        row("is_zero_shot", isz.log_z, isz.ess, isz.resample(4000, g), B)
        K = args.smc_steps
        r = smc(bound, chain, B // (1 + K), steps=K, generator=g)
        row("smc_flow", r.log_z, None, r.resample(4000, g), r.energy_evals)
        K2 = args.ais_steps
        r = smc(Gaussian(chain.dim, 1.0), chain, B // (1 + K2), steps=K2, generator=g)
        row("ais_mala_gauss", r.log_z, None, r.resample(4000, g), r.energy_evals)
        L = args.mala_len
        x0 = bound.sample(B // L, generator=g)
        # burn-in (step-size adaptation) = first half of each chain, counted in the budget
        m = mala(
            chain, x0.double(), L - L // 2, step_size=0.005, burn_in=L // 2, generator=g, keep_samples=True
        )
        es = chain(m.samples.reshape(-1, chain.dim)).reshape(m.samples.shape[:2])
        row("mala_from_flow", None, autocorr_ess(es) / B, m.samples.reshape(-1, chain.dim), B)
        bonded = chain.sample_bonded(B, generator=g)
        lw = -chain.repulsion_energy(bonded)
        from flowforge.normalizing import effective_sample_size

        row("control_is_bonded_exact", float(torch.logsumexp(lw, 0) - math.log(B)) + chain.bonded_log_z(),
            effective_sample_size(lw), bonded[torch.multinomial(torch.softmax(lw, 0), 4000, True, generator=g)], B)  # fmt: skip

    # self-improvement on this chain's energy only (one run, seed 0), then IS at budget B with each seed
    torch.manual_seed(0)
    tuned = copy.deepcopy(flow)
    si = SelfImprovement(tuned.bind(chain.types), chain, teacher_weight=args.teacher, buffer_size=4000,
                         proposals=args.si_proposals, refresh_every=args.si_refresh, quantile_filter=0.002)  # fmt: skip
    opt = torch.optim.Adam(tuned.parameters(), lr=args.si_lr)
    g = torch.Generator().manual_seed(100)
    trace = []
    for _ in range(args.si_steps):
        loss = si.loss(BatchRequest(128, g, None))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if int(si.calls) - 1 == si._refreshed_at:
            trace.append(round(si.last_ess, 4))
    si_evals = len(trace) * args.si_proposals
    out["si_refresh_ess"] = trace
    bt = tuned.bind(chain.types)
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        isz = importance_sample(bt, chain, B, generator=g)
        row("is_after_si", isz.log_z, isz.ess, isz.resample(4000, g), B, si_evals)
        K = args.smc_steps
        r = smc(bt, chain, B // (1 + K), steps=K, generator=g)
        row("smc_after_si", r.log_z, None, r.resample(4000, g), r.energy_evals, si_evals)
    return out


def summarise(res: dict) -> None:
    print(f"\n### {res['chain']}: reference log Z = {res['ref_logz']:.4f} ± {res['ref_se']:.4f} "
          f"(second estimate differs by {res['ref_logz_seed1_diff']:.4f}); E-W2 control PT vs PT "
          f"{res['control_ew2_pt_vs_pt']:.3f}")  # fmt: skip
    print(
        "| method | energy evals | + fine-tune evals | ESS (mean ± sd) | abs log Z error (mean ± sd) | E-W2 |"
    )
    print("|---|---|---|---|---|---|")
    for k, rows in res.items():
        if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
            continue

        def ms(v: list) -> str:
            if any(a is None for a in v):  # SMC: final weights follow a resampling, no IS ESS
                return "n/a"
            t = torch.tensor(v, dtype=torch.float64)
            return f"{t.mean():.4f} ± {t.std():.4f}" if len(v) > 1 else f"{t.mean():.4f}"

        print(f"| {k} | {rows[0]['evals']} | {rows[0]['extra_evals']} | {ms([r['ess'] for r in rows])} | "
              f"{ms([r['logz_err'] for r in rows])} | {ms([r['ew2'] for r in rows])} |")  # fmt: skip
    print(f"self-improvement: ESS at each buffer refresh {res['si_refresh_ess']}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--budget", type=int, default=20_000)
    p.add_argument("--smc-steps", type=int, default=20)
    p.add_argument("--ais-steps", type=int, default=100)
    p.add_argument("--mala-len", type=int, default=200)
    p.add_argument("--si-steps", type=int, default=200)
    p.add_argument("--si-refresh", type=int, default=20)
    p.add_argument("--si-proposals", type=int, default=4000)
    p.add_argument("--si-lr", type=float, default=1e-4)
    p.add_argument("--teacher", type=float, default=1.0)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--cache", default="/tmp/ff-transfer-cache")
    p.add_argument("--json", default="")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.process_time()
    flow, tt = train(args)
    print(f"training: {args.steps} steps, {tt:.0f} CPU s")
    flow.eval()
    results = []
    for name in TESTS:
        res = evaluate(flow, name, args, list(range(args.seeds)))
        summarise(res)
        results.append(res)
    print(f"\ntotal CPU time {time.process_time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
