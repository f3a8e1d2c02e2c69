"""Reward fine-tuning and FM-MLE on 2-D (issue 13, items 3 and 4). One thread, seeded, CPU.

Item 3 (``rl``): a flow pre-trained here on the eight Gaussians is fine-tuned toward a smooth mode
preference (modes 0 and 1, :class:`~flowforge.finetune.ModePreference`) by DanceGRPO, REINFORCE without
group normalisation, ORW-CFM-W2 and AC-Flow-style, at EQUAL reward evaluations (64 per step for every
method). At each budget: mean reward, the share of samples in the preferred modes, KL of the 8 mode
weights to the reference's, SWD to the reference's samples (same noise), and the distance of samples to
the nearest data mode (quality: stays within a stated factor of the reference's).

Item 4 (``mle``): FM-MLE fine-tunes the same pre-trained flow through its deployed N-step Euler map
(N = 1, 2, 4) toward the converged ODE map (RK4, 100 steps) of the pre-trained field; plain (FT) and
contractive residual (ResFT). End-point RMSE on held-out noise, and under perturbed noise
(x0 + 0.3 xi, and 1.5 x0).

    python benchmarks/reward_finetune.py            # both parts
    python benchmarks/reward_finetune.py rl         # item 3 only
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch

from flowforge import FlowMatching
from flowforge.data import toy2d
from flowforge.finetune import (
    FMMLE,
    ORWCFM,
    ACFlow,
    ContractiveResidual,
    DanceGRPO,
    ModePreference,
    euler_map,
    ode_pairs,
    policy_samples,
)
from flowforge.metrics import sliced_wasserstein
from flowforge.nn import MLP

ANG = torch.arange(8) * math.pi / 4
CENTRES = 2.0 * torch.stack([ANG.cos(), ANG.sin()], 1)
PREFERRED = [0, 1]


def pretrain(steps: int, seed: int = 0) -> FlowMatching:
    torch.manual_seed(seed)
    fm = FlowMatching(MLP(dim=2, width=128, depth=3), event_shape=(2,))
    data = toy2d("eight-gaussians", 50_000, seed=seed)
    opt = torch.optim.Adam(fm.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        idx = torch.randint(0, data.shape[0], (512,), generator=g)
        opt.zero_grad()
        fm.loss(data[idx]).backward()
        opt.step()
        sched.step()
    return fm.eval()


def mode_stats(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Mode weights (nearest centre) and the mean distance to the nearest centre."""
    d = torch.cdist(x.double(), CENTRES.double())
    near, k = d.min(1)
    w = torch.bincount(k, minlength=8).double() / x.shape[0]
    return w, float(near.mean())


def evaluate(flow: torch.nn.Module, ref_x: torch.Tensor, z: torch.Tensor, reward) -> dict[str, float]:
    x = policy_samples(flow, z, 16)
    w, dist = mode_stats(x)
    w_ref, _ = mode_stats(ref_x)
    kl = float((w * ((w + 1e-6) / (w_ref + 1e-6)).log()).sum())
    return {
        "reward": float(reward(x).mean()),
        "pref": float(w[PREFERRED].sum()),
        "w0": float(w[PREFERRED[0]]),
        "w1": float(w[PREFERRED[1]]),
        "kl_modes": kl,
        "swd_ref": sliced_wasserstein(x, ref_x, generator=torch.Generator().manual_seed(0)),
        "dist": dist,
    }


