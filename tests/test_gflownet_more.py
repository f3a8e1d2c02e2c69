"""More GFlowNets against exact targets: flow matching, ZVar, replay buffers, bit sequences."""

import itertools
import math
import time

import pytest
import torch
from torch import nn

from flowforge.gflownet import (
    BitSequence,
    FlowMatching,
    HyperGrid,
    LogPartitionVariance,
    PrioritizedReplayBuffer,
    ReplayBuffer,
    TrajectoryBalance,
    exact_flows,
    exact_metrics,
    l1_sum,
    modes_found,
    terminal_distribution,
)
from flowforge.train import train

torch.set_num_threads(1)


class Table(nn.Module):
    """Tabular net on any enumerable env: decodes the state from its observation by lookup."""

    def __init__(self, env, values: torch.Tensor) -> None:
        super().__init__()
        self.env = env
        self.values = nn.Parameter(values.clone())
        self.register_buffer("all_obs", env.obs(env.all_states()).double())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        match = (obs.double()[:, None, :] == self.all_obs[None]).all(-1)
        return self.values[match.long().argmax(1)]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fit(model, env, steps, lr=3e-3, batch_size=16):
    torch.manual_seed(0)
    before = exact_metrics(model, env)
    t0 = time.perf_counter()
    train(model, None, steps=steps, batch_size=batch_size, lr=lr, progress=False, seed=0, ema_decay=0.0)
    after = exact_metrics(model, env)
    name = type(model).__name__
    print(
        f"{name} on {env}: {steps} steps x {batch_size} in {time.perf_counter() - t0:.1f}s, {after} (before {before})"
    )
    return before, after


def small_bits():
    return BitSequence(
        length=6, word=2, modes=torch.tensor([[0, 0, 0, 0, 0, 0], [1, 1, 0, 1, 1, 1]]), beta=1.0
    )


# ---------------------------------------------------------------------------------------------------
# flow matching


def exact_fm(env):
    log_f, log_pf = exact_flows(env)
    edge = (log_pf + log_f[:, None]).nan_to_num(neginf=0.0)  # log F(s -> s'); stop column unused
    return FlowMatching(env, Table(env, edge)).double()


@pytest.mark.parametrize("make_env", [lambda: HyperGrid(2, 5), lambda: HyperGrid(3, 3), small_bits])
def test_flow_matching_zero_at_exact_flows_positive_when_perturbed(make_env):
    env = make_env()
    fm = exact_fm(env)
    tr = fm.sample(128, generator=gen(0), epsilon=0.5)
    r = fm.residuals(tr).detach()
    assert r.numel() > 0 and float(r.abs().max()) < 1e-10
    assert float(fm.log_z.detach()) == pytest.approx(env.log_partition, abs=1e-10)
    p = terminal_distribution(fm, env)
    assert float(l1_sum(p, env.true_distribution())) < 1e-10
    # on every non-initial state, not only the visited ones
    s = env.all_states()[1:]
    assert float((fm.log_inflow(s) - fm.log_outflow(s)).detach().abs().max()) < 1e-10
    with torch.no_grad():
        fm.pf.values[0, 0] += 0.7  # edge s0 -> first child: in-flow of that child too large
    child = env.step(env.s0[None], torch.tensor([0]))
    assert float(fm.log_inflow(child) - fm.log_outflow(child)) > 0.1
    assert fm.loss(fm.sample(128, generator=gen(1))).item() > 1e-4


def test_flow_matching_policy_and_inflow_by_brute_force():
    env = HyperGrid(2, 4)
    torch.manual_seed(0)
    fm = FlowMatching(env, width=16, depth=1).double()
    s = torch.tensor([[1, 2], [0, 3], [2, 0]])
    out = fm.pf(env.obs(s).double())
    with torch.no_grad():
        inflow = fm.log_inflow(s)
        outflow = fm.log_outflow(s)
    for i, x in enumerate(s.tolist()):
        terms = []
        for a in range(2):
            if x[a] > 0:
                parent = torch.tensor([x]) - torch.nn.functional.one_hot(torch.tensor([a]), 2)
                terms.append(fm.pf(env.obs(parent).double())[0, a])
        assert float(inflow[i]) == pytest.approx(float(torch.logsumexp(torch.stack(terms), 0)), abs=1e-12)
        outs = [out[i, a] for a in range(2) if x[a] < 3] + [env.log_reward(s[i : i + 1], torch.float64)[0]]
        assert float(outflow[i]) == pytest.approx(float(torch.logsumexp(torch.stack(outs), 0)), abs=1e-12)
    lp = fm.forward_log_probs(s)
    assert torch.allclose(lp.exp().sum(1), torch.ones(3, dtype=torch.float64))


