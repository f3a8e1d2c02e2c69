"""Sequential vs Jacobi sampling of a 64-token TARFlow (8x8 digits, patch 1).

The model is a TARFlow on scikit-learn's 8x8 digits (scaled to [-1, 1], uniformly dequantised,
Gaussian noise 0.05 as in TARFlow), trained for ``--train-steps`` AdamW steps so that each block's
fixed point is a real one, or (``--train-steps 0``, or without scikit-learn) random weights. The
trained weights are cached in ``benchmarks/.cache/`` (safetensors + JSON) unless ``--retrain``.

For one batch of base noise it times both methods in two modes, and only ever compares a method
with the other one *in the same mode*:

- **eager** (every device): ``sequential`` token by token on the growing KV cache (``T - 1``
  transformer calls per block) against ``jacobi``, STARFlow-V's chunked fixed-point iteration, for
  every ``--chunks`` x ``--tols`` pair;
- **graph** (CUDA only; ``cuda_graph=True``): ``sequential`` as one fixed-shape token step on a
  static KV cache, captured once per block as a CUDA graph and replayed for every token, against
  ``jacobi`` as one fixed-shape full pass per iteration, captured once per block and replayed
  (the whole sequence is one chunk), for every ``--tols`` value. Capture is inside the timing.

It reports the median wall time over ``--repeat`` runs (after one warm-up run of each; CUDA is
synchronised around every timing), the speed-up over the sequential row of the same mode, the max
|difference| to the eager sequential samples, the mean number of Jacobi iterations per chunk, the
transformer calls and the token-rows computed per sample, then a side-by-side summary of the two
modes. Denoising is off (it is the same for both).

Run:
    python benchmarks/jacobi.py --repeat 5                                   # CPU: eager rows only
    python benchmarks/jacobi.py --device cuda --batch 1,8,256 --width 256 --repeat 5   # eager + graph
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from flowforge.normalizing.tarflow import JACOBI_MAX_ITER, JACOBI_TOL, TARFlow
from flowforge.train import load_safetensors, save_safetensors

CACHE = Path(__file__).resolve().parent / ".cache"
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def digits() -> Tensor | None:
    """sklearn's 8x8 digits as ``(1797, 1, 8, 8)`` integers 0..16, or None without scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return None
    return torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1)


def build(args: argparse.Namespace, device: torch.device) -> tuple[TARFlow, dict]:
    torch.manual_seed(args.seed)
    flow = TARFlow(
        image_shape=(1, 8, 8),
        patch=1,
        blocks=args.blocks,
        width=args.width,
        layers=args.layers,
        noise_std=0.05,
    )
    data = digits() if args.train_steps > 0 else None
    if data is None:
        g = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():  # away from the zero-initialised (identity) output layers
            for p in flow.parameters():
                p.add_(args.random_scale * torch.randn(p.shape, generator=g))
        return flow.to(device).eval(), {"weights": f"random (scale {args.random_scale})"}
    tag = f"jacobi-digits-b{args.blocks}-w{args.width}-l{args.layers}-steps{args.train_steps}-seed{args.seed}"
    wpath, ipath = CACHE / f"{tag}.safetensors", CACHE / f"{tag}.json"
    if wpath.is_file() and ipath.is_file() and not args.retrain:
        flow.load_state_dict(load_safetensors(wpath))
        return flow.to(device).eval(), json.loads(ipath.read_text()) | {"cached": True}
    flow.to(device).train()
    x = data.to(device)
    opt = torch.optim.AdamW(flow.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=1e-4)
    g = torch.Generator(device=device).manual_seed(args.seed)
    t0 = time.perf_counter()
    for _ in range(args.train_steps):
        i = torch.randint(0, len(x), (64,), generator=g, device=device)
        batch = (x[i] + torch.rand(x[i].shape, generator=g, device=device)) / 17 * 2 - 1  # dequantise
        loss = flow.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 1.0)
        opt.step()
    info = {
        "weights": f"trained {args.train_steps} steps on digits",
        "final_loss_nats_per_dim": round(loss.item(), 4),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    save_safetensors(wpath, {k: v.detach().cpu().contiguous() for k, v in flow.state_dict().items()})
    ipath.write_text(json.dumps(info, indent=2))
    return flow.eval(), info | {"cached": False}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    flow: TARFlow, batch: int, args: argparse.Namespace, device: torch.device, **opts
) -> tuple[Tensor, float, dict]:
    """Samples of the fixed noise seed, median seconds over ``repeat`` runs after a warm-up, stats."""
    times, out, stats = [], None, {}
    for r in range(args.repeat + 1):
        g = torch.Generator(device=device).manual_seed(1234)
        stats = {}
        sync(device)
        t0 = time.perf_counter()
        out = flow.sample(batch, generator=g, denoise=False, stats=stats, **opts)
        sync(device)
        if r:  # the first run is the warm-up
            times.append(time.perf_counter() - t0)
    return out, statistics.median(times), stats