def make(method: str, flow: FlowMatching, reward, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    if method == "DanceGRPO":
        return DanceGRPO(flow, reward, groups=4, group_size=16, steps=10, eta=0.7, clip_eps=0.05,
                         inner_epochs=2, generator=g)  # fmt: skip
    if method == "DanceGRPO (iid noise)":
        return DanceGRPO(flow, reward, groups=4, group_size=16, steps=10, eta=0.7, clip_eps=0.05,
                         inner_epochs=2, same_noise=False, generator=g)  # fmt: skip
    if method == "DanceGRPO + KL 1":
        return DanceGRPO(flow, reward, groups=4, group_size=16, steps=10, eta=0.7, clip_eps=0.05,
                         inner_epochs=2, kl_coef=1.0, generator=g)  # fmt: skip
    if method == "DanceGRPO + KL 0.05":
        return DanceGRPO(flow, reward, groups=4, group_size=16, steps=10, eta=0.7, clip_eps=0.05,
                         inner_epochs=2, kl_coef=0.05, generator=g)  # fmt: skip
    if method == "REINFORCE (no group norm)":
        return DanceGRPO(flow, reward, groups=4, group_size=16, steps=10, eta=0.7, advantage="reinforce",
                         same_noise=False, generator=g)  # fmt: skip
    if method == "ORW-CFM-W2":
        return ORWCFM(flow, reward, alpha=1.0, beta=0.5, batch_size=64, sample_steps=8, refresh_every=10,
                      generator=g)  # fmt: skip
    if method == "ORW-CFM-W2 (alpha 0.1, beta 2)":
        return ORWCFM(flow, reward, alpha=0.1, beta=2.0, batch_size=64, sample_steps=8, refresh_every=10,
                      generator=g)  # fmt: skip
    if method == "AC-Flow-style (alpha 0.1, beta 2)":
        return ACFlow(flow, reward, alpha=0.1, beta=2.0, batch_size=64, sample_steps=8, refresh_every=10,
                      warmup=20, adv_clip=2.0, generator=g)  # fmt: skip
    if method == "AC-Flow-style":
        return ACFlow(flow, reward, alpha=1.0, beta=0.5, batch_size=64, sample_steps=8, refresh_every=10,
                      warmup=20, adv_clip=2.0, generator=g)  # fmt: skip
    raise ValueError(method)


def rl(args: argparse.Namespace, base: FlowMatching) -> None:
    reward = ModePreference.eight_gaussians(PREFERRED, scale=0.5)
    z = torch.randn(args.n_eval, 2, generator=torch.Generator().manual_seed(123))
    ref_x = policy_samples(base, z, 16)
    z2 = torch.randn(args.n_eval, 2, generator=torch.Generator().manual_seed(456))
    ref_x2 = policy_samples(base, z2, 16)
    data = toy2d("eight-gaussians", args.n_eval, seed=789)
    w_ref, dist_ref = mode_stats(ref_x)
    print(f"\n## Item 3: reward fine-tuning on eight Gaussians (prefer modes {PREFERRED}), lr {args.lr}")
    print(f"reference: reward {float(reward(ref_x).mean()):.3f}, preferred share {float(w_ref[PREFERRED].sum()):.3f}, "
          f"dist-to-mode {dist_ref:.3f}; data dist-to-mode {mode_stats(data)[1]:.3f}")  # fmt: skip
    floor = sliced_wasserstein(ref_x2, ref_x, generator=torch.Generator().manual_seed(0))
    print(f"noise floor: SWD(reference, reference fresh noise) = {floor:.4f}\n")
    budgets = [int(b) for b in args.budgets.split(",")]
    print(
        "| method | lr | reward evals | reward | preferred share (mode 0 / 1) | KL(modes) | SWD to ref | dist-to-mode | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    methods = args.methods.split(";")
    for spec in methods:
        method, _, lr_text = spec.partition("@")
        lr = float(lr_text) if lr_text else args.lr
        flow = copy.deepcopy(base).train()
        ft = make(method, flow, reward, args.seed)
        params = [p for p in ft.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        t0, done = time.time(), 0
        for budget in budgets:
            while ft.reward_evals < budget:
                opt.zero_grad()
                ft.loss().backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                done += 1
            e = evaluate(flow, ref_x, z, reward)
            print(f"| {method} | {lr:g} | {ft.reward_evals} | {e['reward']:.3f} | {e['pref']:.3f} ({e['w0']:.2f} / {e['w1']:.2f}) | {e['kl_modes']:.3f} | "
                  f"{e['swd_ref']:.4f} | {e['dist']:.3f} | {time.time() - t0:.0f} |", flush=True)  # fmt: skip


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).sum(1).mean().sqrt())


def mle(args: argparse.Namespace, base: FlowMatching) -> None:
    g = torch.Generator().manual_seed(args.seed + 7)
    x0_train = torch.randn(args.pairs, 2, generator=g)
    t0 = time.time()
    x1_train = ode_pairs(base.velocity, x0_train, steps=100)
    x0_test = torch.randn(4000, 2, generator=g)
    xi = torch.randn(4000, 2, generator=g)
    tests = {"clean": x0_test, "x0+0.3xi": x0_test + 0.3 * xi, "1.5 x0": 1.5 * x0_test}
    targets = {k: ode_pairs(base.velocity, v, steps=100) for k, v in tests.items()}
    fine = ode_pairs(base.velocity, x0_test, steps=200)
    print(
        f"\n## Item 4: FM-MLE, end-point RMSE against the converged map (RK4 100 steps; pairs {time.time() - t0:.0f}s)"
    )
    print(f"noise floor: RK4 100 vs 200 steps RMSE = {rmse(targets['clean'], fine):.2e}")
    data = toy2d("eight-gaussians", 4000, seed=99)
    print("\n| N | model | RMSE clean | RMSE x0+0.3xi | RMSE 1.5x0 | SWD to data | s |")
    print("|---|---|---|---|---|---|---|")
    for n in [int(s) for s in args.mle_steps.split(",")]:
        models = {"pre-trained": base}
        for kind in ("FT", "ResFT", "ResFT k_init 1"):
            torch.manual_seed(args.seed)
            if kind == "FT":
                model = copy.deepcopy(base).train()
            else:
                model = ContractiveResidual(base, gamma=0.9, k_init=1.0 if "k_init" in kind else 0.05)
            obj = FMMLE(model, steps=n)
            params = [p for p in obj.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=args.mle_lr if kind == "FT" else args.res_lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.mle_iters)
            gi = torch.Generator().manual_seed(args.seed + n)
            t1 = time.time()
            for _ in range(args.mle_iters):
                idx = torch.randint(0, args.pairs, (256,), generator=gi)
                opt.zero_grad()
                obj.loss((x0_train[idx], x1_train[idx])).backward()
                opt.step()
                sched.step()
            model.eval()
            models[kind] = model
            models[kind + "_s"] = time.time() - t1
        for kind in ("pre-trained", "FT", "ResFT", "ResFT k_init 1"):
            m = models[kind]
            with torch.no_grad():
                errs = [rmse(euler_map(m.velocity, tests[k], n), targets[k]) for k in tests]
                swd = sliced_wasserstein(
                    euler_map(m.velocity, x0_test, n), data, generator=torch.Generator().manual_seed(0)
                )
            secs = models.get(kind + "_s", 0.0)
            print(
                f"| {n} | {kind} | {errs[0]:.4f} | {errs[1]:.4f} | {errs[2]:.4f} | {swd:.4f} | {secs:.0f} |",
                flush=True,
            )
    swd_conv = sliced_wasserstein(targets["clean"], data, generator=torch.Generator().manual_seed(0))
    swd_floor = sliced_wasserstein(
        toy2d("eight-gaussians", 4000, seed=5), data, generator=torch.Generator().manual_seed(0)
    )
    print(f"\nSWD to data: converged map {swd_conv:.4f}; fresh data draw (noise floor) {swd_floor:.4f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("part", nargs="?", default="all", choices=["all", "rl", "mle"])
    p.add_argument("--pretrain", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--budgets", default="256,1024,4096,16384")
    p.add_argument(
        "--methods",
        default="DanceGRPO;DanceGRPO (iid noise);DanceGRPO + KL 0.05;DanceGRPO + KL 1;REINFORCE (no group norm);ORW-CFM-W2;ORW-CFM-W2@2e-3;"
        "ORW-CFM-W2 (alpha 0.1, beta 2)@2e-3;AC-Flow-style;AC-Flow-style@2e-3;AC-Flow-style (alpha 0.1, beta 2)@2e-3",
        help="';'-separated; METHOD@LR sets that method's learning rate",
    )
    p.add_argument("--n-eval", type=int, default=4000)
    p.add_argument("--pairs", type=int, default=20000)
    p.add_argument("--mle-steps", default="1,2,4")
    p.add_argument("--mle-iters", type=int, default=800)
    p.add_argument("--mle-lr", type=float, default=1e-3)
    p.add_argument("--res-lr", type=float, default=1e-2)
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    base = pretrain(args.pretrain, args.seed)
    print(
        f"pre-trained FM (MLP 128x3) on eight Gaussians for {args.pretrain} steps in {time.time() - t0:.0f}s"
    )
    if args.part in ("all", "rl"):
        rl(args, base)
    if args.part in ("all", "mle"):
        mle(args, base)
    print(f"\ntotal {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
