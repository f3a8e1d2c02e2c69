"""Reward fine-tuning on images (issue 13, item 3, image part). One thread, seeded, CPU.

A trained class-conditional image flow (``flowforge train digits`` / ``mnist``; loaded from its run folder,
never written) is fine-tuned in its UNCONDITIONAL branch (the null label, learnt by label dropout; ``--label``
picks a class instead) toward the shipped classifier's probability of a target digit
(:class:`~flowforge.finetune.ClassifierReward`, ``--reward digit``) or toward more ink
(:class:`~flowforge.finetune.StrokeThickness`, ``--reward thickness``), by DanceGRPO, REINFORCE without group
normalisation, ORW-CFM-W2 and AC-Flow-style, at EQUAL reward evaluations (``--batch`` per rollout round for
every method). At each budget, on ``--n-eval`` samples of the fine-tuned branch from FIXED noise (Euler,
``--eval-steps``): mean reward, the share classified as the target, FD to the test split and to the test
images of the target digit, FD to the reference model's own samples (same noise), and KL of the classifier's
class histogram to the reference's (a cheap stand-in for KL to the reference). FD is in the shipped
classifier's features (``flowforge.metrics.image_features``), samples quantised as ``flowforge eval`` does.
Note: the reward and the FD features come from the SAME classifier.

Controls: the reference (base) row, the base's own class-conditional branch of the target digit (what a
perfect fine-tune of the unconditional branch toward the digit could look like), and the FD floor: FD of ``--n-eval`` real TRAIN images to the test split
(and of the target digit's train images to its test images).

    python benchmarks/reward_finetune_images.py --images digits
    python benchmarks/reward_finetune_images.py --images mnist --budgets 256,512,1024
    python benchmarks/reward_finetune_images.py --plot LOG.md [LOG2.md ...] --png benchmarks/figures/x.png
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch

from flowforge.data import quantize
from flowforge.finetune import ORWCFM, ACFlow, ClassifierReward, DanceGRPO, StrokeThickness
from flowforge.metrics.frechet import frechet_distance, gaussian_stats
from flowforge.metrics.image_features import classifier_features, load_classifier
from flowforge.recipes.images import N_CLASSES, image_set
from flowforge.recipes.run_folder import load_run


def to_unit(q: torch.Tensor, levels: int) -> torch.Tensor:
    return q.float() * (2.0 / (levels - 1)) - 1.0


def make(
    method: str, flow: torch.nn.Module, reward, args: argparse.Namespace, cond_sampler
) -> torch.nn.Module:
    g = torch.Generator().manual_seed(args.seed)
    b, k = args.batch, args.sde_steps
    grpo = dict(groups=b // 16, group_size=16, steps=k, eta=args.eta, clip_eps=0.05, inner_epochs=2,
                cond_sampler=cond_sampler, generator=g)  # fmt: skip
    orw = dict(batch_size=b, sample_steps=k, refresh_every=10, cond_sampler=cond_sampler, generator=g)
    if method == "DanceGRPO":
        return DanceGRPO(flow, reward, **grpo)
    if method.startswith("DanceGRPO + KL "):
        return DanceGRPO(flow, reward, **grpo, kl_coef=float(method.removeprefix("DanceGRPO + KL ")))
    if method == "REINFORCE (no group norm)":
        return DanceGRPO(flow, reward, **{**grpo, "inner_epochs": 1, "clip_eps": 1e-2}, advantage="reinforce",
                         same_noise=False)  # fmt: skip
    if method == "ORW-CFM-W2":
        return ORWCFM(flow, reward, alpha=1.0, beta=0.5, **orw)
    if method == "ORW-CFM-W2 (alpha 0.1, beta 5)":
        return ORWCFM(flow, reward, alpha=0.1, beta=5.0, **orw)
    if method == "AC-Flow-style":
        return ACFlow(flow, reward, alpha=1.0, beta=0.5, warmup=5, adv_clip=2.0, **orw)
    if method == "AC-Flow-style (alpha 0.1, beta 5)":
        return ACFlow(flow, reward, alpha=0.1, beta=5.0, warmup=5, adv_clip=2.0, **orw)
    raise ValueError(f"unknown method {method!r}")


class Scorer:
    """Samples of the fine-tuned branch from fixed noise, and their metrics against fixed references."""

    def __init__(
        self, config: dict, net: torch.nn.Module, reward, args: argparse.Namespace, label: int
    ) -> None:
        self.levels, self.net, self.reward, self.args = int(config["levels"]), net, reward, args
        self.target, self.label = args.target, label
        shape = tuple(config["image_shape"])
        self.z = torch.randn(args.n_eval, *shape, generator=torch.Generator().manual_seed(123))
        test, train = image_set(config, "test"), image_set(config, "train")
        self.test_stats = self.stats(to_unit(test.x, self.levels))
        self.test_t_stats = self.stats(to_unit(test.x[test.y == self.target], self.levels))
        gi = torch.Generator().manual_seed(7)
        tr = train.x[torch.randperm(len(train.x), generator=gi)[: args.n_eval]]
        tr_t = train.x[train.y == self.target][: args.n_eval]
        self.floor = frechet_distance(self.stats(to_unit(tr, self.levels)), self.test_stats)
        self.floor_t = frechet_distance(self.stats(to_unit(tr_t, self.levels)), self.test_t_stats)
        self.ref_stats: tuple | None = None
        self.ref_hist: torch.Tensor | None = None

    def stats(self, x: torch.Tensor) -> tuple:
        return gaussian_stats(classifier_features(x, classifier=self.net))

    def samples(self, flow: torch.nn.Module) -> torch.Tensor:
        was = flow.training
        flow.eval()
        parts = []
        with torch.no_grad():
            for i in range(0, len(self.z), 250):
                z = self.z[i : i + 250]
                y = torch.full((len(z),), self.label, dtype=torch.long)
                parts.append(flow.generator().sample(len(z), cond={"y": y}, x0=z, solver="euler",
                                                     steps=self.args.eval_steps))  # fmt: skip
        flow.train(was)
        return to_unit(quantize(torch.cat(parts).clamp(-1, 1), self.levels), self.levels)

    def __call__(self, flow: torch.nn.Module) -> dict[str, float]:
        x = self.samples(flow)
        with torch.no_grad():
            r = float(self.reward(x).mean())
            cls = self.net(x).argmax(1)
        hist = (torch.bincount(cls, minlength=10).double() + 0.5) / (len(cls) + 5.0)
        st = self.stats(x)
        if self.ref_stats is None:
            self.ref_stats, self.ref_hist = st, hist
        kl = float((hist * (hist / self.ref_hist).log()).sum())
        return {
            "reward": r,
            "target_share": float((cls == self.target).double().mean()),
            "fd": frechet_distance(st, self.test_stats),
            "fd_target": frechet_distance(st, self.test_t_stats),
            "fd_ref": frechet_distance(st, self.ref_stats),
            "kl_classes": kl,
            "ink": float(StrokeThickness()(x).mean()),
        }


def row(name: str, lr: str, evals: int | str, e: dict[str, float], secs: float) -> str:
    return (f"| {name} | {lr} | {evals} | {e['reward']:.3f} | {e['target_share']:.3f} | {e['fd']:.2f} | "
            f"{e['fd_target']:.2f} | {e['fd_ref']:.2f} | {e['kl_classes']:.3f} | {e['ink']:.3f} | {secs:.0f} |")  # fmt: skip


def plot(logs: list[str], png: str) -> None:
    """Reward against KL of the class histogram, FD to the reference and FD to the target digit (printed tables)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[tuple[float, ...]]] = {}
    for log in logs:
        for line in Path(log).read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 11 or not cells[2].isdigit():
                continue
            name = cells[0] if cells[1] in ("-", f"{1e-4:g}") else f"{cells[0]} @{cells[1]}"
            curves.setdefault(name, []).append(tuple(float(c) for c in cells[2:10]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = ((6, "KL(class histogram || reference's)", "linear"), (5, "FD to the reference's samples", "symlog"),
              (4, "FD to the test images of the target digit", "log"))  # fmt: skip
    ref = curves.pop("reference (base)", None)
    ctrl = {k: curves.pop(k) for k in list(curves) if k.startswith("control")}
    for ax, (col, label, scale) in zip(axes, panels, strict=True):
        for name, pts in curves.items():
            pts = (ref or []) + sorted(pts)
            ax.plot([q[col] for q in pts], [q[1] for q in pts], "o-", label=name)
        for name, pts in ctrl.items():
            ax.plot([pts[0][col]], [pts[0][1]], "k*", ms=12, label=name)
        ax.set(xlabel=label, ylabel="mean reward", xscale=scale)
    if ref:  # the least KL of any class histogram whose target share is s (the reference tilted): a bound
        p0 = ref[0][2]
        sh = [p0 + (0.995 - p0) * i / 50 for i in range(51)]
        kl = [q * math.log(q / p0) + (1 - q) * math.log((1 - q) / (1 - p0)) for q in sh]
        axes[0].plot(kl, sh, "k--", lw=1, label="least KL at that target share")
    axes[0].legend(fontsize=7)
    heads = [ln for ln in Path(logs[0]).read_text().splitlines() if ln.startswith("## ")]
    fig.suptitle(heads[0][3:] if heads else Path(logs[0]).name, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--plot", nargs="+", help="draw the curves of these printed tables (needs --png) and stop")
    p.add_argument("--png", default=None)
    p.add_argument("--images", choices=["digits", "mnist"], default="digits")
    p.add_argument("--run", default=None, help="base run folder (default /work/runs/IMAGES); read only")
    p.add_argument("--reward", choices=["digit", "thickness"], default="digit")
    p.add_argument("--target", type=int, default=3)
    p.add_argument("--label", default="null", help="'null' (unconditional branch) or a class 0..9")
    p.add_argument("--budgets", default="256,1024,2048")
    p.add_argument(
        "--batch", type=int, default=32, help="reward evaluations per rollout round (multiple of 16)"
    )
    p.add_argument(
        "--sde-steps", type=int, default=8, help="SDE steps of GRPO, Heun steps of ORW/AC policy samples"
    )
    p.add_argument("--eta", type=float, default=0.7)
    p.add_argument("--eval-steps", type=int, default=8)
    p.add_argument("--n-eval", type=int, default=500)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--methods",
        default="DanceGRPO;REINFORCE (no group norm);ORW-CFM-W2;AC-Flow-style",
        help="';'-separated; METHOD@LR sets that method's learning rate",
    )
    args = p.parse_args()
    if args.plot:
        plot(args.plot, args.png or "reward_finetune_images.png")
        return
    torch.set_num_threads(1)
    t0 = time.time()
    run = Path(args.run or f"/work/runs/{args.images}")
    base, config = load_run(run)
    base = base.eval()
    net = load_classifier(args.images)
    label = N_CLASSES if args.label == "null" else int(args.label)
    reward = ClassifierReward(net, args.target) if args.reward == "digit" else StrokeThickness()

    def cond_sampler(n: int, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        return {"y": torch.full((n,), label, dtype=torch.long)}

    scorer = Scorer(config, net, reward, args, label)
    ref = scorer(base)
    what = f"p(digit {args.target})" if args.reward == "digit" else "mean ink"
    branch = "unconditional (null label)" if label == N_CLASSES else f"label {label}"
    print(f"## {args.images}: reward {what}, {branch} branch; base {run} ({config.get('steps')} steps, "
          f"{sum(q.numel() for q in base.parameters()) / 1e6:.2f}M parameters)")  # fmt: skip
    print(f"batch {args.batch} reward evals a round, SDE/policy steps {args.sde_steps}, eta {args.eta}; eval "
          f"{args.n_eval} samples, Euler {args.eval_steps} steps, fixed noise; setup {time.time() - t0:.0f}s")  # fmt: skip
    print(f"FD floor ({args.n_eval} real train images vs test): all {scorer.floor:.2f}, digit {args.target} "
          f"{scorer.floor_t:.2f}\n")  # fmt: skip
    print("| method | lr | reward evals | reward | target share | FD data | FD target digit | FD to ref | "
          "KL classes | ink | s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(row("reference (base)", "-", 0, ref, 0.0), flush=True)
    if args.reward == "digit" and label == N_CLASSES:  # control: the base's own branch of the target digit
        scorer.label = args.target
        print(row(f"control: base, label-{args.target} branch", "-", 0, scorer(base), 0.0), flush=True)
        scorer.label = label
    budgets = [int(b) for b in args.budgets.split(",")]
    for spec in args.methods.split(";"):
        method, _, lr_text = spec.partition("@")
        lr = float(lr_text) if lr_text else args.lr
        flow = copy.deepcopy(base).train()
        ft = make(method, flow, reward, args, cond_sampler)
        params = [q for q in ft.parameters() if q.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        t1, train_s = time.time(), 0.0
        for budget in budgets:
            t2 = time.time()
            while ft.reward_evals < budget:
                opt.zero_grad()
                loss = ft.loss()
                if not torch.isfinite(loss):
                    raise RuntimeError(f"{method}: non-finite loss at {ft.reward_evals} reward evaluations")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
            train_s += time.time() - t2
            print(row(method, f"{lr:g}", ft.reward_evals, scorer(flow), train_s), flush=True)
        del ft, flow, opt
        print(f"<!-- {method}: {time.time() - t1:.0f}s with evaluation -->", flush=True)
    print(f"\ntotal {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