def show(r: dict) -> None:
    iters = r["iters"] if isinstance(r["iters"], str) else f"{r['iters']:.2f}"
    print(f"| {r['batch']} | {r['mode']} | {r['method']} | {r['chunk']} | {r['tol']} | {r['ms']:.1f} | "
          f"{r['speedup']:.2f}x | {r['max_diff']:.2e} | {iters} | {r['calls']} | {r['tokens']} |",
          flush=True)  # fmt: skip


def summary(rows: list[dict]) -> None:
    """Eager-vs-eager and graph-vs-graph speed-ups side by side (Jacobi on one chunk of the sequence)."""
    seq = {(r["batch"], r["mode"]): r for r in rows if r["method"] == "sequential"}
    jac = {(r["batch"], r["mode"], r["tol"]): r for r in rows if r["method"] == "jacobi"}
    big = max((r["chunk"] for r in rows if r["mode"] == "eager" and r["method"] == "jacobi"), default=None)
    print()
    print(f"Side by side (eager Jacobi chunk {big}; graph Jacobi over the whole sequence):")
    print()
    print("| batch | tol | eager: sequential / Jacobi (ms) | eager speed-up | graph: sequential / Jacobi (ms) "
          "| graph speed-up | max abs diff, eager / graph Jacobi |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for (b, mode, tol), r in jac.items():
        if mode != "eager" or r["chunk"] != big:
            continue
        e, g, gs = r, jac.get((b, "graph", tol)), seq.get((b, "graph"))
        graph = f"{gs['ms']:.1f} / {g['ms']:.1f} | {g['speedup']:.2f}x" if g and gs else "(CUDA only) | -"
        gdiff = f"{g['max_diff']:.1e}" if g else "-"
        print(f"| {b} | {tol} | {seq[(b, 'eager')]['ms']:.1f} / {e['ms']:.1f} | {e['speedup']:.2f}x | {graph} | "
              f"{e['max_diff']:.1e} / {gdiff} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--batch", default="1,4,8,32", help="comma-separated batch sizes")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--chunks", default="16,64", help="comma-separated Jacobi chunk sizes (eager mode)")
    p.add_argument(
        "--tols",
        default=f"1e-6,{JACOBI_TOL:g}",
        help="comma-separated Jacobi tolerances (library default last)",
    )
    p.add_argument("--max-iter", type=int, default=JACOBI_MAX_ITER, help="Jacobi iteration cap per chunk")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--random-scale", type=float, default=0.05)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--eager-only", action="store_true", help="skip the graph-vs-graph rows on CUDA")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    modes = ["eager"] + (["graph"] if device.type == "cuda" and not args.eager_only else [])
    flow, info = build(args, device)
    flow = flow.to(DTYPES[args.dtype])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"- `TARFlow 8x8x1 patch 1 (T=64), blocks={args.blocks} width={args.width} layers={args.layers}; {info}`"
    )
    print(f"- `device={args.device} ({name}) dtype={args.dtype} threads={args.threads} repeat={args.repeat} "
          f"max_iter={args.max_iter} modes={'+'.join(modes)} torch={torch.__version__}`")  # fmt: skip
    print()
    print("| batch | mode | method | chunk | tol | time (ms) | speed-up (same mode) | max abs diff | iters/chunk "
          "| calls | token-rows/sample |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    tols = [float(t) for t in args.tols.split(",")]
    for batch in (int(b) for b in args.batch.split(",")):
        ref = None
        for mode in modes:
            graph = mode == "graph"
            with torch.no_grad():
                out, t_seq, st = timed(flow, batch, args, device, cuda_graph=graph)
            ref = out if ref is None else ref  # every difference is against the eager sequential samples
            rows.append({"batch": batch, "mode": mode, "method": "sequential", "chunk": "-", "tol": "-",
                         "ms": 1e3 * t_seq, "speedup": 1.0, "max_diff": (out.float() - ref.float()).abs().max().item(),
                         "iters": "-", "calls": st["transformer_calls"], "tokens": st["transformer_calls"]})  # fmt: skip
            show(rows[-1])
            for chunk in [int(c) for c in args.chunks.split(",")] if not graph else ["all"]:
                for tol in tols:
                    with torch.no_grad():
                        out, t, st = timed(
                            flow, batch, args, device, method="jacobi", jacobi_tol=tol, jacobi_max_iter=args.max_iter,
                            cuda_graph=graph, **({} if graph else {"jacobi_block": chunk}),
                        )  # fmt: skip
                    it = st["jacobi_iters"]
                    rows.append({
                        "batch": batch, "mode": mode, "method": "jacobi", "chunk": chunk, "tol": tol, "ms": 1e3 * t,
                        "speedup": t_seq / t, "max_diff": (out.float() - ref.float()).abs().max().item(),
                        "iters": sum(it) / len(it), "calls": st["transformer_calls"], "tokens": st["tokens"],
                    })  # fmt: skip
                    show(rows[-1])
    summary(rows)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "info": info, "rows": rows},
                                        indent=2, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
