"""``flowforge list | train | distill | finetune | sample | eval | ...``: parses, calls :mod:`flowforge.recipes`, prints; knows no family.

Errors from bad input (unknown names, bad option values, options that do not apply to the run's recipe,
wrong shapes, NaN data, missing or damaged files, a diverging run) are printed as one line,
``flowforge: error: ...``, with exit status 2; no traceback. Ctrl-C prints where the run stopped and
exits with 130.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser", "UsageError"]


class UsageError(ValueError):
    """Bad command-line usage (argparse's complaints), reported like every other input error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog.removeprefix('flowforge').strip() or 'flowforge'}: {message}")


def _int_at_least(low: int, example: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low``; 0 for ``--steps``/``--n`` is an error, never 'the default'."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an int >= {low}, got {text!r}; write e.g. {example}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}; write e.g. {example}")
        return value

    return parse


_count = _int_at_least(1, 1000)  # --steps, --n
_seed = _int_at_least(0, 0)


#: sampling options of ``sample`` and ``eval``; which apply is the run's recipe's choice
SAMPLE_OPTIONS = (
    "solver",
    "steps",
    "qmc",
    "method",
    "guidance",
    "guidance_schedule",
    "label",
    "temperature",
    "corrector",
)
#: what ``sample --out`` writes: arrays, a plot, or (token runs) one sequence a line
SAMPLE_SUFFIXES = (".npy", ".png", ".txt", ".smi")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``flowforge`` command."""
    p = _Parser(prog="flowforge", description="Flow-based generative models: train, sample, eval.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="show the recipes, one line each")

    t = sub.add_parser("train", help="train a recipe into a run folder")
    t.add_argument("recipe")
    t.add_argument(
        "--data",
        help="train on your own data: .npy, .npz, .pt or .csv of shape (N, D); token recipes: .txt or .smi",
    )
    t.add_argument("--out", help="run folder (default runs/RECIPE)")
    t.add_argument("--steps", type=_count, help="training steps (default: the recipe's)")
    t.add_argument("--seed", type=_seed, default=0, help="seeds the initial weights, data and training")
    t.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override recipe keys: --set width=128 depth=4",
    )
    t.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    t.add_argument(
        "--energy",
        metavar="MODULE:FUNCTION",
        help="target energy of a *-bg recipe: a callable (B, D) -> (B,)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    d = sub.add_parser(
        "distill", help="train a few-step student of a flow-matching run (reflow, turbo, freeflow)"
    )
    d.add_argument(
        "--teacher", required=True, metavar="RUN", help="the teacher's run folder (moons, checkerboard, ...)"
    )
    d.add_argument(
        "--method",
        required=True,
        help="reflow (rectified flow++ on teacher pairs), turbo (FlowTurbo refiner) or freeflow (no data)",
    )
    d.add_argument("--out", help="the student's run folder (default: RUN-METHOD, e.g. runs/moons-reflow)")
    d.add_argument("--steps", type=_count, help="training steps (default: the recipe's)")
    d.add_argument("--seed", type=_seed, default=0, help="seeds the teacher pairs, the weights and training")
    d.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override recipe keys: --set time=uniform loss=mse (reflow), --set turbo_schedule=1-5-3 (turbo)",
    )
    d.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed distillation (its teacher pairs, then training)",
    )
    d.add_argument("--quiet", action="store_true", help="no progress bar")

    f = sub.add_parser(
        "finetune",
        help="fine-tune a flow-matching run (2-D or digits/mnist) toward a reward (grpo, orw, acflow) or a 2-D "
        "run by FM-MLE (mle)",
    )
    f.add_argument("run", help="the base run folder (moons, checkerboard, eight-gaussians, digits, mnist)")
    f.add_argument(
        "--method",
        required=True,
        help="grpo (DanceGRPO; --set advantage=reinforce: REINFORCE), orw (ORW-CFM-W2), acflow (AC-Flow-style) "
        "or mle (FM-MLE at --set deploy_steps=N)",
    )
    f.add_argument(
        "--reward",
        help="2-D: modes (default; --set modes=0-1), halfplane; images: digit (default; --set target=3, "
        "label=null|C), thickness; or MODULE:FUNCTION, a callable (B, *event) -> (B,)",
    )
    f.add_argument(
        "--out", help="the fine-tuned run folder (default: RUN-METHOD, e.g. runs/eight-gaussians-grpo)"
    )
    f.add_argument("--steps", type=_count, help="gradient steps (default: the method's)")
    f.add_argument("--seed", type=_seed, default=0)
    f.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override method keys: --set kl_coef=0.05 eta=0.5 (grpo), alpha=1 beta=0.5 (orw)",
    )
    f.add_argument("--resume", action="store_true", help="continue a killed fine-tuning run")
    f.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("run")
    s.add_argument("--n", type=_count, default=10_000)
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument(
        "--out",
        required=True,
        help="FILE.npy (samples), FILE.png (a plot), FILE.txt or FILE.smi (token runs)",
    )
    _sample_options(s)

    e = sub.add_parser("eval", help="compare a run's samples (and likelihood) with data; prints JSON")
    e.add_argument("run")
    e.add_argument(
        "--data", help="reference data: .npy, .npz, .pt or .csv (default: the recipe's held-out data)"
    )
    e.add_argument(
        "--metrics",
        help="comma-separated: swd,w2,mmd,energy,nll (flows); fd,acc,pr (image flows; inpainting: "
        "known,fill_acc; semantic: iou; SymmFlow: cls_acc); nll,bpd (TARFlow images); ess,logz,nll (*-bg); "
        "default: the recipe's",
    )
    e.add_argument(
        "--energy", metavar="MODULE:FUNCTION", help="target energy for ess/logz (default: the run's energy)"
    )
    e.add_argument("--n", type=_count, help="number of model samples (default: the recipe's)")
    e.add_argument("--seed", type=_seed, default=0)
    e.add_argument("--solver", help="ODE/SDE solver (flow-matching runs; default: the recipe's)")
    e.add_argument("--steps", type=_count, help="solver steps (flow-matching runs; default: the recipe's)")
    e.add_argument(
        "--qmc",
        action=argparse.BooleanOptionalAction,
        help="quasi-random source noise (flow-matching runs; default: i.i.d.)",
    )
    e.add_argument("--guidance", type=float, help="image flow runs: guidance weight (default: the run's)")
    e.add_argument(
        "--guidance-schedule", dest="guidance_schedule", help="image flow runs: constant, interval or raag"
    )
    e.add_argument("--label", type=int, help="class-conditional runs: score samples of this class only")

    i = sub.add_parser("inpaint", help="fill the holes of images with an inpainting run (mnist-inpaint)")
    i.add_argument("run")
    i.add_argument(
        "--image", required=True, help="the image(s): .png, or .npy of (H, W), (C, H, W) or (N, C, H, W)"
    )
    i.add_argument(
        "--mask", required=True, help="same size as the image(s): nonzero (white) = hole to fill, 0 = keep"
    )
    i.add_argument("--out", required=True, help="FILE.npy (uint8 images) or FILE.png (a grid)")
    i.add_argument("--seed", type=_seed, default=0)
    i.add_argument("--solver", help="ODE solver (default: the run's)")
    i.add_argument("--steps", type=_count, help="solver steps (default: the run's)")
    i.add_argument(
        "--guidance",
        type=float,
        help="guidance towards the kept pixels (runs trained with context_dropout), or the class (--guide-on)",
    )
    i.add_argument(
        "--class-from",
        help="two-stage sampling (class-conditional runs): draw each class from this mnist-class-posterior run",
    )
    i.add_argument("--class-temperature", type=float, help="p(y | kept)^(1/T); small T: the likeliest class")
    i.add_argument("--guide-on", choices=["context", "class"], help="what --guidance pushes towards")

    r = sub.add_parser(
        "restore",
        help="measure an image (mask, 4x downsampling, blur; plus noise) and restore it with a flow prior",
    )
    r.add_argument(
        "run",
        help="an image flow run used as the prior: pixel (flowforge train mnist) or latent (mnist-latent: flair, dps)",
    )
    r.add_argument("--operator", required=True, help="inpaint, sr4 or blur")
    r.add_argument(
        "--image",
        required=True,
        help="the clean image(s): .png, or .npy of (H, W), (C, H, W) or (N, C, H, W)",
    )
    r.add_argument(
        "--out", required=True, help="FILE.npy (uint8 restorations) or FILE.png (measured | restored)"
    )
    r.add_argument("--method", default="flair", help="flair (default), dps or projection")
    r.add_argument("--noise", type=float, default=0.05, help="measurement noise std on the [-1, 1] scale")
    r.add_argument("--seed", type=_seed, default=0)
    r.add_argument(
        "--mask", help="inpaint: same size as the image, nonzero (white) = missing (default: left half)"
    )
    r.add_argument(
        "--steps", type=_count, help="steps of the method (default: flair 50, dps 20, projection 50)"
    )
    return p


def _sample_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--solver", help="ODE/SDE solver (flow-matching runs; default: the recipe's)")
    s.add_argument("--steps", type=_count, help="solver steps (flow-matching runs; default: the recipe's)")
    s.add_argument(
        "--qmc",
        action=argparse.BooleanOptionalAction,
        help="quasi-random source noise (flow-matching runs; default: the recipe's)",
    )
    s.add_argument(
        "--method", choices=["sequential", "jacobi"], help="TARFlow runs: token by token or parallel Jacobi"
    )
    s.add_argument(
        "--guidance",
        type=float,
        help="classifier-free guidance weight: flow runs 1 = none (RAAG: w_max); TARFlow runs 0 = none",
    )
    s.add_argument(
        "--guidance-schedule",
        dest="guidance_schedule",
        help="image flow runs: constant (default), interval or raag (ratio-aware adaptive guidance)",
    )
    s.add_argument("--label", type=int, help="class-conditional runs: draw every sample of this class")
    s.add_argument("--temperature", type=float, help="token runs: divides the posterior logits (default 1)")
    s.add_argument(
        "--corrector", type=float, help="token runs: divergence-free corrector coefficient (default 0: none)"
    )


def _list() -> int:
    from flowforge.recipes import RECIPES

    width = max(len(n) for n in RECIPES)
    for name in sorted(RECIPES):
        print(f"{name:<{width}}  {RECIPES[name].summary}")
    return 0


def _train(a: argparse.Namespace) -> int:
    from flowforge.recipes import get_recipe, parse_sets, train_recipe
    from flowforge.recipes.runs import check_options, train_options

    t0 = time.time()
    given = [k for k in ("data", "energy") if getattr(a, k) is not None]
    check_options(
        get_recipe(a.recipe),
        "train",
        given,
        train_options(a.recipe),
        "--out, --steps, --seed, --set, --resume, --quiet",
    )
    if a.out is not None and not a.out.strip():
        raise ValueError(f"--out '' names no folder; write e.g. --out runs/{a.recipe}")
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
        out = "samples.txt" if get_recipe(a.recipe).decode is not None else "samples.png"
        print(f"next: flowforge sample {run.out} --n 10000 --out {out}")
    return 0


def _distill(a: argparse.Namespace) -> int:
    from flowforge.recipes import distill, distill_out, distill_recipe, parse_sets

    t0 = time.time()
    if a.out is not None and not a.out.strip():
        raise ValueError(f"--out '' names no folder; write e.g. --out {distill_out(a.teacher, a.method)}")
    name = distill_recipe(a.teacher, a.method)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank and not a.quiet:
        out = a.out or distill_out(a.teacher, a.method)
        print(f"distilling {a.teacher} by {a.method} ({name}) into {out}", file=sys.stderr)
    run = distill(
        a.teacher,
        a.method,
        overrides=parse_sets(a.set),
        out=a.out,
        steps=a.steps,
        seed=a.seed,
        resume=a.resume,
        progress=not a.quiet,
    )
    if main_rank:
        print(f"trained {name} for {run.step} steps in {time.time() - t0:.1f}s -> {run.out}")
        print(
            f"next: flowforge sample {run.out} --steps 1 --n 10000 --out samples.png; flowforge eval {run.out}"
        )
    return 0


def _finetune(a: argparse.Namespace) -> int:
    from flowforge.recipes import finetune, finetune_recipe, parse_sets

    t0 = time.time()
    if a.out is not None and not a.out.strip():
        raise ValueError(f"--out '' names no folder; write e.g. --out {a.run}-{a.method}")
    name = finetune_recipe(a.run, a.method)
    run = finetune(
        a.run,
        a.method,
        reward=a.reward,
        overrides=parse_sets(a.set),
        out=a.out,
        steps=a.steps,
        seed=a.seed,
        resume=a.resume,
        progress=not a.quiet,
    )
    print(
        f"fine-tuned {a.run} by {a.method} ({name}) for {run.step} steps in {time.time() - t0:.1f}s -> {run.out}"
    )
    print(f"next: flowforge sample {run.out} --n 10000 --out samples.png; flowforge eval {run.out}")
    return 0


def _plot(x: np.ndarray, path: Path, title: str) -> None:
    if x.ndim == 4:  # images (N, C, H, W): a grid of the first 64, no plotting library needed
        from flowforge.data.png import save_image_grid

        save_image_grid(x[:64], path)
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("flowforge: error: a .png needs matplotlib: pip install 'flowforge[plot]'") from None
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


def _sample(a: argparse.Namespace) -> int:
    from flowforge.recipes import decode, get_recipe, picture, read_config, sample

    out = Path(a.out)
    if not a.out.strip() or out.suffix not in SAMPLE_SUFFIXES:
        raise ValueError(
            f"--out {a.out!r} is not a .npy, .png, .txt or .smi file; write e.g. --out samples.npy (the "
            "samples), --out samples.png (a plot) or, for token runs, --out samples.txt (one a line)"
        )
    is_text = out.suffix in (".txt", ".smi")
    tokens = get_recipe(read_config(a.run)["recipe"]).decode is not None
    if tokens and out.suffix == ".png":
        raise ValueError(
            f"{a.run} is a token run: write --out samples.txt (or .smi) for the sequences, or .npy for the ids"
        )
    if is_text and not tokens:
        raise ValueError(f"{a.run} samples arrays, not text; write --out samples.npy or samples.png")
    options = {k: getattr(a, k) for k in SAMPLE_OPTIONS if getattr(a, k) is not None}
    x = sample(a.run, a.n, seed=a.seed, **options)
    if is_text:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in decode(a.run, x)), encoding="utf-8")
        tmp.replace(out)
        print(f"wrote {a.n} sequences to {out}")
        return 0
    arr = x.detach().cpu().numpy()
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).reshape(len(arr), -1).any(1).sum())
        raise ValueError(
            f"run {a.run}: {bad} of {a.n} samples hold NaN or inf, so {out} was not written; the run's "
            f"weights may have diverged (see {Path(a.run) / 'metrics.jsonl'}): train it again, e.g. with a "
            "lower --set lr=..."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        tmp = out.with_name(out.name + ".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(out)
    else:
        config = read_config(a.run)
        title = ", ".join([f"{config['recipe']}: {a.n} samples", *(f"{k} {v}" for k, v in options.items())])
        _plot(picture(a.run, arr), out, title)
    print(f"wrote {a.n} samples to {out}")
    return 0


def _eval(a: argparse.Namespace) -> int:
    from flowforge.recipes import evaluate

    metrics = None if a.metrics is None else [m.strip() for m in a.metrics.split(",") if m.strip()]
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
        guidance=a.guidance,
        guidance_schedule=a.guidance_schedule,
        label=a.label,
    )
    bad = [k for k, v in res.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ValueError(
            f"run {a.run}: eval gave {', '.join(f'{k}={res[k]}' for k in bad)}, which is no number JSON can "
            f"hold; the run's weights may have diverged (see {Path(a.run) / 'metrics.jsonl'}), or its samples "
            "fall where the data has no support"
        )
    print(json.dumps(res, allow_nan=False))
    return 0


def _read_image_file(path: str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--{what} {path}: no such file; give a .png or a .npy")
    if p.suffix == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ValueError(f"--{what} {path} is not a readable .npy file ({e})") from None
    if p.suffix == ".png":
        from flowforge.data.png import read_png

        arr = read_png(p)
        return arr if arr.ndim == 2 else arr[..., 0]  # grey: the first channel
    raise ValueError(f"--{what} {path}: give a .png or a .npy file")


def _as_nchw(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.ndim == 2:
        return arr[None, None]
    if arr.ndim == 3:
        return arr[None]
    if arr.ndim == 4:
        return arr
    raise ValueError(f"--{what} has shape {arr.shape}; give (H, W), (C, H, W) or (N, C, H, W)")


def _inpaint(a: argparse.Namespace) -> int:
    import torch

    from flowforge.recipes import inpaint

    out = Path(a.out)
    if out.suffix not in (".npy", ".png"):
        raise ValueError(f"--out {a.out!r}: write FILE.npy (the images) or FILE.png (a grid)")
    image = _as_nchw(_read_image_file(a.image, "image"), "image")
    mask = _as_nchw(_read_image_file(a.mask, "mask"), "mask")
    if not np.isfinite(mask.astype(np.float64)).all():
        raise ValueError(f"--mask {a.mask} holds NaN or inf; give 0 (keep) and nonzero (fill) values")
    if mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"--mask is {mask.shape[-2:]} pixels but --image is {image.shape[-2:]}; make them the same size"
        )
    hole = torch.from_numpy(mask != 0).any(1, keepdim=True).expand(image.shape[0], 1, *image.shape[-2:])
    options = {"solver": a.solver, "steps": a.steps, "guidance": a.guidance}
    overrides = {
        "class_from": a.class_from,
        "class_temperature": a.class_temperature,
        "guide_on": a.guide_on,
    }
    x = inpaint(
        a.run,
        torch.from_numpy(np.ascontiguousarray(image)),
        hole.contiguous(),
        seed=a.seed,
        overrides=overrides,
        **options,
    )
    arr = x.numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        tmp = out.with_name(out.name + ".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(out)
    else:
        from flowforge.data.png import save_image_grid
        from flowforge.recipes import picture

        save_image_grid(picture(a.run, arr), out)
    print(f"wrote {len(arr)} inpainted image{'s' if len(arr) > 1 else ''} to {out}")
    return 0


def _restore(a: argparse.Namespace) -> int:
    import torch

    from flowforge.recipes import restore

    out = Path(a.out)
    if out.suffix not in (".npy", ".png"):
        raise ValueError(f"--out {a.out!r}: write FILE.npy (the restorations) or FILE.png (a grid)")
    image = _as_nchw(_read_image_file(a.image, "image"), "image")
    hole = None
    if a.mask is not None:
        if a.operator != "inpaint":
            raise ValueError(f"--mask applies to --operator inpaint, not {a.operator}")
        mask = _as_nchw(_read_image_file(a.mask, "mask"), "mask")
        if mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"--mask is {mask.shape[-2:]} pixels but --image is {image.shape[-2:]}; make them the same size"
            )
        hole = torch.from_numpy(mask != 0).any(1, keepdim=True)
    x, measured = restore(
        a.run,
        torch.from_numpy(np.ascontiguousarray(image)),
        operator=a.operator,
        method=a.method,
        noise=a.noise,
        seed=a.seed,
        hole=hole,
        steps=a.steps,
    )
    arr = x.numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        tmp = out.with_name(out.name + ".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(out)
    else:
        from flowforge.data.png import save_image_grid
        from flowforge.recipes import picture

        both = np.concatenate([measured.numpy(), arr])  # first row(s): A^+ y; then the restorations
        save_image_grid(picture(a.run, both), out, nrow=len(arr))
    print(f"wrote {len(arr)} restored image{'s' if len(arr) > 1 else ''} ({a.method}, {a.operator}) to {out}")
    return 0


def _interrupted(a: argparse.Namespace) -> str:
    if a.command == "finetune":
        return (
            "interrupted; run the same flowforge finetune command with --resume to continue where it stopped"
        )
    if a.command == "distill":
        return (
            "interrupted; run the same flowforge distill command with --resume to continue where it stopped"
        )
    if a.command != "train":
        return f"interrupted; {a.command} wrote nothing"
    from flowforge.recipes.run_folder import last_step

    out = Path(a.out) if a.out else Path("runs") / a.recipe
    step = last_step(out)
    if step is None:
        return (
            f"interrupted before the first checkpoint; {out} holds nothing to resume: run the command again"
        )
    return (
        f"interrupted; {out} holds the run up to step {step}: run the same command with --resume to continue"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``flowforge`` command; returns the exit status."""
    from flowforge.train import CheckpointError

    args = None
    try:
        args = build_parser().parse_args(argv)
        if args.command == "list":
            return _list()
        if args.command == "train":
            return _train(args)
        if args.command == "distill":
            return _distill(args)
        if args.command == "finetune":
            return _finetune(args)
        if args.command == "sample":
            return _sample(args)
        if args.command == "inpaint":
            return _inpaint(args)
        if args.command == "restore":
            return _restore(args)
        return _eval(args)
    except KeyboardInterrupt:
        msg = _interrupted(args) if args is not None else "interrupted"
        print(f"flowforge: {msg}", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError, CheckpointError, FloatingPointError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"flowforge: error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
