"""Forward-looking GFlowNets (FL-DB / FL-SubTB), incomplete trajectories and the set-generation task,
checked against the exact flows of small enumerable environments in float64."""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from flowforge.gflownet import (
    BitSequence,
    DetailedBalance,
    HyperGrid,
    SetGeneration,
    SubTrajectoryBalance,
    TopKTracker,
    TrajectoryBalance,
    exact_flows,
    exact_metrics,
    fl_gfn_energies,
    terminal_distribution,
)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def small_set():
    return SetGeneration(n_items=6, set_size=3, energies=fl_gfn_energies(6, seed=3))


class Table(nn.Module):
    """A "network" that looks rows up by state: obs -> env state -> table row (exact solutions)."""

    def __init__(self, env, table, decode):
        super().__init__()
        self.env, self.decode = env, decode
        self.table = nn.Parameter(table.clone())

    def forward(self, obs):
        return self.table[self.env.state_index(self.decode(obs))]


def set_decode(obs):
    return obs.round().long()


def grid_decode(env):
    return lambda obs: obs.reshape(obs.shape[0], env.ndim, env.height).argmax(-1)


def exact_model(env, decode, cls=DetailedBalance, forward_looking=True, **kw):
    """An FL (or plain) flow GFlowNet holding the exact solution for a uniform P_B."""
    log_f, log_pf = exact_flows(env)
    states = env.all_states()
    log_r = env.log_reward(states, torch.float64)
    logf = (log_f - log_r if forward_looking else log_f)[:, None]
    pf = Table(env, torch.where(log_pf.isfinite(), log_pf, torch.zeros(())), decode)
    model = cls(
        env, pf, uniform_pb=True, logf=Table(env, logf, decode), forward_looking=forward_looking, **kw
    )
    return model.double()


# -- the set environment ---------------------------------------------------------------------------


def test_set_env_enumeration_reward_and_partition_by_brute_force():
    env = small_set()
    s = env.all_states()
    assert s.shape == (env.n_states, 6) and env.n_states == 1 + 6 + 15 + 20
    assert torch.equal(env.state_index(s), torch.arange(env.n_states))
    assert bool((env.level(s)[1:] >= env.level(s)[:-1]).all())  # by size
    full = [torch.tensor(c) for c in itertools.combinations(range(6), 3)]
    logz = torch.logsumexp(torch.stack([-env.energies[c].sum() for c in full]), 0)
    assert env.log_partition == pytest.approx(float(logz), abs=1e-12)
    big = SetGeneration(30, 20, seed=1)  # ESP recursion vs the 2^n enumeration is impossible; check a bound
    assert big.best_log_reward <= big.log_partition <= big.best_log_reward + math.log(math.comb(30, 20))
    x = s[10:14]
    assert torch.allclose(env.log_reward(x, torch.float64), -(x.double() @ env.energies))


def test_set_env_masks_steps_and_errors():
    env = small_set()
    s = env.s0[None].expand(4, -1).clone()
    g = gen(0)
    for _ in range(env.set_size):
        m = env.forward_mask(s)
        assert not bool(m[:, -1].any())
        a = torch.multinomial(m.double(), 1, generator=g).squeeze(1)
        nxt = env.step(s, a)
        assert torch.equal(env.backward_step(nxt, a), s)
        assert bool(env.backward_mask(nxt).gather(1, a[:, None]).all())
        assert torch.equal(s + env.step_delta()[a], nxt)
        s = nxt
    m = env.forward_mask(s)
    assert bool(m[:, -1].all()) and not bool(m[:, :-1].any())  # full: only stop
    with pytest.raises(ValueError, match="forward_mask"):
        env.step(s, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="backward_mask"):
        env.backward_step(env.s0[None], torch.tensor([0]))
    with pytest.raises(ValueError, match="set_size"):
        SetGeneration(3, 4)
    with pytest.raises(ValueError, match="energies"):
        SetGeneration(3, 2, energies=torch.zeros(4))


def test_exact_flows_give_the_target_on_sets():
    env = small_set()
    _, log_pf = exact_flows(env)
    p = terminal_distribution(lambda s: log_pf[env.state_index(s)], env)
    torch.testing.assert_close(p, env.true_distribution(), rtol=0, atol=1e-12)


def test_top_k_tracker_keeps_unique_states():
    t = TopKTracker(k=2)
    t.add(torch.tensor([[1, 0, 1], [1, 0, 1]]), torch.tensor([0.5, 0.5]))
    t.add(torch.tensor([[0, 1, 1], [1, 1, 0]]), torch.tensor([-1.0, 0.0]))
    assert len(t) == 3
    assert t.mean_top_k() == pytest.approx((math.exp(0.5) + 1.0) / 2)
    assert t.mean_top_k(10) == pytest.approx((math.exp(0.5) + 1.0 + math.exp(-1.0)) / 3)


