"""GFlowNets against the hypergrid's exact target (house rule 5): rewards, masks, exact DP, losses, training."""

import math
import time

import pytest
import torch
from torch import nn

from flowforge.gflownet import (
    DetailedBalance,
    HyperGrid,
    SubTrajectoryBalance,
    TrajectoryBalance,
    exact_flows,
    exact_metrics,
    jsd,
    l1_mean,
    l1_sum,
    modes_found,
    terminal_distribution,
)
from flowforge.nn import MLP

torch.set_num_threads(1)


class Table(nn.Module):
    """Tabular 'network' on a hypergrid's K-hot observations: row ``state_index(x)`` of ``values``."""

    def __init__(self, env: HyperGrid, values: torch.Tensor) -> None:
        super().__init__()
        self.env = env
        self.values = nn.Parameter(values.clone())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        states = obs.reshape(obs.shape[0], self.env.ndim, self.env.height).argmax(-1)
        return self.values[self.env.state_index(states)]


class Zeros(nn.Module):
    def __init__(self, out: int) -> None:
        super().__init__()
        self.out = out
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.dummy.expand(obs.shape[0], self.out)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------
# environment


def test_hypergrid_rewards_modes_and_log_partition():
    env = HyperGrid(ndim=2, height=8)
    r = env.log_reward(env.all_states(), torch.float64).exp()
    assert sorted(set(r.round(decimals=6).tolist())) == [0.1, 0.6, 2.6]
    assert env.modes.tolist() == [[1, 1], [1, 6], [6, 1], [6, 6]]
    assert env.n_modes == 4
    assert env.log_partition == pytest.approx(3.10906, abs=1e-5)
    assert env.true_distribution().sum().item() == pytest.approx(1.0, abs=1e-12)
    assert HyperGrid(ndim=4, height=8).n_modes == 16


def test_hypergrid_masks_and_indexing():
    env = HyperGrid(ndim=2, height=8)
    s = torch.tensor([[0, 0], [7, 3], [7, 7], [2, 7]])
    assert env.forward_mask(s).tolist() == [
        [True, True, True],
        [False, True, True],
        [False, False, True],
        [True, False, True],
    ]
    assert env.backward_mask(s).tolist() == [[False, False], [True, True], [True, True], [True, True]]
    with pytest.raises(ValueError, match="forward_mask"):
        env.step(s[1:2], torch.tensor([0]))
    with pytest.raises(ValueError, match="backward_mask"):
        env.backward_step(s[:1], torch.tensor([1]))
    all_s = env.all_states()
    assert torch.equal(env.state_index(all_s), torch.arange(64))
    assert env.obs(s).shape == (4, 16) and torch.equal(env.obs(s).sum(1), torch.full((4,), 2.0))


def test_step_backward_step_round_trip():
    env = HyperGrid(ndim=3, height=5)
    g = gen(1)
    s = torch.randint(0, 5, (200, 3), generator=g)
    mask = env.forward_mask(s)[:, :-1]
    keep = mask.any(1)
    s, mask = s[keep], mask[keep]
    a = torch.multinomial(mask.double(), 1, generator=g).squeeze(1)
    s1 = env.step(s, a)
    assert torch.equal(s1.sum(1), s.sum(1) + 1)
    assert torch.equal(env.backward_step(s1, a), s)
    assert torch.equal(env.step(s, torch.full_like(a, env.stop_action)), s)  # stop leaves the state


# ---------------------------------------------------------------------------------------------------
# exact DP


def test_exact_dp_uniform_policy_matches_monte_carlo():
    env = HyperGrid(ndim=2, height=6)
    model = TrajectoryBalance(env, Zeros(env.n_actions), uniform_pb=True).double()
    p = terminal_distribution(model, env)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12) and bool((p >= 0).all())
    n = 40_000
    x = model.generator().sample(n, generator=gen(0))
    counts = torch.bincount(env.state_index(x), minlength=env.n_states).double() / n
    sd = (p * (1 - p) / n).sqrt()
    assert bool(((counts - p).abs() <= 5 * sd + 1e-4).all())
    assert float(l1_sum(counts, p)) < 0.05


@pytest.mark.parametrize("learned_pb", [False, True])
def test_exact_flow_policy_recovers_target(learned_pb):
    env = HyperGrid(ndim=2, height=8)
    pb_fn = None
    if learned_pb:  # any backward policy has its own optimal forward policy
        table = torch.randn(env.n_states, env.ndim, generator=gen(3), dtype=torch.float64)

        def pb_fn(s):
            m = env.backward_mask(s)
            safe = m | ~m.any(-1, keepdim=True)
            return torch.log_softmax(table[env.state_index(s)].masked_fill(~safe, -math.inf), -1)

    log_f, log_pf = exact_flows(env, pb_fn)
    p = terminal_distribution(lambda s: log_pf[env.state_index(s)], env)
    pi = env.true_distribution()
    assert float(l1_sum(p, pi)) < 1e-12 and float(l1_mean(p, pi)) < 1e-13 and float(jsd(p, pi)) < 1e-12
    assert float(log_f[0]) == pytest.approx(env.log_partition, abs=1e-12)
    assert float(jsd(pi, torch.full_like(pi, 1 / 64))) > 0.01


def test_modes_found():
    env = HyperGrid(ndim=2, height=8)
    assert modes_found(env, env.modes) == 4
    assert modes_found(env, torch.tensor([[0, 0], [1, 1], [1, 1]])) == 1


# ---------------------------------------------------------------------------------------------------
# losses at the exact solution


