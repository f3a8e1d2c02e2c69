"""One-step robot policies (issue 15, item 1; DM1 = MeanFlow + dispersive loss, arXiv:2510.07865).

For each task and seed the four recipes ``{task}-flow``, ``{task}-meanflow``, ``{task}-meanflow-disp`` and
``{task}-mse`` are trained in this process, one after the other, on the same expert demonstrations (the
run's seed), with the same network (:class:`~flowforge.nn.ObsMLP`, width x depth; MeanFlow's net has the
extra gap-time input), optimiser, batch size, steps and one thread. Each is evaluated by closed-loop
rollouts from the same fresh starts (``flowforge eval``'s ``policy_evaluate``): the flow policy at 1, 10
and 50 Euler steps, MeanFlow (with and without the dispersive term) at 1 jump, the MSE policy, and the
scripted expert on the same starts (the control). Reported: success rate, latency of one call on one
observation per action (``ms_per_action``), and the effective rank / mean pairwise distance of the
observation embeddings of 256 start observations.

Run (2-D task, 3 seeds; MuJoCo Reacher-v5, 2 seeds)::

    PYTHONPATH=src python benchmarks/policies.py --task reach --seeds 0 1 2 --json /tmp/reach.json
    PYTHONPATH=src python benchmarks/policies.py --task reacher --seeds 0 1 --json /tmp/reacher.json

``--steps`` and ``--episodes`` override the training steps and evaluation episodes; ``--quick`` is a smoke
test. One thread.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from flowforge.recipes import evaluate, train_recipe

ROWS = (
    ("expert (control)", None, None),
    ("mse", "mse", 1),
    ("flow, 1 step", "flow", 1),
    ("flow, 10 steps", "flow", 10),
    ("flow, 50 steps", "flow", 50),
    ("meanflow, 1 step", "meanflow", 1),
    ("meanflow + dispersive, 1 step", "meanflow-disp", 1),
)


def run_seed(task: str, seed: int, overrides: dict, episodes: int, root: Path) -> list[dict]:
    rows = []
    trained: dict[str, tuple[Path, float]] = {}
    for variant in ("flow", "meanflow", "meanflow-disp", "mse"):
        out = root / f"{task}-{variant}-{seed}"
        t0 = time.perf_counter()
        train_recipe(f"{task}-{variant}", overrides=overrides, out=out, seed=seed, progress=False)
        trained[variant] = (out, time.perf_counter() - t0)
    expert = None
    for label, variant, steps in ROWS:
        if variant is None:
            continue
        out, train_s = trained[variant]
        res = evaluate(out, n_samples=episodes, seed=seed, steps=steps)
        expert = res["expert_success"]
        rows.append({"seed": seed, "row": label, "train_s": train_s, **res})
        print(json.dumps(rows[-1]), flush=True)
    rows.insert(0, {"seed": seed, "row": "expert (control)", "success_rate": expert})
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| policy | success (mean over seeds) | per seed | ms/action (1 obs) | emb. eff. rank | emb. mean dist |",
        "|---|---|---|---|---|---|",
    ]
    for label, _, _ in ROWS:
        rs = [r for r in rows if r["row"] == label]
        succ = [r["success_rate"] for r in rs]
        per = " / ".join(f"{s:.3f}" for s in succ)
        ms = [r["ms_per_action"] for r in rs if "ms_per_action" in r]
        rk = [r["effective_rank"] for r in rs if "effective_rank" in r]
        md = [r["mean_distance"] for r in rs if "mean_distance" in r]

        def mean(v: list[float], f: str) -> str:
            return format(sum(v) / len(v), f) if v else "-"

        lines.append(
            f"| {label} | {mean(succ, '.3f')} | {per} | {mean(ms, '.3f')} | {mean(rk, '.2f')} | {mean(md, '.3f')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=("reach", "reacher"), default="reach")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipes')")
    parser.add_argument("--episodes", type=int, default=None, help="evaluation episodes (default 500 / 200)")
    parser.add_argument("--set", nargs="*", default=[], help="extra recipe overrides KEY=VALUE (JSON values)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides: dict = {"threads": 1}
    if args.steps:
        overrides["steps"] = args.steps
    for kv in args.set:
        k, v = kv.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    episodes = args.episodes or (500 if args.task == "reach" else 200)
    if args.quick:
        overrides.update(steps=20, n_demos=10)
        episodes = 10
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            rows += run_seed(args.task, seed, overrides, episodes, Path(tmp))
    print(f"\n{args.task}: seeds {args.seeds}, {episodes} episodes each, overrides {overrides}\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
