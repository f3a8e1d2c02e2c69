#!/usr/bin/env python3
"""Train the classifier whose features ``flowforge.metrics.image_metrics`` uses, and write its files.

    python scripts/train_image_classifier.py --dataset mnist --out src/flowforge/metrics/weights/
    python scripts/train_image_classifier.py --dataset digits --out src/flowforge/metrics/weights/

Writes ``{dataset}_classifier.safetensors`` (fp32 weights) and ``{dataset}_classifier.json``
(architecture kwargs, test accuracy, this command, training settings and the reference numbers: FD and
precision/recall of held-out real images and of a Gaussian fitted to the training pixels, both against
the test split). Prints the sha256 of the safetensors file: put it into ``CLASSIFIERS`` in
``src/flowforge/metrics/image_features.py``, which refuses files whose hash differs.

Images reach the network as floats in ``[-1, 1]``: ``2 q / (levels - 1) - 1`` for integer pixels ``q``.
Training adds small random shifts (background-filled) and uses a fixed seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from flowforge.data import load_digits, load_mnist
from flowforge.metrics.image_features import fitted_gaussian_samples, image_metrics
from flowforge.nn import SmallCNN

DEFAULTS = {
    # MNIST: 10k held-out train images vs the 10k test images; digits: all 1,438 train vs all 359 test
    "mnist": {"epochs": 6, "batch_size": 128, "lr": 3e-3, "shift": 2, "width": 16, "n_ref": 10_000},
    "digits": {"epochs": 60, "batch_size": 64, "lr": 3e-3, "shift": 1, "width": 16, "n_ref": None},
}


def to_float(q: Tensor, levels: int) -> Tensor:
    """Integer pixels to the classifier's input range: ``2 q / (levels - 1) - 1``."""
    return 2.0 * q.float() / (levels - 1) - 1.0


def random_shift(x: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """Shift each image by up to ``shift`` pixels in each direction; the border is filled with -1."""
    if shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), value=-1.0)
    oy = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    return padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)


@torch.no_grad()
def accuracy(net: SmallCNN, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    net.eval()
    hits = sum(
        int((net(x[s : s + batch_size]).argmax(1) == y[s : s + batch_size]).sum())
        for s in range(0, len(x), batch_size)
    )
    return hits / len(x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=sorted(DEFAULTS), required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for the .safetensors and .json files")
    p.add_argument(
        "--mnist-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--shift", type=int, help="largest random shift in pixels")
    p.add_argument("--width", type=int)
    p.add_argument("--feature-dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    cfg = dict(DEFAULTS[args.dataset])
    for key in ("epochs", "batch_size", "lr", "shift", "width"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the network's initialisation and dropout; a script, not the library
    gen = torch.Generator().manual_seed(args.seed)

    if args.dataset == "mnist":
        train, test = (
            load_mnist(args.mnist_root, "train", download=False),
            load_mnist(args.mnist_root, "test", download=False),
        )
    else:
        train, test = load_digits("train"), load_digits("test")
    x_tr, y_tr = to_float(train.x, train.levels), train.y
    x_te, y_te = to_float(test.x, test.levels), test.y
    size = x_tr.shape[-1]
    net = SmallCNN(
        in_channels=1, image_size=size, num_classes=10, width=cfg["width"], feature_dim=args.feature_dim
    )
    n_params = sum(p.numel() for p in net.parameters())
    print(
        f"{args.dataset}: {len(x_tr)} train / {len(x_te)} test images, SmallCNN {net.config()}, {n_params} parameters"
    )

    steps_per_epoch = -(-len(x_tr) // cfg["batch_size"])
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg["lr"], total_steps=cfg["epochs"] * steps_per_epoch
    )
    t0 = time.time()
    for epoch in range(cfg["epochs"]):
        net.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for s in range(0, len(x_tr), cfg["batch_size"]):
            idx = perm[s : s + cfg["batch_size"]]
            loss = F.cross_entropy(net(random_shift(x_tr[idx], cfg["shift"], gen)), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if epoch == cfg["epochs"] - 1 or args.dataset == "mnist" or (epoch + 1) % 10 == 0:
            print(
                f"epoch {epoch + 1}/{cfg['epochs']}  loss {total / len(x_tr):.4f}  {time.time() - t0:.0f}s",
                flush=True,
            )
    seconds = time.time() - t0
    net.eval().requires_grad_(False)
    acc = accuracy(net, x_te, y_te)
    print(f"test accuracy {acc:.4f} ({len(x_te)} images), training {seconds:.0f}s")

    # reference numbers, computed the way users compute them (image_metrics on [-1, 1] floats)
    n_ref = cfg["n_ref"] or len(x_tr)
    real = x_tr[:n_ref]
    which = f"the first {n_ref}" if n_ref < len(x_tr) else f"all {n_ref}"
    gauss = fitted_gaussian_samples(x_tr, n_ref, torch.Generator().manual_seed(args.seed + 1))
    reference = {}
    for key, samples, what in (
        ("real", real, f"{which} train images vs all {len(x_te)} test images"),
        (
            "fitted_gaussian",
            gauss,
            f"{n_ref} samples of a full-covariance Gaussian fitted to all {len(x_tr)} train images (clipped to [-1, 1]) vs all {len(x_te)} test images",
        ),
    ):
        m = image_metrics(samples, x_te, metrics=("fd", "pr"), classifier=net)
        reference[key] = {"setup": what, **{k: round(v, 4) for k, v in m.items()}}
        print(f"reference {key}: {reference[key]}")

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / f"{args.dataset}_classifier.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    config = {
        "name": args.dataset,
        "architecture": "flowforge.nn.SmallCNN",
        "kwargs": net.config(),
        "input": f"float images (N, 1, {size}, {size}) in [-1, 1]: 2 * q / (levels - 1) - 1 for integer pixels q, levels={train.levels}",
        "features": "SmallCNN.features: the penultimate layer (after its ReLU)",
        "test_accuracy": round(acc, 4),
        "test_images": len(x_te),
        "train_command": "python scripts/train_image_classifier.py "
        + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "training": {
            **{k: v for k, v in cfg.items() if k != "n_ref"},
            "seed": args.seed,
            "optimizer": "AdamW(weight_decay=1e-4) + OneCycleLR",
            "augmentation": f"random shifts up to {cfg['shift']} px, border -1",
            "threads": args.threads,
            "seconds": round(seconds),
            "torch": torch.__version__,
        },
        "reference": reference,
        "sha256": "not stored here: CLASSIFIERS[name] in flowforge/metrics/image_features.py holds the safetensors file's sha256",
    }
    (args.out / f"{args.dataset}_classifier.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {weights} ({weights.stat().st_size} bytes) and its .json")
    print(f"sha256 {digest}  -> CLASSIFIERS[{args.dataset!r}] in src/flowforge/metrics/image_features.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
