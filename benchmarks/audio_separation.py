"""Language-queried audio separation (issue 15, item 2; FlowSep's idea): a latent rectified flow conditioned on
[mixture latent, query] against a ratio-mask regressor of about the same size, same data, batches, optimiser,
steps and thread; SI-SDR / SI-SDRi by query type (class token vs bag-of-words caption) on held-out mixtures,
with the mixture itself (floor), the ideal ratio mask (oracle) and the flow's autoencoder ceiling.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/audio_separation.py [--seeds 0 1] [--steps 1200] [--quick]
    ... --methods flow --ae-weighting uniform     # the flow with the autoencoder's plain L1 loss
    ... --merge A.json B.json                    # one table from several runs (e.g. one process a seed)

Flow variants (one trained model, three ways to sample): one draw (8 Euler steps); the same with the magnitude
capped at the mixture's (``clamp``); the mean magnitude of 4 draws, capped.

Data: ``make_mixtures`` (8 kHz, 0.496 s, harmonic stack / rising chirp / noise burst, two classes a mixture,
target-to-interferer ratio in [-5, 5] dB), 2,000 training mixtures (seed 1000 + s), 100 held-out (seed 50000),
each separated with a class query and with a caption query.
Both models train with flowforge's Trainer (AdamW, lr 2e-3, warm-up 50, clip 1, EMA 0.99, batch 16) from
the recipes' builders; the EMA weights are evaluated. Seconds per clip: separation wall time at one thread.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from flowforge.recipes.audio_separation import _DEFAULTS, audio_data, audio_evaluate, build_separator
from flowforge.train import train

FLOW_VARIANTS = ((1, 0), (1, 1), (4, 1))  # (draws averaged, clamp at the mixture's magnitude)
ROWS = ("si_sdri_class", "si_sdri_caption", "si_sdri", "si_sdr", "seconds_per_clip")


def fit(config: dict, data, seed: int) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(seed)
    model = build_separator(config)
    t = time.time()
    run = train(
        model,
        data,
        steps=int(config["steps"]),
        batch_size=int(config["batch_size"]),
        lr=float(config["lr"]),
        warmup=int(config["warmup"]),
        seed=seed,
        progress=False,
        threads=1,
        ema_decay=float(config["ema_decay"]),
    )
    seconds = time.time() - t
    print(f"  trained {type(model).__name__} ({config['steps']} steps) in {seconds:.0f}s", flush=True)
    return run.load_into(copy.deepcopy(model), ema=True).eval(), seconds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--ae-steps", type=int, default=600)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--eval-n", type=int, default=100)
    p.add_argument("--sample-steps", type=int, nargs="+", default=[8])
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--ae-res-blocks", type=int, default=_DEFAULTS["ae_res_blocks"])
    p.add_argument("--latent-channels", type=int, default=_DEFAULTS["latent_channels"])
    p.add_argument("--ae-weighting", default=_DEFAULTS["ae_weighting"], choices=("uniform", "energy"))
    p.add_argument("--methods", nargs="+", default=["flow", "mask"], choices=("flow", "mask"))
    p.add_argument("--out", default="benchmarks/RESULTS-audio_separation.json")
    p.add_argument("--merge", nargs="+", help="only print the table of these result files (e.g. one a seed)")
    a = p.parse_args()
    if a.merge:
        table([r for f in a.merge for r in json.loads(Path(f).read_text())["runs"]])
        return
    if a.quick:
        a.steps, a.ae_steps, a.n_train, a.eval_n, a.seeds = 20, 10, 64, 16, a.seeds[:1]
    torch.set_num_threads(1)
    base = {
        **_DEFAULTS,
        "steps": a.steps,
        "ae_steps": a.ae_steps,
        "n_train": a.n_train,
        "eval_n": a.eval_n,
        "ae_res_blocks": a.ae_res_blocks,
        "latent_channels": a.latent_channels,
        "ae_weighting": a.ae_weighting,
    }
    results: dict = {"args": vars(a), "runs": []}
    metrics = [
        "si_sdr",
        "si_sdri",
        "si_sdr_class",
        "si_sdri_class",
        "si_sdr_caption",
        "si_sdri_caption",
        "si_sdr_mixture",
        "si_sdr_oracle",
        "si_sdri_oracle",
        "si_sdri_autoencoder",
        "seconds_per_clip",
        "params",
    ]
    for seed in a.seeds:
        for method in a.methods:  # same seed: same data, same batch indices, same initial RNG state
            config = {**base, "method": method, "seed": seed}
            data, _ = audio_data(config)
            model, train_s = fit(config, data, seed)
            variants = (
                [(k, d, c) for k in a.sample_steps for d, c in FLOW_VARIANTS]
                if method == "flow"
                else [(0, 1, 0)]
            )
            for k, draws, clamp in variants:
                cfg = {**config, "draws": draws, "clamp": bool(clamp)}
                res = audio_evaluate(model, cfg, None, metrics, seed=0, steps=k or None)
                name = (
                    method
                    if method == "mask"
                    else f"flow ({a.ae_weighting} AE){', clamp' if clamp else ''}{f', mean of {draws}' if draws > 1 else ''}"
                )
                res.update(method=name, seed=seed, sample_steps=k or None, draws=draws, train_seconds=train_s)
                results["runs"].append(res)
                print(json.dumps(res), flush=True)
    Path(a.out).write_text(json.dumps(results, indent=1))
    table(results["runs"])


def table(runs: list[dict]) -> None:
    """Print the markdown table: mean ± std over seeds per method variant, then the controls."""

    print("\n| method | params | NFE | " + " | ".join(ROWS) + " |")
    print("|---" * (len(ROWS) + 3) + "|")
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["method"], r["sample_steps"]), []).append(r)
    for (method, k), rs in groups.items():
        cells = []
        for key in ROWS:
            vals = torch.tensor([r[key] for r in rs], dtype=torch.float64)
            fmt = "{:.4f}" if key == "seconds_per_clip" else "{:.2f}"
            cells.append(
                fmt.format(float(vals.mean())) + (f" ± {float(vals.std()):.2f}" if len(rs) > 1 else "")
            )
        nfe = (k or 1) * rs[0].get("draws", 1)
        print(f"| {method} | {rs[0]['params']} | {nfe} | " + " | ".join(cells) + " |")
    r0 = runs[0]
    print(
        f"| mixture (floor) | - | - | 0 | 0 | 0 | {r0['si_sdr_mixture']:.2f} | - |\n"
        f"| ideal ratio mask (oracle) | - | - | - | - | {r0['si_sdri_oracle']:.2f} | {r0['si_sdr_oracle']:.2f} | - |"
    )
    for (method, _), rs in groups.items():
        if method.startswith("flow") and ", " not in method:
            ae = torch.tensor([r["si_sdri_autoencoder"] for r in rs], dtype=torch.float64)
            spread = f" ± {float(ae.std()):.2f}" if len(rs) > 1 else ""
            print(
                f"| {method}: autoencoder ceiling (true target) | - | - | - | - | {float(ae.mean()):.2f}{spread} | - | - |"
            )


if __name__ == "__main__":
    main()