def test_flow_matching_trains_on_2d_height6():
    env = HyperGrid(ndim=2, height=6)
    before, after = fit(FlowMatching(env, width=64, depth=2), env, steps=200)
    assert after["l1_sum"] < 0.1 < before["l1_sum"]
    assert after["logz_error"] < 0.1


# ---------------------------------------------------------------------------------------------------
# ZVar


def exact_zvar(env):
    _, log_pf = exact_flows(env)
    return LogPartitionVariance(env, Table(env, log_pf.nan_to_num(neginf=0.0)), uniform_pb=True).double()


@pytest.mark.parametrize("make_env", [lambda: HyperGrid(2, 5), small_bits])
def test_zvar_zero_at_optimum(make_env):
    env = make_env()
    zv = exact_zvar(env)
    tr = zv.sample(128, generator=gen(0), epsilon=0.5)
    z = zv.residuals(tr).detach()
    assert torch.allclose(z, torch.full_like(z, env.log_partition), atol=1e-10)
    assert zv.loss(tr).item() < 1e-20
    assert float(zv.log_z) == pytest.approx(env.log_partition, abs=1e-10)
    with torch.no_grad():
        zv.pf.values[0, 0] += 0.7
    assert zv.loss(zv.sample(128, generator=gen(1))).item() > 1e-4


def test_zvar_trains():
    env = HyperGrid(ndim=2, height=6)
    before, after = fit(LogPartitionVariance(env, width=64, depth=2), env, steps=300)
    assert after["l1_sum"] < 0.1 < before["l1_sum"]
    assert after["logz_error"] < 0.1


# ---------------------------------------------------------------------------------------------------
# replay buffers


def test_replay_buffer_capacity_and_eviction():
    buf = ReplayBuffer(capacity=5)
    with pytest.raises(RuntimeError, match="empty"):
        buf.sample(1)
    for k in range(3):
        buf.add(torch.arange(4 * k, 4 * k + 4)[:, None], torch.zeros(4))
    assert len(buf) == 5 and buf.states.squeeze(1).tolist() == [7, 8, 9, 10, 11]
    x = buf.sample(20_000, generator=gen(0)).squeeze(1)
    freq = torch.bincount(x - 7, minlength=5).double() / 20_000
    assert bool(((freq - 0.2).abs() < 0.02).all())
    with pytest.raises(ValueError):
        ReplayBuffer(0)


def test_prioritized_buffer_keeps_best_distinct_and_samples_by_rank():
    buf = PrioritizedReplayBuffer(capacity=4, k=0.5)
    g = gen(1)
    for _ in range(5):
        s = torch.randint(0, 10, (8, 1), generator=g)
        buf.add(s, -(s.squeeze(1).double() - 9).abs())  # best state: 9
    assert len(buf) == 4 and len(set(buf.states.squeeze(1).tolist())) == 4
    seen = sorted(set(buf.states.squeeze(1).tolist()))
    assert buf.log_rewards.tolist() == sorted(buf.log_rewards.tolist(), reverse=True)
    assert buf.states.squeeze(1).tolist() == sorted(seen, reverse=True)
    p = buf.probs()
    w = 1 / (0.5 * 4 + torch.arange(4, dtype=torch.float64))
    assert torch.allclose(p, w / w.sum()) and bool((p[:-1] > p[1:]).all())
    x = buf.sample(40_000, generator=gen(2)).squeeze(1)
    freq = torch.stack([(x == v).double().mean() for v in buf.states.squeeze(1).tolist()])
    assert bool(((freq - p).abs() < 0.01).all())
    uniform = ReplayBuffer(4)
    uniform.add(buf.states, buf.log_rewards)
    idx = {v: i for i, v in enumerate(buf.states.squeeze(1).tolist())}

    def mean_log_r(b):
        x = b.sample(4000, generator=gen(3)).squeeze(1).tolist()
        return float(buf.log_rewards[[idx[v] for v in x]].mean())

    assert mean_log_r(buf) > mean_log_r(uniform) + 0.1  # prioritisation favours high reward