# -- forward-looking losses at the exact solution --------------------------------------------------


@pytest.mark.parametrize("make", [small_set, lambda: HyperGrid(2, 5)], ids=["set", "grid"])
@pytest.mark.parametrize("cls", [DetailedBalance, SubTrajectoryBalance])
def test_forward_looking_residuals_vanish_at_the_exact_flow(make, cls):
    env = make()
    decode = set_decode if isinstance(env, SetGeneration) else grid_decode(env)
    model = exact_model(env, decode, cls)
    tr = model.sample(64, generator=gen(1), epsilon=0.5)
    assert float(model.loss(tr)) < 1e-20
    cut = model.truncate(tr, (tr.lengths - 1).clamp(min=1))  # drop every stop (and the terminal reward)
    assert not bool(cut.is_complete[tr.lengths > 1].any())
    assert float(model.loss(cut)) < 1e-20
    assert float(model.log_z) == pytest.approx(env.log_partition, abs=1e-10)
    with torch.no_grad():
        lvl = env.level(env.all_states()) if hasattr(env, "level") else env.all_states().sum(1)
        model.logf.table[lvl == int(lvl.max())] += 0.3  # the only-stop states: log F~ = 0 is built in
        assert float(model.loss(tr)) < 1e-20
        model.logf.table[lvl == int(lvl.max()) - 1] += 0.3
        assert float(model.loss(tr)) > 1e-4


def test_forward_looking_equals_plain_db_with_log_f_plus_log_r():
    env = HyperGrid(2, 5)
    decode = grid_decode(env)
    fl = exact_model(env, decode, forward_looking=True)
    with torch.no_grad():  # a non-optimal flow: both must still agree residual by residual
        fl.logf.table.add_(torch.randn(fl.logf.table.shape, generator=gen(2), dtype=torch.float64))
    states = env.all_states()
    lr = env.log_reward(states, torch.float64)[:, None]
    only_stop = ~env.forward_mask(states)[:, :-1].any(1, keepdim=True)  # log F~ = 0 there (the boundary)
    log_f = torch.where(only_stop, 0.0, fl.logf.table.detach()) + lr
    plain = DetailedBalance(env, fl.pf, uniform_pb=True, logf=Table(env, log_f, decode))
    plain = plain.double()
    tr = fl.sample(32, generator=gen(3))
    torch.testing.assert_close(fl.residuals(tr), plain.residuals(tr), rtol=0, atol=1e-12)


def test_truncate_and_which_objectives_accept_incomplete_trajectories():
    env = HyperGrid(2, 6)
    tb = TrajectoryBalance(env, width=16, depth=1)
    tr = tb.sample(16, generator=gen(4))
    keep = torch.ones_like(tr.lengths)
    cut = tb.truncate(tr, keep)
    assert torch.equal(cut.lengths, keep) and bool((cut.actions[1:] == -1).all())
    assert bool((cut.states[1:] == cut.states[1:2]).all())  # the last state repeats
    assert bool((cut.log_pf[1:] == 0).all()) and torch.equal(cut.terminal, cut.states[1])
    assert torch.equal(cut.is_complete, tr.lengths == 1)
    with pytest.raises(ValueError, match="complete trajectories"):
        tb.loss(cut)
    with pytest.raises(ValueError, match="keep"):
        tb.truncate(tr, tr.lengths + 1)
    db = DetailedBalance(env, width=16, depth=1)
    assert db.loss(db.truncate(db.sample(8, generator=gen(5)), torch.ones(8, dtype=torch.long))).ndim == 0
    with pytest.raises(ValueError, match="finite on every state"):
        fl = DetailedBalance(BitSequence(4, 2), width=8, depth=1, forward_looking=True)
        fl.loss(fl.sample(4, generator=gen(0)))
    with pytest.raises(ValueError, match="incomplete"):
        DetailedBalance(env, incomplete=1.5)


def test_incomplete_batches_only_use_kept_moves():
    env = small_set()
    fl = DetailedBalance(env, width=16, depth=1, forward_looking=True, incomplete=1.0).double()
    req = SimpleNamespace(size=64, generator=gen(6), device="cpu")
    tr = fl._on_policy(fl.sample(64, generator=gen(6)), gen(7))
    assert not bool(tr.is_complete.any())  # every trajectory has moves, so every one is cut
    assert bool((tr.lengths >= 1).all()) and bool((tr.lengths <= env.set_size).all())
    assert fl.loss(req).ndim == 0


