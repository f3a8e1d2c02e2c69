"""Traversal purity: potential-flow traversals (Song et al., ICML 2023) vs learned linear directions vs PCA.

On the blob decoder with known factors (``BlobDecoder``: x, y, size, brightness; latent codes mixed by a
fixed random rotation and coupling layers of strength ``bend``), K=4 traversals of T steps of latent
length <= ``max_step`` each. Per seed, in one process and with the same decoder, the same sequence of
code batches, the same classifier initialisation, optimiser (Adam), steps, batch, step cap and loss
weights:

- ``potential``: :class:`PotentialFlowTraversal` (wave residual with a Hutchinson Laplacian, initial
  condition, pair classifier, JVP change term);
- ``potential-noPDE`` (ablation): the same gradient-of-MLP traversals without the PDE and IC terms;
- ``linear``: :class:`LinearTraversal` (K learned global directions, same classifier + change term);

and, untrained, with the same step length and count: ``pca`` (principal axes of 4,096 codes), ``random``
directions (the noise floor) and the ``oracle`` (steps along one true factor: the ceiling). Metrics on 512
fresh codes: purity (share of a traversal's factor change in its main factor, averaged), factor gap
(mutual-information-gap-like), coverage (distinct main factors / K), classifier accuracy.

Run (one thread; ~10-15 minutes per bend on a shared CPU)::

    OMP_NUM_THREADS=1 python benchmarks/traversal.py --bend 1.0 --seeds 0 1 2 --steps 500
    OMP_NUM_THREADS=1 python benchmarks/traversal.py --bend 0.0 --seeds 0 1 2 --steps 500
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from flowforge.apps.traversal import (
    BlobDecoder,
    FactorOracle,
    FixedDirections,
    LinearTraversal,
    PotentialFlowTraversal,
    evaluate_traversals,
    pca_directions,
    random_directions,
)


def train(model, decoder, steps, batch, lr, seed):
    """Adam on ``model.loss`` with the seed's own sequence of code batches; seconds per step."""
    data = torch.Generator().manual_seed(1_000 + seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    t0 = time.perf_counter()
    for _ in range(steps):
        z = decoder.sample_codes(batch, generator=data)
        loss = model.loss(z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bend", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--traverse-steps", type=int, default=8)
    ap.add_argument("--max-step", type=float, default=0.3)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--jvp-weight", type=float, default=1.0)
    ap.add_argument("--eval", type=int, default=512)
    ap.add_argument("--no-ablation", action="store_true", help="skip the potential-noPDE row")
    ap.add_argument("--json", default="", help="also write the raw rows to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(1)

    decoder = BlobDecoder(16, args.bend, seed=0)
    common = dict(
        steps=args.traverse_steps, max_step=args.max_step, classifier_width=128, jvp_weight=args.jvp_weight
    )
    methods = {
        "potential": lambda: PotentialFlowTraversal(decoder, 4, args.k, width=args.width, **common),
        "potential-noPDE": lambda: PotentialFlowTraversal(
            decoder, 4, args.k, width=args.width, pde_weight=0.0, ic_weight=0.0, **common
        ),
        "linear": lambda: LinearTraversal(decoder, 4, args.k, **common),
    }
    if args.no_ablation:
        methods.pop("potential-noPDE")
    rows: dict[str, list[dict]] = {}
    for seed in args.seeds:
        codes = decoder.sample_codes(args.eval, generator=torch.Generator().manual_seed(10_000 + seed))
        for name, make in methods.items():
            torch.manual_seed(seed)  # same classifier initialisation for every method
            model = make()
            sec = train(model, decoder, args.steps, args.batch, args.lr, seed)
            model.eval()
            r = evaluate_traversals(model, decoder.factors, codes)
            r["accuracy"], r["sec_per_step"] = model.pair_accuracy(codes), sec
            rows.setdefault(name, []).append(r)
            print(
                f"seed {seed} {name:16s} purity {r['purity']:.3f} gap {r['factor_gap']:.3f} "
                f"cov {r['coverage']:.2f} acc {r['accuracy']:.3f} step {r['step_norm']:.3f} "
                f"{sec * 1e3:.0f} ms/step",
                flush=True,
            )
        fit = decoder.sample_codes(4096, generator=torch.Generator().manual_seed(20_000 + seed))
        refs = {
            "pca": FixedDirections(pca_directions(fit, args.k), args.traverse_steps, args.max_step),
            "random": FixedDirections(
                random_directions(args.k, 4, generator=torch.Generator().manual_seed(30_000 + seed)),
                args.traverse_steps,
                args.max_step,
            ),
            "oracle": FactorOracle(decoder, args.traverse_steps, args.max_step),
        }
        for name, ref in refs.items():
            r = evaluate_traversals(ref, decoder.factors, codes)
            r["accuracy"], r["sec_per_step"] = float("nan"), 0.0
            rows.setdefault(name, []).append(r)

    def ms(key, rs):
        v = [r[key] for r in rs]
        return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"

    print(
        f"\nbend={args.bend}, K={args.k}, T={args.traverse_steps}, max_step={args.max_step}, "
        f"steps={args.steps}, batch={args.batch}, seeds={args.seeds} (mean ± sd over seeds)\n"
    )
    print("| traversals | purity | factor gap | coverage | classifier acc | latent step | ms/step |")
    print("|---|---|---|---|---|---|---|")
    for name, rs in rows.items():
        acc = ms("accuracy", rs) if rs[0]["accuracy"] == rs[0]["accuracy"] else "-"
        print(
            f"| {name} | {ms('purity', rs)} | {ms('factor_gap', rs)} | {ms('coverage', rs)} | {acc} | "
            f"{ms('step_norm', rs)} | {statistics.mean(r['sec_per_step'] for r in rs) * 1e3:.0f} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
