"""TARFlow on MNIST for a fixed number of steps: test bits per dimension and training images/s.

The ``mnist-tarflow`` recipe through the library's own trainer (uniform dequantisation, EMA), then the
bpd of the 10,000 test images (one dequantisation draw) with the EMA weights.

    python benchmarks/tarflow_mnist.py --data-dir ../shared/data/mnist --steps 300 --device cpu
    python benchmarks/tarflow_mnist.py --data-dir benchmarks/.cache/mnist --steps 6000 --device cuda \
        --set width=256                      # the GPU run recorded in BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from flowforge.data import dequantization_log_det, dequantize, load_mnist
from flowforge.recipes import parse_sets, train_recipe
from flowforge.recipes.normalizing import build_image_flow
from flowforge.train import Run


@torch.no_grad()
def test_bpd(flow: torch.nn.Module, root: str, device: str, batch: int = 1000) -> float:
    s = load_mnist(root, "test", download=False)
    g = torch.Generator().manual_seed(0)
    total = 0.0
    for xb in torch.split(s.x, batch):
        y = dequantize(xb, s.levels, generator=g).to(device)
        total += float(flow.log_prob(y).double().sum())
    d = 784
    nll = -total / len(s.x) - dequantization_log_det(d, s.levels)
    return nll / (d * math.log(2))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="run folder (default: a temporary one)")
    p.add_argument("--json", help="write the result here")
    a = p.parse_args(argv)
    if a.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    overrides = {"data_dir": a.data_dir, "download": False, "device": a.device, **parse_sets(a.set)}
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="tarflow_mnist_"))
    t0 = time.perf_counter()
    run = train_recipe("mnist-tarflow", overrides=overrides, steps=a.steps, out=out, progress=False)
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    cfg = run.config
    flow = build_image_flow(cfg).to(a.device)
    Run(out).load_into(flow, ema=True)
    flow.eval()
    bpd = test_bpd(flow, a.data_dir, a.device)
    params = sum(p.numel() for p in flow.parameters())
    res = {
        "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
        "steps": a.steps,
        "batch_size": cfg["batch_size"],
        "width": cfg["width"],
        "blocks": cfg["blocks"],
        "layers": cfg["layers"],
        "params": params,
        "train_seconds": round(wall, 1),
        "images_per_s": round(a.steps * cfg["batch_size"] / wall, 1),
        "test_bpd": round(bpd, 4),
    }
    print(json.dumps(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