def exact_models(env, learned_pb):
    """TB, DB and SubTB models (float64, tabular) holding the exact solution for a P_B."""
    if learned_pb:
        pb_table = torch.randn(env.n_states, env.ndim, generator=gen(5), dtype=torch.float64)

        def pb_fn(s):
            m = env.backward_mask(s)
            safe = m | ~m.any(-1, keepdim=True)
            return torch.log_softmax(pb_table[env.state_index(s)].masked_fill(~safe, -math.inf), -1)

    else:
        pb_fn = None
    log_f, log_pf = exact_flows(env, pb_fn)
    pf_logits = log_pf.nan_to_num(neginf=0.0)

    def kw():
        if learned_pb:
            return {"pb": Table(env, pb_table)}
        return {"uniform_pb": True}

    tb = TrajectoryBalance(env, Table(env, pf_logits), **kw()).double()
    with torch.no_grad():
        tb.log_z_raw.copy_(log_f[0] / tb.log_z_lr_scale)  # set after .double(): no float32 rounding
    db = DetailedBalance(env, Table(env, pf_logits), logf=Table(env, log_f[:, None]), **kw()).double()
    sub = SubTrajectoryBalance(env, Table(env, pf_logits), logf=Table(env, log_f[:, None]), **kw()).double()
    return tb, db, sub


@pytest.mark.parametrize("learned_pb", [False, True])
def test_losses_vanish_at_exact_solution_and_not_elsewhere(learned_pb):
    env = HyperGrid(ndim=2, height=4)
    tb, db, sub = exact_models(env, learned_pb)
    tr = tb.sample(256, generator=gen(0), epsilon=0.5)  # off-policy: every loss is still zero
    assert tr.log_pf.dtype == torch.float64
    assert float(tb.residuals(tr).detach().abs().max()) < 1e-10
    assert float(db.residuals(tr).detach().abs().max()) < 1e-10
    r, mask = sub.residuals(tr)
    assert float((r * mask).detach().abs().max()) < 1e-10
    for m in (tb, db, sub):
        assert m.loss(tr).item() < 1e-20
    with torch.no_grad():  # perturb log Z / log F
        tb.log_z_raw.add_(0.5 / tb.log_z_lr_scale)
        db.logf.values[5] += 0.5
        sub.logf.values[5] += 0.5
    assert tb.loss(tr).item() == pytest.approx(0.25, rel=1e-9)
    assert db.loss(tr).item() > 1e-4 and sub.loss(tr).item() > 1e-4


def test_subtb_full_trajectory_term_is_tb():
    env = HyperGrid(ndim=2, height=5)
    torch.manual_seed(0)
    sub = SubTrajectoryBalance(env, width=16, depth=1).double()
    tb = TrajectoryBalance(env, pf=sub.pf, pb=sub.pb).double()
    tr = sub.sample(32, generator=gen(2))
    with torch.no_grad():
        tb.log_z_raw.copy_(sub.log_z / tb.log_z_lr_scale)
    r, _ = sub.residuals(tr)
    full = r[0, tr.lengths, torch.arange(32)]  # i = 0 (s0), j = L (sink)
    assert torch.allclose(full, tb.residuals(tr), atol=1e-12)
    # DB residuals are the length-1 sub-trajectories
    db = DetailedBalance(env, pf=sub.pf, pb=sub.pb, logf=sub.logf).double()
    k = torch.arange(r.shape[0] - 1)
    assert torch.allclose(r[k, k + 1] * tr.valid, db.residuals(tr), atol=1e-12)


def test_exploration_keeps_unexplored_log_probs():
    env = HyperGrid(ndim=2, height=6)
    torch.manual_seed(0)
    tb = TrajectoryBalance(env, width=16, depth=1).double()
    tr = tb.sample(64, generator=gen(4), epsilon=1.0, temperature=3.0)
    assert bool((tr.lengths >= 1).all()) and bool(tr.valid[0].all())
    t, b = tr.valid.nonzero(as_tuple=True)
    ref = tb.forward_log_probs(tr.states[t, b]).gather(1, tr.actions[t, b][:, None]).squeeze(1)
    assert torch.allclose(tr.log_pf[t, b], ref)
    assert torch.equal(tr.terminal, tr.states[-1])
    tb.loss(tr).backward()  # gradients reach every parameter
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in tb.parameters())


def test_flowforge_mlp_as_policy_and_clear_shape_error():
    env = HyperGrid(ndim=2, height=4)
    ok = TrajectoryBalance(
        env, MLP(dim=env.obs_dim, width=16, depth=2, out_dim=env.n_actions), uniform_pb=True
    )
    assert torch.isfinite(ok.loss(ok.sample(4, generator=gen(0))))
    bad = TrajectoryBalance(env, MLP(dim=env.obs_dim, width=16, depth=2), uniform_pb=True)
    with pytest.raises(ValueError, match="out_dim=3"):
        bad.sample(4, generator=gen(0))


# ---------------------------------------------------------------------------------------------------
# training


def test_tb_trains_on_2d_hypergrid_to_exact_l1_below_0p1():
    from flowforge.train import train

    env = HyperGrid(ndim=2, height=8)
    torch.manual_seed(0)
    tb = TrajectoryBalance(env, width=256, depth=2)
    before = exact_metrics(tb, env)
    t0 = time.perf_counter()
    train(tb, None, steps=600, batch_size=16, lr=1e-3, progress=False, seed=0, ema_decay=0.0)
    elapsed = time.perf_counter() - t0
    after = exact_metrics(tb, env)
    print(f"TB 2D H8: 600 steps x 16 in {elapsed:.1f}s, exact metrics {after} (before {before})")
    assert after["l1_sum"] < 0.1 < before["l1_sum"]
    assert after["logz_error"] < 0.1
    x = tb.generator().sample(2000, generator=gen(9))
    assert x.shape == (2000, 2) and modes_found(env, x) == env.n_modes
