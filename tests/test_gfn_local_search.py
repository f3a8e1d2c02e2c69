"""Local search GFlowNets (LS-GFN, Kim et al. 2024): valid refined trajectories, the deterministic filter
never lowers a reward, the Metropolis-Hastings kernel leaves R/Z invariant (exactly, by enumeration, and
through the sampler, by many chains), and TB with local search trains to the exact target."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from flowforge.gflownet import (
    BitSequence,
    DetailedBalance,
    FlowMatching,
    HyperGrid,
    LocalSearch,
    LogPartitionVariance,
    MultiObjectiveHyperGrid,
    OrderPreservingTB,
    SubTrajectoryBalance,
    Trajectories,
    TrajectoryBalance,
    exact_metrics,
    terminal_distribution,
)
from flowforge.gflownet.local_search import cat_trajectories, mh_log_ratio

torch.set_num_threads(1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def request(n: int, g: torch.Generator) -> SimpleNamespace:
    return SimpleNamespace(size=n, generator=g, device=torch.device("cpu"))


def uniform_pf(env) -> nn.Module:
    """A forward policy with constant logits: uniform over the allowed actions."""
    net = nn.Linear(env.obs_dim, env.n_actions)
    nn.init.zeros_(net.weight)
    nn.init.zeros_(net.bias)
    return net


def check_valid(env, tr: Trajectories) -> None:
    """Starts at s0, every action allowed and applied, ends with stop at ``terminal``, padding after it."""
    stop = env.n_actions - 1
    T, B = tr.actions.shape
    assert bool(tr.is_complete.all())
    assert bool((tr.states[0] == env.s0).all())
    ar = torch.arange(B)
    assert bool((tr.actions[tr.lengths - 1, ar] == stop).all())
    assert torch.equal(tr.states[tr.lengths - 1, ar], tr.terminal)
    assert torch.equal(tr.log_reward, env.log_reward(tr.terminal, tr.log_reward.dtype))
    for t in range(T):
        v = tr.valid[t]
        assert torch.equal(v, t < tr.lengths)
        if not bool(v.any()):
            continue
        s, a = tr.states[t][v], tr.actions[t][v]
        assert bool(env.forward_mask(s).gather(1, a[:, None]).all()), "an action outside the forward mask"
        moves = a != stop
        if bool(moves.any()):
            assert torch.equal(env.step(s[moves], a[moves]), tr.states[t + 1][v][moves])
    assert bool((tr.actions[~tr.valid] == -1).all())
    assert bool(torch.isfinite(tr.log_pf.sum(0)).all()) and bool(torch.isfinite(tr.log_pb.sum(0)).all())


ENVS = [
    pytest.param(lambda: HyperGrid(ndim=2, height=6), id="hypergrid"),
    pytest.param(lambda: BitSequence(length=6, word=2, modes=3), id="bitseq"),
]


@pytest.mark.parametrize("make", ENVS)
@pytest.mark.parametrize("filt", ["deterministic", "mh"])
def test_refined_trajectories_are_valid(make, filt):
    env = make()
    torch.manual_seed(0)
    tb = TrajectoryBalance(env, width=16, depth=1)
    g = gen(1)
    tr = tb.sample(64, generator=g)
    refined, accepted = LocalSearch(back_ratio=0.5, iterations=3, filter=filt).refine(tb, tr, generator=g)
    check_valid(env, refined)
    assert refined.terminal.shape == tr.terminal.shape and 0 < accepted <= 3 * 64
    assert refined.log_pf.requires_grad  # scored with the model, ready for an objective
    both = cat_trajectories(tr, refined)
    check_valid(env, both)
    assert torch.allclose(tb.residuals(both), torch.cat([tb.residuals(tr), tb.residuals(refined)]), atol=1e-5)


@pytest.mark.parametrize("make", ENVS)
def test_deterministic_filter_never_lowers_the_reward(make):
    env = make()
    torch.manual_seed(0)
    tb = TrajectoryBalance(env, width=16, depth=1)
    g = gen(2)
    for back_ratio in (0.3, 1.0):
        tr = tb.sample(128, generator=g)
        refined, accepted = LocalSearch(back_ratio, iterations=4).refine(tb, tr, generator=g)
        assert bool((refined.log_reward >= tr.log_reward).all())
        # not vacuous: moves are accepted and some of them strictly improve
        assert accepted > 0 and bool((refined.log_reward > tr.log_reward).any())


def _all_trajectories(env) -> tuple[torch.Tensor, torch.Tensor]:
    """Every complete trajectory of a small environment: states ``(T + 1, N, d)``, actions ``(T, N)``."""
    stop = env.n_actions - 1
    done, todo = [], [([env.s0], [])]
    while todo:
        states, acts = todo.pop()
        s = states[-1]
        allowed = env.forward_mask(s[None])[0].nonzero().flatten().tolist()
        for a in allowed:
            if a == stop:
                done.append((states, acts + [a]))
            else:
                todo.append((states + [env.step(s[None], torch.tensor([a]))[0]], acts + [a]))
    T = max(len(a) for _, a in done)
    S = torch.stack([torch.stack(s + [s[-1]] * (T + 1 - len(s))) for s, _ in done], 1)
    A = torch.tensor([a + [-1] * (T - len(a)) for _, a in done]).T
    return S, A


def test_mh_kernel_is_reversible_for_the_target_exactly():
    """back_ratio = 1, uniform P_F and P_B on a 3 x 3 grid: the kernel of one MH local-search move,
    summed over every pair of trajectories, satisfies detailed balance for pi(x) = R(x)/Z."""
    env = HyperGrid(ndim=2, height=3, r0=0.1)
    model = TrajectoryBalance(env, uniform_pf(env), uniform_pb=True).double()
    S, A = _all_trajectories(env)
    tr = model.trajectories_from_actions(S, A)
    N = A.shape[1]
    idx = env.state_index(tr.terminal)
    n = env.all_states().shape[0]
    with torch.no_grad():
        lpf, lpb = tr.log_pf.sum(0), tr.log_pb.sum(0)
        assert torch.allclose(
            torch.zeros(n, dtype=torch.float64).index_add(0, idx, lpb.exp()),
            torch.ones(n, dtype=torch.float64),
        )
        i, j = torch.meshgrid(torch.arange(N), torch.arange(N), indexing="ij")
        i, j = i.reshape(-1), j.reshape(-1)

        def pick(k: torch.Tensor) -> Trajectories:
            return model.trajectories_from_actions(S[:, k], A[:, k])

        old, new = pick(i), pick(j)
        accept = mh_log_ratio(old, new).clamp(max=0.0).exp()
        # P(old tau | x) P_F(new tau') accept, summed into K(x, x'); the rest stays at x
        w = (lpb[i] + lpf[j]).exp() * accept
        K = torch.zeros(n, n, dtype=torch.float64)
        K.index_put_((idx[i], idx[j]), w, accumulate=True)
        K += torch.diag(1.0 - K.sum(1))
        pi = env.log_reward(env.all_states(), torch.float64).softmax(0)
    flow = pi[:, None] * K
    assert torch.allclose(flow, flow.T, atol=1e-12)
    assert torch.allclose(pi @ K, pi, atol=1e-12)
    assert float((K - torch.diag(K.diag())).sum()) > 1.0  # the chain moves


def test_mh_local_search_leaves_the_target_invariant_empirically():
    """Many chains started from pi = R/Z, one MH round through the sampler (back_ratio = 1, uniform
    P_F/P_B): the histogram of the kept states matches pi within Monte-Carlo error."""
    env = HyperGrid(ndim=2, height=3, r0=0.1)
    model = TrajectoryBalance(env, uniform_pf(env), uniform_pb=True)
    states = env.all_states()
    pi = env.log_reward(states, torch.float64).softmax(0)
    g = gen(3)
    n = 40_000
    x = states[torch.multinomial(pi.float(), n, replacement=True, generator=g)]
    refined, accepted = LocalSearch(back_ratio=1.0, filter="mh").refine(model, x, generator=g)
    assert 0.1 * n < accepted < 0.9 * n
    freq = torch.bincount(env.state_index(refined.terminal), minlength=pi.numel()).double() / n
    se = (pi * (1 - pi) / n).sqrt()
    assert bool(((freq - pi).abs() < 4.5 * se + 1e-4).all()), (freq - pi) / se
    # not vacuous: the proposal (the uniform P_F's terminal distribution) is far from pi
    proposal = terminal_distribution(model, env)
    assert float((proposal - pi).abs().max()) > 10 * float(se.max())


@pytest.mark.parametrize(
    "cls, kw",
    [
        (TrajectoryBalance, {}),
        (DetailedBalance, {}),
        (SubTrajectoryBalance, {}),
        (FlowMatching, {}),
        (LogPartitionVariance, {}),
        (DetailedBalance, {"forward_looking": True, "incomplete": 0.5}),
    ],
    ids=["tb", "db", "subtb", "fm", "zvar", "fl-db-incomplete"],
)
def test_every_objective_trains_with_local_search(cls, kw):
    env = HyperGrid(ndim=2, height=5)
    torch.manual_seed(0)
    plain = cls(env, width=16, depth=1, **kw)
    torch.manual_seed(0)
    ls = cls(env, width=16, depth=1, local_search=LocalSearch(0.5, 2, "mh"), **kw)
    assert list(plain.state_dict()) == list(ls.state_dict())  # stateless: resume stays bit-identical
    loss = ls.loss(request(16, gen(0)))
    assert loss.ndim == 0 and bool(torch.isfinite(loss))
    loss.backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in ls.parameters())
    # same generator stream: the first draws are the plain model's batch, the rest the refinement
    assert not torch.equal(plain.loss(request(16, gen(0))).detach(), loss.detach())


def test_loss_sees_originals_and_refined_as_one_batch():
    env = HyperGrid(ndim=2, height=5)
    torch.manual_seed(0)
    ls = LocalSearch(0.5, 1)
    tb = TrajectoryBalance(env, width=16, depth=1, local_search=ls)
    g1, g2 = gen(4), gen(4)
    loss = tb.loss(request(8, g1))
    tr = tb.sample(8, generator=g2)
    refined, _ = ls.refine(tb, tr, generator=g2)
    expected = torch.cat([tb.residuals(tr), tb.residuals(refined)]).pow(2).mean()
    assert torch.allclose(loss, expected)


def test_clear_errors():
    env = HyperGrid(ndim=2, height=4)
    with pytest.raises(ValueError, match="unknown local search filter 'metropolis'"):
        LocalSearch(filter="metropolis")
    with pytest.raises(ValueError, match="back_ratio"):
        LocalSearch(back_ratio=0.0)
    with pytest.raises(ValueError, match="iterations"):
        LocalSearch(iterations=0)
    with pytest.raises(TypeError, match="LocalSearch"):
        TrajectoryBalance(env, local_search=0.5)
    with pytest.raises(ValueError, match="filter='deterministic'"):
        OrderPreservingTB(MultiObjectiveHyperGrid(ndim=2, height=4), local_search=LocalSearch(filter="mh"))
    OrderPreservingTB(
        MultiObjectiveHyperGrid(ndim=2, height=4), width=8, depth=1, local_search=LocalSearch()
    )  # greedy search is fine
    db = DetailedBalance(env, width=8, depth=1)
    tr = db.sample(4, generator=gen(0))
    cut = db.truncate(tr, torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match="complete trajectories"):
        LocalSearch().refine(db, cut)


def test_tb_with_local_search_trains_to_the_exact_target():
    """Equal numbers of gradient steps on a 2-D grid: LS-TB reaches an exact L1 comparable to TB."""
    env = HyperGrid(ndim=2, height=6)
    out = {}
    for name, ls in (("tb", None), ("ls", LocalSearch(back_ratio=0.5, iterations=1))):
        torch.manual_seed(0)
        model = TrajectoryBalance(env, width=32, depth=2, local_search=ls)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = gen(5)
        before = exact_metrics(model, env)["l1_sum"]
        for _ in range(250):
            opt.zero_grad()
            model.loss(request(16, g)).backward()
            opt.step()
        out[name] = (before, exact_metrics(model, env))
    (_, tb), (b_ls, ls) = out["tb"], out["ls"]
    assert ls["l1_sum"] < b_ls / 3 and ls["l1_sum"] < 0.3
    assert ls["l1_sum"] < 1.5 * tb["l1_sum"] + 0.05, (ls, tb)
    assert abs(ls["logz_error"]) < 0.2 and math.isfinite(tb["l1_sum"])
