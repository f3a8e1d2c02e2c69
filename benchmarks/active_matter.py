"""Entropy production of active Ornstein-Uhlenbeck particles from a learned stationary score (issue 14, item 1).

Boffi & Vanden-Eijnden (arXiv:2309.12991) learn the stationary score of active particles and read the
entropy production rate (EPR) off the probability-flow velocity ``v = b - D s``. This script runs
``flowforge.apps.active_matter`` on the two set-ups of the method inventory (§3.3):

1. **One trapped AOUP** (``A = 1, gamma = 1, eps = 0.1, d = 2``) at three ``v0``: exact-transition samples
   (20k train, 20k test), a 2x64 MLP, denoising score matching on the SDE's increments (step 0.1,
   antithetic), 2,000 Adam steps. Reported: the learned score's EPR by both estimators against the closed
   form ``d v0^2 gamma / (eps (A + gamma))``, and the exact score's estimate on the same test states (the
   Monte-Carlo noise floor). Pass: within 5%.
2. **N interacting AOUPs in a periodic box** (``phi = 0.5, k = 2.5, r = 1, beta = 7.5, A = 0, gamma = 1,
   eps = 0.1``; EM with exact OU steps, ``dt = 0.01``, 512 chains, burn-in 10, thinning 0.5) for
   N = 4, 8, 16 and three ``v0``: a ParticleNet (width 32, 2 rounds), increment DSM, 1,000 Adam steps
   (batch 128). Reported: both estimators (exact divergence for N = 4, 8 Hutchinson probes above), their
   relative gap (pass: < 10%), the free-particle EPR ``N d v0^2 / eps`` for scale, and as a control the
   gap of the free-particle score ``(0, -g)`` on the same states (a wrong score the gap must expose).
   The per-particle decomposition is drawn for the largest N.

Run (about 15-20 minutes on one CPU thread)::

    PYTHONPATH=src python benchmarks/active_matter.py --figure benchmarks/figures/aoup_per_particle.png

``--quick`` shrinks everything for a smoke test. Everything is seeded; one thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from flowforge.apps.active_matter import (
    AOUP,
    StationaryScore,
    box_half_width,
    entropy_production,
    epr_closed_form,
    epr_heat,
    exact_score,
    join_state,
    simulate_stationary,
    split_state,
)
from flowforge.nn import MLP, ParticleNet


def train(model: StationaryScore, z: torch.Tensor, steps: int, batch: int, lr: float, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    t0 = time.time()
    for _ in range(steps):
        loss = model.loss(z[torch.randint(len(z), (batch,), generator=g)])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return time.time() - t0


def trap_part(args: argparse.Namespace) -> list[dict]:
    rows = []
    for i, v0 in enumerate(args.trap_v0):
        sys = AOUP(A=1.0, gamma=1.0, v0=v0, eps=0.1)
        g = torch.Generator().manual_seed(100 + i)
        ztr = simulate_stationary(sys, args.trap_n, generator=g).float()
        zte = simulate_stationary(sys, args.trap_n, generator=g)
        torch.manual_seed(i)
        model = StationaryScore(MLP(dim=(1, 2, 2), width=64, depth=2), sys, loss="dsm", dt=0.1)
        secs = train(model, ztr, args.trap_steps, 256, 1e-3, seed=i)
        ep = model.entropy_production(zte.float())
        ex = entropy_production(sys, zte, lambda s, sy=sys: exact_score(sy, s))
        truth = epr_closed_form(sys)
        rows.append(
            dict(
                v0=v0,
                closed=truth,
                learned_quad=ep.quadratic,
                learned_div=ep.divergence_form,
                exact_mc=ex.quadratic,
                se=ex.quadratic_se,
                err_quad=ep.quadratic / truth - 1,
                err_div=ep.divergence_form / truth - 1,
                err_exact=ex.quadratic / truth - 1,
                train_s=secs,
            )
        )
        print(json.dumps({"trap": rows[-1]}), flush=True)
    return rows


def box_part(args: argparse.Namespace) -> tuple[list[dict], dict]:
    rows, keep = [], {}
    for n in args.box_n:
        for j, v0 in enumerate(args.box_v0):
            sys = AOUP(n_particles=n, v0=v0, gamma=1.0, eps=0.1, k=2.5, box=box_half_width(n, 0.5))
            g = torch.Generator().manual_seed(1000 * n + j)
            t0 = time.time()
            z = simulate_stationary(
                sys, args.box_train + args.box_test, dt=1e-2, burn_in=10.0, thin=0.5, n_chains=512,
                generator=g, dtype=torch.float32,
            )  # fmt: skip
            z = z[torch.randperm(len(z), generator=g)]
            ztr, zte = z[: args.box_train], z[args.box_train :]
            sim_s = time.time() - t0
            torch.manual_seed(j)
            net = ParticleNet(2, 2, args.width, 2, box=sys.box)
            model = StationaryScore(net, sys, loss="dsm", dt=1e-2, method="em", baseline=args.baseline)
            secs = train(model, ztr, args.box_steps, 128, 2e-3, seed=j)
            div = "exact" if n <= 4 else "hutchinson"
            ep = model.entropy_production(
                zte, divergence=div, n_probes=8, generator=torch.Generator().manual_seed(j)
            )

            def free_score(s: torch.Tensor) -> torch.Tensor:
                x, gg = split_state(s)
                return join_state(torch.zeros_like(x), -gg)

            naive = entropy_production(sys, zte, free_score)
            eq = entropy_production(sys, zte, lambda s: torch.zeros_like(s), residual=True)
            # the score-free truth on many fresh stationary states (more samples: it is noisier)
            zbig = simulate_stationary(
                sys, args.heat_n, dt=1e-2, burn_in=10.0, thin=0.5, n_chains=1000,
                generator=torch.Generator().manual_seed(7 + 1000 * n + j), dtype=torch.float64,
            )  # fmt: skip
            heat, heat_se = epr_heat(sys, zbig)
            free = epr_closed_form(AOUP(n_particles=n, v0=v0, gamma=1.0, eps=0.1, box=sys.box))
            rows.append(
                dict(
                    N=n,
                    v0=v0,
                    quad=ep.quadratic,
                    quad_se=ep.quadratic_se,
                    div=ep.divergence_form,
                    div_se=ep.divergence_form_se,
                    gap=ep.relative_gap,
                    x_part=ep.x_part,
                    g_part=ep.g_part,
                    free=free,
                    naive_gap=naive.relative_gap,
                    eq_gap=eq.relative_gap,
                    heat=heat,
                    heat_se=heat_se,
                    baseline=args.baseline,
                    divergence=div,
                    sim_s=sim_s,
                    train_s=secs,
                )
            )
            print(json.dumps({"box": rows[-1]}), flush=True)
            if n == max(args.box_n) and j == len(args.box_v0) - 1:
                keep = dict(ep=ep, sys=sys, v0=v0)
    return rows, keep


def contacts(x: torch.Tensor, sys: AOUP) -> torch.Tensor:
    """Number of neighbours within 2r (minimum image) of every particle, ``(B, N)``."""
    r = x[:, :, None] - x[:, None]
    r = r - 2 * sys.box * torch.round(r / (2 * sys.box))
    d = r.norm(dim=-1) + torch.eye(x.shape[1]) * 1e9
    return (d < 2 * sys.radius).sum(-1)


def figure(path: Path, box_rows: list[dict], keep: dict) -> str:
    ep, sys = keep["ep"], keep["sys"]
    per = ep.per_particle.double()
    nc = contacts(ep.positions.float(), sys)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # no matplotlib: save the arrays instead
        out = path.with_suffix(".pt")
        torch.save({"per_particle": per, "positions": ep.positions, "contacts": nc, "rows": box_rows}, out)
        return f"matplotlib not installed; arrays saved to {out}"
    fig, axs = plt.subplots(1, 3, figsize=(14, 4.3))
    ax = axs[0]
    b = int(torch.argmax(per.std(1)))  # a snapshot with contrast
    pos = ep.positions[b]
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    disks = PatchCollection([Circle((float(px), float(py)), sys.radius) for px, py in pos.tolist()], cmap="viridis",
                            edgecolor="k")  # fmt: skip
    disks.set_array(per[b].numpy())
    ax.add_collection(disks)
    sc = disks
    ax.set_xlim(-sys.box, sys.box), ax.set_ylim(-sys.box, sys.box), ax.set_aspect(1)
    fig.colorbar(sc, ax=ax, label=r"$|v_i|^2_{D^{-1}}$ (per-particle EPR)")
    ax.set_title(f"one snapshot, N={sys.n_particles}, v0={keep['v0']}")
    ax = axs[1]
    ks = sorted(set(nc.flatten().tolist()))
    means = [float(per[nc == k].mean()) for k in ks]
    counts = [int((nc == k).sum()) for k in ks]
    ax.bar(ks, means, color="tab:blue")
    for k, m, c in zip(ks, means, counts, strict=True):
        ax.text(k, m, f"n={c}", ha="center", va="bottom", fontsize=7)
    ax.set_xlabel("contacts (neighbours within 2r)"), ax.set_ylabel("mean per-particle EPR")
    ax.set_title("per-particle EPR vs crowding")
    ax = axs[2]
    for n in sorted({r["N"] for r in box_rows}):
        rs = [r for r in box_rows if r["N"] == n]
        v = [r["v0"] for r in rs]
        ax.plot(v, [r["quad"] / n for r in rs], "o-", label=f"N={n} quadratic")
        ax.plot(v, [r["div"] / n for r in rs], "x--", label=f"N={n} divergence form")
        if "heat" in rs[0]:
            ax.plot(v, [r["heat"] / n for r in rs], "k*", ms=5, label="score-free (heat)" if n == min(
                r["N"] for r in box_rows) else None)  # fmt: skip
    vv = sorted({r["v0"] for r in box_rows})
    ax.plot(vv, [2 * v**2 / 0.1 for v in vv], "k:", label="free particles")
    ax.set_xlabel("v0"), ax.set_ylabel("EPR per particle"), ax.set_xscale("log"), ax.set_yscale("log")
    ax.legend(fontsize=7), ax.set_title("EPR per particle vs v0")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return f"figure written to {path}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--figure", default="benchmarks/figures/aoup_per_particle.png")
    p.add_argument("--json", default="", help="also write the results to this file")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    p.add_argument("--trap-v0", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--box-v0", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--box-n", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--parts", default="trap,box")
    p.add_argument("--box-steps", type=int, default=0, help="Adam steps of the box part (default 1000)")
    p.add_argument("--baseline", default="none", choices=["none", "equilibrium"],
                   help="the box score: the whole score, or a residual about the exact v0 = 0 score")  # fmt: skip
    a = p.parse_args()
    a.trap_n, a.trap_steps = (2000, 100) if a.quick else (20_000, 2000)
    given_steps = a.box_steps
    a.box_train, a.box_test, a.box_steps, a.width = (512, 256, 60, 16) if a.quick else (8192, 2048, 1000, 32)
    a.box_steps = given_steps or a.box_steps
    a.heat_n = 5000 if a.quick else 100_000
    torch.set_num_threads(1)
    t0 = time.time()
    out: dict = {}
    if "trap" in a.parts:
        out["trap"] = trap_part(a)
        print(
            "\n| v0 | closed form | learned: quadratic | learned: divergence form | exact score (MC floor) |"
        )
        print("|---|---|---|---|---|")
        for r in out["trap"]:
            print(
                f"| {r['v0']} | {r['closed']:.3f} | {r['learned_quad']:.3f} ({r['err_quad']:+.2%}) | "
                f"{r['learned_div']:.3f} ({r['err_div']:+.2%}) | {r['exact_mc']:.3f} ({r['err_exact']:+.2%}, se {r['se']:.3f}) |"
            )
    if "box" in a.parts:
        rows, keep = box_part(a)
        out["box"] = rows
        print(
            "\n| N | v0 | quadratic | divergence form | gap | score-free (heat) | x / g part | free N d v0^2/eps "
            "| gap of (0,-g) | gap of s_eq | train s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['N']} | {r['v0']} | {r['quad']:.2f} ± {r['quad_se']:.2f} | {r['div']:.2f} ± {r['div_se']:.2f} "
                f"| {r['gap']:.2%} | {r['heat']:.2f} ± {r['heat_se']:.2f} | {r['x_part']:.1f} / {r['g_part']:.2f} "
                f"| {r['free']:.1f} | {r['naive_gap']:.0%} "
                f"| {r['eq_gap']:.1%} | {r['train_s']:.0f} |"
            )
        print("\n" + figure(Path(a.figure), rows, keep))
    print(f"\ntotal {time.time() - t0:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