@pytest.mark.parametrize("make_env", [lambda: HyperGrid(3, 4), small_bits])
@pytest.mark.parametrize("uniform_pb", [True, False])
def test_backward_sampled_trajectories_are_valid(make_env, uniform_pb):
    env = make_env()
    torch.manual_seed(0)
    tb = TrajectoryBalance(env, width=16, depth=1, uniform_pb=uniform_pb).double()
    x = tb.sample(64, generator=gen(0)).terminal
    tr = tb.sample_backward(x, generator=gen(1))
    n = x.shape[0]
    ar = torch.arange(n)
    stop = env.n_actions - 1
    assert torch.equal(tr.terminal, x) and bool((tr.states[0] == env.s0).all())
    assert torch.equal(tr.actions[tr.lengths - 1, ar], torch.full((n,), stop))
    for t in range(tr.actions.shape[0]):
        a = tr.actions[t]
        v = tr.valid[t]
        if bool(v.any()):
            assert bool(env.forward_mask(tr.states[t][v]).gather(1, a[v][:, None]).all())
            assert torch.equal(env.step(tr.states[t][v], a[v]), tr.states[t + 1][v])
        assert torch.equal(tr.states[t + 1][~v], tr.states[t][~v])
    assert bool((tr.valid.sum(0) == tr.lengths).all()) and bool((tr.actions[~tr.valid] == -1).all())
    # recomputed log-probs agree with the networks, and equal those of the same path sampled forwards
    ref = tb.trajectories_from_actions(tr.states, tr.actions)
    assert torch.allclose(ref.log_pf, tr.log_pf) and torch.allclose(ref.log_pb, tr.log_pb)
    assert bool(torch.isfinite(tr.log_pf).all()) and bool(torch.isfinite(tr.log_pb).all())
    tb.loss(tr).backward()


def test_backward_sampling_follows_pb():
    env = HyperGrid(2, 3)
    tb = TrajectoryBalance(env, width=8, depth=1, uniform_pb=True).double()
    x = torch.tensor([[2, 2]]).expand(6000, 2)
    tr = tb.sample_backward(x, generator=gen(4))
    paths = [tuple(a) for a in tr.actions[:4].T.tolist()]
    counts = {p: paths.count(p) / 6000 for p in set(paths)}
    # 6 monotone paths; uniform P_B gives probabilities 1/4 (two of them: 0011, 1100) and 1/8 (four)
    assert len(counts) == 6
    for p, f in counts.items():
        expected = 0.25 if p in [(0, 0, 1, 1), (1, 1, 0, 0)] else 0.125
        assert f == pytest.approx(expected, abs=0.025)
    assert bool((tr.log_pb.sum(0).exp() - torch.tensor([counts[p] for p in paths])).abs().max() < 0.03)


def test_replay_ratio_validation_and_loss_mix():
    env = HyperGrid(2, 4)
    with pytest.raises(ValueError, match="replay_buffer"):
        TrajectoryBalance(env, replay_ratio=0.5)
    with pytest.raises(ValueError, match="replay_ratio"):
        TrajectoryBalance(env, replay_buffer=ReplayBuffer(4), replay_ratio=1.0)
    buf = ReplayBuffer(50)
    tb = TrajectoryBalance(env, width=8, depth=1, replay_buffer=buf, replay_ratio=0.25)

    class Req:
        size, generator, device = 8, gen(0), torch.device("cpu")

    assert torch.isfinite(tb.loss(Req()))  # empty buffer: all on-policy
    assert len(buf) == 8
    tb.loss(Req())
    assert len(buf) == 8 + 6  # 2 of 8 replayed


def test_tb_with_prioritized_replay_converges():
    env = HyperGrid(ndim=2, height=6)
    tb = TrajectoryBalance(
        env, width=64, depth=2, replay_buffer=PrioritizedReplayBuffer(100), replay_ratio=0.5
    )
    before, after = fit(tb, env, steps=400)
    assert after["l1_sum"] < 0.15 < before["l1_sum"]
    assert after["logz_error"] < 0.1


# ---------------------------------------------------------------------------------------------------
# bit sequences


def test_bitsequence_enumeration_and_exact_log_z_by_brute_force():
    modes = torch.tensor([[0, 1, 1, 0, 1, 0, 0, 1], [1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 0, 1]])
    env = BitSequence(length=8, word=2, modes=modes, beta=2.0)
    s = env.all_states()
    assert s.shape == (1 + 4 + 16 + 64 + 256, 4) == (env.n_states, env.n_words)
    assert torch.equal(env.state_index(s), torch.arange(env.n_states))
    assert torch.equal(s[0], env.s0) and len({tuple(r) for r in s.tolist()}) == env.n_states
    brute = [
        -2.0 * min(sum(b != m for b, m in zip(bits, mode)) for mode in modes.tolist())
        for bits in itertools.product([0, 1], repeat=8)
    ]
    assert env.log_partition == pytest.approx(math.log(sum(math.exp(v) for v in brute)), abs=1e-12)
    full = s[(s >= 0).all(1)]
    assert sorted(env.log_reward(full, torch.float64).tolist()) == sorted(brute)
    assert env.true_distribution()[: 1 + 4 + 16 + 64].abs().max() == 0
    assert modes_found(env, full) == 3 and env.n_modes == 3
    # masks and round trip
    some = s[torch.randperm(env.n_states, generator=gen(0))[:50]]
    fm_ = env.forward_mask(some)
    assert torch.equal(fm_[:, -1], (some >= 0).all(1)) and bool((fm_.sum(1) >= 1).all())
    assert torch.equal(env.backward_mask(some).sum(1), (env.level(some) > 0).long())
    inner = some[~(some >= 0).all(1)]
    a = torch.randint(0, 4, (inner.shape[0],), generator=gen(1))
    nxt = env.step(inner, a)
    assert torch.equal(env.level(nxt), env.level(inner) + 1)
    assert torch.equal(env.backward_step(nxt, a), inner)
    with pytest.raises(ValueError, match="forward_mask"):
        env.step(full[:1], torch.tensor([0]))
    with pytest.raises(ValueError, match="backward_mask"):
        env.backward_step(env.s0[None], torch.tensor([0]))