def _train(model, steps, batch=32, seed=0, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = gen(seed)
    for _ in range(steps):
        loss = model.loss(SimpleNamespace(size=batch, generator=g, device="cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_fl_db_learns_the_set_distribution_from_incomplete_trajectories_only():
    torch.manual_seed(0)
    env = SetGeneration(n_items=8, set_size=4, energies=fl_gfn_energies(8, seed=3) * 2)
    fl = DetailedBalance(env, width=64, depth=2, forward_looking=True, incomplete=1.0, epsilon=0.2)
    before = exact_metrics(fl, env)["l1_sum"]
    _train(fl, 300)
    after = exact_metrics(fl, env)["l1_sum"]
    # no trajectory ever stopped (nor saw a terminal reward), yet the terminal distribution is learned
    assert after < 0.05 < 0.3 < before, (before, after)
    with pytest.raises(ValueError, match="no reward would enter"):  # without FL it cannot: refused
        DetailedBalance(env, width=64, depth=2, incomplete=1.0, epsilon=0.2)


# -- input checks found in review -------------------------------------------------------------------


def test_bad_exploration_lamda_and_incomplete_settings_are_clear_errors():
    env = HyperGrid(2, 4)
    for kw, msg in [
        ({"epsilon": 1.5}, "epsilon"),
        ({"epsilon": -0.1}, "epsilon"),
        ({"temperature": 0.0}, "temperature"),
        ({"incomplete": 1.0}, "no reward would enter"),
    ]:
        with pytest.raises(ValueError, match=msg):
            DetailedBalance(env, width=8, depth=1, **kw)
    with pytest.raises(ValueError, match="lamda"):
        SubTrajectoryBalance(env, width=8, depth=1, lamda=0.0)
    tb = TrajectoryBalance(env, width=8, depth=1)
    with pytest.raises(ValueError, match="temperature"):
        tb.sample(3, temperature=-1.0)
    # on the hypergrid a state may stop or move: with every stop cut, stopping is never learned
    fl = DetailedBalance(env, width=8, depth=1, forward_looking=True, incomplete=1.0)
    with pytest.raises(ValueError, match="may stop or move"):
        fl.loss(SimpleNamespace(size=8, generator=gen(0), device="cpu"))


def test_replay_ratio_rounding_to_the_whole_batch_keeps_one_on_policy_trajectory():
    from flowforge.gflownet import ReplayBuffer

    buf = ReplayBuffer(10)
    tb = TrajectoryBalance(HyperGrid(2, 4), width=8, depth=1, replay_buffer=buf, replay_ratio=0.9)
    tb.loss(SimpleNamespace(size=4, generator=gen(0), device="cpu"))  # empty buffer: 4 on-policy
    assert len(buf) == 4
    # round(0.9 * 2) = 2 would leave no on-policy trajectory: one stays on-policy, one is replayed
    assert torch.isfinite(tb.loss(SimpleNamespace(size=2, generator=gen(1), device="cpu")))
    assert len(buf) == 5


def test_trajectory_inputs_are_checked():
    bits = BitSequence(4, 2, modes=2)
    tb = TrajectoryBalance(bits, width=8, depth=1)
    with pytest.raises(ValueError, match="terminal states"):
        tb.sample_backward(torch.tensor([[1, -1], [2, -1]]))  # prefixes cannot stop
    tr = tb.sample(4, generator=gen(0))
    with pytest.raises(ValueError, match="states must be"):
        tb.trajectories_from_actions(tr.states[:-1], tr.actions)
    bad = tr.actions.clone()
    bad[0] = bits.stop_action  # stop at s0 is not allowed for bit strings
    with pytest.raises(ValueError, match="forward_mask"):
        tb.trajectories_from_actions(tr.states, bad)
    # zero padding after the stop does not change the terminal state
    padded = tr.states.clone()
    k = torch.arange(padded.shape[0])[:, None]
    padded[k > tr.lengths[None]] = 0
    again = tb.trajectories_from_actions(padded, tr.actions)
    assert torch.equal(again.terminal, tr.terminal) and torch.equal(again.log_reward, tr.log_reward)


def test_free_terminal_flow_is_the_reference_code_variant():
    env = small_set()
    with pytest.raises(ValueError, match="forward_looking"):
        DetailedBalance(env, width=8, depth=1, free_terminal_flow=True)
    model = exact_model(env, set_decode, free_terminal_flow=True)
    tr = model.sample(32, generator=gen(8))
    view = model._training_view(tr)
    assert torch.equal(view.lengths, tr.lengths - 1) and not bool(view.is_complete.any())  # no stop edges
    assert float(model.loss(tr)) < 1e-20  # the exact flow (log F~ = 0 on full sets) is still a solution
    with torch.no_grad():  # but the terminal flow is no longer pinned: shifting it is seen by the last move
        lvl = env.level(env.all_states())
        model.logf.table[lvl == env.set_size] += 0.3
    assert float(model.loss(tr)) > 1e-4
