"""OC-GFN (Pan et al., ICLR 2024) on a space too big to enumerate: modes discovered against downstream
trajectories, the paper's headline metric ("discover modes more efficiently").

Set-up (defaults): append-only bit strings of length 32, word 4 (16 word actions + stop, 2^32 ~ 4.3e9
outcomes: neither the outcomes nor the states can be enumerated, so there is no exact conversion and no
exact L1). Downstream rewards: R(x) = exp(-beta min_m d_H(x, m)) with ``--modes`` random modes (mode
seeds 1, 2, ...). A mode m counts as *discovered* once any terminal string produced by the method so far
(every training rollout, conversion rollouts included) is within Hamming distance ``delta`` of m; the
script reports several radii (``--deltas``, default 2, 3 and 4 = L/8).

Every downstream policy network is the same ``PolicyMLP(obs_dim -> 17, width 128, depth 2)``; batch 16,
Adam lr 1e-3 (log Z x100), uniform P_B, on-policy TB. Methods, all at the same number of downstream
trajectories (``--steps`` x 16):

- ``uniform``: uniformly random strings, 16 per step (no learning; the floor any method must beat).
- ``scratch``: TB from a random initialisation.
- ``oc-amortized``: the amortised conversion of the pre-trained OC-GFN (numerator N + outcome sampler Q)
  for ``--convert-steps`` steps of 16 rollouts of pi = softmax(N), then ``to_trajectory_balance()`` and TB
  for the remaining steps. Conversion rollouts count as downstream trajectories; the outcomes y ~ Q are
  reward evaluations too (reported separately, and a second "any reward-evaluated string" count).
- ``oc-untrained`` (control): the same conversion + TB from the OC-GFN network at its random
  initialisation (no pre-training), to separate what pre-training brings from what the conversion
  procedure itself does.

Pre-training (reward-free, once, counted separately): ``OutcomeConditionedGFlowNet`` with DB, uniform
outcomes + hindsight relabelling, log floor ``--log-floor`` (must be well below -log|X| = -22.2 here: with
floor -20 the *optimum* reaches its outcome with probability 1/(1 + e^-20 (2^32 - 1)) ~ 0.10). Its
outcome-reaching success is measured on sampled outcomes (the exact probability of reaching each of
2,048 uniform outcomes, averaged) and by sampling rollouts.

    python benchmarks/gfn_ocgfn_modes.py            # ~8 min on one thread
"""

from __future__ import annotations

import argparse
import copy
import time
from types import SimpleNamespace

import torch

from flowforge.gflownet import PolicyMLP, TrajectoryBalance
from flowforge.gflownet.envs import BitSequence
from flowforge.gflownet.outcome import AmortizedConversion, OutcomeConditionedGFlowNet

WIDTH, DEPTH, BS, LR = 128, 2, 16, 1e-3


class Discovery:
    """Modes discovered (per radius) by the strings seen so far, recorded at trajectory checkpoints."""

    def __init__(self, env: BitSequence, deltas: tuple[int, ...]) -> None:
        self.env, self.deltas = env, deltas
        self.modes = env.mode_bits
        self.found = {d: torch.zeros(self.modes.shape[0], dtype=torch.bool) for d in deltas}
        self.found_any = {d: torch.zeros(self.modes.shape[0], dtype=torch.bool) for d in deltas}
        self.log: dict[int, dict] = {}

    def _near(self, x: torch.Tensor) -> torch.Tensor:
        b = self.env.bits(x)
        return (b[:, None, :] != self.modes[None]).sum(-1)  # (B, M) Hamming distances

    def add(self, terminal: torch.Tensor, extra: torch.Tensor | None = None) -> None:
        """``terminal``: rollout end points; ``extra``: other reward-evaluated strings (y ~ Q)."""
        dist = self._near(terminal)
        dx = self._near(extra) if extra is not None else None
        for d in self.deltas:
            hit = (dist <= d).any(0)
            self.found[d] |= hit
            self.found_any[d] |= hit
            if dx is not None:
                self.found_any[d] |= (dx <= d).any(0)

    def record(self, traj: int, evals: int) -> None:
        self.log[traj] = {
            "evals": evals,
            **{("roll", d): int(self.found[d].sum()) for d in self.deltas},
            **{("any", d): int(self.found_any[d].sum()) for d in self.deltas},
        }


