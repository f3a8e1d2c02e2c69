"""Boltzmann generators on CPU: GMM-40 (2-D) and many-well-32, importance sampling vs SMC.

Protocol (``torch.set_num_threads(1)``, float32 flows, energies from ``flowforge.data.energies``, flows
from ``flowforge.normalizing.flows``, training with :func:`flowforge.train.train`, EMA 0.99):

- **GMM-40**: ``NSF(2, transforms=6, hidden=(128, 128), bins=16, bound=5)`` (autoregressive RQ splines)
  behind a fixed scaling ``x / 10``, so the means (within +-40) fall inside the splines' ``[-5, 5]``
  (DEM scales by 1/50 for the same reason). The scaling is part of the flow: every density is in the
  original coordinates. Rows: untrained (about N(0, 10^2 I)); ML on fresh exact samples for 3000 and
  for 200 steps (batch 256, lr 1e-3); :class:`~flowforge.normalizing.reverse_kl.ReverseKL` from the energy
  alone (``data=None``, 1500 steps), the classic mode-seeking failure, for contrast.
- **many-well-32**: ``NSF(32, transforms=6, hidden=(128, 128), bins=8, bound=5, coupling=True)``. Rows:
  untrained (about N(0, I)); ML on fresh exact samples (the rejection sampler) for 2000 and for 100
  steps; each followed by 300 steps of :class:`~flowforge.normalizing.self_improvement.SelfImprovement` from the
  energy alone (buffer of 10k SNIS-resampled from 20k proposals, refreshed every 50 steps, batch 256,
  quantile filter 0.002, frozen teacher = the ML flow).

Evaluation of every flow over seeds 0, 1, 2: IS with ``--n-is`` proposals (ESS, log Z estimate,
|log Z error|; GMM-40 is normalised, log Z = 0; many-well-32 has log Z = 164.6957), and SMC vs IS **at
equal target-energy evaluations**: SMC with ``--smc-particles`` particles, a linear schedule of
``--smc-steps`` annealing steps with ``--smc-mala`` MALA moves each (step size adapted towards 0.574
acceptance), systematic resampling at ESS < 0.5, costs ``particles * (1 + steps * mala)`` energy
evaluations (and as many ``log q`` evaluations with gradients); IS gets that many proposals. For GMM-40
also how many of the 40 modes hold at least one of 10k SNIS-resampled samples (within 4 sigma), and of
10k raw flow samples.

Run::

    python benchmarks/boltzmann.py                 # all rows: ~12 min with cached weights, ~25 min training
    python benchmarks/boltzmann.py --quick         # smoke run, ~3 min

Trained weights are cached in ``benchmarks/.cache/boltzmann-*.safetensors`` (``--retrain`` to ignore).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from flowforge.data.energies import GMM40, ManyWell
from flowforge.normalizing import NSF, Flow, ReverseKL, SelfImprovement, importance_sample, smc
from flowforge.train import load_safetensors, save_safetensors, train

CACHE = Path(__file__).resolve().parent / ".cache"


class FixedScale(nn.Module):
    """``z = x * c`` (data to noise), a constant: ``log|det| = D log c``."""

    def __init__(self, dim: int, c: float) -> None:
        super().__init__()
        self.dim, self.c = dim, float(c)

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        return x * self.c, x.new_full((x.shape[0],), self.dim * math.log(self.c))

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        return z / self.c, z.new_full((z.shape[0],), -self.dim * math.log(self.c))


def scaled(flow: Flow, dim: int, c: float) -> Flow:
    """The flow of ``x * c``: ``log q(x) = log q_inner(c x) + D log c``."""
    return Flow([FixedScale(dim, c), *flow.transform.bijections], event_shape=(dim,))


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def fit(
    model: nn.Module, data, tag: str, *, steps: int, batch: int, lr: float, seed: int, retrain: bool
) -> dict:
    """Train (or load cached weights); returns training info."""
    wpath, ipath = CACHE / f"boltzmann-{tag}.safetensors", CACHE / f"boltzmann-{tag}.json"
    if not retrain and wpath.is_file() and ipath.is_file():
        model.load_state_dict(load_safetensors(wpath))
        return json.loads(ipath.read_text()) | {"cached": True}
    t0 = time.perf_counter()
    run = train(model, data, steps=steps, batch_size=batch, lr=lr, seed=seed, progress=False, ema_decay=0.99)
    secs = time.perf_counter() - t0
    run.load_into(model, ema=True)
    info = {"train_s": round(secs, 1), "ms_per_step": round(1e3 * secs / steps, 1), "steps": steps,
            "batch": batch, "lr": lr, "final_loss": round(run.metrics()[-1]["loss"], 4)}  # fmt: skip
    CACHE.mkdir(parents=True, exist_ok=True)
    save_safetensors(wpath, {k: v.contiguous() for k, v in model.state_dict().items()})
    ipath.write_text(json.dumps(info, indent=2))
    return info | {"cached": False}


def modes_hit(x: Tensor, energy: GMM40) -> int:
    d = torch.cdist(x.double(), energy.means.double())
    return int((d.min(0).values < 4 * energy.scale).sum())


def evaluate(
    flow: Flow, energy, args, label: str, seeds: list[int], smc_h: float, gmm: GMM40 | None = None
) -> dict:
    flow.eval()
    true = energy.log_z
    t0 = time.perf_counter()
    is_runs = [
        importance_sample(flow, energy, args.n_is, generator=torch.Generator().manual_seed(s)) for s in seeds
    ]
    t_is = (time.perf_counter() - t0) / len(seeds)
    res = {
        "label": label,
        "ess": [r.ess for r in is_runs],
        "logz": [r.log_z for r in is_runs],
        "logz_err": [abs(r.log_z - true) for r in is_runs],
        "is_s": round(t_is, 2),
        "n_is": args.n_is,
    }
    if gmm is not None:
        g = torch.Generator().manual_seed(0)
        res["modes_resampled"] = modes_hit(is_runs[0].resample(10_000, g), gmm)
        res["modes_raw"] = modes_hit(is_runs[0].samples[:10_000], gmm)
    smc_err, is_err, smc_ess, evals, smc_s = [], [], [], 0, 0.0
    for s in seeds:
        t0 = time.perf_counter()
        out = smc(flow, energy, args.smc_particles, steps=args.smc_steps, mala_steps=args.smc_mala,
                  step_size=smc_h, generator=torch.Generator().manual_seed(1000 + s))  # fmt: skip
        smc_s += time.perf_counter() - t0
        ref = importance_sample(
            flow, energy, out.energy_evals, generator=torch.Generator().manual_seed(2000 + s)
        )
        smc_err.append(abs(out.log_z - true))
        is_err.append(abs(ref.log_z - true))
        smc_ess.append(out.ess)
        evals = out.energy_evals
        res.setdefault("smc_accept", []).append(float(out.acceptance.mean()))
        res.setdefault("smc_resamples", []).append(out.n_resample)
    res |= {"smc_logz_err": smc_err, "is_eq_logz_err": is_err, "smc_ess": smc_ess, "evals": evals,
            "smc_s": round(smc_s / len(seeds), 2)}  # fmt: skip
    return res


def ms(v: list[float], fmt: str = ".3f") -> str:
    if len(v) == 1:
        return format(v[0], fmt)
    return f"{format(statistics.mean(v), fmt)} ± {format(statistics.stdev(v), fmt)}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--gmm-steps", type=int, default=3000)
    p.add_argument("--rkl-steps", type=int, default=1500)
    p.add_argument("--mw-steps", type=int, default=2000)
    p.add_argument("--si-steps", type=int, default=300)
    p.add_argument(
        "--short-steps", type=int, default=200, help="ML steps of the weak GMM flow (many-well: half)"
    )
    p.add_argument("--n-is", type=int, default=100_000)
    p.add_argument("--smc-particles", type=int, default=2000)
    p.add_argument("--smc-steps", type=int, default=20)
    p.add_argument("--smc-mala", type=int, default=2)
    p.add_argument(
        "--parts",
        nargs="+",
        default=["gmm-untrained", "gmm-ml", "gmm-ml-short", "gmm-rkl", "mw-untrained", "mw", "mw-short"],
    )
    args = p.parse_args()
    if args.quick:
        args.gmm_steps, args.rkl_steps, args.mw_steps, args.si_steps, args.short_steps = (
            300,
            200,
            300,
            50,
            100,
        )
        args.n_is, args.smc_particles, args.seeds = 20_000, 500, [0]
    torch.set_num_threads(1)
    tag = "quick-" if args.quick else ""
    print(f"torch {torch.__version__}, python {platform.python_version()}, threads 1; {vars(args)}")
    rows, t_start = [], time.perf_counter()

    def record(flow: Flow, energy, label: str, info: dict, smc_h: float, gmm: GMM40 | None = None) -> None:
        r = evaluate(flow, energy, args, label, args.seeds, smc_h, gmm)
        rows.append(r | {"train": info, "params": n_params(flow)})
        print(json.dumps(rows[-1]), flush=True)

    gmm = GMM40()

    def gmm_flow(seed: int) -> Flow:
        torch.manual_seed(seed)
        return scaled(NSF(2, transforms=6, hidden=(128, 128), bins=16, bound=5.0), 2, 0.1)

    def gmm_data(b: int, g: torch.Generator) -> Tensor:
        return gmm.sample(b, generator=g)

    untrained = {"train_s": 0, "ms_per_step": 0, "steps": 0}
    if "gmm-untrained" in args.parts:
        record(gmm_flow(0), gmm, "GMM-40, NSF, untrained (about N(0, 10^2 I))", untrained, 0.5, gmm)
    for part, steps in (("gmm-ml", args.gmm_steps), ("gmm-ml-short", args.short_steps)):
        if part in args.parts:
            flow = gmm_flow(0)
            info = fit(flow, gmm_data, f"{tag}{part}-{steps}", steps=steps, batch=256, lr=1e-3, seed=0,
                       retrain=args.retrain)  # fmt: skip
            record(flow, gmm, f"GMM-40, NSF, ML on exact samples, {steps} steps", info, 0.5, gmm)
    if "gmm-rkl" in args.parts:
        flow = gmm_flow(0)
        info = fit(ReverseKL(flow, gmm), None, f"{tag}gmm-rkl", steps=args.rkl_steps, batch=256, lr=1e-3, seed=0,
                   retrain=args.retrain)  # fmt: skip
        record(flow, gmm, f"GMM-40, NSF, reverse KL, {args.rkl_steps} steps", info, 0.5, gmm)

    mw = ManyWell(32)

    def mw_data(b: int, g: torch.Generator) -> Tensor:
        return mw.sample(b, generator=g)

    if "mw-untrained" in args.parts:
        torch.manual_seed(0)
        flow = NSF(32, transforms=6, hidden=(128, 128), bins=8, bound=5.0, coupling=True)
        record(flow, mw, "many-well-32, NSF-coupling, untrained (about N(0, I))", untrained, 0.02)
    for part, steps, si_weight, si_lr in (
        ("mw", args.mw_steps, 1.0, 1e-4),
        ("mw-short", args.short_steps // 2, 0.1, 1e-3),
    ):
        if part not in args.parts:
            continue
        torch.manual_seed(0)
        flow = NSF(32, transforms=6, hidden=(128, 128), bins=8, bound=5.0, coupling=True)
        ml_tag = f"{tag}mw-ml" if part == "mw" else f"{tag}mw-ml-{steps}"
        info = fit(flow, mw_data, ml_tag, steps=steps, batch=256, lr=1e-3, seed=0, retrain=args.retrain)
        record(flow, mw, f"many-well-32, NSF-coupling, ML on exact samples, {steps} steps", info, 0.02)
        si = SelfImprovement(
            flow, mw, teacher_weight=si_weight, buffer_size=10_000, proposals=20_000, refresh_every=50
        )
        si_tag = f"{tag}mw-si" if part == "mw" else f"{tag}mw-si-from-{steps}"
        info = fit(si, None, si_tag, steps=args.si_steps, batch=256, lr=si_lr, seed=1, retrain=args.retrain)
        label = f"many-well-32, + self-improvement, {args.si_steps} steps (teacher {si_weight}, lr {si_lr:g})"
        record(flow, mw, label, info, 0.02)

    print(f"\ntotal {time.perf_counter() - t_start:.0f} s\n")
    print(TABLE_HEAD)
    for r in rows:
        print(table_row(r))


TABLE_HEAD = (
    "| flow / training | params | train s (ms/step) | IS ESS | IS log Z | IS abs. log Z err | SMC abs. log Z err "
    "| IS abs. log Z err, equal evals | evals | SMC accept | SMC s / IS s (equal evals) | modes resampled / raw |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(r: dict) -> str:
    t = r["train"]
    modes = f"{r['modes_resampled']} / {r['modes_raw']}" if "modes_resampled" in r else "—"
    is_eq_s = r["is_s"] * r["evals"] / r["n_is"]
    return (
        f"| {r['label']} | {r['params']:,} | {t['train_s']} ({t['ms_per_step']}){' cached' if t.get('cached') else ''} "
        f"| {ms(r['ess'], '.4f')} | {ms(r['logz'], '.4f')} | {ms(r['logz_err'], '.4f')} "
        f"| {ms(r['smc_logz_err'], '.4f')} | {ms(r['is_eq_logz_err'], '.4f')} | {r['evals']:,} "
        f"| {ms(r['smc_accept'], '.2f')} | {r['smc_s']} / {is_eq_s:.2f} | {modes} |"
    )


if __name__ == "__main__":
    main()
