"""Normalizing flows on sklearn's 8x8 digits at an equal parameter budget (issue 16, item 4): TARFlow (the
``digits-tarflow`` recipe's network), Glow, NAF, UNAF and a residual flow; test bits per dimension.

Every model gets the same treatment: about the same number of parameters (each model's width is chosen
to land nearest ``--params``), the same dequantised batches (uniform noise into [-1, 1], 17 grey levels,
one ``torch.Generator``), Adam ``--lr`` for ``--steps`` x ``--batch``, no EMA, one thread. The vector
flows (NAF, UNAF, residual) see the 64 pixels flattened; TARFlow and Glow see (1, 8, 8) images. Test
bpd: ``-(log p(x) + D log(2/L)) / (D ln 2)`` on the 359 test images, one dequantisation draw (the
recipes' number; uniform over 17 levels is 4.09). The residual flow trains with the Russian-roulette
log-det and is scored with the exact one.

    OMP_NUM_THREADS=1 python benchmarks/nf_digits.py [--steps 2000] [--models tarflow glow naf residual]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
from torch import nn

from flowforge.data import dequantize, load_digits
from flowforge.normalizing import NAF, UNAF, Glow, ResidualFlow
from flowforge.recipes import get_recipe, resolve_config

LEVELS = 17


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def tarflow(width: int) -> nn.Module:
    r = get_recipe("digits-tarflow")
    config = resolve_config(r, {"width": width})
    _, updates = r.data(config)
    config.update(updates)
    return r.build(config)


#: name -> (builder of a width, widths to search, input is an image)
MODELS: dict[str, tuple[Callable[[int], nn.Module], range, bool]] = {
    "tarflow": (tarflow, range(64, 65), True),  # the recipe's width: it sets the budget
    "glow": (lambda h: Glow((1, 8, 8), levels=2, steps=8, hidden=h), range(64, 161, 4), True),
    "naf": (lambda h: NAF(64, transforms=3, hidden=(h, h), components=8), range(16, 129, 4), False),
    "unaf": (lambda h: UNAF(64, transforms=3, hidden=(h, h)), range(32, 513, 16), False),
    "residual": (
        lambda h: ResidualFlow(64, blocks=4, hidden=(h, h), logdet="roulette"),
        range(64, 385, 8),
        False,
    ),
}


def sized(name: str, target: int) -> tuple[nn.Module, int]:
    build, widths, _ = MODELS[name]
    best = min(widths, key=lambda w: abs(n_params(build(w)) - target))
    torch.manual_seed(0)
    return build(best), best


def bpd(model: nn.Module, x: torch.Tensor) -> float:
    d = x[0].numel()
    with torch.no_grad():
        logp = torch.cat([model.log_prob(c) for c in x.split(128)])
    return float((-(logp + d * math.log(2.0 / LEVELS)) / (d * math.log(2.0))).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models", nargs="+", default=["tarflow", "glow", "naf", "residual"], choices=list(MODELS)
    )
    p.add_argument("--params", type=int, default=408_000, help="parameter budget (digits-tarflow's 408k)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    torch.set_num_threads(1)
    train, test = load_digits("train"), load_digits("test")
    x_test = dequantize(test.x, LEVELS, generator=torch.Generator().manual_seed(1))
    rows = []
    for name in args.models:
        model, width = sized(name, args.params)
        image = MODELS[name][2]
        shape = (-1, 1, 8, 8) if image else (-1, 64)
        if name == "residual":  # exact log-det for scoring
            model_eval = model
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        g = torch.Generator().manual_seed(0)
        model.train()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            idx = torch.randint(0, len(train.x), (args.batch,), generator=g)
            xb = dequantize(train.x[idx], LEVELS, generator=g).reshape(shape)
            loss = model.loss(xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sec = (time.perf_counter() - t0) / args.steps
        model.eval()
        if name == "residual":
            for block in model_eval.modules():
                if hasattr(block, "logdet") and isinstance(block.logdet, str):
                    block.logdet = "exact"
        rows.append(
            {
                "model": name,
                "width": width,
                "params": n_params(model),
                "test_bpd": bpd(model, x_test.reshape(shape)),
            }
            | {"ms_per_step": 1e3 * sec}
        )
        print(rows[-1], flush=True)
    print(
        f"\n## digits, {args.steps} steps x {args.batch}, Adam {args.lr}, one thread, no EMA (uniform: 4.09 bpd)"
    )
    print("| model | width | params | test bpd | ms / step |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['model']} | {r['width']} | {r['params']:,} | {r['test_bpd']:.3f} | {r['ms_per_step']:.1f} |"
        )


if __name__ == "__main__":
    main()
