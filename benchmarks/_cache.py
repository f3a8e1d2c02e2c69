"""Shared by the benchmarks: train a 2-D flow-matching model on a fresh-sample stream, or load it from
``benchmarks/.cache`` (EMA weights as safetensors via flowforge's own writer, plus a JSON of training info).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import Tensor

from flowforge.continuous import FlowMatching
from flowforge.data import Standardizer, toy2d
from flowforge.train import load_safetensors, save_safetensors, train

CACHE = Path(__file__).resolve().parent / ".cache"


def train_or_load(
    fm: FlowMatching,
    tag: str,
    dataset: str,
    sc: Standardizer,
    *,
    steps: int,
    batch: int,
    seed: int,
    read: bool = True,
    write: bool = True,
) -> tuple[FlowMatching, dict]:
    """EMA weights of ``fm`` trained on standardised fresh ``dataset`` samples, and a dict of training info."""
    wpath, ipath = CACHE / f"{tag}.safetensors", CACHE / f"{tag}.json"
    if read and wpath.is_file() and ipath.is_file():
        fm.load_state_dict(load_safetensors(wpath))
        return fm.eval(), json.loads(ipath.read_text()) | {"cached": True}

    def data(b: int, g: torch.Generator) -> Tensor:
        return sc.forward(toy2d(dataset, b, generator=g))

    t0 = time.perf_counter()
    run = train(fm, data, steps=steps, batch_size=batch, lr=1e-3, ema_decay=0.999, seed=seed, progress=False)
    secs = time.perf_counter() - t0
    run.load_into(fm, ema=True)
    info = {
        "train_seconds": round(secs, 1),
        "ms_per_step": round(1e3 * secs / steps, 2),
        "final_loss": run.metrics()[-1]["loss"],
        "threads": torch.get_num_threads(),
    }
    if write:
        CACHE.mkdir(parents=True, exist_ok=True)
        save_safetensors(wpath, {k: v.contiguous() for k, v in fm.state_dict().items()})
        ipath.write_text(json.dumps(info, indent=2))
    return fm.eval(), info | {"cached": False}
