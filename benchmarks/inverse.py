"""Inverse problems with flow priors (issue 13, "What it must show" items 1 and 2).

1. Exactness (``gmm``): a Gaussian-mixture prior whose flow velocity is known in closed form
   (:class:`flowforge.core.gaussian_mixture.GaussianMixture`), a linear Gaussian measurement
   ``y = A x + sigma n`` and the exact posterior (again a mixture). Every method draws ``--n`` samples for
   ONE measurement (its own seeds), scored against ``--n`` exact posterior draws by the sliced 2-Wasserstein
   distance (SWD, 256 fixed projections), the error of the sample mean against the exact posterior mean
   (``|mean err|``, Euclidean), and the total-variation distance of the mode weights (each sample assigned to
   its most responsible posterior component) from the exact weights. Control rows: a fresh exact posterior
   draw, and the exact posterior velocity integrated with the same Euler steps (solver floor).
   In 2-D (4 modes, A = [1, 0]) and in 16-D (6 modes, A a random 8x16 matrix).
2. MNIST (``mnist``): the trained class-conditional UNet flow at /work/runs/mnist used unconditionally
   (its null label; trained with label dropout 0.1) as the prior; 50% inpainting (a random half of each
   image missing), 4x super-resolution (4x4 average pooling) and Gaussian blur (9x9, std 2, circular) at
   noise 0.05 on test images in [-1, 1]; PSNR (on [0, 1], of the clamped restoration against the clean
   image), the shipped MNIST classifier's accuracy on the restorations against the true label, and the
   diversity (mean per-pixel std across the posterior samples of one image, [0, 1] scale) for FLAIR, its
   ablations (no calibration = constant weight 0.5; no DTA = fresh noise each step), DPS and projection.

Run (one thread):
    python benchmarks/inverse.py gmm --n 20000
    python benchmarks/inverse.py mnist --images 100 --samples 4
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from flowforge.core.gaussian_mixture import GaussianMixture
from flowforge.inverse import (
    DPS,
    FLAIR,
    AvgPoolDownsample,
    GaussianBlur,
    Inpaint,
    MatrixOperator,
    Projection,
    calibrated_weights,
    velocity_errors,
)
from flowforge.metrics import sliced_wasserstein

DT = torch.float64


# ----------------------------------------------------------------------------------------------- GMM
def gmm_2d() -> tuple[GaussianMixture, Tensor, Tensor, float]:
    """Four anisotropic modes; x-coordinate observed at y = 1.6 with sigma 0.5: two modes compete."""
    means = torch.tensor([[-2.0, -1.0], [2.0, -1.5], [1.2, 2.0], [-1.0, 2.0]], dtype=DT)
    rot = lambda a: torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=DT)  # noqa: E731
    covs = torch.stack(
        [
            rot(a) @ torch.diag(torch.tensor(s, dtype=DT)) @ rot(a).T
            for a, s in [(0.3, [0.3, 0.05]), (1.0, [0.2, 0.08]), (-0.5, [0.25, 0.1]), (0.0, [0.1, 0.1])]
        ]
    )
    prior = GaussianMixture(torch.tensor([0.3, 0.2, 0.3, 0.2], dtype=DT), means, covs)
    a = torch.tensor([[1.0, 0.0]], dtype=DT)
    return prior, a, torch.tensor([1.6], dtype=DT), 0.5


def gmm_16d() -> tuple[GaussianMixture, Tensor, Tensor, float]:
    """Six modes in 16-D; A a random 8x16 matrix / 4 that cannot tell modes 0 and 1 apart (its rows are
    orthogonal to m0 - m1), y = A m0: the posterior splits between modes 0 and 1 by their weights and
    covariances."""
    g = torch.Generator().manual_seed(16)
    k, d, m = 6, 16, 8
    means = 2.0 * torch.randn(k, d, generator=g, dtype=DT)
    root = 0.25 * torch.randn(k, d, d, generator=g, dtype=DT) / math.sqrt(d)
    covs = root @ root.transpose(-1, -2) + 0.05 * torch.eye(d, dtype=DT)
    prior = GaussianMixture(torch.tensor([0.15, 0.25, 0.15, 0.15, 0.15, 0.15], dtype=DT), means, covs)
    u = (means[0] - means[1]) / (means[0] - means[1]).norm()
    a = torch.randn(m, d, generator=g, dtype=DT) / 4.0
    a = a - (a @ u)[:, None] * u
    return prior, a, a @ means[0], 0.5


def euler_exact(post: GaussianMixture, n: int, steps: int, g: torch.Generator) -> Tensor:
    """The exact posterior velocity integrated with Euler (the solver floor of the guided samplers)."""
    x = torch.randn(n, post.dim, generator=g, dtype=DT)
    for i in range(steps):
        x = x + post.velocity(x, torch.full((n,), i / steps, dtype=DT)) / steps
    return x


def score_gmm(x: Tensor, ref: Tensor, post: GaussianMixture) -> dict[str, float]:
    g = torch.Generator().manual_seed(123)
    swd = sliced_wasserstein(x, ref, n_projections=256, generator=g)
    mean_err = float((x.mean(0) - post.mean()).norm())
    k = post.responsibilities(x).argmax(-1)
    frac = torch.bincount(k, minlength=len(post.weights)).to(DT) / len(x)
    tv = float(0.5 * (frac - post.weights).abs().sum())
    return {"swd": swd, "mean_err": mean_err, "mode_tv": tv, "weights": [round(float(f), 3) for f in frac]}


def run_gmm(name: str, make: Callable, n: int, seed: int) -> list[dict]:
    prior, a, y, sigma = make()
    post = prior.posterior(a, y, sigma)
    op = MatrixOperator(a)
    ys = y.expand(n, -1).contiguous()
    ref = post.sample(n, generator=torch.Generator().manual_seed(seed))
    # CRW table from the exact prior velocity (the err(t) of an exact model is the irreducible variance)
    errs = velocity_errors(
        prior.velocity,
        prior.sample(4096, generator=torch.Generator().manual_seed(seed + 1)),
        generator=torch.Generator().manual_seed(seed + 2),
    )
    crw = calibrated_weights(errs)
    lr = 0.5 / float(torch.linalg.matrix_norm(a, 2)) ** 2  # data step ~ 1/(2 w ||A||^2) at w = 0.5
    methods: dict[str, Callable[[torch.Generator], Tensor]] = {
        "exact posterior (control: fresh draw)": lambda g: post.sample(n, generator=g),
        "exact posterior velocity, Euler 100": lambda g: euler_exact(post, n, 100, g),
        "DPS (likelihood rule, 100 steps)": lambda g: DPS(prior.velocity, op, sigma=sigma, steps=100)(
            ys, generator=g
        ),
        "DPS (normalised, zeta=0.05, 100 steps)": lambda g: DPS(
            prior.velocity, op, sigma=sigma, steps=100, zeta=0.05
        )(ys, generator=g),
        "projection (100 steps)": lambda g: Projection(prior.velocity, op, steps=100)(ys, generator=g),
        "FLAIR (CRW + DTA, 50 steps)": lambda g: FLAIR(
            prior.velocity, op, sigma=sigma, weights=crw, data_lr=lr
        )(ys, generator=g),
        "FLAIR no calibration": lambda g: FLAIR(prior.velocity, op, sigma=sigma, weights=0.5, data_lr=lr)(
            ys, generator=g
        ),
        "FLAIR no DTA": lambda g: FLAIR(prior.velocity, op, sigma=sigma, weights=crw, data_lr=lr, dta=False)(
            ys, generator=g
        ),
    }
    rows = []
    print(
        f"\n## {name}: d = {prior.dim}, K = {len(prior.weights)}, m = {a.shape[0]}, sigma = {sigma}, n = {n}"
    )
    print(f"exact posterior weights: {[round(float(w), 3) for w in post.weights]}")
    print("| method | SWD | mean err | mode TV | mode weights | s |")
    print("|---|---|---|---|---|---|")
    for i, (label, fn) in enumerate(methods.items()):
        t0 = time.perf_counter()
        x = fn(torch.Generator().manual_seed(seed + 100 + i))
        dt = time.perf_counter() - t0
        r = {"bed": name, "method": label, **score_gmm(x, ref, post), "seconds": round(dt, 1)}
        rows.append(r)
        print(
            f"| {label} | {r['swd']:.4f} | {r['mean_err']:.4f} | {r['mode_tv']:.3f} | {r['weights']} | {dt:.1f} |"
        )
    return rows


# --------------------------------------------------------------------------------------------- MNIST
RUN = "/work/runs/mnist"
NOISE = 0.05


def mnist_prior(run: str):
    """The run's FlowMatching model and its unconditional velocity (null label)."""
    from flowforge.recipes import load_run

    model, config = load_run(run)
    null = int(model.null_label)

    def field(x: Tensor, t: Tensor) -> Tensor:
        return model.velocity(x, t, y=torch.full((x.shape[0],), null, dtype=torch.long))

    return model, config, field