def test_bitsequence_exact_dp():
    env = small_bits()
    log_f, log_pf = exact_flows(env)
    p = terminal_distribution(lambda s: log_pf[env.state_index(s)], env)
    assert float(l1_sum(p, env.true_distribution())) < 1e-12
    assert float(log_f[0]) == pytest.approx(env.log_partition, abs=1e-12)


def test_tb_trains_on_bitsequence():
    env = small_bits()
    tb = TrajectoryBalance(env, width=64, depth=2)
    before, after = fit(tb, env, steps=400)
    assert after["l1_sum"] < 0.05 < before["l1_sum"]
    assert after["logz_error"] < 0.1
    x = tb.generator().sample(500, generator=gen(5))
    assert bool((x >= 0).all()) and modes_found(env, x) == 2


def test_hypergrid_dp_unchanged_by_level_hook():
    env = HyperGrid(2, 8)
    log_f, _ = exact_flows(env)
    assert float(log_f[0]) == pytest.approx(3.10906, abs=1e-5)


@pytest.mark.parametrize("shared", [False, True])
def test_batched_rescoring_matches_per_step_log_probs(shared):
    env = HyperGrid(3, 5)
    torch.manual_seed(0)
    if shared:
        trunk = nn.Sequential(nn.Linear(env.obs_dim, 32), nn.ReLU())
        pf = nn.Sequential(trunk, nn.Linear(32, env.n_actions))
        pb = nn.Sequential(trunk, nn.Linear(32, env.n_actions - 1))
        tb = TrajectoryBalance(env, pf, pb).double()
    else:
        tb = TrajectoryBalance(env, width=32, depth=2).double()
    tr = tb.sample(32, generator=gen(0), epsilon=0.3, temperature=2.0)
    T = tr.actions.shape[0]
    assert bool((tr.actions[-1] == -1).any() | (tr.actions[-1] == env.stop_action).all())
    stop = env.n_actions - 1
    for t in range(T):
        a = tr.actions[t]
        lpf = tb.forward_log_probs(tr.states[t]).gather(1, a.clamp(min=0)[:, None]).squeeze(1)
        lpb = tb.backward_log_probs(tr.states[t + 1]).gather(1, a.clamp(0, stop - 1)[:, None]).squeeze(1)
        move = (a >= 0) & (a != stop)
        torch.testing.assert_close(tr.log_pf[t], torch.where(a >= 0, lpf, 0.0), rtol=0, atol=1e-12)
        torch.testing.assert_close(tr.log_pb[t], torch.where(move, lpb, 0.0), rtol=0, atol=1e-12)
    ref_pf, ref_pb = tb._log_probs_padded(tr.states, tr.actions)
    torch.testing.assert_close(tr.log_pf, ref_pf, rtol=0, atol=1e-12)
    torch.testing.assert_close(tr.log_pb, ref_pb, rtol=0, atol=1e-12)
    # gradients flow to every policy parameter
    tb.loss(tr).backward()
    assert all(p.grad is not None for p in tb.pf.parameters())
    # the rollout never takes a masked action
    for t in range(T):
        a = tr.actions[t]
        ok = env.forward_mask(tr.states[t]).gather(1, a.clamp(min=0)[:, None]).squeeze(1)
        assert bool((ok | (a < 0)).all())


def test_hypergrid_rollout_fast_paths_match_public_methods():
    for env in (HyperGrid(2, 8), HyperGrid(3, 5)):
        s = env.all_states()
        assert torch.equal(env.log_reward_fast(s, torch.float64), env.log_reward(s, torch.float64))
        assert torch.equal(env.forward_forbidden(s), ~env.forward_mask(s))
        ok = env.forward_mask(s)
        for a in range(env.n_actions):
            act = torch.full((s.shape[0],), a)
            rows = ok[:, a]
            assert torch.equal(s[rows] + env.step_delta()[act[rows]], env.step(s[rows], act[rows]))
