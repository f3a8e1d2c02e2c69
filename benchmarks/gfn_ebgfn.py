"""EB-GFN (Zhang et al. 2022) vs persistent contrastive divergence on a periodic Ising lattice.

Learning the couplings J of a side x side periodic lattice Ising model p(s) ~ exp(s^T J* s), J* = 0.2 A
(Grathwohl et al. 2021 / Zhang et al. 2022's lattice model with sigma = 0.2; ``Ising(J=0.2, beta=2)`` here),
from 2,000 (the paper's data size) and 20,000 Gibbs samples of the truth (500 sweeps from uniform states). Every method learns the same dense ``IsingEnergy`` (all D^2 entries
of J free, as in the paper) from the same initialisation and the same data batches, with the same Adam
optimizer and cosine schedule; they differ only in the negative samples of the contrastive-divergence step:

- ``ebgfn``: EB-GFN, a TB GFlowNet (P_F / P_B heads on one 64 x 2 MLP trunk) trained on -E_J, forward trajectories
  plus backward trajectories from the data (back_ratio 0.5), negatives by one K = D back-and-forth MH step
  from each data point;
- ``gibbs``: PCD with persistent chains and single-site heat-bath Gibbs updates (sequential scan), given
  the same number of energy evaluations per iteration as EB-GFN spends (measured, see below);
- ``gwg``: PCD with Gibbs-with-gradients (Grathwohl et al. 2021) at the same energy budget (a value and its
  gradient count as 2 evaluations);
- ``gibbs-time``: PCD-Gibbs given as many updates as fit in EB-GFN's wall-clock time per iteration;
- ``exact``: the exact maximum-likelihood gradient (model moments by enumerating the 2^D states): the
  floor that perfect negatives would reach with this data, optimizer and schedule (the control).

Energy evaluations are counted as configurations passed through E_J outside the contrastive-divergence
step itself (which costs 2B for every method): EB-GFN's are counted by ``EnergyEnvironment.evaluations``.

Metric: log10 RMSE of J against J* over all D^2 entries (the paper's metric). Second part: on a 3x3
lattice, the exact KL(pi || p_J) / L1 of the learned Boltzmann distribution and of the GFlowNet sampler
(dynamic programming over the 3^9 states), against the empirical distribution of the data as a noise floor.

    python benchmarks/gfn_ebgfn.py                 # 4x4, 3 seeds, + the 3x3 exact check
    python benchmarks/gfn_ebgfn.py --iters 200 --seeds 1 --no-exact   # smoke
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from flowforge.data import ising_exact, ising_gibbs, ising_log_probs
from flowforge.gflownet import (
    EBGFN,
    EnergyEnvironment,
    Ising,
    IsingEnergy,
    TrajectoryBalance,
    binary_states,
    coupling_rmse,
    ising_coupling,
    kl_l1,
    shared_trunk_policies,
)

torch.set_num_threads(1)


def cosine(step: int, steps: int, lr: float) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * step / steps))


def make_energy(side: int, seed: int, lr_scale: float) -> IsingEnergy:
    return IsingEnergy(side, lr_scale=lr_scale, generator=torch.Generator().manual_seed(1000 + seed))


def cd_step(
    energy: IsingEnergy, opt: torch.optim.Optimizer, x: torch.Tensor, neg: torch.Tensor, lr: float
) -> None:
    for group in opt.param_groups:
        group["lr"] = lr
    loss = energy(x).mean() - energy(neg).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def run_ebgfn(side, data, idx, seed, args):
    torch.manual_seed(seed)
    energy = make_energy(side, seed, args.lr_scale)
    env = EnergyEnvironment(Ising(side=side), energy)
    pf, pb = shared_trunk_policies(env.obs_dim, env.n_actions, args.width, 2)
    gfn = TrajectoryBalance(env, pf, pb)
    eb = EBGFN(gfn, back_ratio=0.5, negatives="mh", mh_steps=args.mh_steps or None, mh_warmup=args.mh_warmup)
    opt = torch.optim.Adam(eb.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(seed)
    acc = 0.0
    t0 = time.perf_counter()
    for t in range(idx.shape[0]):
        for group in opt.param_groups:
            group["lr"] = cosine(t, idx.shape[0], args.lr)
        parts = eb.losses(data[idx[t]], generator=g)
        opt.zero_grad()
        (parts["gfn"] + parts["energy"]).backward()
        opt.step()
        acc += eb.last["acceptance"]
    wall = time.perf_counter() - t0
    return eb, {"evals": env.evaluations / idx.shape[0], "wall": wall, "acceptance": acc / idx.shape[0]}


class GibbsChains:
    """Persistent chains, sequential-scan single-site heat-bath updates on a black-box energy."""

    def __init__(self, n, d, g):
        self.x = torch.randint(0, 2, (n, d), generator=g)
        self.site, self.g, self.evals = 0, g, 0

    @torch.no_grad()
    def run(self, energy, updates):
        n, d = self.x.shape
        e = energy(self.x)
        self.evals += n
        for _ in range(updates):
            i = self.site
            flip = self.x.clone()
            flip[:, i] = 1 - flip[:, i]
            e_flip = energy(flip)
            self.evals += n
            take = torch.rand(n, generator=self.g) < torch.sigmoid(e - e_flip)
            self.x = torch.where(take[:, None], flip, self.x)
            e = torch.where(take, e_flip, e)
            self.site = (i + 1) % d
        return self.x


class GWGChains:
    """Persistent chains, Gibbs-with-gradients (Grathwohl et al. 2021): flip one site drawn from
    softmax(d/2), d_i = (1 - 2 x_i) df/dx_i, f = -E, with the MH correction."""

    def __init__(self, n, d, g):
        self.x = torch.randint(0, 2, (n, d), generator=g).double()
        self.g, self.evals = g, 0

    def _f(self, energy, x):
        x = x.detach().requires_grad_(True)
        f = -energy(x)
        (grad,) = torch.autograd.grad(f.sum(), x)
        self.evals += 2 * x.shape[0]
        return f.detach(), torch.log_softmax((1 - 2 * x.detach()) * grad / 2, dim=1)

    def run(self, energy, steps):
        n = self.x.shape[0]
        f, lq = self._f(energy, self.x)
        for _ in range(steps):
            i = torch.multinomial(lq.exp(), 1, generator=self.g).squeeze(1)
            x2 = self.x.clone()
            x2[torch.arange(n), i] = 1 - x2[torch.arange(n), i]
            f2, lq2 = self._f(energy, x2)
            log_a = f2 - f + lq2.gather(1, i[:, None]).squeeze(1) - lq.gather(1, i[:, None]).squeeze(1)
            take = torch.rand(n, generator=self.g, dtype=torch.float64) < log_a.clamp(max=0).exp()
            self.x = torch.where(take[:, None], x2, self.x)
            f = torch.where(take, f2, f)
            lq = torch.where(take[:, None], lq2, lq)
        return self.x.long()


def run_pcd(side, data, idx, seed, args, kind, updates):
    torch.manual_seed(seed)
    energy = make_energy(side, seed, args.lr_scale)
    opt = torch.optim.Adam(energy.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(seed)
    chains = (GWGChains if kind == "gwg" else GibbsChains)(idx.shape[1], side * side, g)
    t0 = time.perf_counter()
    for t in range(idx.shape[0]):
        neg = chains.run(energy, updates)
        cd_step(energy, opt, data[idx[t]], neg, cosine(t, idx.shape[0], args.lr))
    wall = time.perf_counter() - t0
    return energy, {"evals": chains.evals / idx.shape[0], "wall": wall}


def run_exact(side, data, idx, seed, args):
    torch.manual_seed(seed)
    energy = make_energy(side, seed, args.lr_scale)
    opt = torch.optim.Adam(energy.parameters(), lr=args.lr)
    X = binary_states(side * side)
    t0 = time.perf_counter()
    for t in range(idx.shape[0]):
        for group in opt.param_groups:
            group["lr"] = cosine(t, idx.shape[0], args.lr)
        e_all = energy(X)
        p = torch.softmax(-e_all.detach(), 0)
        loss = energy(data[idx[t]]).mean() - (p * e_all).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return energy, {"evals": float(X.shape[0]), "wall": time.perf_counter() - t0}


def lattice_part(args, n_data):
    side = args.side
    truth = Ising(side=side, J=0.2, beta=2.0)
    J_true = ising_coupling(truth)
    d = side * side
    print(
        f"## {side}x{side} periodic lattice, J* = 0.2 A, D = {d}, {n_data} Gibbs samples "
        f"({args.sweeps} sweeps), batch {args.batch}, {args.iters} iterations, Adam lr {args.lr} "
        f"(J: x{args.lr_scale}), cosine\n"
    )
    rows: dict[str, list[tuple[float, dict]]] = {}
    for seed in range(args.seeds):
        data = ising_gibbs(J_true, n_data, sweeps=args.sweeps, generator=torch.Generator().manual_seed(seed))
        if d <= 20:  # the data sampler against the exact moments
            X = binary_states(d).double() * 2 - 1
            p = ising_log_probs(J_true).exp()
            m_exact = (X.T * p) @ X
            s = data.double() * 2 - 1
            m_data = s.T @ s / s.shape[0]
            ref = (
                ising_exact(J_true, n_data, generator=torch.Generator().manual_seed(100 + seed)).double() * 2
                - 1
            )
            m_ref = ref.T @ ref / ref.shape[0]
            print(
                f"seed {seed}: data moments max |err| vs exact {float((m_data - m_exact).abs().max()):.4f} "
                f"(exact i.i.d. draw of the same size: {float((m_ref - m_exact).abs().max()):.4f})"
            )
        idx = torch.randint(
            n_data, (args.iters, args.batch), generator=torch.Generator().manual_seed(50 + seed)
        )
        init = coupling_rmse(make_energy(side, seed, args.lr_scale).J, J_true)
        rows.setdefault("init", []).append((init, {"evals": 0.0, "wall": 0.0}))
        budget = None
        wall_eb = None
        for m in args.methods:
            if m == "ebgfn":
                eb, info = run_ebgfn(side, data, idx, seed, args)
                energy = eb.energy
                budget = info["evals"]
                wall_eb = info["wall"]
            elif m == "gibbs":
                k = max(1, round((budget or 4 * args.batch) / args.batch) - 1)
                energy, info = run_pcd(side, data, idx, seed, args, "gibbs", k)
                info["k"] = k
            elif m == "gwg":
                k = max(1, round((budget or 4 * args.batch) / (2 * args.batch)) - 1)
                energy, info = run_pcd(side, data, idx, seed, args, "gwg", k)
                info["k"] = k
            elif m == "gibbs-time":
                # time one iteration of 1 update, then scale to EB-GFN's wall-clock
                probe = GibbsChains(args.batch, d, torch.Generator().manual_seed(0))
                e = make_energy(side, seed, args.lr_scale)
                t0 = time.perf_counter()
                probe.run(e, 200)
                per = (time.perf_counter() - t0) / 200
                k = max(1, int((wall_eb or 0.1 * args.iters) / args.iters / per))
                energy, info = run_pcd(side, data, idx, seed, args, "gibbs", k)
                info["k"] = k
            elif m == "exact":
                energy, info = run_exact(side, data, idx, seed, args)
            else:
                raise SystemExit(f"unknown method {m}")
            r = coupling_rmse(energy.J, J_true)
            rows.setdefault(m, []).append((r, info))
            extra = f" k={info['k']}" if "k" in info else ""
            extra += f" acc={info['acceptance']:.2f}" if "acceptance" in info else ""
            print(
                f"seed {seed} {m:10s} log10 RMSE {math.log10(r):.3f}  evals/it {info['evals']:.0f}{extra}  "
                f"{info['wall']:.1f}s",
                flush=True,
            )
    print("\n| method | log10 RMSE(J) (mean ± sd, 3 seeds) | energy evals / iteration | wall s / run |")
    print("|---|---|---|---|")
    for m, vals in rows.items():
        lg = torch.tensor([math.log10(v[0]) for v in vals])
        sd = float(lg.std()) if len(vals) > 1 else 0.0
        ev = sum(v[1]["evals"] for v in vals) / len(vals)
        wall = sum(v[1]["wall"] for v in vals) / len(vals)
        k = vals[0][1].get("k")
        name = m + (f" (k={k})" if k is not None else "")
        print(f"| {name} | {float(lg.mean()):.3f} ± {sd:.3f} | {ev:.0f} | {wall:.1f} |")


def exact_part(args):
    side = 3
    truth = Ising(side=side, J=0.2, beta=2.0)
    J_true = ising_coupling(truth)
    d = side * side
    X = binary_states(d)
    pi = torch.softmax(truth.log_reward(X, torch.float64), 0)
    print(f"\n## 3x3 exact check: {2000} exact samples, {args.exact_iters} iterations\n")
    print(
        "| seed | method | log10 RMSE(J) | KL(pi‖p_J) | L1(pi, p_J) | KL(pi‖p_GFN) | L1(pi, p_GFN) | L1(p_GFN, p_J) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        data = ising_exact(J_true, 2000, generator=torch.Generator().manual_seed(seed))
        emp = torch.bincount((data * (2 ** torch.arange(d - 1, -1, -1))).sum(1), minlength=2**d).double()
        emp = emp / emp.sum()
        kl_e, l1_e = kl_l1(pi, emp)
        kl_txt = f"{kl_e:.4f}" if math.isfinite(kl_e) else "inf"
        print(f"| {seed} | data (empirical, control) | - | {kl_txt} | {l1_e:.4f} | - | - | - |")
        idx = torch.randint(
            2000, (args.exact_iters, args.batch), generator=torch.Generator().manual_seed(50 + seed)
        )
        eb, _ = run_ebgfn(side, data, idx, seed, args)
        m = eb.exact_metrics(truth)
        r = math.log10(coupling_rmse(eb.energy.J, J_true))
        print(
            f"| {seed} | ebgfn | {r:.3f} | {m['kl_model']:.4f} | {m['l1_model']:.4f} | {m['kl_gfn']:.4f} | "
            f"{m['l1_gfn']:.4f} | {m['l1_gfn_model']:.4f} |",
            flush=True,
        )
        for name in ("gibbs", "exact"):
            if name == "gibbs":
                energy, _ = run_pcd(side, data, idx, seed, args, "gibbs", 3)
            else:
                energy, _ = run_exact(side, data, idx, seed, args)
            p = torch.softmax(-energy(X).detach().double(), 0)
            kl, l1 = kl_l1(pi, p)
            r = math.log10(coupling_rmse(energy.J, J_true))
            print(f"| {seed} | {name} | {r:.3f} | {kl:.4f} | {l1:.4f} | - | - | - |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--exact-iters", type=int, default=600)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--n-data", default="2000,20000", help="training-set sizes of the lattice part")
    ap.add_argument("--sweeps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-scale", type=float, default=10.0)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--mh-steps", type=int, default=0, help="EB-GFN's K (0: D)")
    ap.add_argument(
        "--mh-warmup", type=int, default=0, help="iterations over which K rises from 1 (paper: lin_k)"
    )
    ap.add_argument("--methods", default="ebgfn,gibbs,gwg,exact", help="also: gibbs-time")
    ap.add_argument("--no-exact", action="store_true")
    ap.add_argument("--no-lattice", action="store_true")
    args = ap.parse_args()
    args.methods = args.methods.split(",")
    t0 = time.perf_counter()
    if not args.no_lattice:
        for n_data in (int(v) for v in args.n_data.split(",")):
            lattice_part(args, n_data)
    if not args.no_exact:
        exact_part(args)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s, torch {torch.__version__}, 1 thread")


if __name__ == "__main__":
    main()