def mnist_data(config: dict, split: str, n: int, seed: int) -> tuple[Tensor, Tensor]:
    from flowforge.recipes.images import bin_centres, image_set

    s = image_set(config, split)
    idx = torch.randperm(len(s.x), generator=torch.Generator().manual_seed(seed))[:n]
    return bin_centres(s.x[idx], int(config["levels"])), s.y[idx]


def mnist_operator(kind: str, n: int, seed: int):
    from flowforge.core.masks import half_mask

    if kind == "inpaint":
        g = torch.Generator().manual_seed(seed)
        sides = torch.randint(0, 4, (n,), generator=g)
        return Inpaint(
            torch.cat([half_mask(1, 28, 28, ("left", "right", "top", "bottom")[int(s)]) for s in sides])
        )
    if kind == "sr4":
        return AvgPoolDownsample(4)
    return GaussianBlur(9, 2.0, boundary="circular")


OP_NORM2 = {"inpaint": 1.0, "sr4": 1.0 / 16.0, "blur": 1.0}  # ||A||^2


def latent_prior(run: str):
    """A latent run (flow matching on KL-autoencoder latents): its model and the inner flow's null-label velocity."""
    from flowforge.recipes import load_run

    model, config = load_run(run)
    null = int(model.inner.null_label)

    def field(z: Tensor, t: Tensor) -> Tensor:
        return model.inner.velocity(z, t, y=torch.full((z.shape[0],), null, dtype=torch.long))

    return model, field


