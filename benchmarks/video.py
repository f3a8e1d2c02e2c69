"""Causal video flows (issue 15, part 3; STARFlow-V's ideas): Jacobi against sequential decoding of a frame-causal
TARFlow, and the Frechet distance of frames with and without the flow-score denoiser.

    OMP_NUM_THREADS=1 nice -n 5 flowforge train sprites-starflow-v --out runs/video --seed 0
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/video.py --run runs/video [--n 512] [--seeds 0 1]

Model: the ``sprites-starflow-v`` recipe's defaults (8 frames of 8x8 bouncing Gaussian sprites, patch 2 =
16 tokens a frame; 2 shallow per-frame blocks of 1 layer, 1 deep block of 2 layers causal over the 128
tokens of a video, width 48; trained on x + 0.1 eps with the causal flow-score denoiser, EMA weights).
There is no peer library for video flows: the baselines are sequential (frame-by-frame, token-by-token)
decoding and no denoising; the control is a fresh draw of true videos.

1. Decoding: the same base noise decoded sequentially (one transformer call a token on a KV cache) and by
   Jacobi (all frames at once, ``jacobi_frames=None``; and frame by frame, ``jacobi_frames=1``), tol 1e-9;
   max |difference| over every pixel, transformer calls ("sequential passes"), wall time (best of
   ``--reps``, interleaved, one thread) at several batch sizes.
2. Quality: ``--n`` videos a seed (Jacobi), Frechet distance to the 512 held-out videos in fixed random-conv
   features of frames (``frame_fd``) and of consecutive frame pairs (``pair_fd``): raw samples, Tweedie with
   the flow's exact autograd score, the learned causal denoiser, and a fresh draw of true videos.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from flowforge.apps.video import frame_fd, moving_sprites, pair_fd
from flowforge.recipes import train_recipe
from flowforge.recipes.run_folder import load_run
from flowforge.recipes.video import video_reference


def decode(model, z, method, jacobi_frames=None):
    stats: dict = {}
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        x, _ = model.inverse(z, method=method, jacobi_tol=1e-9, jacobi_frames=jacobi_frames, stats=stats)
    return x, time.perf_counter() - t0, time.process_time() - c0, stats


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", default="runs/video", help="a trained sprites-starflow-v run (trained if absent)")
    p.add_argument("--n", type=int, default=512, help="model videos a seed for FD")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", default=None, help="write the numbers here")
    a = p.parse_args()
    torch.set_num_threads(1)
    try:
        model, config = load_run(a.run)
    except FileNotFoundError:
        train_recipe("sprites-starflow-v", out=a.run, seed=0, progress=False)
        model, config = load_run(a.run)
    out: dict = {"run": a.run, "decoding": {}, "fd": {}}

    print("## decoding (same noise; one thread; wall = best of reps, interleaved)")
    print(
        "| batch | variant | max abs diff vs seq | transformer calls | deep iters | wall s | cpu s | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    variants = (("sequential", None), ("jacobi", None), ("jacobi", 1))
    for b in a.batches:
        z = model.base.sample(b, torch.Generator().manual_seed(100 + b))
        best = {v: (float("inf"), float("inf")) for v in variants}
        res = {}
        for _ in range(a.reps):
            for v in variants:
                x, wall, cpu, stats = decode(model, z, *v)
                best[v] = (min(best[v][0], wall), min(best[v][1], cpu))
                res[v] = (x, stats)
        ref = res[("sequential", None)][0]
        rows = {}
        for v in variants:
            x, stats = res[v]
            name = v[0] if v[0] == "sequential" else f"jacobi (frames/chunk {v[1] or config['frames']})"
            row = {
                "max_abs_diff": float((x - ref).abs().max()),
                "calls": int(stats["transformer_calls"]),
                "deep_iters": stats.get("jacobi_iters", [None])[
                    : (config["frames"] // (v[1] or config["frames"]))
                ],
                "wall": best[v][0],
                "cpu": best[v][1],
                "speedup": best[("sequential", None)][0] / best[v][0],
            }
            rows[name] = row
            it = row["deep_iters"]
            print(
                f"| {b} | {name} | {row['max_abs_diff']:.1e} | {row['calls']} | "
                f"{sum(it) if it and it[0] is not None else '-'} | {row['wall']:.3f} | {row['cpu']:.3f} | "
                f"{row['speedup']:.2f}x |",
                flush=True,
            )
        out["decoding"][b] = rows

    print("\n## FD to the 512 held-out videos (random-conv features; mean over seeds, [min, max])")
    test = video_reference(config, 0, 0)
    keys = ("raw", "tweedie", "learned", "control")
    per = {k: {"frames": [], "pairs": []} for k in keys}
    for s in a.seeds:
        t0 = time.perf_counter()
        with torch.no_grad():
            x = model.sample(a.n, generator=torch.Generator().manual_seed(s), method="jacobi", denoise="none")
        vids = {
            "raw": x,
            "tweedie": model.apply_denoiser(x, "tweedie"),
            "learned": model.apply_denoiser(x, "learned"),
            "control": moving_sprites(
                a.n,
                frames=config["frames"],
                size=config["size"],
                max_sprites=config["max_sprites"],
                radius=config["radius"],
                speed=(config["speed_lo"], config["speed_hi"]),
                seed=60_000 + s,
            ),
        }
        for k, v in vids.items():
            per[k]["frames"].append(frame_fd(v, test))
            per[k]["pairs"].append(pair_fd(v, test))
        print(f"  seed {s}: {time.perf_counter() - t0:.0f}s", flush=True)
    print("| samples | FD frames | FD frame pairs |")
    print("|---|---|---|")
    for k in keys:
        f, q = per[k]["frames"], per[k]["pairs"]
        print(
            f"| {k} | {statistics.mean(f):.3f} [{min(f):.3f}, {max(f):.3f}] | "
            f"{statistics.mean(q):.3f} [{min(q):.3f}, {max(q):.3f}] |"
        )
    out["fd"] = per
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
