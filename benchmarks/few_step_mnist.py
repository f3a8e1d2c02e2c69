"""Few-step generation on MNIST (issue 11, items 1 and 3): FD and class accuracy against network evaluations
for a flow-matching teacher and its few-step students, plus each method's training cost per step.

Every row is a trained run folder (commands in BENCHMARKS.md section 13.10), evaluated the same way:
``n`` class-conditional samples (classes in turn, i.i.d. noise, seed 0, no guidance), FD in the features
of the classifier the package ships against the 10k test images, and that classifier's accuracy on the
samples. A control row scores ``n`` training images the same way (the FD floor at this ``n``).

    python benchmarks/few_step_mnist.py --teacher runs/mnist-timed \\
        --students runs/mnist-timed-reflow runs/mnist-meanflow runs/mnist-twinflow \\
                   runs/mnist-timed-freeflow runs/mnist-timed-turbo \\
                   runs/mnist-blockwise runs/mnist-pfgm --n 1000

Blockwise runs (``mnist-blockwise``) are sampled with Euler, ``k`` steps in all (``k / K`` a segment); an
NFE that is not a multiple of ``K`` (below ``K`` in particular) gets a row with a note instead of numbers,
and ``nfe_flops`` gives the cost in teacher-UNet evaluations. PFGM++ runs (``mnist-pfgm``) take ``k``
Euler steps on EDM's grid (``k`` denoiser calls).

Cost (``--cost``, on by default): each run's model is rebuilt from its folder and trained for a few steps
on batches of 64 in interleaved rounds in this process (Adam, one thread), so every method meets the same
machine load; ``x FM`` is the median time per step over the teacher's. Reflow adds its pair generation,
timed here on one chunk of the run's pair solver and scaled to its pair count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from flowforge.data import load_mnist
from flowforge.metrics.image_features import image_metrics
from flowforge.recipes import evaluate, get_recipe, load_run, read_config
from flowforge.train.trainer import BatchRequest


def _method(config: dict[str, Any]) -> str:
    name = str(config["recipe"])
    for m in ("reflow", "turbo", "freeflow", "meanflow", "twinflow", "blockwise", "pfgm"):
        if name.endswith(f"-{m}"):
            return m
    return "teacher"


def _fd_acc(run: str, n: int, **opts: Any) -> dict[str, Any]:
    res = evaluate(run, n_samples=n, seed=0, metrics=["fd", "acc"], **opts)
    keys = ("fd", "acc", "nfe", "nfe_flops", "nfe_teacher", "nfe_refiner", "schedule")
    return {k: res[k] for k in keys if k in res}


def quality(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    tr, te = load_mnist(args.data_dir, "train"), load_mnist(args.data_dir, "test")
    unit = lambda x: x.float() * (2 / 255) - 1  # noqa: E731
    idx = torch.randperm(len(tr.x), generator=torch.Generator().manual_seed(0))[: args.n]
    floor = image_metrics(unit(tr.x[idx]), unit(te.x), dataset="mnist", metrics=("fd",))
    rows.append({"model": "control: training images", "nfe": 0, "fd": float(floor["fd"]), "acc": 1.0})
    print(rows[-1], flush=True)
    for k in args.teacher_nfe:
        rows.append({"model": "teacher, Euler", **_fd_acc(args.teacher, args.n, solver="euler", steps=k)})
        print(rows[-1], flush=True)
    if args.teacher_dopri:  # the adaptive reference: the solver's own tolerance, NFE as it comes out
        rows.append({"model": "teacher, Dopri5", **_fd_acc(args.teacher, args.n, solver="dopri5", steps=1)})
        print(rows[-1], flush=True)
    for run in args.students:
        config = read_config(run)
        method = _method(config)
        if method == "turbo":  # its own H-P-R schedule (default 1-5-3: 7 teacher + 6 refiner calls)
            rows.append({"model": f"{method} ({run})", **_fd_acc(run, args.n)})
            print(rows[-1], flush=True)
            continue
        for k in args.nfe:
            opts: dict[str, Any] = {"steps": k}
            if method == "blockwise":  # k Euler steps in all, k / K in each segment's own network
                segments = int(config["segments"])
                if k % segments:
                    note = f"skipped: blockwise needs NFE a multiple of K = {segments} (one net a segment)"
                    rows.append({"model": f"{method} ({run})", "nfe": k, "note": note})
                    print(rows[-1], flush=True)
                    continue
                opts["solver"] = "euler"
            elif method == "pfgm":  # k Euler steps on EDM's grid (the last one the final denoising)
                opts["solver"] = "euler"
            rows.append({"model": f"{method} ({run})", **_fd_acc(run, args.n, **opts)})
            print(rows[-1], flush=True)
    return rows


def _batches(run: str, config: dict[str, Any]) -> Any:
    """A ``(batch_size, generator) -> batch`` of the run's own training data (None: batch requests)."""
    data, _ = get_recipe(config["recipe"]).data(dict(config))
    if data is not None and getattr(data, "path", "unset") is None:  # reflow: the run's pair file
        data.path = Path(run) / "pairs.safetensors"
    return data