def latent_methods(
    lm, field, kind: str, crw: Tensor, steps: dict, zeta: float, flair_lr: float
) -> dict[str, Callable]:
    """Latent FLAIR (variational mean in latent space, data term through the decoder) and latent DPS."""
    lr = flair_lr / OP_NORM2[kind]
    space = dict(decoder=lm.decode, encoder=lm.encode)
    common = dict(sigma=NOISE, steps=steps["flair"], data_lr=lr, weights=crw, **space)
    shape = tuple(lm.inner.event_shape)
    return {
        "latent FLAIR as published (no pull cap)": lambda op: FLAIR(field, op, **common, max_pull=None),
        "latent FLAIR": lambda op: FLAIR(field, op, **common, max_pull=1.0),
        "latent DPS": lambda op: DPS(
            field,
            op,
            sigma=NOISE,
            steps=steps["dps"],
            zeta=zeta / math.sqrt(OP_NORM2[kind]),
            decoder=lm.decode,
            latent_shape=shape,
        ),
    }


def pull_summary(name: str, steps: int, crw: Tensor) -> str:
    f = FLAIR(
        lambda x, t: x, MatrixOperator(torch.eye(1)), sigma=NOISE, steps=steps, weights=crw, max_pull=1.0
    )
    p = f.pulls()
    amp = math.prod(max(1.0, abs(1.0 - q)) for q in p)
    j = p.index(max(p))
    return (
        f"{name} CRW: w(0) = {crw[0]:.3f}, max {crw.max():.3f} at t = {int(crw.argmax()) / (len(crw) - 1):.2f}, "
        f"w(0.8) = {crw[round(0.8 * (len(crw) - 1))]:.3f}; uncapped pull max {p[j]:.2f} at t = {f.times()[j]:.2f}, "
        f"pinned-direction growth prod max(1, |1 - pull|) = {amp:.3g}"
    )


def mnist_methods(
    field, kind: str, crw: Tensor, steps: dict, zeta: float, flair_lr: float
) -> dict[str, Callable]:
    lr = flair_lr / OP_NORM2[kind]
    common = dict(sigma=NOISE, steps=steps["flair"], data_lr=lr, max_pull=1.0)
    return {
        "FLAIR as published (no pull cap)": lambda op: FLAIR(
            field, op, weights=crw, **{**common, "max_pull": None}
        ),
        "FLAIR": lambda op: FLAIR(field, op, weights=crw, **common),
        "FLAIR no calibration": lambda op: FLAIR(field, op, weights=0.5, **common),
        "FLAIR no DTA": lambda op: FLAIR(field, op, weights=crw, dta=False, **common),
        "DPS": lambda op: DPS(
            field, op, sigma=NOISE, steps=steps["dps"], zeta=zeta / math.sqrt(OP_NORM2[kind])
        ),
        "projection": lambda op: Projection(field, op, steps=steps["projection"]),
    }


