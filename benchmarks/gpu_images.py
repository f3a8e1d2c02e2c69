"""MNIST flow matching on one GPU: flowforge's Trainer against a plain PyTorch loop, per speed mode.

Workload: unconditional flow matching (linear path, uniform t, velocity target, MSE) on MNIST 28x28 with
the UNet ``flowforge.nn.UNet(in_channels=1, channels=64, mults=(1, 2, 2), blocks=2, attention=(2,))``
(``--net standin``: a small residual conv net, for checkouts without the UNet). The training images
are put on the device once as uint8; each step draws ``--batch`` indices with replacement and
dequantises them uniformly (``2 (x + u) / 256 - 1``). Both implementations do the same maths each step:
warm-up + cosine learning rate, AdamW (betas 0.9/0.999, no weight decay), gradient clipping at 1.0, an EMA
(0.999 with the 1+n/10+n warm-up), from identically initialised networks:

    flowforge  ``flowforge.train(FlowMatching(net), data, ...)`` (no run folder, no progress bar)
    plain      a hand-written loop: x_t = t x1 + (1 - t) x0, loss = mean (net(x_t, t) - (x1 - x0))^2

Speed modes (``--modes``), applied to both:

    fp32          float32, no compile, no channels_last, no TF32
    bf16-compile  bfloat16 autocast around the loss + torch.compile of the loss
    defaults      what flowforge's Trainer picks by itself on this device (precision/compile/channels_last/
                  tf32 = auto; see ``flowforge.train.trainer.resolve_speed``); the plain loop copies them

Timing: the first ``--warmup`` steps (compilation included) are excluded; ``torch.cuda.synchronize()``
brackets the timed steps. Reported per run: images/s, ms per step, the warm-up time, the peak GPU
memory, the mean loss of the last 100 steps, and the Frechet distance of ``--fd-samples`` EMA samples
(Heun, ``--sample-steps`` steps, float32) to the MNIST test set in the features of flowforge's MNIST
classifier (``flowforge.metrics.image_features.image_metrics``; "n/a" where this checkout lacks it).
A table comes last, with the flowforge / plain ratio of images/s per mode and the largest difference
between the two implementations' final EMA weights (``max dθ``: 0 on CPU in fp32, where both draw the same
random numbers in the same order; small but nonzero where kernels are not bit-reproducible).

    python benchmarks/gpu_images.py --smoke                       # tiny, on CPU, < 1 minute
    python benchmarks/gpu_images.py --data-dir benchmarks/.cache/mnist --steps 1500 --json out.json
    bash benchmarks/gpu_images.sh                                 # the device-machine call
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.continuous import FlowMatching
from flowforge.data import load_mnist, save_image_grid
from flowforge.train import TrainConfig, run_seeds, train
from flowforge.train.trainer import resolve_speed

ROOT = Path(__file__).resolve().parents[1]
MODES = ("fp32", "bf16-compile", "defaults")
CLIP, EMA_DECAY, BETAS = 1.0, 0.999, (0.9, 0.999)


# ----------------------------------------------------------------------------------------------------
# networks


class StandIn(nn.Module):
    """A small residual conv net ``net(x, t)`` for MNIST: conv in, ``depth`` GroupNorm-SiLU-conv blocks with
    the time embedding added, conv out (zero-initialised). A stand-in until ``flowforge.nn.UNet`` lands."""

    def __init__(self, in_channels: int = 1, channels: int = 64, depth: int = 4) -> None:
        super().__init__()
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.time = nn.Sequential(nn.Linear(32, channels * 2), nn.SiLU(), nn.Linear(channels * 2, channels))
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.GroupNorm(8 if channels % 8 == 0 else 1, channels),
                nn.SiLU(),
                nn.Conv2d(channels, channels, 3, padding=1),
            )
            for _ in range(depth)
        )
        self.out = nn.Conv2d(channels, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(1000.0), 16)))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        ang = t[:, None] * self.freqs[None] * math.pi
        emb = self.time(torch.cat([ang.sin(), ang.cos()], dim=1))[:, :, None, None]
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)


def make_net(kind: str, channels: int) -> nn.Module:
    if kind == "standin":
        return StandIn(1, channels)
    try:
        from flowforge.nn import UNet
    except ImportError:
        raise SystemExit(
            "flowforge.nn.UNet is not in this checkout yet; run with --net standin (a small conv net)"
        ) from None
    return UNet(in_channels=1, channels=channels, mults=(1, 2, 2), blocks=2, attention=(2,))


# ----------------------------------------------------------------------------------------------------
# data and the hand-written loop


def mnist_source(images: Tensor, device: torch.device, seed: int) -> Callable[[int, torch.Generator], Tensor]:
    """``data(batch_size, generator)``: indices from the (CPU) generator, dequantisation noise on the device."""
    noise = torch.Generator(device=device).manual_seed(seed + 1)

    def draw(batch_size: int, generator: torch.Generator) -> Tensor:
        idx = torch.randint(images.shape[0], (batch_size,), generator=generator).to(device, non_blocking=True)
        u = torch.rand((batch_size, *images.shape[1:]), generator=noise, device=device)
        return (images[idx].float() + u) * (2.0 / 256.0) - 1.0

    return draw


def lr_schedule(step: int, lr: float, steps: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 0 (written out; the formula the trainer's default uses)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(steps - warmup, 1))
    return lr * 0.5 * (1.0 + math.cos(math.pi * p))


def fm_loss(net: nn.Module, x1: Tensor) -> Tensor:
    """Flow matching, linear path, uniform t: ``mean (net(x_t, t) - (x1 - x0))^2``."""
    x0 = torch.randn_like(x1)
    t = torch.rand(x1.shape[0], device=x1.device)
    tb = t.view(-1, 1, 1, 1)
    xt = tb * x1 + (1 - tb) * x0
    return (net(xt, t) - (x1 - x0)).square().mean()


def plain_run(
    net: nn.Module, data: Callable, speed: dict[str, Any], a: argparse.Namespace, dev: torch.device
):
    """The hand-written loop; returns (EMA net, timing dict, losses)."""
    data_seed, global_seed = run_seeds(a.seed)
    gen = torch.Generator().manual_seed(data_seed)
    torch.manual_seed(global_seed)
    net = net.to(dev)
    if speed["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=BETAS, weight_decay=0.0)
    shadow = {k: v.detach().clone() for k, v in net.state_dict().items()}
    names = {n for n, _ in net.named_parameters()}
    live = net.state_dict(keep_vars=True)
    avg_s = [shadow[k] for k in shadow if k in names and shadow[k].is_floating_point()]
    avg_p = [live[k].detach() for k in shadow if k in names and shadow[k].is_floating_point()]
    copies = [
        (shadow[k], live[k].detach()) for k in shadow if not (k in names and shadow[k].is_floating_point())
    ]
    loss_fn = functools.partial(fm_loss, net)
    if speed["compile"]:
        loss_fn = torch.compile(loss_fn)
    bf16 = speed["precision"] == "bf16"
    acc, losses, t0 = torch.zeros((), device=dev, dtype=torch.float64), [], time.perf_counter()
    timer: dict[str, float] = {"start": t0}
    with tf32(speed["tf32"], dev):
        for step in range(a.steps):
            lr = lr_schedule(step, a.lr, a.steps, a.warmup_lr)
            for g in opt.param_groups:
                g["lr"] = lr
            x1 = data(a.batch, gen)
            if speed["channels_last"]:
                x1 = x1.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(x1)
            loss = loss.float()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            opt.step()
            with torch.no_grad():
                n = step
                d = min(EMA_DECAY, (1.0 + n) / (10.0 + n))
                for s, v in copies:
                    s.copy_(v)
                torch._foreach_lerp_(avg_s, avg_p, 1.0 - d)
            acc += loss.detach()
            if (step + 1) % 100 == 0 or step + 1 == a.steps:
                losses.append((step + 1, acc.item() / (100 if (step + 1) % 100 == 0 else (step + 1) % 100)))
                acc.zero_()
            mark(timer, step + 1, a, dev)
    ema = copy.deepcopy(net)
    ema.load_state_dict(shadow)
    return ema, timer, losses


# ----------------------------------------------------------------------------------------------------
# shared pieces


class tf32:  # noqa: N801 - a context manager, used like a function
    def __init__(self, on: bool, dev: torch.device) -> None:
        self.on, self.cuda = on, dev.type == "cuda"

    def __enter__(self) -> None:
        if self.cuda:
            self.before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.on

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.before


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def mark(timer: dict[str, float], step: int, a: argparse.Namespace, dev: torch.device) -> None:
    """Start the clock after the warm-up steps, stop it after the last step (synchronised)."""
    if step == a.warmup:
        sync(dev)
        timer["t0"] = time.perf_counter()
        timer["warmup_s"] = timer["t0"] - timer["start"]
    if step == a.steps:
        sync(dev)
        timer["t1"] = time.perf_counter()


@torch.no_grad()
def heun_samples(
    net: nn.Module, n: int, steps: int, dev: torch.device, seed: int, chunk: int = 500
) -> Tensor:
    """``n`` samples of ``dx/dt = net(x, t)`` from N(0, I) at t=0 to t=1 (Heun, float32, eval mode)."""
    net.eval()
    g = torch.Generator(device=dev).manual_seed(seed)
    out = []
    for m in [chunk] * (n // chunk) + ([n % chunk] if n % chunk else []):
        x = torch.randn(m, 1, 28, 28, generator=g, device=dev)
        ts = torch.linspace(0.0, 1.0, steps + 1, device=dev)
        for i in range(steps):
            t, h = ts[i].expand(m), ts[i + 1] - ts[i]
            v = net(x, t)
            x_e = x + h * v
            x = x + h * 0.5 * (v + net(x_e, ts[i + 1].expand(m)))
        out.append(x.clamp(-1, 1).float().cpu())
    return torch.cat(out)


def fd(samples: Tensor, reference: Tensor) -> float | None:
    try:
        from flowforge.metrics.image_features import image_metrics
    except ImportError:
        return None
    try:
        return float(image_metrics(samples, reference, dataset="mnist", metrics=("fd",))["fd"])
    except Exception as e:  # a metric that fails must not lose the timings
        print(f"  FD failed: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def mode_speed(mode: str, model: nn.Module, dev: torch.device) -> dict[str, Any]:
    if mode == "fp32":
        cfg = TrainConfig(steps=1, precision="fp32", compile=False, channels_last=False, tf32=False)
    elif mode == "bf16-compile":
        cfg = TrainConfig(steps=1, precision="bf16", compile=True, channels_last=False, tf32=False)
    else:
        cfg = TrainConfig(steps=1)
    return resolve_speed(cfg, model, dev)


# ----------------------------------------------------------------------------------------------------


def one_run(impl: str, mode: str, a, dev, images, reference, grids: Path | None) -> dict[str, Any]:
    torch._dynamo.reset()  # each run compiles afresh (and never hits the recompile limit of earlier runs)
    torch.manual_seed(a.seed)
    net = make_net(a.net, a.channels)  # identical initial weights for every run
    fm = FlowMatching(net)
    speed = mode_speed(mode, fm, dev)
    data = mnist_source(images, dev, a.seed)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    timer: dict[str, float] = {"start": time.perf_counter()}
    if impl == "flowforge":
        run = train(
            fm,
            data,
            steps=a.steps,
            batch_size=a.batch,
            lr=a.lr,
            warmup=a.warmup_lr,
            grad_clip=CLIP,
            ema_decay=EMA_DECAY,
            betas=BETAS,
            seed=a.seed,
            progress=False,
            device=dev,
            callback=lambda step, trainer: mark(timer, step, a, dev),
            **{k: speed[k] for k in ("precision", "compile", "channels_last", "tf32")},
        )
        ema_fm = copy.deepcopy(run.model)
        run.ema.copy_to(ema_fm)
        ema_net = ema_fm.net
        recs = run.metrics()
        losses = [(r["step"], r["loss"]) for r in recs]
    else:
        ema_net, timer2, losses = plain_run(net, data, speed, a, dev)
        timer.update({k: v for k, v in timer2.items() if k != "start"})
    timed = a.steps - a.warmup
    seconds = timer["t1"] - timer["t0"]
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    samples = heun_samples(ema_net, a.fd_samples, a.sample_steps, dev, seed=a.seed + 7)
    if grids is not None:
        save_image_grid(samples[:64], grids / f"samples-{impl}-{mode}.png", nrow=8, scale=2)
    res = {
        "impl": impl,
        "mode": mode,
        **speed,
        "images_per_s": timed * a.batch / seconds,
        "ms_per_step": 1e3 * seconds / timed,
        "warmup_s": timer["warmup_s"],
        "peak_gib": peak,
        "loss": losses[-1][1] if losses else None,
        "fd": fd(samples, reference),
        "ema": {k: v.detach().float().cpu() for k, v in ema_net.state_dict().items()},
        "run_s": time.perf_counter() - timer["start"],
    }
    fd_text = "n/a" if res["fd"] is None else f"{res['fd']:.3f}"
    print(
        f"{impl:9s} {mode:12s} {res['images_per_s']:10.1f} img/s  {res['ms_per_step']:8.2f} ms/step  "
        f"warm-up {res['warmup_s']:6.1f} s  run {res['run_s']:6.1f} s  loss {res['loss']:.4f}  FD {fd_text}  "
        f"[{speed['precision']}, compile={speed['compile']}, channels_last={speed['channels_last']}, tf32={speed['tf32']}]",
        flush=True,
    )
    return res


def table(results: list[dict[str, Any]], a: argparse.Namespace) -> str:
    lines = [
        "| mode | impl | precision | compile | ch.last | tf32 | img/s | ms/step | ff/plain | warm-up s | peak GiB "
        "| loss | FD | max dθ |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["mode"], r["impl"]): r for r in results}
    for r in results:
        other = by.get((r["mode"], "plain"))
        ratio = (
            f"{r['images_per_s'] / other['images_per_s']:.3f}" if r["impl"] == "flowforge" and other else ""
        )
        peak = "" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        fd_text = "n/a" if r["fd"] is None else f"{r['fd']:.3f}"
        lines.append(
            f"| {r['mode']} | {r['impl']} | {r['precision']} | {r['compile']} | {r['channels_last']} | {r['tf32']} "
            f"| {r['images_per_s']:.1f} | {r['ms_per_step']:.2f} | {ratio} | {r['warmup_s']:.1f} | {peak} "
            f"| {r['loss']:.4f} | {fd_text} | {r.get('ema_max_diff', float('nan')):.2g} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--net", choices=("unet", "standin"), help="default: unet (standin with --smoke)")
    p.add_argument("--channels", type=int, help="default: 64 (8 with --smoke)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, among {', '.join(MODES)}")
    p.add_argument("--impls", default="flowforge,plain")
    p.add_argument("--steps", type=int, default=800, help="training steps per run (the budget)")
    p.add_argument("--warmup", type=int, default=50, help="untimed steps (compilation happens here)")
    p.add_argument("--warmup-lr", type=int, default=100, help="learning-rate warm-up steps")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fd-samples", type=int, default=2000)
    p.add_argument("--sample-steps", type=int, default=16, help="Heun steps for the FD samples (2 NFE each)")
    p.add_argument("--grids", help="folder for one 8x8 sample grid PNG per run")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--smoke", action="store_true", help="everything tiny on CPU (checks the script, < 1 min)")
    a = p.parse_args(argv)
    if a.smoke:
        a.device, a.steps, a.warmup, a.warmup_lr = "cpu", 8, 2, 2
        a.net, a.channels = a.net or "standin", a.channels or 8
        a.batch, a.fd_samples, a.sample_steps, a.lr = 16, 64, 2, 1e-2
        # inductor's C++ build takes minutes on a small CPU: the smoke run traces with dynamo and runs eagerly
        real_compile = torch.compile
        torch.compile = functools.partial(real_compile, backend="eager")
        torch.set_num_threads(1)
    a.net, a.channels = a.net or "unet", a.channels or 64
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    impls = [m.strip() for m in a.impls.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; choose among {', '.join(MODES)}")
    for i in impls:
        if i not in ("flowforge", "plain"):
            p.error(f"unknown impl {i!r}; choose among flowforge, plain")
    if a.warmup >= a.steps:
        p.error(f"--warmup ({a.warmup}) must be smaller than --steps ({a.steps})")
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(1)
    if Path(a.data_dir).is_dir():
        train_x, test_x = (load_mnist(a.data_dir, split, download=False).x for split in ("train", "test"))
    elif a.smoke:  # the smoke run checks the script, not the data
        print(f"--data-dir {a.data_dir} not found: the smoke run uses random images", flush=True)
        train_x, test_x = (
            torch.randint(0, 256, (256, 1, 28, 28), generator=g, dtype=torch.uint8) for _ in "ab"
        )
    else:
        p.error(f"--data-dir {a.data_dir}: no such folder; give the folder with the four MNIST .gz files")
    images = train_x.to(dev)  # uint8 on the device, once
    ref_idx = torch.randperm(len(test_x), generator=g)[: max(a.fd_samples, 10)]
    reference = test_x[ref_idx].float() * (2.0 / 255.0) - 1.0
    grids = Path(a.grids) if a.grids else None
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    print(
        f"device {name}, torch {torch.__version__}, net {a.net} (channels {a.channels}), batch {a.batch}, "
        f"{a.steps} steps ({a.warmup} untimed), lr {a.lr}",
        flush=True,
    )
    nparams = sum(p.numel() for p in make_net(a.net, a.channels).parameters())
    print(f"parameters: {nparams / 1e6:.2f} M", flush=True)
    results: list[dict[str, Any]] = []

    def save() -> None:  # after every run, so a run cut short by a time limit keeps what it measured
        if a.json:
            done = [{k: v for k, v in r.items() if k != "ema"} for r in results]
            Path(a.json).write_text(json.dumps({**header, "results": done}, indent=2))

    header = {
        "device": name,
        "torch": torch.__version__,
        "net": a.net,
        "channels": a.channels,
        "params": nparams,
        "batch": a.batch,
        "steps": a.steps,
        "warmup": a.warmup,
        "lr": a.lr,
        "fd_samples": a.fd_samples,
        "sample_steps": a.sample_steps,
        "smoke": a.smoke,
    }
    for mode in modes:
        for impl in impls:
            results.append(one_run(impl, mode, a, dev, images, reference, grids))
            save()
        pair = [r for r in results if r["mode"] == mode]
        if len(pair) == 2:  # the same maths from the same seeds: how far apart did the EMA weights end up?
            x, y = pair[0].pop("ema"), pair[1].pop("ema")
            diff = max(float((x[k] - y[k]).abs().max()) for k in x)
            pair[0]["ema_max_diff"] = pair[1]["ema_max_diff"] = diff
            print(f"  {mode}: max |EMA weight difference| flowforge vs plain = {diff:.3g}", flush=True)
        for r in pair:
            r.pop("ema", None)
    save()
    print()
    print(table(results, a))
    return results


if __name__ == "__main__":
    main()
