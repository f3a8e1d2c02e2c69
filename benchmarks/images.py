"""Image benchmarks of issue 10: FD in our classifier's features against two references, FD against NFE
per solver (pixel and latent runs, with the time per image), RAAG against constant CFG at few steps,
inpainting, SymmFlow against a classifier and a conditional flow of the same budget, semantic maps.

Every figure comes from trained run folders (``flowforge train ...``, commands in BENCHMARKS.md); each
part prints a table and appends JSON lines to ``--json``.

    python benchmarks/images.py refs --data-dir ../shared/data/mnist
    python benchmarks/images.py nfe runs/mnist runs/latent --n 2000
    python benchmarks/images.py guidance runs/mnist --n 2000
    python benchmarks/images.py inpaint runs/inpaint --n 1000 [--settings 4:1 4:3 2:5] [--first 1000 --seed 1]
    python benchmarks/images.py ceiling --steps 4000 --clf-width 48
    python benchmarks/images.py symmflow runs/symmflow runs/mnist1200 --steps 1200
    python benchmarks/images.py run runs/semantic --n 2000 [--guidance 2]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from flowforge.core.guidance import RAAG
from flowforge.data import load_mnist
from flowforge.metrics.image_features import fitted_gaussian_samples, image_metrics
from flowforge.recipes import evaluate, generator, read_config


def _emit(args: argparse.Namespace, rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n## {title}")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps({"part": title, **r}) + "\n")


def refs(args: argparse.Namespace) -> None:
    """FD references at the benchmark's sample size: train vs test (the floor) and a fitted Gaussian."""
    tr, te = load_mnist(args.data_dir, "train"), load_mnist(args.data_dir, "test")
    unit = lambda x: x.float() * (2 / 255) - 1  # noqa: E731
    g = torch.Generator().manual_seed(0)
    test = unit(te.x)
    rows = []
    for n in sorted({args.n, 1000, 10_000}):
        idx = torch.randperm(len(tr.x), generator=g)[:n]
        real = image_metrics(unit(tr.x[idx]), test, dataset="mnist", metrics=("fd", "pr"))
        gauss = fitted_gaussian_samples(unit(tr.x), n, generator=g)
        fake = image_metrics(gauss, test, dataset="mnist", metrics=("fd", "pr"))
        rows.append({"n": n, "reference": "train images (i.i.d. control)", **real})
        rows.append({"n": n, "reference": "Gaussian fitted to train pixels", **fake})
    _emit(args, rows, "MNIST references (vs the 10k test images)")


def _timed_eval(run: str, n: int, **opts: Any) -> dict[str, Any]:
    """FD and accuracy of ``n`` samples, and the time per image of sampling alone (500 images, decoding
    included for latent runs; the metric's feature extraction is not timed)."""
    from flowforge.recipes import sample

    res = evaluate(run, n_samples=n, seed=0, metrics=["fd", "acc"], **opts)
    sample(run, 50, seed=1, **opts)  # warm-up
    t0 = time.perf_counter()
    sample(run, 500, seed=1, **opts)
    res["s_per_image"] = (time.perf_counter() - t0) / 500
    return res


def nfe(args: argparse.Namespace) -> None:
    """FD and accuracy against NFE for Euler, Heun, the pseudo-corrector (turbo) and Dopri5."""
    rows = []
    grid = [("euler", 4), ("euler", 8), ("heun", 2), ("heun", 4), ("heun", 8), ("turbo", 4), ("turbo", 8)]
    grid += [("dopri5", 1)]
    if args.grid:  # e.g. --grid euler:2 euler:4 dopri5:1
        grid = [(g.split(":")[0], int(g.split(":")[1])) for g in args.grid]
    for solver, steps in grid:
        for run in args.runs:  # interleaved, so machine load hits every run alike
            res = _timed_eval(run, args.n, solver=solver, steps=steps)
            rows.append(
                {
                    "run": read_config(run)["recipe"],
                    "solver": solver,
                    "steps": steps,
                    "nfe": res["nfe"],
                    "fd": res["fd"],
                    "acc": res["acc"],
                    "ms_per_image": 1000 * res["s_per_image"],
                }
            )
            print(rows[-1], flush=True)
    _emit(args, rows, "FD against NFE")