def tb_phase(tb, env, disc: Discovery, traj: int, evals: int, total: int, checks, seed: int):
    opt = torch.optim.Adam(tb.parameters(), lr=LR)
    g = torch.Generator().manual_seed(1000 + seed)
    while traj < total:
        tr = tb.sample(BS, generator=g, epsilon=tb.epsilon, temperature=tb.temperature)
        loss = tb.objective(tr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        disc.add(tr.terminal)
        traj += BS
        evals += BS
        if traj in checks:
            disc.record(traj, evals)
    return tb


def run_amortized(model, env, deltas, a, total, checks, seed) -> Discovery:
    """``--convert-steps`` steps of AmortizedConversion(model), then TB to ``total`` trajectories."""
    torch.manual_seed(100 + seed)
    conv = AmortizedConversion(model, env, width=WIDTH, depth=DEPTH, epsilon=0.1)
    opt = torch.optim.Adam([q for q in conv.parameters() if q.requires_grad], lr=LR)
    g = torch.Generator().manual_seed(2000 + seed)
    disc = Discovery(env, deltas)
    traj = evals = 0
    for _ in range(a.convert_steps):
        res, term, yq = conv.residuals_and_outcomes(BS, g)
        loss = res.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        disc.add(term, yq)
        traj += BS
        evals += BS + yq.shape[0]  # rollout end points + one y ~ Q per move
        if traj in checks:
            disc.record(traj, evals)
    tb_phase(conv.to_trajectory_balance(), env, disc, traj, evals, total, checks, seed)
    return disc


def success(oc: OutcomeConditionedGFlowNet, g: torch.Generator, n: int = 2048) -> tuple[float, float]:
    """(mean exact probability of reaching y, fraction of n sampled rollouts that reach y), y uniform."""
    y = oc.sample_outcomes(n, g)
    p = oc.success_rate(y)
    with torch.no_grad():
        hit = (oc.rollout(y, generator=g, epsilon=0.0)[1].terminal == y).all(1).float().mean()
    return p, float(hit)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--word", type=int, default=4)
    p.add_argument("--modes", type=int, default=32)
    p.add_argument("--beta", type=float, default=3.0)
    p.add_argument("--deltas", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--rewards", type=int, default=2)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--reward-start", type=int, default=1, help="first mode seed")
    p.add_argument("--seed-start", type=int, default=0, help="first training seed")
    p.add_argument("--json", default=None, help="also write every run's checkpoints to this file")
    p.add_argument("--steps", type=int, default=3000, help="downstream steps of 16 trajectories")
    p.add_argument("--convert-steps", type=int, default=1000)
    p.add_argument("--pretrain-steps", type=int, default=10000)
    p.add_argument("--pretrain-batch", type=int, default=64)
    p.add_argument("--pretrain-lr", type=float, default=3e-3)
    p.add_argument("--log-floor", type=float, default=-40.0)
    p.add_argument("--methods", nargs="+", default=["uniform", "scratch", "oc-amortized", "oc-untrained"])
    a = p.parse_args()
    torch.set_num_threads(1)
    t_all = time.time()
    deltas = tuple(a.deltas)
    total = a.steps * BS
    checks = sorted({total * k // 8 // BS * BS for k in (1, 2, 4, 6, 8)})

    # -- pre-training (reward-free, once) --------------------------------------------------------
    env0 = BitSequence(a.length, a.word)
    torch.manual_seed(0)
    oc = OutcomeConditionedGFlowNet(env0, width=WIDTH, depth=DEPTH, log_floor=a.log_floor, epsilon=0.1)
    oc_raw = copy.deepcopy(oc).eval()  # the control: same network, no pre-training
    opt = torch.optim.Adam(oc.parameters(), lr=a.pretrain_lr)
    g = torch.Generator().manual_seed(0)
    ge = torch.Generator().manual_seed(99)
    t0 = time.time()
    for i in range(a.pretrain_steps):
        loss = oc.loss(SimpleNamespace(size=a.pretrain_batch, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (i + 1) % 2000 == 0:
            sp, sh = success(oc, ge, 512)
            print(
                f"pretrain step {i + 1}: loss {loss.item():.3f} success {sp:.4f} (sampled {sh:.4f})",
                flush=True,
            )
    oc.eval()
    for q in oc.parameters():
        q.requires_grad_(False)
    sp, sh = success(oc, torch.Generator().manual_seed(12345))
    pre_time = time.time() - t0
    print(
        f"pre-training: {a.pretrain_steps} steps x {a.pretrain_batch} outcomes = "
        f"{a.pretrain_steps * a.pretrain_batch} trajectories (each also hindsight-relabelled), {pre_time:.0f}s; "
        f"success on 2,048 uniform outcomes: mean exact P(reach y) {sp:.4f}, sampled {sh:.4f}",
        flush=True,
    )

    # -- downstream rewards ----------------------------------------------------------------------
    rows = []  # (reward, method, seed, Discovery)
    rewards = range(a.reward_start, a.reward_start + a.rewards)
    for r in rewards:
        env = BitSequence(a.length, a.word, modes=a.modes, beta=a.beta, seed=r)
        for seed in range(a.seed_start, a.seed_start + a.seeds):
            t0 = time.time()
            if "uniform" in a.methods:  # uniform random strings
                disc = Discovery(env, deltas)
                gu = torch.Generator().manual_seed(3000 + seed)
                for k in range(1, a.steps + 1):
                    disc.add(torch.randint(0, env.vocab, (BS, env.n_words), generator=gu))
                    if k * BS in checks:
                        disc.record(k * BS, k * BS)
                rows.append((r, "uniform", seed, disc))
            if "scratch" in a.methods:  # TB from random weights
                torch.manual_seed(100 + seed)
                tb = TrajectoryBalance(
                    env, PolicyMLP(env.obs_dim, env.n_actions, WIDTH, DEPTH), uniform_pb=True
                )
                disc = Discovery(env, deltas)
                tb_phase(tb, env, disc, 0, 0, total, checks, seed)
                rows.append((r, "scratch", seed, disc))
            t1 = time.time()
            # amortised conversion, then TB: from the pre-trained model, and (control) from the same
            # OC-GFN network left at its random initialisation (no pre-training)
            for name, model in (("oc-amortized", oc), ("oc-untrained", oc_raw)):
                if name not in a.methods:
                    continue
                rows.append((r, name, seed, run_amortized(model, env, deltas, a, total, checks, seed)))
            d = deltas[-1]
            print(
                f"reward {r} seed {seed}: modes within {d} @{total // 1000}k: "
                + "; ".join(
                    f"{m} {ds.log[total][('roll', d)]}" for (rr, m, sd, ds) in rows if (rr, sd) == (r, seed)
                )
                + f" of {a.modes}  (scratch {t1 - t0:.0f}s, conversions {time.time() - t1:.0f}s)",
                flush=True,
            )

    # -- tables ----------------------------------------------------------------------------------
    print(
        f"\ntotal {time.time() - t_all:.0f}s; pre-training {pre_time:.0f}s, success {sp:.4f} "
        f"(exact P averaged over 2,048 sampled outcomes), {sh:.4f} (sampled rollouts)\n"
    )

    def cell(sel, key, c) -> str:
        v = torch.tensor([float(ds.log[c][key]) for (_, _, _, ds) in sel], dtype=torch.float64)
        return f"{v.mean():.1f} ± {v.std(unbiased=False):.1f}"

    methods = [m for m in ("uniform", "scratch", "oc-amortized", "oc-untrained") if m in a.methods]
    for d in deltas:
        print(
            f"modes discovered (of {a.modes}) within Hamming distance {d}, by training-rollout end points; "
            f"mean ± sd over {a.seeds} seeds (reward 'all': over every reward and seed)"
        )
        head = " | ".join(f"@{c / 1000:g}k traj" for c in checks)
        print(
            f"| reward | method | {head} | reward evals @{total / 1000:g}k | any evaluated string @{total / 1000:g}k |"
        )
        print("|" + "---|" * (len(checks) + 4))
        for r in [*rewards, "all"]:
            for m in methods:
                sel = [row for row in rows if r in (row[0], "all") and row[1] == m]
                cells = [cell(sel, ("roll", d), c) for c in checks]
                ev = int(sum(ds.log[total]["evals"] for (_, _, _, ds) in sel) / len(sel))
                print(f"| {r} | {m} | " + " | ".join(cells) + f" | {ev} | {cell(sel, ('any', d), total)} |")
        print()
    if a.json:
        import json

        out = [
            {
                "reward": r,
                "method": m,
                "seed": sd,
                "log": {c: {str(k): v for k, v in e.items()} for c, e in ds.log.items()},
            }
            for (r, m, sd, ds) in rows
        ]
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "success": [sp, sh], "runs": out}, f)


if __name__ == "__main__":
    main()
