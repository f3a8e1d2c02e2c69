"""MeanFlow with and without the dispersive loss (DM1) on a task where 1-step outputs collapse.

Issue 11, item 6; DM1 (Zou et al., 2025, arXiv:2510.07865) adds the dispersive loss of "Diffuse and
Disperse" (Wang & He, 2025, arXiv:2506.09027) to a MeanFlow policy (Geng et al., 2025,
arXiv:2505.13447) and reports that it prevents the collapse of 1-step policies whose observations
differ only by subtle features.

**Task (a toy policy).** An observation ``o`` in R^16 has 15 nuisance coordinates ~ N(0, 1) and one
subtle coordinate ``o_0 = s * delta`` (``delta = 0.015`` by default, 1.5% of the nuisance scale) with
the class ``s = +-1``. The action ``a`` in R^2 is a 2-mode mixture that depends on ``s`` only:
``a ~ 1/2 N((s, +1), 0.1^2 I) + 1/2 N((s, -1), 0.1^2 I)``. So

- a model that ignores the subtle feature puts half its mass on the wrong side: success 1/2;
- a 1-step *flow matching* (Euler) model averages the two modes: its action is near ``(s, 0)``, which
  is no correct action (success about 0), however well it reads ``s``;
- a 1-step MeanFlow that reads ``s`` can reach success 1.

**Success** of an action: within ``TOL = 0.5`` of one of the two correct modes for its observation
(5 mode std; the modes are 2 apart, so this asks for the right mode, not for precision). **Side**: the
share of actions with ``sign(a_x) = s``, i.e. the subtle feature was read (1/2 when it is ignored). **Distribution distance:** energy distance
and sliced W2 (``flowforge.metrics``) between the generated actions and fresh true actions, for each
``s`` separately (``n_eval`` each, the nuisance coordinates drawn afresh), averaged over ``s``.

**Network** (written here: ``flowforge.nn.MLP`` takes class labels, not a continuous observation): an
observation encoder ``enc`` (16 -> 32 -> 32, SiLU) whose output is the *observation embedding*, and a
trunk MLP on ``[x, time(t), time(t - r), embedding]`` (3 x 128, SiLU); called
``net(x, t, r=r, obs=obs)`` (``r=None`` means ``r = t``, so flow matching uses the same net).

**Features.** On the 1-step call (``x0`` noise, ``r = 0``, ``t = 1``) over ``n_eval`` observations of
each class we tap the observation embedding (``enc``) and the last trunk layer (``hidden.1``, before
its activation) and report, on the centred features: the effective rank ``exp(H(p))`` with ``p`` the
singular values normalised to sum 1 (Roy & Vetterli, 2007), the number of singular values above 1% of
the largest, and ``s-var``: the share of the feature variance explained by the class ``s`` (between-
class variance over total variance, in [0, 1]); the share of a feature that reads the subtle feature.

**Arms** (the same initial weights, data stream and noise per seed; only the objective differs):

- ``FM``: flow matching (linear path, uniform t) sampled with 10 Euler steps (reference) and 1 step;
- ``MF``: MeanFlow with DM1's time sampler (``(r, t)`` from the sorted logit-normal (-0.4, 1) of paper
  time = ``LogitNormal(0.4, 1)`` here, 50% of rows with ``r = t``) and the MeanFlow paper's adaptive
  weight ``p = 1`` (DM1 trains with the plain squared error ``p = 0``; in development, at ``delta = 0.1``,
  2000 steps and a 0.3 tolerance, ``p = 0`` gave 1-step success 0.05-0.13 over three time samplers,
  ``p = 1`` 0.30, and 0.89 after 4000 steps);
- ``MF + DM1``: plus the dispersive loss in DM1's released form (``form="dm1"``, tau 0.5; lambda 0.5 as
  in DM1, and 0.1) on the observation embedding. DM1 applies it to the observation, t and r
  embeddings; here only the observation embedding depends on the batch's content, so the t and r
  terms are left out;
- ``MF + InfoNCE-L2``: the official Diffuse-and-Disperse form (lambda 0.25, tau 1, its PyTorch
  release's settings) on the observation embedding. (On the last trunk block, the official choice,
  it is not run: ``dispersive_loss`` forms the ``(B, B, C)`` difference tensor, 0.2 s per step at
  ``B = 256, C = 128`` on one thread, beyond this benchmark's CPU budget.)

Training: ``flowforge.train``, 4000 steps, batch 256, AdamW lr 1e-3 (cosine), EMA 0.999, grad clip 1;
the EMA weights are evaluated. Times per step are CPU seconds of this process (``time.process_time``),
steadier than wall time on a shared machine, and wall seconds.

Run (one thread, foreground):
    python benchmarks/dispersive.py            # 3 seeds, writes benchmarks/RESULTS-dispersive.md
    python benchmarks/dispersive.py --quick    # smoke run, no file written
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

import flowforge as ff
from flowforge.continuous import FlowMatching, MeanFlow
from flowforge.continuous.meanflow import MeanFlowTimes
from flowforge.core import FeatureTap
from flowforge.core.time import LogitNormal
from flowforge.metrics import energy_distance, sliced_wasserstein
from flowforge.nn.embeddings import FourierTime

OBS_DIM = 16
MODE_Y = 1.0  # the two modes of class s sit at (s, +-MODE_Y)
MODE_STD = 0.1
TOL = 0.5
EVAL_OBS_SEED = 10_001
EVAL_TRUE_SEED = 10_002
NOISE_SEED = 1234
SWD_SEED = 7
TAPS = ("enc", "hidden.1")
RESULTS = Path(__file__).resolve().parent / "RESULTS-dispersive.md"
READING = "## Reading (hand-written"


# -- the task -----------------------------------------------------------------------------------------


def observations(s: Tensor, delta: float, generator: torch.Generator) -> Tensor:
    """Observations ``(B, OBS_DIM)`` for classes ``s: (B,)`` in ``{-1, +1}``: ``o_0 = s * delta``, rest N(0, 1)."""
    o = torch.randn(s.shape[0], OBS_DIM, generator=generator)
    o[:, 0] = s * delta
    return o


def actions(s: Tensor, generator: torch.Generator) -> Tensor:
    """True actions ``(B, 2)`` for classes ``s``: the mixture of ``N((s, +-MODE_Y), MODE_STD^2 I)``."""
    side = torch.randint(0, 2, s.shape, generator=generator).to(s.dtype) * 2 - 1
    centre = torch.stack([s, side * MODE_Y], dim=1)
    return centre + MODE_STD * torch.randn(s.shape[0], 2, generator=generator)


def classes(n: int, generator: torch.Generator) -> Tensor:
    return torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1


def make_data(delta: float):
    def data(b: int, g: torch.Generator) -> dict[str, Tensor]:
        s = classes(b, g)
        return {"x": actions(s, g), "obs": observations(s, delta, g)}

    return data


def success(a: Tensor, s: Tensor) -> Tensor:
    """``(B,)`` bools: the action is within ``TOL`` of one of the correct modes ``(s, +-MODE_Y)``."""
    d_up = (a - torch.stack([s, torch.full_like(s, MODE_Y)], 1)).norm(dim=1)
    d_dn = (a - torch.stack([s, torch.full_like(s, -MODE_Y)], 1)).norm(dim=1)
    return torch.minimum(d_up, d_dn) < TOL


# -- the network --------------------------------------------------------------------------------------


class ObsNet(nn.Module):
    """Two-time MLP conditioned on a continuous observation: ``net(x, t, r=r, obs=obs) -> (B, 2)``.

    ``enc(obs)`` is the observation embedding (32); the trunk takes ``[x, time(t), time(t - r), emb]``.
    """

    two_times = True

    def __init__(self, width: int = 128, depth: int = 3, emb: int = 32, n_freq: int = 4) -> None:
        super().__init__()
        self.event_shape = (2,)
        self.enc = nn.Sequential(nn.Linear(OBS_DIM, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.time = FourierTime(n_freq, max_freq=8.0)
        self.inp = nn.Linear(2 + 2 * self.time.out_dim + emb, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.out = nn.Linear(width, 2)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, t: Tensor, *, r: Tensor | None = None, obs: Tensor) -> Tensor:
        """``x: (B, 2)`` at time ``r: (B,)``, end time ``t: (B,)``, ``obs: (B, OBS_DIM)`` -> ``(B, 2)``."""
        r = t if r is None else r
        h = torch.cat([x, self.time(t), self.time(t - r), self.enc(obs)], dim=1)
        h = self.act(self.inp(h))
        for layer in self.hidden:
            h = self.act(layer(h))
        return self.out(h)


# -- the arms -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    name: str
    kind: str  # "fm" or "mf"
    weight: float = 0.0
    form: str = "infonce_l2"
    tau: float = 1.0
    layers: tuple[str, ...] = field(default=())


ARMS = (
    Arm("FM", "fm"),
    Arm("MF", "mf"),
    Arm("MF + DM1 (l=0.5, tau=0.5)", "mf", 0.5, "dm1", 0.5, ("enc",)),
    Arm("MF + DM1 (l=0.1, tau=0.5)", "mf", 0.1, "dm1", 0.5, ("enc",)),
    Arm("MF + InfoNCE-L2 (l=0.25, tau=1)", "mf", 0.25, "infonce_l2", 1.0, ("enc",)),
)


def build(arm: Arm, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # the initial weights depend on the seed only, not on the arm
    net = ObsNet()
    if arm.kind == "fm":
        return FlowMatching(net, event_shape=(2,))
    # DM1's times: sorted LN(-0.4, 1) in paper time (noise at 1) = LogitNormal(0.4, 1) in ours (t' = 1 - t),
    # flow_ratio 0.5; the paper's adaptive weight p = 1 instead of DM1's plain MSE (see the module docstring)
    return MeanFlow(
        net,
        times=MeanFlowTimes(LogitNormal(0.4, 1.0), diagonal=0.5),
        p=1.0,
        dispersive_weight=arm.weight,
        dispersive_layers=arm.layers,
        tau=arm.tau,
        dispersive_form=arm.form,
        event_shape=(2,),
    )


# -- evaluation ---------------------------------------------------------------------------------------


def feature_stats(h: Tensor, s: Tensor) -> dict[str, float]:
    """Effective rank, #singular values > 1% of the largest, and the class-explained variance share."""
    h = h.detach().double()
    hc = h - h.mean(0)
    sv = torch.linalg.svdvals(hc)
    p = sv / sv.sum()
    p = p[p > 0]
    erank = math.exp(float(-(p * p.log()).sum()))
    n1 = int((sv > 0.01 * sv[0]).sum())
    total = float(hc.square().sum(1).mean())
    between = sum(
        float((s == c).double().mean()) * float(hc[s == c].mean(0).square().sum()) for c in (-1.0, 1.0)
    )
    return {"erank": erank, "nsv": n1, "svar": between / total if total > 0 else 0.0}


