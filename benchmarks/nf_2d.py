"""Normalizing flows on 2-D toys: flowforge vs zuko vs normflows at matched size and equal budget.

Every model is trained by maximum likelihood on standardised data (``flowforge.data.Standardizer``
fitted on the training set) with the same loop: Adam (lr 1e-3) with a cosine schedule, batch 256
drawn with replacement from 20k training points by one seeded generator per seed (so every model
sees the same batches), ``--steps`` steps (default 3000), ``torch.set_num_threads(1)``, float32.
The models of one dataset and seed are trained in lockstep (they take turns step by step) so that
load from other processes hits them alike. Scored by the test NLL on 10k held-out points in nats/sample, reported in the raw data space:
``NLL_raw = NLL_std + sum(log sd)``. Timings are the mean wall time of a training step.

Models (5 transforms, MADE hidden (64, 64) unless said; parameter counts are matched per family):

- ``zuko-nsf``: ``zuko.flows.NSF(2, transforms=5, hidden_features=(64, 64))`` (8 bins, bound 5).
- ``zuko-maf``: ``zuko.flows.MAF(2, transforms=5, hidden_features=(64, 64))``.
- ``normflows-nsf``: normflows' ``MaskedPiecewiseRationalQuadraticAutoregressive`` (8 bins, linear
  tails at 5, plain MADE with one hidden block, identity init) used in MAF direction (one pass for the
  density; the raw layer's ``forward`` is the density direction, so the wrapper swaps it into
  normflows' latent-to-data convention), with a swap permutation between layers.
- ``flowforge-nsf``: ``flowforge.normalizing.NSF(2)``; ``flowforge-maf``: ``MAF(2)``.
- ``flowforge-tarflow``: ``flowforge.normalizing.tarflow.TARFlow`` if importable, with the width
  chosen to match the NSF parameter count (see :func:`build_tarflow`).

Run:
    python benchmarks/nf_2d.py                                   # defaults: 3000 steps, seeds 0 1 2
    python benchmarks/nf_2d.py --steps 300 --seeds 0             # smoke run
    python benchmarks/nf_2d.py --datasets moons --out moons.json # one dataset, keep the raw results
    python benchmarks/nf_2d.py --table a.json b.json             # print the table of saved results
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from flowforge.data import Standardizer, toy2d
from flowforge.normalizing import MAF, NSF

N_TRAIN, N_TEST = 20_000, 10_000
MODELS = ("zuko-nsf", "zuko-maf", "normflows-nsf", "flowforge-nsf", "flowforge-maf", "flowforge-tarflow")

LogProb = Callable[[Tensor], Tensor]


# ----------------------------------------------------------------------------------------------- models


def build_zuko(kind: str) -> tuple[nn.Module, LogProb, Callable[[int], Tensor]]:
    import zuko

    cls = zuko.flows.NSF if kind == "nsf" else zuko.flows.MAF
    flow = cls(2, transforms=5, hidden_features=(64, 64))
    return flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,))


def build_normflows_nsf() -> tuple[nn.Module, LogProb, Callable[[int], Tensor]]:
    import normflows as nf
    from normflows.flows.neural_spline.autoregressive import MaskedPiecewiseRationalQuadraticAutoregressive

    class MAFDirection(nf.flows.Flow):
        """normflows' flows map latent -> data in ``forward``; the raw layer's one-pass ``forward`` is
        data -> latent, so it serves as ``inverse`` here (as normflows' own wrapper does)."""

        def __init__(self) -> None:
            super().__init__()
            self.mprqat = MaskedPiecewiseRationalQuadraticAutoregressive(
                features=2,
                hidden_features=64,
                num_bins=8,
                tails="linear",
                tail_bound=5.0,
                num_blocks=1,
                use_residual_blocks=False,
                init_identity=True,
            )

        def forward(self, z: Tensor, context=None) -> tuple[Tensor, Tensor]:
            x, ld = self.mprqat.inverse(z, context=context)
            return x, ld.view(-1)

        def inverse(self, x: Tensor, context=None) -> tuple[Tensor, Tensor]:
            z, ld = self.mprqat(x, context=context)
            return z, ld.view(-1)

    layers: list[nn.Module] = []
    for _ in range(5):
        layers += [MAFDirection(), nf.flows.Permute(2, mode="swap")]
    flow = nf.NormalizingFlow(q0=nf.distributions.DiagGaussian(2, trainable=False), flows=layers[:-1])
    return flow, flow.log_prob, lambda n: flow.sample(n)[0]


def build_tarflow(target_params: int) -> tuple[nn.Module, LogProb, Callable[[int], Tensor]]:
    """TARFlow at about ``target_params`` parameters (the width is the knob; 4 blocks of 2 layers).

    Another part of flowforge; if its constructor changes, this is the one place to adapt.
    """
    from flowforge.normalizing.tarflow import TARFlow  # raises ImportError when not there yet

    best = None
    for width in range(8, 129, 4):
        m = TARFlow(dim=2, blocks=4, width=width, layers=2)
        n = sum(p.numel() for p in m.parameters())
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (width, n)
    torch.manual_seed(torch.initial_seed())  # re-seed so the chosen model's init follows the run seed
    flow = TARFlow(dim=2, blocks=4, width=best[0], layers=2)
    return flow, flow.log_prob, lambda n: flow.sample(n)


def build(name: str) -> tuple[nn.Module, LogProb, Callable[[int], Tensor]]:
    if name == "zuko-nsf":
        return build_zuko("nsf")
    if name == "zuko-maf":
        return build_zuko("maf")
    if name == "normflows-nsf":
        return build_normflows_nsf()
    if name == "flowforge-nsf":
        f = NSF(2, transforms=5, hidden=(64, 64), bins=8, bound=5.0)
        return f, f.log_prob, lambda n: f.sample(n)
    if name == "flowforge-maf":
        f = MAF(2, transforms=5, hidden=(64, 64))
        return f, f.log_prob, lambda n: f.sample(n)
    if name == "flowforge-tarflow":
        return build_tarflow(36_710)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


# ----------------------------------------------------------------------------------------------- runs


@torch.no_grad()
def nll(log_prob: LogProb, x: Tensor, chunk: int = 2_000) -> float:
    return -torch.cat([log_prob(c) for c in x.split(chunk)]).double().mean().item()


def run_seed(names: list[str], dataset: str, seed: int, args: argparse.Namespace) -> list[dict]:
    """Train every model in ``names`` on one dataset and seed, in lockstep.

    The models take turns step by step (same batch for all), so load from other processes on a shared
    machine hits them alike and the per-step timings stay comparable.
    """
    train = toy2d(dataset, N_TRAIN, seed=10_000 + seed)
    test = toy2d(dataset, N_TEST, seed=20_000 + seed)
    sc = Standardizer.fit(train)
    xtr, xte = sc.forward(train), sc.forward(test)
    log_sd = torch.log(sc.std).sum().item()

    runs = []
    for name in names:
        torch.manual_seed(seed)
        try:
            model, log_prob, sample = build(name)
        except ImportError as e:
            print(f"skip {name}: {e}", flush=True)
            continue
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
        runs.append(
            {
                "name": name,
                "model": model.train(),
                "log_prob": log_prob,
                "sample": sample,
                "opt": opt,
                "sched": sched,
                "secs": 0.0,
                "losses": [],
            }
        )
    g = torch.Generator().manual_seed(seed)
    for _ in range(args.steps):
        xb = xtr[torch.randint(0, N_TRAIN, (args.batch,), generator=g)]
        for r in runs:
            t0 = time.perf_counter()
            loss = -r["log_prob"](xb).mean()
            r["opt"].zero_grad(set_to_none=True)
            loss.backward()
            r["opt"].step()
            r["sched"].step()
            r["secs"] += time.perf_counter() - t0
            r["losses"].append(loss.item())

    out = []
    for r in runs:
        r["model"].eval()
        nll_std = nll(r["log_prob"], xte)
        t1 = time.perf_counter()
        with torch.no_grad():
            xs = r["sample"](10_000)
        out.append(
            {
                "model": r["name"],
                "dataset": dataset,
                "seed": seed,
                "params": sum(p.numel() for p in r["model"].parameters() if p.requires_grad),
                "ms_per_step": 1e3 * r["secs"] / args.steps,
                "nll_std": nll_std,
                "nll_raw": nll_std + log_sd,
                "sum_log_sd": log_sd,
                "final_train_loss": statistics.fmean(r["losses"][-100:]),
                "sample_10k_s": time.perf_counter() - t1,
                "samples_finite": bool(torch.isfinite(xs).all()),
            }
        )
    return out


# ----------------------------------------------------------------------------------------------- report


def table(results: list[dict]) -> str:
    lines = []
    for ds in dict.fromkeys(r["dataset"] for r in results):
        rows = {}
        for r in results:
            if r["dataset"] == ds:
                rows.setdefault(r["model"], []).append(r)
        stats = {}
        for m, rs in rows.items():
            v = [r["nll_raw"] for r in rs]
            stats[m] = {
                "params": rs[0]["params"],
                "ms": statistics.fmean(r["ms_per_step"] for r in rs),
                "mean": statistics.fmean(v),
                "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
                "n": len(v),
                "samp": statistics.fmean(r["sample_10k_s"] for r in rs),
            }
        zuko = [m for m in stats if m.startswith("zuko")]
        ref = min(zuko, key=lambda m: stats[m]["mean"]) if zuko else None
        lines.append(f"\n{ds}  (test NLL, nats/sample, raw data space; lower is better)")
        if ref:
            lines.append(f"reference = zuko's best: {ref}")
        hdr = f"{'model':<18} {'params':>7} {'ms/step':>8} {'NLL mean ± sd':>18} {'seeds':>5} {'ΔNLL vs ref':>11} {'time ×ref':>9} {'sample 10k s':>12}"
        lines += [hdr, "-" * len(hdr)]
        for m, s in sorted(stats.items(), key=lambda kv: kv[1]["mean"]):
            d = f"{s['mean'] - stats[ref]['mean']:+.4f}" if ref else "-"
            tr = f"{s['ms'] / stats[ref]['ms']:.2f}" if ref else "-"
            lines.append(
                f"{m:<18} {s['params']:>7} {s['ms']:>8.2f} {s['mean']:>9.4f} ± {s['sd']:<6.4f} {s['n']:>5} {d:>11} {tr:>9} {s['samp']:>12.3f}"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--datasets", nargs="+", default=["moons", "checkerboard"])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the per-run results to this JSON file")
    p.add_argument(
        "--table", nargs="+", default=None, metavar="JSON", help="only print the table of saved results"
    )
    args = p.parse_args()

    if args.table:
        results = [r for f in args.table for r in json.load(open(f))["results"]]
        print(table(results))
        return

    torch.set_num_threads(args.threads)
    import normflows
    import zuko

    print(
        f"torch {torch.__version__}, zuko {zuko.__version__}, normflows {normflows.__version__}, python "
        f"{platform.python_version()}, threads {torch.get_num_threads()}; steps {args.steps}, batch "
        f"{args.batch}, lr {args.lr} cosine, seeds {args.seeds}",
        flush=True,
    )
    results: list[dict] = []
    for ds in args.datasets:
        for seed in args.seeds:
            for r in run_seed(args.models, ds, seed, args):
                results.append(r)
                print(
                    f"{ds:<13} {r['model']:<18} seed {seed}: params {r['params']}, {r['ms_per_step']:.2f} ms/step, "
                    f"NLL raw {r['nll_raw']:.4f} (std {r['nll_std']:.4f})",
                    flush=True,
                )
            if args.out:  # keep partial results
                with open(args.out, "w") as f:
                    json.dump(
                        {"args": vars(args), "torch": torch.__version__, "results": results}, f, indent=1
                    )
    print(table(results))
    if any(not math.isfinite(r["nll_raw"]) for r in results):
        print("warning: some runs diverged (non-finite NLL)")


if __name__ == "__main__":
    main()