def guidance(args: argparse.Namespace) -> None:
    """RAAG against constant CFG at 2, 4 and 8 Euler steps: accuracy and FD."""
    rows = []
    for steps in (2, 4, 8):
        settings = [("none", 1.0), *[("constant", w) for w in args.cfg], *[("raag", w) for w in args.raag]]
        for name, w in settings:
            opts = {"solver": "euler", "steps": steps}
            if name != "none":
                opts.update(guidance=w, guidance_schedule=name)
            res = _timed_eval(args.runs[0], args.n, **opts)
            rows.append({"steps": steps, "schedule": name, "w": w, "fd": res["fd"], "acc": res["acc"]})
            print(rows[-1], flush=True)
    _emit(args, rows, f"RAAG vs constant CFG (alpha={RAAG().alpha}, Euler)")


def inpaint(args: argparse.Namespace) -> None:
    """Inpainting of 50% holes (a random side of each of ``n`` test images from ``--first``), at each
    ``--settings STEPS:W`` (Euler steps, guidance on ``--guide-on``: the kept pixels or the class), and the
    1-NN fill reference (from image 0)."""
    from flowforge.recipes import load_run
    from flowforge.recipes.images import _inpaint_eval, image_fm_generator, image_fm_sample_kwargs, image_set

    model, config = load_run(args.runs[0])
    if args.class_from:  # two-stage sampling: y ~ p(y | kept)^(1/tau), then the class-conditional fill
        config = {**config, "class_from": args.class_from, "class_temperature": args.class_temperature}
    config = {**config, "guide_on": args.guide_on}
    guided = float(config.get("context_dropout", 0.0)) > 0
    settings = (
        [(int(a), float(b)) for a, b in (v.split(":") for v in args.settings)]
        if args.settings
        else [(steps, w) for steps in (4, 10) for w in ((1.0, 2.0, 3.0) if guided else (1.0,))]
    )
    test = image_set(config, "test")
    x, y = test.x[args.first : args.first + args.n], test.y[args.first : args.first + args.n]
    rows = []
    for steps, w in settings:
        given = {"steps": steps, **({"guidance": w} if w != 1.0 else {})}
        kw = image_fm_sample_kwargs(config, given, len(x))
        res = _inpaint_eval(image_fm_generator(model, config), config, x, y, len(x), args.seed, **kw)
        tau = {"class temperature": args.class_temperature} if args.class_from else {}
        tau["guidance on"] = args.guide_on
        rows.append({"first": args.first, "n": len(x), "steps": steps, "guidance": w, **tau, **res})
        print(rows[-1], flush=True)
    if args.first == 0 and not args.settings:
        rows.append({"steps": 0, "guidance": "1-NN fill (reference)", **_nn_fill(args)})
    _emit(args, rows, "Inpainting 50% holes (MNIST test images)")


def _nn_fill(args: argparse.Namespace) -> dict[str, float]:
    """A non-parametric reference on the same holes: paste the hole of the training image nearest to
    the kept pixels (the evaluation draws its sides first from ``Generator().manual_seed(0)``)."""
    from flowforge.core import masks as M
    from flowforge.metrics.image_features import load_classifier

    tr, te = load_mnist(args.data_dir, "train"), load_mnist(args.data_dir, "test")
    x, y = te.x[: args.n].float() / 255, te.y[: args.n]
    sides = torch.randint(0, 4, (len(x),), generator=torch.Generator().manual_seed(0))
    names = ("left", "right", "top", "bottom")
    mask = torch.cat([M.half_mask(1, 28, 28, names[int(s)]) for s in sides]).reshape(len(x), -1)
    train = tr.x.float().reshape(len(tr.x), -1) / 255
    fills = []
    for xi, mi in zip(x.reshape(len(x), -1), mask, strict=True):
        j = int((((train - xi) * mi) ** 2).sum(1).argmin())
        fills.append(xi * mi + train[j] * (1 - mi))
    clf = load_classifier("mnist")
    with torch.no_grad():
        pred = clf(torch.stack(fills).reshape(-1, 1, 28, 28) * 2 - 1).argmax(-1)
    return {"fill_acc": float((pred == y).float().mean())}


