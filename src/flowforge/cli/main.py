"""``flowforge list | train | sample | eval``.

Errors from bad input (unknown names, wrong shapes, NaN data, missing or damaged files) are printed as
one line, ``flowforge: error: ...``, with exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``flowforge`` command."""
    p = argparse.ArgumentParser(
        prog="flowforge", description="Flow-based generative models: train, sample, eval."
    )
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="show the recipes, one line each")

    t = sub.add_parser("train", help="train a recipe into a run folder")
    t.add_argument("recipe")
    t.add_argument("--data", help="train on your own array: .npy, .npz, .pt or .csv of shape (N, D)")
    t.add_argument("--out", help="run folder (default runs/RECIPE)")
    t.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override recipe keys")
    t.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    t.add_argument(
        "--energy",
        metavar="MODULE:FUNCTION",
        help="target energy of a *-bg recipe: a callable (B, D) -> (B,)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("run")
    s.add_argument("--n", type=int, default=10_000)
    s.add_argument("--solver", help="ODE/SDE solver (default: the recipe's)")
    s.add_argument("--steps", type=int, help="solver steps (default: the recipe's)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--qmc", action=argparse.BooleanOptionalAction, help="quasi-random source noise (default: recipe's)"
    )
    s.add_argument("--out", required=True, help="FILE.npy (samples) or FILE.png (a scatter plot)")
    s.add_argument(
        "--method", choices=["sequential", "jacobi"], help="TARFlow runs: token by token or parallel Jacobi"
    )
    s.add_argument("--guidance", type=float, help="TARFlow runs: classifier-free guidance weight (0: none)")
    s.add_argument("--label", type=int, help="class-conditional runs: draw every sample of this class")

    e = sub.add_parser("eval", help="compare a run's samples (and likelihood) with data; prints JSON")
    e.add_argument("run")
    e.add_argument(
        "--data", help="reference data: .npy, .npz, .pt or .csv (default: the recipe's held-out data)"
    )
    e.add_argument(
        "--metrics",
        help="comma-separated: swd,w2,mmd,energy,nll (flows), nll,bpd (images), ess,logz,nll (*-bg); "
        "default: the recipe's",
    )
    e.add_argument(
        "--energy", metavar="MODULE:FUNCTION", help="target energy for ess/logz (default: the run's energy)"
    )
    e.add_argument("--n", type=int, help="number of model samples (default min(N, 10000))")
    e.add_argument("--solver")
    e.add_argument("--steps", type=int)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--qmc", action=argparse.BooleanOptionalAction, help="quasi-random source noise (default: recipe's)"
    )
    return p


def _list() -> int:
    from flowforge.recipes import RECIPES

    width = max(len(n) for n in RECIPES)
    for name in sorted(RECIPES):
        print(f"{name:<{width}}  {RECIPES[name].summary}")
    return 0


def _train(a: argparse.Namespace) -> int:
    from flowforge.recipes import parse_sets, train_recipe

    t0 = time.time()
    overrides = parse_sets(a.set)
    if a.energy:
        overrides["energy"] = a.energy
    run = train_recipe(
        a.recipe,
        overrides=overrides,
        data_file=a.data,
        out=a.out,
        steps=a.steps,
        seed=a.seed,
        resume=a.resume,
        progress=not a.quiet,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one report
        print(f"trained {a.recipe} for {run.step} steps in {time.time() - t0:.1f}s -> {run.out}")
        print(f"next: flowforge sample {run.out} --n 10000 --out samples.png")
    return 0


def _plot(x: np.ndarray, path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("flowforge: error: a .png needs matplotlib: pip install 'flowforge[plot]'") from None
    if x.ndim == 4:  # images (N, C, H, W): a grid of the first 64
        _image_grid(x[:64], path, title)
        return
    if x.shape[1] < 2:
        raise ValueError(
            f"a scatter plot needs at least 2 dimensions, the samples have {x.shape[1]}; write .npy"
        )
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4, color="#1f4e79")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _image_grid(x: np.ndarray, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    n = len(x)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8 + 0.3), dpi=120, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = x[i].transpose(1, 2, 0)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
    fig.suptitle(title, fontsize=8)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _sample(a: argparse.Namespace) -> int:
    from flowforge.recipes import generator
    from flowforge.recipes.runs import _read_config

    out = Path(a.out)
    if out.suffix not in (".npy", ".png"):
        raise ValueError(f"--out {a.out}: write FILE.npy (samples) or FILE.png (a plot)")
    if a.n < 1:
        raise ValueError(f"--n must be >= 1, got {a.n}")
    config = _read_config(Path(a.run))
    gen = generator(a.run)
    solver = a.solver or config.get("solver", "heun")
    steps = a.steps or config.get("sample_steps", 25)
    qmc = config.get("qmc", False) if a.qmc is None else a.qmc
    extra: dict = {}
    if a.method is not None or a.guidance is not None or a.label is not None:
        if config.get("flow", "tarflow" if config.get("levels") else None) != "tarflow":
            raise ValueError(
                "--method, --guidance and --label apply to TARFlow runs (moons-tarflow, *-tarflow)"
            )
        if a.method is not None:
            extra["method"] = a.method
        if a.guidance is not None:
            extra["guidance"] = a.guidance
        if a.label is not None:
            if not config.get("conditional"):
                raise ValueError("--label needs a class-conditional run: train with --set conditional=true")
            if not 0 <= a.label < 10:
                raise ValueError(f"--label must be a class in 0..9, got {a.label}")
            extra["cond"] = {"y": torch.full((a.n,), a.label, dtype=torch.long)}
    x = gen.sample(
        a.n, generator=torch.Generator().manual_seed(a.seed), solver=solver, steps=steps, qmc=qmc, **extra
    )
    arr = x.detach().cpu().numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        tmp = out.with_name(out.name + ".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(out)
    else:
        _plot(arr, out, f"{config['recipe']}: {a.n} samples, {solver} x {steps}")
    print(f"wrote {a.n} samples to {out}")
    return 0


def _eval(a: argparse.Namespace) -> int:
    from flowforge.recipes import evaluate, get_recipe
    from flowforge.recipes.runs import _read_config

    if a.metrics is None:
        recipe = get_recipe(_read_config(Path(a.run))["recipe"])
        metrics = list(recipe.metrics) or ["swd", "mmd", "energy"]
        if a.energy is None and recipe.kind == "normalizing":  # ess / logz need a target energy
            metrics = [m for m in metrics if m not in ("ess", "logz")]
    else:
        metrics = [m.strip() for m in a.metrics.split(",") if m.strip()]
    res = evaluate(
        a.run,
        a.data,
        metrics,
        n_samples=a.n,
        seed=a.seed,
        solver=a.solver,
        steps=a.steps,
        qmc=a.qmc,
        energy=a.energy,
    )
    print(json.dumps(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``flowforge`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    from flowforge.train import CheckpointError

    try:
        if args.command == "list":
            return _list()
        if args.command == "train":
            return _train(args)
        if args.command == "sample":
            return _sample(args)
        return _eval(args)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, CheckpointError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"flowforge: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