def run_mnist(a) -> list[dict]:
    from flowforge.metrics.image_features import load_classifier

    model, config, field = mnist_prior(a.run)
    clf = load_classifier("mnist")
    cal, _ = mnist_data(config, "train", a.calibrate, a.seed + 7)
    t0 = time.perf_counter()
    crw = calibrated_weights(velocity_errors(field, cal, generator=torch.Generator().manual_seed(a.seed + 8)))
    print(
        f"CRW table from {a.calibrate} training images: {time.perf_counter() - t0:.0f} s; "
        f"w(0) = {crw[0]:.3f}, max {crw.max():.3f} at t = {int(crw.argmax()) / 99:.2f}, w(0.8) = {crw[79]:.3f}"
    )
    print(pull_summary("pixel", a.flair_steps, crw))
    lat = None
    if a.latent_run:
        lm, lfield = latent_prior(a.latent_run)
        t0 = time.perf_counter()
        lcrw = calibrated_weights(
            velocity_errors(lfield, lm.encode(cal), generator=torch.Generator().manual_seed(a.seed + 8))
        )
        print(f"latent CRW table: {time.perf_counter() - t0:.0f} s")
        print(pull_summary("latent", a.flair_steps, lcrw))
        lat = (lm, lfield, lcrw)
    if a.trace:
        trace(field, crw, lat, a)
        return []
    split = "train" if a.tune else "test"
    x, labels = mnist_data(config, split, a.images, a.seed + (11 if a.tune else 0))
    steps = {"flair": a.flair_steps, "dps": a.dps_steps, "projection": a.proj_steps}
    rows = []
    print(
        f"\n## MNIST ({split} split), n = {a.images} images x {a.samples} samples, noise {NOISE}, steps {steps}"
    )
    print("| operator | method | PSNR (dB) | classifier acc | diversity | ||Ax-y||/sqrt(m) | s |")
    print("|---|---|---|---|---|---|---|")
    for kind in a.operators.split(","):
        op = mnist_operator(kind, a.images, a.seed + 3)
        y = op.measure(x, NOISE, generator=torch.Generator().manual_seed(a.seed + 5))
        measured = float((torch.ones_like(y) * op.noise_support(y)).sum()) / len(y)
        base = {"pinv (A^+ y)": None}
        methods = mnist_methods(field, kind, crw, steps, a.zeta, a.flair_lr)
        if lat is not None:
            methods.update(latent_methods(lat[0], lat[1], kind, lat[2], steps, a.latent_zeta, a.latent_lr))
        for label in [m for m in methods if m in a.methods.split(",") or a.methods == "all"] + list(base):
            t0 = time.perf_counter()
            outs = []
            n_samples = 1 if label.startswith("pinv") else a.samples
            for s in range(n_samples):
                if label.startswith("pinv"):
                    outs.append(op.pseudo_inverse(y))
                    continue
                g = torch.Generator().manual_seed(a.seed + 1000 * (s + 1))
                parts = []
                for i in range(0, len(y), a.chunk):
                    sl = slice(i, i + a.chunk)
                    sub = Inpaint(op.mask[sl]) if isinstance(op, Inpaint) else op
                    parts.append(methods[label](sub)(y[sl], generator=g))
                outs.append(torch.cat(parts))
            dt = time.perf_counter() - t0
            raw = torch.stack(outs)
            xs = raw.clamp(-1, 1)  # (S, N, 1, 28, 28)
            mse = ((xs - x) / 2).square().mean((2, 3, 4))  # [0, 1] scale
            psnr = float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())
            with torch.no_grad():
                pred = torch.stack(
                    [torch.cat([clf(c).argmax(-1) for c in xi.float().split(500)]) for xi in xs]
                )
            acc = float((pred == labels).float().mean())
            div = float((xs / 2).std(0).mean()) if len(xs) > 1 else 0.0
            res = float(
                ((op.forward(xs[0].to(y.dtype)) - y).square().sum((1, 2, 3)) / measured).sqrt().mean()
            )
            r = {
                "operator": kind,
                "method": label,
                "psnr": psnr,
                "acc": acc,
                "diversity": div,
                "resid": res,
                "n_images": a.images,
                "samples": len(xs),
                "seconds": round(dt, 1),
                "split": split,
            }
            rows.append(r)
            print(
                f"| {kind} | {label} | {psnr:.2f} | {acc:.3f} | {div:.4f} | {res:.4f} | {dt:.0f} |",
                flush=True,
            )
    return rows