def cost(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    runs = [args.teacher, *args.students]
    setups = []
    for run in runs:
        model, config = load_run(run)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        setups.append((run, config, model, torch.optim.Adam(params, lr=1e-4), _batches(run, config)))
    times: dict[str, list[float]] = {run: [] for run in runs}
    g = torch.Generator().manual_seed(0)
    for _ in range(args.rounds):
        for run, _config, model, opt, data in setups:
            for i in range(args.steps_timed + 1):  # the first step of a round warms up
                batch = BatchRequest(64, g, torch.device("cpu")) if data is None else data(64, g)
                t0 = time.perf_counter()
                loss = model.loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if i:
                    times[run].append(time.perf_counter() - t0)
    base = statistics.median(times[args.teacher])
    rows = []
    for run, config, _model, _opt, _data in setups:
        ms = statistics.median(times[run])
        steps = int(config["steps"])
        row = {"model": f"{_method(config)} ({run})", "ms_per_step": 1000 * ms, "x_fm_per_step": ms / base}
        row["steps"] = steps
        own = steps * ms / base
        if _method(config) == "reflow":
            teacher, tc = load_run(config["teacher_run"])
            k = 100
            t0 = time.perf_counter()
            with torch.no_grad():
                teacher.generator().sample(
                    k,
                    solver=config["pair_solver"],
                    steps=int(config["pair_steps"]),
                    cond={"y": torch.arange(k) % 10},
                )
            own += (time.perf_counter() - t0) * int(config["pairs"]) / k / base
        row["fm_step_equivalents"] = own
        t_steps = 0 if "teacher" not in config else int(config["teacher"]["steps"])
        row["with_teacher"] = own + t_steps
        rows.append(row)
        print(row, flush=True)
    return rows


def _table(rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n## {title}")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys) + " |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--students", nargs="*", default=[])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--nfe", type=int, nargs="*", default=[1, 2, 4, 8])
    p.add_argument("--teacher-nfe", type=int, nargs="*", default=[1, 2, 4, 8, 50])
    p.add_argument("--teacher-dopri", action="store_true", help="add the teacher's Dopri5 row")
    p.add_argument("--data-dir", default="../shared/data/mnist")
    p.add_argument("--no-quality", action="store_true")
    p.add_argument("--no-cost", action="store_true")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-timed", type=int, default=3)
    p.add_argument("--json", default="")
    args = p.parse_args()
    torch.set_num_threads(1)
    out: dict[str, list[dict[str, Any]]] = {}
    if not args.no_cost:
        out["cost"] = cost(args)
        _table(out["cost"], "training cost per step, relative to the teacher's flow matching (one thread)")
    if not args.no_quality:
        out["quality"] = quality(args)
        _table(out["quality"], f"MNIST FD / accuracy against NFE (n = {args.n}, i.i.d. noise, no guidance)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