def evaluate(model: nn.Module, arm: Arm, delta: float, n_eval: int) -> list[dict[str, float]]:
    """One dict per sampler of this arm: success, energy distance, SWD, and feature statistics."""
    g = torch.Generator().manual_seed(EVAL_OBS_SEED)
    s = torch.cat([torch.full((n_eval,), -1.0), torch.full((n_eval,), 1.0)])
    obs = observations(s, delta, g)
    truth = actions(s, torch.Generator().manual_seed(EVAL_TRUE_SEED))
    gen = model.generator()
    samplers = [("1 step", {"steps": 1})]
    if arm.kind == "fm":
        samplers = [
            ("10 Euler", {"steps": 10, "solver": "euler"}),
            ("1 Euler", {"steps": 1, "solver": "euler"}),
        ]
    rows = []
    model.eval()
    for label, opts in samplers:
        a = gen.sample(
            2 * n_eval, cond={"obs": obs}, generator=torch.Generator().manual_seed(NOISE_SEED), **opts
        )
        ed = sum(energy_distance(a[s == c], truth[s == c]) for c in (-1.0, 1.0)) / 2
        sw = (
            sum(
                sliced_wasserstein(
                    a[s == c],
                    truth[s == c],
                    n_projections=256,
                    generator=torch.Generator().manual_seed(SWD_SEED),
                )
                for c in (-1.0, 1.0)
            )
            / 2
        )
        rows.append(
            {
                "sampler": label,
                "success": float(success(a, s).float().mean()),
                "side": float((torch.sign(a[:, 0]) == s).float().mean()),
                "energy": ed,
                "swd": sw,
            }
        )
    # features of the 1-step call: x0 noise, r = 0, t = 1
    x0 = torch.randn(2 * n_eval, 2, generator=torch.Generator().manual_seed(NOISE_SEED))
    net = model.net
    with torch.no_grad(), FeatureTap(net, TAPS) as tap:
        net(x0, torch.ones(2 * n_eval), r=torch.zeros(2 * n_eval), obs=obs)
    for row in rows:
        for name in TAPS:
            for k, v in feature_stats(tap.features[name][0], s).items():
                row[f"{name}:{k}"] = v
    return rows