def trace(field, crw: Tensor, lat, a) -> None:
    """The divergence traced: rms of mu and of the regulariser step against t, FLAIR uncapped vs capped."""
    from flowforge.recipes.images import bin_centres, image_set  # noqa: F401

    _, config, _ = mnist_prior(a.run)
    x, _ = mnist_data(config, "test", a.images, a.seed)
    for kind in a.operators.split(","):
        op = mnist_operator(kind, a.images, a.seed + 3)
        y = op.measure(x, NOISE, generator=torch.Generator().manual_seed(a.seed + 5))
        lr = a.flair_lr / OP_NORM2[kind]
        runs = {
            "pixel, no cap": FLAIR(field, op, sigma=NOISE, steps=a.flair_steps, weights=crw, data_lr=lr),
            "pixel, cap 1": FLAIR(
                field, op, sigma=NOISE, steps=a.flair_steps, weights=crw, data_lr=lr, max_pull=1.0
            ),
        }
        if lat is not None:
            lm, lfield, lcrw = lat
            llr = a.latent_lr / OP_NORM2[kind]
            kw = dict(
                sigma=NOISE,
                steps=a.flair_steps,
                weights=lcrw,
                data_lr=llr,
                decoder=lm.decode,
                encoder=lm.encode,
            )
            runs["latent, no cap"] = FLAIR(lfield, op, **kw)
        rec: dict[str, list] = {}
        final: dict[str, str] = {}
        for name, f in runs.items():
            rows: list = []

            def cb(t: float, mu: Tensor, step: Tensor, rows=rows, f=f) -> None:
                pull = f.reg_lr * f.weight(t) / (1 - t)
                rows.append((t, pull, float(mu.square().mean().sqrt()), float(step.square().mean().sqrt())))

            out = f(y, generator=torch.Generator().manual_seed(a.seed + 1000), callback=cb).clamp(-1, 1)
            rec[name] = rows
            psnr = float((10 * torch.log10(1 / ((out - x) / 2).square().mean((1, 2, 3)))).mean())
            final[name] = f"{psnr:.2f} dB, resid {float((op.forward(out) - y).square().mean().sqrt()):.3f}"
        print(f"\n## trace, {kind}: rms(mu) / rms(regulariser step) against t ({a.images} test images)")
        names = list(rec)
        print("| t | pull (pixel) | " + " | ".join(names) + " |")
        print("|---" * (2 + len(names)) + "|")
        for j in range(a.flair_steps):
            if j % max(1, a.flair_steps // 10) and rec[names[0]][j][1] < 1.8 and j != a.flair_steps - 1:
                continue
            cells = [f"{rec[n][j][2]:.3g} / {rec[n][j][3]:.3g}" for n in names]
            print(f"| {rec[names[0]][j][0]:.3f} | {rec[names[0]][j][1]:.2f} | " + " | ".join(cells) + " |")
        print("| final PSNR, residual | | " + " | ".join(final[n] for n in names) + " |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["gmm", "mnist"])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    p.add_argument("--run", default=RUN)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--calibrate", type=int, default=128, help="training images for FLAIR's CRW table")
    p.add_argument("--operators", default="inpaint,sr4,blur")
    p.add_argument("--methods", default="all")
    p.add_argument("--flair-steps", dest="flair_steps", type=int, default=20)
    p.add_argument("--dps-steps", dest="dps_steps", type=int, default=20)
    p.add_argument("--proj-steps", dest="proj_steps", type=int, default=20)
    p.add_argument("--zeta", type=float, default=1.0, help="DPS step (divided by ||A||)")
    p.add_argument(
        "--flair-lr", dest="flair_lr", type=float, default=1.0, help="FLAIR data lr (divided by ||A||^2)"
    )
    p.add_argument("--chunk", type=int, default=200)
    p.add_argument(
        "--latent-run", dest="latent_run", default="", help="also run latent FLAIR / DPS on this run"
    )
    p.add_argument(
        "--latent-lr", dest="latent_lr", type=float, default=1.0, help="latent FLAIR data lr x ||A||^2"
    )
    p.add_argument(
        "--latent-zeta", dest="latent_zeta", type=float, default=2.0, help="latent DPS zeta x ||A||"
    )
    p.add_argument("--trace", action="store_true", help="trace rms(mu) and the regulariser step against t")
    p.add_argument("--tune", action="store_true", help="score on training images (hyperparameter choice)")
    a = p.parse_args()
    torch.set_num_threads(1)
    rows: list[dict] = []
    if a.part == "gmm":
        rows += run_gmm("2-D", gmm_2d, a.n, a.seed)
        rows += run_gmm("16-D", gmm_16d, a.n, a.seed)
    else:
        rows += run_mnist(a)
    if a.out:
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
