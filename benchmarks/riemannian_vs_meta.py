"""Riemannian flow matching on S^2: flowforge against Meta's flow_matching, same data, net, batches, steps.

Workload: the 6-cluster von Mises-Fisher mixture on the globe (``flowforge.data.earth_like_vmf_mixture``,
kappa 6..400; exact density known), uniform source on S^2, geodesic path with kappa(t) = t (Meta's
``CondOTScheduler``), uniform t. Both sides get the network of Meta's sphere notebook
(``examples/2d_riemannian_flow_matching_sphere.ipynb``): [x, t] -> Linear -> (SiLU, Linear) x depth -> 3,
raw t, its output projected to the tangent plane at projx(x) (their ``ProjectToTangent``; ours
``TangentProjection(project_input=True)``), the same initial weights (copied), Adam at the same lr,
the same pre-drawn data batch at every step, and the same global-RNG seed before every step (both draw
``x0 = normalise(randn)`` and then ``t = rand``, so they see identical x0 and t). Meta's side is its
``GeodesicProbPath(CondOTScheduler(), Sphere())`` (vmap + jvp through ``expmap``) and the notebook's loss
``(vf(x_t, t) - dx_t)^2.mean()``; ours is ``RiemannianFlowMatching.loss`` (closed-form slerp velocity).

Timing: one intra-op thread; ``--rounds`` rounds, each running ``steps / rounds`` consecutive steps of
each side in a fresh random order; every step timed with ``time.thread_time()`` (CPU of this thread) and
``perf_counter``; reported: median per-step time and the median over rounds of the per-round ratio.

Quality: both trained models are evaluated by the SAME code (flowforge's ``riemannian_log_prob``: RK4 on
the projected augmented ODE, exact Riemannian divergence tr(P Dv)), same test points, same steps; the
exact mixture NLL of the test points is the floor, log(4 pi) the uniform source. Samples: both models in
float64, ours with ``Projected(Midpoint())``, Meta's with ``RiemannianODESolver(method="midpoint")``, same
x0 and step count: max | |x| - 1 |, and a chordal-RBF MMD to test points with a fresh exact draw as control.

Run:  python benchmarks/riemannian_vs_meta.py                     (defaults; ~12 min on one thread)
      python benchmarks/riemannian_vs_meta.py --quick             (smoke test, ~1 min)
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import statistics
import time

import torch
from torch import Tensor, nn

from flowforge.continuous import RiemannianFlowMatching
from flowforge.core.likelihood import riemannian_log_prob
from flowforge.core.manifolds import Sphere as FFSphere
from flowforge.data import earth_like_vmf_mixture
from flowforge.metrics import mmd
from flowforge.nn import MLP


class MetaMLP(nn.Module):
    """The MLP of Meta's sphere notebook (Swish = SiLU), with a configurable depth."""

    def __init__(self, input_dim: int, hidden_dim: int, depth: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.input_layer = nn.Linear(input_dim + 1, hidden_dim)
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [nn.SiLU(), nn.Linear(hidden_dim, hidden_dim)]
        layers += [nn.SiLU(), nn.Linear(hidden_dim, input_dim)]
        self.main = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        sz = x.size()
        x = x.reshape(-1, self.input_dim)
        t = t.reshape(-1, 1).to(x.dtype).expand(x.shape[0], 1)
        return self.main(self.input_layer(torch.cat([x, t], dim=1))).reshape(*sz)


class MetaProjectToTangent(nn.Module):
    """Meta's notebook ``ProjectToTangent``."""

    def __init__(self, vecfield: nn.Module, manifold: nn.Module) -> None:
        super().__init__()
        self.vecfield, self.manifold = vecfield, manifold

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        x = self.manifold.projx(x)
        return self.manifold.proju(x, self.vecfield(x, t))


def copy_weights(ours: MLP, meta: MetaMLP) -> None:
    """Give Meta's MLP the same weights as ours (same architecture, same input order [x, t])."""
    lins = [m for m in meta.main if isinstance(m, nn.Linear)]
    with torch.no_grad():
        meta.input_layer.weight.copy_(ours.inp.weight)
        meta.input_layer.bias.copy_(ours.inp.bias)
        for a, b in zip(lins[:-1], ours.hidden):
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
        lins[-1].weight.copy_(ours.out.weight)
        lins[-1].bias.copy_(ours.out.bias)


def run_seed(args: argparse.Namespace, seed: int, mix, test: Tensor, control: Tensor, floor: float) -> dict:
    from flow_matching.path import GeodesicProbPath
    from flow_matching.path.scheduler import CondOTScheduler
    from flow_matching.solver import RiemannianODESolver
    from flow_matching.utils import ModelWrapper
    from flow_matching.utils.manifolds import Sphere as MetaSphere

    torch.manual_seed(seed)
    net = MLP(3, args.width, args.depth, time_freqs=0)
    ours = RiemannianFlowMatching(net, FFSphere(2), project_input=True)
    meta_net = MetaMLP(3, args.width, args.depth)
    copy_weights(net, meta_net)
    meta_sphere = MetaSphere()
    meta_vf = MetaProjectToTangent(meta_net, meta_sphere)
    meta_path = GeodesicProbPath(scheduler=CondOTScheduler(), manifold=meta_sphere)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=args.lr)
    opt_meta = torch.optim.Adam(meta_vf.parameters(), lr=args.lr)
    data = mix.sample(args.steps * args.batch, seed=1000 + seed).reshape(args.steps, args.batch, 3)

    def step_ours(i: int) -> float:
        torch.manual_seed(seed * 1_000_003 + i)
        opt_ours.zero_grad(set_to_none=True)
        loss = ours.loss(data[i])
        loss.backward()
        opt_ours.step()
        return loss.item()

    def step_meta(i: int) -> float:
        torch.manual_seed(seed * 1_000_003 + i)
        opt_meta.zero_grad(set_to_none=True)
        x1 = data[i]
        x0 = meta_sphere.projx(torch.randn_like(x1))
        t = torch.rand(x1.shape[0])
        ps = meta_path.sample(t=t, x_0=x0, x_1=x1)
        loss = torch.pow(meta_vf(ps.x_t, ps.t) - ps.dx_t, 2).mean()
        loss.backward()
        opt_meta.step()
        return loss.item()

    l0 = (step_ours(0), step_meta(0))  # identical weights, batch, x0 and t: the first losses agree
    sides = {"ours": step_ours, "meta": step_meta}
    cpu = {k: [] for k in sides}
    wall = {k: [] for k in sides}
    ratios = []
    per_round = max(1, (args.steps - 1) // args.rounds)
    rng = random.Random(seed)
    i_side = {k: 1 for k in sides}
    last = {k: 0.0 for k in sides}
    while min(i_side.values()) < args.steps:
        order = list(sides)
        rng.shuffle(order)
        med = {}
        for k in order:
            ts = []
            for _ in range(per_round):
                if i_side[k] >= args.steps:
                    break
                c0, w0 = time.thread_time(), time.perf_counter()
                last[k] = sides[k](i_side[k])
                c1, w1 = time.thread_time(), time.perf_counter()
                ts.append(c1 - c0)
                cpu[k].append(c1 - c0)
                wall[k].append(w1 - w0)
                i_side[k] += 1
            med[k] = statistics.median(ts) if ts else float("nan")
        if all(math.isfinite(v) for v in med.values()):
            ratios.append(med["ours"] / med["meta"])

    # ---- likelihood, by the same code for both
    def nll(field, steps: int) -> float:
        with torch.no_grad():
            lp = riemannian_log_prob(lambda x, t: field(x, t), test, FFSphere(2), solver=None, grid=steps)
        return float(-lp.mean())

    ours_d = ours.double()
    meta_d = meta_vf.double()
    nll_ours = nll(ours_d.field, args.eval_steps)
    nll_meta = nll(meta_d, args.eval_steps)
    nll_fine = nll(ours_d.field, 2 * args.eval_steps)  # solver error of the NLL

    # ---- samples in float64, same x0 and steps
    g = torch.Generator().manual_seed(7 + seed)
    x0 = FFSphere(2).random_uniform(args.n_samples, generator=g, dtype=torch.float64)
    xs_ours = ours_d.generator().sample(args.n_samples, x0=x0, solver="midpoint", steps=args.sample_steps)

    class Wrapped(ModelWrapper):
        def forward(self, x: Tensor, t: Tensor, **extras) -> Tensor:
            return self.model(x, t.reshape(1).expand(x.shape[0]).to(x.dtype))

    xs_meta = RiemannianODESolver(manifold=meta_sphere, velocity_model=Wrapped(meta_d)).sample(
        x_init=x0, step_size=1.0 / args.sample_steps, method="midpoint",
        time_grid=torch.tensor([0.0, 1.0], dtype=torch.float64),
    )  # fmt: skip
    sph = FFSphere(2)
    k = min(len(test), args.n_samples)
    return {
        "seed": seed,
        "loss0": l0,
        "loss_last": (last["ours"], last["meta"]),
        "cpu_ms": {s: 1e3 * statistics.median(v) for s, v in cpu.items()},
        "wall_ms": {s: 1e3 * statistics.median(v) for s, v in wall.items()},
        "ratio_paired": statistics.median(ratios),
        "rounds": len(ratios),
        "nll": {"ours": nll_ours, "meta": nll_meta, "floor": floor, "ours_fine": nll_fine},
        "on_manifold": {
            "ours": float((xs_ours.norm(dim=1) - 1).abs().max()),
            "meta": float((xs_meta.norm(dim=1) - 1).abs().max()),
            "ours_projx": float(sph.off_manifold(xs_ours)),
        },
        "mmd": {
            "ours": mmd(xs_ours[:k].float(), test[:k].float()),
            "meta": mmd(xs_meta[:k].float(), test[:k].float()),
            "control": mmd(control[:k], test[:k].float()),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rounds", type=int, default=400)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--eval-steps", type=int, default=40)
    p.add_argument("--n-samples", type=int, default=4000)
    p.add_argument("--sample-steps", type=int, default=100)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.steps, args.rounds, args.seeds, args.n_test, args.eval_steps = 200, 20, [0], 300, 10
        args.n_samples, args.sample_steps = 500, 20
    torch.set_num_threads(1)
    import flow_matching

    mix = earth_like_vmf_mixture()
    test = mix.sample(args.n_test, seed=424242, dtype=torch.float64)
    control = mix.sample(args.n_samples, seed=777)
    floor = float(-mix.log_prob(test).mean())
    print(
        f"# S^2 vMF mixture (6 clusters), flowforge vs flow_matching {flow_matching.__version__}, torch "
        f"{torch.__version__}, {platform.processor() or platform.machine()}, 1 thread"
    )
    print(
        f"# MLP {args.width}x{args.depth} (SiLU, raw t), Adam lr {args.lr}, batch {args.batch}, {args.steps} steps, "
        f"{args.rounds} rounds; NLL: RK4 {args.eval_steps} steps, exact div, {args.n_test} test points; "
        f"samples: midpoint {args.sample_steps} steps, float64, {args.n_samples} points"
    )
    print(f"# exact-density NLL floor {floor:.4f} nats; uniform source NLL {math.log(4 * math.pi):.4f}")
    rows = []
    for seed in args.seeds:
        r = run_seed(args, seed, mix, test, control, floor)
        rows.append(r)
        print(
            f"seed {seed}: loss0 ours/meta {r['loss0'][0]:.6f}/{r['loss0'][1]:.6f}  last {r['loss_last'][0]:.4f}/"
            f"{r['loss_last'][1]:.4f} | step cpu ms ours {r['cpu_ms']['ours']:.2f} meta {r['cpu_ms']['meta']:.2f} "
            f"(wall {r['wall_ms']['ours']:.2f}/{r['wall_ms']['meta']:.2f}) paired ratio {r['ratio_paired']:.3f} "
            f"over {r['rounds']} rounds | NLL ours {r['nll']['ours']:.4f} meta {r['nll']['meta']:.4f} "
            f"diff {r['nll']['ours'] - r['nll']['meta']:+.1e} (floor {floor:.4f}; ours at 2x steps "
            f"{r['nll']['ours_fine']:.4f}) | max||x|-1| ours "
            f"{r['on_manifold']['ours']:.1e} meta {r['on_manifold']['meta']:.1e} (projx err {r['on_manifold']['ours_projx']:.1e})"
            f" | MMD ours {r['mmd']['ours']:.5f} meta {r['mmd']['meta']:.5f} control {r['mmd']['control']:.5f}",
            flush=True,
        )
    diffs = [r["nll"]["ours"] - r["nll"]["meta"] for r in rows]
    ratios = [r["ratio_paired"] for r in rows]
    print(
        "\n| seed | NLL ours | NLL Meta | diff | floor | ms/step ours | ms/step Meta | paired ratio | max off-sphere ours / Meta (f64) | MMD ours / Meta / control |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['nll']['ours']:.4f} | {r['nll']['meta']:.4f} | {r['nll']['ours'] - r['nll']['meta']:+.1e} | "
            f"{floor:.4f} | {r['cpu_ms']['ours']:.2f} | {r['cpu_ms']['meta']:.2f} | {r['ratio_paired']:.3f} | "
            f"{r['on_manifold']['ours']:.1e} / {r['on_manifold']['meta']:.1e} | "
            f"{r['mmd']['ours']:.5f} / {r['mmd']['meta']:.5f} / {r['mmd']['control']:.5f} |"
        )
    print(
        f"\nmean paired NLL diff (ours - Meta) {statistics.mean(diffs):+.1e} nats over {len(diffs)} seed(s); "
        f"max |diff| {max(abs(d) for d in diffs):.1e}; time ratio ours/Meta (median of seeds' paired ratios) "
        f"{statistics.median(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