# -- main ---------------------------------------------------------------------------------------------


def run_arm(arm: Arm, seed: int, args: argparse.Namespace) -> list[dict[str, float]]:
    model = build(arm, seed)
    t0, c0 = time.perf_counter(), time.process_time()
    run = ff.train(
        model,
        make_data(args.delta),
        steps=args.steps,
        batch_size=args.batch,
        lr=1e-3,
        ema_decay=0.999,
        seed=seed,
        progress=False,
        threads=1,
    )
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    run.load_into(model, ema=True)
    rows = evaluate(model, arm, args.delta, args.n_eval)
    for row in rows:
        row |= {
            "arm": arm.name,
            "seed": seed,
            "ms_step": 1e3 * secs / args.steps,
            "cpu_ms_step": 1e3 * cpu / args.steps,
            "loss": run.metrics()[-1]["loss"],
        }
    return rows


def fmt(xs: list[float], digits: int = 3) -> str:
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def table(rows: list[dict]) -> str:
    cols = [
        ("success", "success", 3),
        ("side", "side", 3),
        ("energy", "energy dist.", 4),
        ("swd", "SWD", 4),
        ("enc:erank", "emb erank", 1),
        ("enc:nsv", "emb #sv>1%", 1),
        ("enc:svar", "emb s-var", 3),
        ("hidden.1:erank", "trunk erank", 1),
        ("hidden.1:svar", "trunk s-var", 3),
        ("cpu_ms_step", "CPU ms/step", 1),
        ("ms_step", "wall ms/step", 1),
    ]
    head = "| arm | sampler (NFE) | " + " | ".join(c[1] for c in cols) + " |"
    lines = [head, "|" + " --- |" * (len(cols) + 2)]
    keys = []
    for r in rows:
        if (r["arm"], r["sampler"]) not in keys:
            keys.append((r["arm"], r["sampler"]))
    for arm, sampler in keys:
        sel = [r for r in rows if r["arm"] == arm and r["sampler"] == sampler]
        cells = [fmt([float(r[k]) for r in sel], d) for k, _, d in cols]
        lines.append(f"| {arm} | {sampler} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


HEADER = (
    f"{'arm':<32} {'sampler':<9} seed success  side  energy    SWD  emb-erank emb-svar trunk-erank "
    "trunk-svar cpu-ms wall-ms   loss"
)


def line(r: dict) -> str:
    """One row of the per-seed log."""
    return (
        f"{r['arm']:<32} {r['sampler']:<9} {r['seed']:>4}   {r['success']:.3f} {r['side']:.3f}  {r['energy']:.4f} "
        f"{r['swd']:.4f}  {r['enc:erank']:9.2f}    {r['enc:svar']:.3f}  {r['hidden.1:erank']:10.2f}      "
        f"{r['hidden.1:svar']:.3f} {r['cpu_ms_step']:6.1f} {r['ms_step']:7.1f} {r['loss']:6.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 300 steps, no file written")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--delta", type=float, default=0.015, help="the subtle feature's offset o_0 = s * delta")
    ap.add_argument("--n-eval", type=int, default=1000, help="observations per class in evaluation")
    ap.add_argument("--arms", type=int, nargs="+", default=None, help="indices into ARMS (default all)")
    ap.add_argument("--no-write", action="store_true", help="do not write RESULTS-dispersive.md")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.steps, args.n_eval, args.no_write = args.seeds[:1], 300, 300, True
    torch.set_num_threads(1)
    arms = ARMS if args.arms is None else tuple(ARMS[i] for i in args.arms)
    env = (
        f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, threads 1; "
        f"steps {args.steps}, batch {args.batch}, delta {args.delta}, seeds {args.seeds}, n_eval {args.n_eval}/class"
    )
    print(env, flush=True)
    print(HEADER, flush=True)
    rows: list[dict] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for seed in args.seeds:
        for arm in arms:
            new = run_arm(arm, seed, args)
            rows += new
            for r in new:
                print(line(r), flush=True)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    summary = table(rows)
    print(f"\n{summary}\n\ntotal {total:.0f} s wall, {cpu:.0f} s CPU", flush=True)
    if not args.no_write:
        write_results(env, summary, "\n".join([HEADER, *map(line, rows)]), total, cpu)


def write_results(env: str, summary: str, seeds: str, total: float, cpu: float) -> None:
    text = f"""# MeanFlow with and without the dispersive loss (DM1) on a subtle-feature policy toy

Reproduce: `python benchmarks/dispersive.py` (one thread; this run took {total / 60:.0f} min wall,
{cpu / 60:.1f} min CPU on a shared machine); `--quick` for a smoke run.
See the module docstring of `benchmarks/dispersive.py` for the task, the arms and the metrics.

{env}

Mean ± standard deviation over seeds.

{summary}

Per seed:

```
{seeds}
```
"""
    if RESULTS.is_file():  # keep the hand-written reading of the numbers, if any, below the generated part
        old = RESULTS.read_text()
        if READING in old:
            text += "\n" + old[old.index(READING) :]
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(RESULTS)


if __name__ == "__main__":
    main()