def run_eval(args: argparse.Namespace) -> None:
    """Any run's default metrics (optionally with guidance)."""
    rows = []
    for run in args.runs:
        opts: dict[str, Any] = {}
        if args.guidance is not None:
            opts["guidance"] = args.guidance
        if args.steps_sample:
            opts["steps"] = args.steps_sample
        res = evaluate(run, n_samples=args.n, seed=0, **opts)
        rows.append({"run": read_config(run)["recipe"], **res})
    _emit(args, rows, "runs")


def symmflow(args: argparse.Namespace) -> None:
    """SymmFlow's one-step classification beside a classifier trained directly for the same steps and
    batches, and its generations beside a conditional flow-matching UNet of the same budget."""
    from flowforge.data import dequantize
    from flowforge.nn import SmallCNN

    sym, fm = args.runs
    cfg = read_config(sym)
    res = evaluate(sym, n_samples=args.n, seed=0)
    base = evaluate(fm, n_samples=args.n, seed=0, metrics=["fd", "acc"])
    n_sym = sum(p.numel() for p in generator(sym).flow.net.parameters())
    # a plain CNN classifier of about the same size, same steps, batch and optimizer
    from flowforge.recipes.images import image_set, to_unit

    tr, te = image_set(cfg, "train"), image_set(cfg, "test")
    levels = tr.levels
    torch.manual_seed(0)
    clf = SmallCNN(image_size=int(tr.x.shape[-1]), width=args.clf_width, feature_dim=256)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(args.steps):
        idx = torch.randint(0, len(tr.x), (int(cfg["batch_size"]),), generator=g)
        loss = torch.nn.functional.cross_entropy(clf(dequantize(tr.x[idx], levels, generator=g)), tr.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval()
    with torch.no_grad():
        pred = torch.cat([clf(to_unit(c, levels)).argmax(1) for c in te.x.split(1000)])
    from sklearn.linear_model import LogisticRegression  # a linear reference (sklearn ships the digits)

    flat = tr.x.reshape(len(tr.x), -1).float().numpy() / (levels - 1)
    lin = LogisticRegression(max_iter=2000).fit(flat, tr.y.numpy())
    lin_acc = float(
        (lin.predict(te.x.reshape(len(te.x), -1).float().numpy() / (levels - 1)) == te.y.numpy()).mean()
    )
    rows = [
        {
            "model": "SymmFlow UNet",
            "params": n_sym,
            "cls_acc (1 step)": res["cls_acc"],
            "fd": res["fd"],
            "acc": res["acc"],
        },
        {
            "model": "conditional FM UNet (same budget)",
            "params": sum(p.numel() for p in generator(fm).fm.net.parameters()),
            "fd": base["fd"],
            "acc": base["acc"],
        },
        {
            "model": f"CNN classifier (width {args.clf_width}, same steps)",
            "params": sum(p.numel() for p in clf.parameters()),
            "cls_acc (1 step)": float((pred == te.y).float().mean()),
        },
        {"model": "logistic regression (pixels)", "cls_acc (1 step)": lin_acc},
    ]
    _emit(args, rows, f"SymmFlow vs separate models ({args.steps} steps, batch {cfg['batch_size']})")


def ceiling(args: argparse.Namespace) -> None:
    """What a sampler of the inpainting posterior can reach: a classifier trained on half images (the
    kept half and the mask, same sides as ``inpaint``) estimates ``p(y | kept pixels)``; after temperature
    calibration on held-out training images, ``E[p(y_true | kept)]`` is the class accuracy of an exact
    posterior sampler graded by a perfect classifier, and the half classifier's own accuracy is what
    always filling in its most likely class would score."""
    from flowforge.core import masks as M
    from flowforge.data import dequantize
    from flowforge.metrics.image_features import load_classifier
    from flowforge.nn import SmallCNN

    tr, te = load_mnist(args.data_dir, "train"), load_mnist(args.data_dir, "test")
    unit = lambda x: x.float() * (2 / 255) - 1  # noqa: E731

    def halves(n: int, g: torch.Generator) -> torch.Tensor:
        sides = torch.randint(0, 4, (n,), generator=g)
        return torch.cat([M.half_mask(1, 28, 28, M.SIDES[int(s)]) for s in sides])

    n_fit = len(tr.x) - 5000
    torch.manual_seed(0)
    clf = SmallCNN(in_channels=2, width=args.clf_width, feature_dim=256)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(args.steps):
        idx = torch.randint(0, n_fit, (128,), generator=g)
        xb = dequantize(tr.x[idx], 256, generator=g)
        loss = torch.nn.functional.cross_entropy(clf(M.inpaint_extra(xb, halves(128, g))), tr.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    clf.eval()

    def logits(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([clf(M.inpaint_extra(unit(c), halves(len(c), g))) for c in x.split(1000)])

    val_logits, val_y = logits(tr.x[n_fit:], torch.Generator().manual_seed(2)), tr.y[n_fit:]
    temps = torch.linspace(0.5, 3.0, 51)
    nll = [torch.nn.functional.cross_entropy(val_logits / T, val_y) for T in temps]
    T = float(temps[int(torch.stack(nll).argmin())])
    test_logits = logits(te.x, torch.Generator().manual_seed(1))
    p = (test_logits / T).softmax(-1)
    grader = load_classifier("mnist")
    with torch.no_grad():
        grader_acc = float(
            torch.cat([grader(unit(c)).argmax(-1) for c in te.x.split(1000)]).eq(te.y).float().mean()
        )
    p_true = p.gather(1, te.y[:, None]).squeeze(1)
    rows = [
        {
            "half classifier (steps, width)": f"{args.steps}, {args.clf_width}",
            "temperature": T,
            "argmax acc (fill with the likeliest class)": float((p.argmax(1) == te.y).float().mean()),
            "E[p(y_true | kept)] (exact posterior sampler)": float(p_true.mean()),
            "times the grader's acc on originals": float(p_true.mean()) * grader_acc,
            "grader acc on originals": grader_acc,
            "test NLL": float(torch.nn.functional.cross_entropy(test_logits / T, te.y)),
        }
    ]
    _emit(args, rows, "Inpainting ceiling: 50% side holes, all 10k MNIST test images")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["refs", "nfe", "guidance", "inpaint", "ceiling", "symmflow", "run"])
    p.add_argument("runs", nargs="*")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--data-dir", default="../shared/data/mnist")
    p.add_argument("--json", default="")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cfg", type=float, nargs="*", default=[2.0, 4.0])
    p.add_argument("--raag", type=float, nargs="*", default=[4.0, 8.0])
    p.add_argument("--guidance", type=float)
    p.add_argument("--steps-sample", type=int)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--clf-width", type=int, default=48)
    p.add_argument("--settings", nargs="*", help="inpaint: STEPS:W entries (Euler steps, context guidance)")
    p.add_argument("--first", type=int, default=0, help="inpaint: index of the first test image")
    p.add_argument("--seed", type=int, default=0, help="inpaint: seed of the sides and the noise")
    p.add_argument("--class-from", default="", help="inpaint: a mnist-class-posterior run (two-stage fills)")
    p.add_argument("--class-temperature", type=float, default=1.0, help="inpaint: its temperature tau")
    p.add_argument("--guide-on", default="context", choices=["context", "class"],
                   help="inpaint: guidance towards the kept pixels or the class (conditional runs)")  # fmt: skip
    p.add_argument("--grid", nargs="*", help="nfe: SOLVER:STEPS entries (default: the full grid)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    {
        "refs": refs,
        "nfe": nfe,
        "guidance": guidance,
        "inpaint": inpaint,
        "ceiling": ceiling,
        "symmflow": symmflow,
        "run": run_eval,
    }[args.part](args)


if __name__ == "__main__":
    main()
