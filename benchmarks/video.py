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
   Jacobi (all frames at once, ``jacobi_frames=None``; and frame by frame, ``jacobi_frames=1``) at the
   tolerances ``--tols``, in float32 and float64 (the model cast); max |difference| over every pixel,
   transformer calls ("sequential passes"), wall and CPU time (best of ``--reps``, interleaved, one
   thread) at several batch sizes; the rounding floor is sequential float32 against float64.
2. Quality: ``--n`` videos a seed (Jacobi), Frechet distance to the 512 held-out videos in fixed random-conv
   features of frames (``frame_fd``) and of consecutive frame pairs (``pair_fd``): raw samples, Tweedie with
   the flow's exact autograd score, the learned causal denoiser, and a fresh draw of true videos.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from flowforge.apps.video import frame_fd, moving_sprites, pair_fd
from flowforge.recipes import train_recipe
from flowforge.recipes.run_folder import load_run
from flowforge.recipes.video import video_reference


def decode(model, z, method, jacobi_frames=None, tol=1e-9):
    stats: dict = {}
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        x, _ = model.inverse(z, method=method, jacobi_tol=tol, jacobi_frames=jacobi_frames, stats=stats)
    return x, time.perf_counter() - t0, time.process_time() - c0, stats


def decoding(model, config, a, out) -> None:
    print("## decoding (same noise; one thread; wall and cpu = best of reps, interleaved)")
    print(
        "| dtype | batch | variant | tol | max abs diff vs seq | calls | deep iters | wall s | cpu s | cpu speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    frames = int(config["frames"])
    variants = [("sequential", None, 0.0)] + [("jacobi", jf, tol) for tol in a.tols for jf in (None, 1)]
    models = {"float32": model, "float64": copy.deepcopy(model).double()}
    for b in a.batches:
        z = model.base.sample(b, torch.Generator().manual_seed(100 + b))
        refs = {}
        for dtype in a.dtypes:
            m, zz = models[dtype], z.to(getattr(torch, dtype))
            best = {v: (float("inf"), float("inf")) for v in variants}
            res = {}
            for _ in range(a.reps):
                for v in variants:
                    x, wall, cpu, stats = decode(m, zz, *v)
                    best[v] = (min(best[v][0], wall), min(best[v][1], cpu))
                    res[v] = (x, stats)
            ref = refs[dtype] = res[variants[0]][0]
            for v in variants:
                x, stats = res[v]
                name = v[0] if v[0] == "sequential" else f"jacobi, {v[1] or frames} frame(s) a chunk"
                iters = stats.get("jacobi_iters", [])[: frames // (v[1] or frames)]
                row = {
                    "dtype": dtype,
                    "batch": b,
                    "variant": name,
                    "tol": v[2],
                    "max_abs_diff": float((x - ref).abs().max()),
                    "calls": int(stats["transformer_calls"]),
                    "deep_iters": sum(iters) if iters else None,
                    "wall": best[v][0],
                    "cpu": best[v][1],
                    "cpu_speedup": best[variants[0]][1] / best[v][1],
                }
                out["decoding"].append(row)
                print(
                    f"| {dtype} | {b} | {name} | {v[2] if v[0] == 'jacobi' else '-'} | {row['max_abs_diff']:.1e} | "
                    f"{row['calls']} | {row['deep_iters'] if iters else '-'} | {row['wall']:.3f} | "
                    f"{row['cpu']:.3f} | {row['cpu_speedup']:.2f}x |",
                    flush=True,
                )
        if len(refs) == 2:  # rounding floor: the same sequential decoding in float32 and float64
            floor = float((refs["float32"].double() - refs["float64"]).abs().max())
            out["float32_floor"][b] = floor
            print(
                f"| f32 vs f64 | {b} | sequential float32 against float64 (rounding floor) | - | {floor:.1e} |||||"
            )


def quality(model, config, a, out) -> None:
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", default="runs/video", help="a trained sprites-starflow-v run (trained if absent)")
    p.add_argument("--n", type=int, default=512, help="model videos a seed for FD")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tols", type=float, nargs="+", default=[1e-9, 1e-12], help="Jacobi tolerances")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    p.add_argument("--parts", nargs="+", default=["decode", "fd"], choices=["decode", "fd"])
    p.add_argument("--json", default=None, help="write the numbers here")
    a = p.parse_args()
    torch.set_num_threads(1)
    try:
        model, config = load_run(a.run)
    except FileNotFoundError:
        train_recipe("sprites-starflow-v", out=a.run, seed=0, progress=False)
        model, config = load_run(a.run)
    out: dict = {"run": a.run, "decoding": [], "float32_floor": {}, "fd": {}}
    if "decode" in a.parts:
        decoding(model, config, a, out)
    if "fd" in a.parts:
        quality(model, config, a, out)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
