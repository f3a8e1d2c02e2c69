"""GFlowNet environments: one shared battery for every built-in environment, short TB runs against the
exact target (house rule 5), and the tutorial "write your own environment" example."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from flowforge.core.contracts import HasForwardForbidden, HasStepDelta
from flowforge.gflownet import (
    BitSequence,
    Environment,
    HyperGrid,
    TrajectoryBalance,
    exact_flows,
    exact_metrics,
    l1_sum,
    modes_found,
    terminal_distribution,
)
from flowforge.gflownet.envs import Ising, NonAutoregressiveBitSequence

torch.set_num_threads(1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ===================================================================================================
# Tutorial: the smallest environment you need to write
# ===================================================================================================


class ChooseK:
    r"""Choose ``k`` of ``n`` items; a set :math:`x` has reward :math:`R(x) = \exp(\sum_{i \in x} w_i)`.

    This is the whole contract a GFlowNet needs from an environment. States are integer vectors and
    every method works on a *batch*: ``states`` is a ``(B, ndim)`` long tensor, ``actions`` a ``(B,)``
    long tensor. Here a state is the 0/1 membership vector of the chosen items (``ndim = n``).

    Actions are integers. The forward actions are "add item ``i``" for ``i < n`` and, **last**,
    *stop* (action ``n``), which ends the trajectory at the current state. Backward action ``i`` undoes
    forward action ``i`` (removes item ``i``); there is no backward stop. A set of size ``k`` can be
    built in ``k!`` orders, so it has several parents and the backward policy :math:`P_B` matters.

    Required: ``s0``, ``n_actions``, ``obs_dim``, ``max_length``, and the six batch methods ``obs``,
    ``forward_mask``, ``backward_mask``, ``step``, ``backward_step``, ``log_reward``. That is enough
    to train. Optional: ``all_states``, ``state_index``, ``level``, ``true_distribution`` and
    ``log_partition`` make the environment *enumerable*, which gives exact evaluation
    (:func:`~flowforge.gflownet.exact_metrics`, :func:`~flowforge.gflownet.exact_flows`).
    """

    def __init__(self, weights: Tensor, k: int) -> None:
        if not 1 <= k <= len(weights):
            raise ValueError(f"ChooseK needs 1 <= k <= n = {len(weights)}; got k={k}")
        self.n, self.k = len(weights), k
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.s0 = torch.zeros(self.n, dtype=torch.long)  # (ndim,): the initial state, the empty set
        self.n_actions = self.n + 1  # n "add item i" actions, then stop (always the last action)
        self.obs_dim = self.n  # the size of obs(states), the policy network's input
        self.max_length = self.k + 1  # the longest trajectory in actions: k additions and the stop

    def obs(self, states: Tensor) -> Tensor:
        """``(B, n)`` long -> ``(B, obs_dim)`` float: what the policy networks see."""
        return states.to(torch.get_default_dtype())

    def forward_mask(self, states: Tensor) -> Tensor:
        """``(B, n_actions)`` bool: add an unchosen item while fewer than ``k``; stop at exactly ``k``."""
        size = states.sum(1, keepdim=True)
        return torch.cat([(states == 0) & (size < self.k), size == self.k], dim=1)

    def backward_mask(self, states: Tensor) -> Tensor:
        """``(B, n_actions - 1)`` bool: remove any chosen item (all False at ``s0``)."""
        return states == 1

    def step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Apply forward ``actions``; stop returns the state unchanged. Raise on a masked action."""
        a = actions.clamp(0, self.n)
        if bool(((a != actions) | ~self.forward_mask(states).gather(1, a[:, None]).squeeze(1)).any()):
            raise ValueError("ChooseK.step got an action outside forward_mask(states)")
        return states + F.one_hot(a, self.n_actions)[:, : self.n]  # the stop column is dropped

    def backward_step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Undo forward ``actions`` (non-stop); raise on an action outside ``backward_mask``."""
        a = actions.clamp(0, self.n - 1)
        if bool(((a != actions) | ~self.backward_mask(states).gather(1, a[:, None]).squeeze(1)).any()):
            raise ValueError("ChooseK.backward_step got an action outside backward_mask(states)")
        return states - F.one_hot(a, self.n)

    def log_reward(self, states: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``(B,)`` :math:`\\log R(x)` in ``dtype``; ``-inf`` where stopping is not allowed."""
        lr = states.to(torch.float64) @ self.weights
        lr = torch.where(states.sum(1) == self.k, lr, torch.full_like(lr, float("-inf")))
        return lr.to(dtype or torch.get_default_dtype())

    # -- optional: enumeration, for exact evaluation ------------------------------------------------

    def all_states(self) -> Tensor:
        """``(2^n, n)`` every subset; row ``j`` must have ``state_index == j``. Subsets of more than ``k``
        items are never reached; listing them is harmless (they get probability 0)."""
        return (torch.arange(2**self.n)[:, None] >> torch.arange(self.n - 1, -1, -1)) & 1

    def state_index(self, states: Tensor) -> Tensor:
        """``(B,)`` long: the subset read as a binary number, the inverse of :meth:`all_states`."""
        return (states << torch.arange(self.n - 1, -1, -1)).sum(1)

    def level(self, states: Tensor) -> Tensor:
        """``(B,)`` a topological order: every forward move raises it by exactly one (without ``level``
        the exact evaluator uses the coordinate sum, which is the same here)."""
        return states.sum(1)

    def true_distribution(self) -> Tensor:
        """``(2^n,)`` float64 target :math:`R(x)/Z` in :meth:`all_states` order."""
        return torch.softmax(self.log_reward(self.all_states(), torch.float64), dim=0)

    @property
    def log_partition(self) -> float:
        """:math:`\\log Z = \\log \\sum_x R(x)`."""
        return float(torch.logsumexp(self.log_reward(self.all_states(), torch.float64), dim=0))


def tutorial_env() -> ChooseK:
    return ChooseK(torch.tensor([1.5, 1.0, 0.5, 0.0, -0.5, 1.0]), k=3)


def train_tb(env, steps: int, *, n: int = 16, lr: float = 3e-3, width: int = 64, seed: int = 0):
    """The training loop written out by hand: sample on-policy, TB loss, Adam step.

    Returns the model and its exact metrics before and after training."""
    torch.manual_seed(seed)
    model = TrajectoryBalance(env, width=width, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = gen(seed)
    before = exact_metrics(model, env)
    for _ in range(steps):
        opt.zero_grad()
        loss = model.loss(model.sample(n, generator=g))
        loss.backward()
        opt.step()
    return model, before, exact_metrics(model, env)


def test_tutorial_environment_trains_to_the_exact_target():
    env = tutorial_env()
    assert isinstance(env, Environment)  # the protocol's attributes and methods are all there
    assert env.n_actions == 7 and env.log_partition == pytest.approx(
        math.log(sum(math.exp(sum(c)) for c in itertools.combinations(env.weights.tolist(), 3))), abs=1e-12
    )
    model, before, after = train_tb(env, steps=300)
    assert after["l1_sum"] < 0.04 < 0.4 < before["l1_sum"]  # measured: 0.005-0.006 after, 0.58-0.69 before
    assert after["logz_error"] < 0.03
    x = model.generator().sample(200, generator=gen(1))
    assert bool((x.sum(1) == 3).all())  # every sample is a 3-item set


# ===================================================================================================
# One battery for every environment
# ===================================================================================================

ENVS = {
    "hypergrid": lambda: HyperGrid(ndim=2, height=4),
    "bitseq": lambda: BitSequence(
        length=6, word=2, modes=torch.tensor([[0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 0, 0]])
    ),
    "nar-bitseq-w1": lambda: NonAutoregressiveBitSequence(length=4, word=1, modes=2, beta=2.0),
    "nar-bitseq-w2": lambda: NonAutoregressiveBitSequence(length=6, word=2, modes=3, beta=1.0, seed=1),
    "ising-2": lambda: Ising(side=2, J=1.0, beta=0.44),
    "ising-3": lambda: Ising(side=3, J=1.0, beta=0.44),
    "ising-3-open-afm": lambda: Ising(side=3, J=-1.0, beta=0.3, periodic=False),
    "tutorial": tutorial_env,
}


@pytest.fixture(params=list(ENVS), scope="module")
def env(request):
    return ENVS[request.param]()


def _level(env, states: Tensor) -> Tensor:
    """``env.level`` or, as in :mod:`flowforge.gflownet.exact`, the coordinate sum (the hypergrid)."""
    return env.level(states) if hasattr(env, "level") else states.sum(1)


def _reachable(env) -> Tensor:
    """``(n_states,)`` bool: states some trajectory from ``s0`` reaches (breadth-first search)."""
    seen = torch.zeros(env.all_states().shape[0], dtype=torch.bool)
    frontier = env.s0[None]
    while frontier.shape[0]:
        seen[env.state_index(frontier)] = True
        rows, acts = env.forward_mask(frontier)[:, :-1].nonzero(as_tuple=True)
        nxt = torch.unique(env.step(frontier[rows], acts), dim=0)
        frontier = nxt[~seen[env.state_index(nxt)]]
    return seen


def _random_states(env, n: int, seed: int) -> Tensor:
    """``n`` random reachable states."""
    s = env.all_states()[_reachable(env)]
    return s[torch.randint(0, s.shape[0], (n,), generator=gen(seed))]


def _random_allowed(mask: Tensor, seed: int) -> Tensor:
    """One allowed action per row (rows must have at least one)."""
    return torch.multinomial(mask.double(), 1, generator=gen(seed)).squeeze(1)


def test_enumeration_is_a_bijection(env):
    s = env.all_states()
    assert s.dtype == torch.long and s.ndim == 2 and s.shape[1] == env.s0.shape[0]
    assert torch.equal(env.state_index(s), torch.arange(s.shape[0]))
    assert len({tuple(r) for r in s.tolist()}) == s.shape[0]
    if hasattr(env, "n_states"):
        assert s.shape[0] == env.n_states
    assert int(_level(env, env.s0[None])) == 0
    assert int(_level(env, s[_reachable(env)]).max()) + 1 == env.max_length  # longest path, stop included


def test_masks_shapes_s0_and_complete_states(env):
    s = env.all_states()
    fm, bm = env.forward_mask(s), env.backward_mask(s)
    assert fm.shape == (s.shape[0], env.n_actions) and fm.dtype == torch.bool
    assert bm.shape == (s.shape[0], env.n_actions - 1) and bm.dtype == torch.bool
    s0 = env.s0[None]
    assert not bool(env.backward_mask(s0).any())  # nothing to undo at s0
    assert bool(env.forward_mask(s0)[:, :-1].any())  # something to do at s0
    # where stopping is rewarded it is allowed, and vice versa (log R = -inf where stop is masked)
    lr = env.log_reward(s, torch.float64)
    reached = _reachable(env)
    assert torch.equal(fm[:, -1] & reached, torch.isfinite(lr) & reached)
    # a complete state (stop allowed, nothing to add) offers no other forward move
    if not isinstance(env, HyperGrid):  # the hypergrid may stop anywhere
        assert not bool(fm[fm[:, -1], :-1].any())


def test_step_backward_step_round_trip_and_level(env):
    s = _random_states(env, 300, seed=1)
    fm = env.forward_mask(s)
    movable = fm[:, :-1].any(1)
    s = s[movable]
    a = _random_allowed(env.forward_mask(s)[:, :-1], seed=2)
    nxt = env.step(s, a)
    assert nxt.dtype == torch.long and nxt.shape == s.shape
    assert torch.equal(_level(env, nxt), _level(env, s) + 1)
    assert bool(env.backward_mask(nxt).gather(1, a[:, None]).all())  # the child can undo the move
    assert torch.equal(env.backward_step(nxt, a), s)
    # stop leaves a state unchanged
    st = env.all_states()
    st = st[env.forward_mask(st)[:, -1]][:50]
    assert torch.equal(env.step(st, torch.full((st.shape[0],), env.n_actions - 1)), st)
    # backward then forward
    c = _random_states(env, 300, seed=3)
    c = c[env.backward_mask(c).any(1)]
    b = _random_allowed(env.backward_mask(c), seed=4)
    par = env.backward_step(c, b)
    assert torch.equal(_level(env, par), _level(env, c) - 1)
    assert bool(env.forward_mask(par).gather(1, b[:, None]).all())
    assert torch.equal(env.step(par, b), c)


def test_bad_actions_raise_value_error(env):
    s = env.all_states()
    fm, bm = env.forward_mask(s), env.backward_mask(s)
    row, col = (~fm).nonzero()[0]
    with pytest.raises(ValueError, match="forward_mask"):
        env.step(s[row][None], col[None])
    for bad in (-1, env.n_actions):
        with pytest.raises(ValueError, match="forward_mask"):
            env.step(env.s0[None], torch.tensor([bad]))
    row, col = (~bm).nonzero()[0]
    with pytest.raises(ValueError, match="backward_mask"):
        env.backward_step(s[row][None], col[None])
    for bad in (-1, env.n_actions - 1):  # stop has no backward action
        with pytest.raises(ValueError, match="backward_mask"):
            env.backward_step(s[-1:], torch.tensor([bad]))


def test_exact_flows_policy_hits_the_target_and_log_partition_by_brute_force(env):
    s = env.all_states()
    lr = env.log_reward(s, torch.float64)
    brute = math.log(sum(math.exp(v) for v in lr.tolist() if v > float("-inf")))
    assert env.log_partition == pytest.approx(brute, abs=1e-12)
    pi = env.true_distribution()
    assert pi.dtype == torch.float64 and float(pi.sum()) == pytest.approx(1.0, abs=1e-12)
    log_f, log_pf = exact_flows(env)
    p = terminal_distribution(lambda x: log_pf[env.state_index(x)], env)
    assert float(l1_sum(p, pi)) < 1e-10
    assert float(log_f[env.state_index(env.s0[None])]) == pytest.approx(env.log_partition, abs=1e-10)


def test_step_delta_hook_equals_step(env):
    if not isinstance(env, HasStepDelta):
        pytest.skip("no step_delta hook")
    s = env.all_states()
    delta = env.step_delta()
    assert delta.shape == (env.n_actions, s.shape[1])
    ok = env.forward_mask(s)
    for a in range(env.n_actions):
        rows = ok[:, a]
        act = torch.full((int(rows.sum()),), a)
        assert torch.equal(s[rows] + delta[act], env.step(s[rows], act))
    if isinstance(env, HasForwardForbidden):
        assert torch.equal(env.forward_forbidden(s), ~ok)


def test_obs_shape_and_backward_sampling_reaches_s0(env):
    s = env.all_states()[:64]
    o = env.obs(s)
    assert o.shape == (s.shape[0], env.obs_dim) and o.dtype == torch.get_default_dtype()
    assert torch.unique(o, dim=0).shape[0] == s.shape[0]  # the encoding tells states apart
    tb = TrajectoryBalance(env, width=8, depth=1)
    x = tb.sample(8, generator=gen(0)).terminal
    tr = tb.sample_backward(x, generator=gen(1))
    assert torch.equal(tr.terminal, x) and bool((tr.states[0] == env.s0).all())


# ===================================================================================================
# The new environments in detail
# ===================================================================================================


def test_nar_bitseq_matches_bitsequence_reward_and_counts_parents():
    modes = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 0, 0]])
    nar = NonAutoregressiveBitSequence(length=6, word=2, modes=modes, beta=1.5)
    ar = BitSequence(length=6, word=2, modes=modes, beta=1.5)
    full = nar.all_states()[(nar.all_states() >= 0).all(1)]
    assert full.shape[0] == 4**3
    assert torch.equal(nar.log_reward(full, torch.float64), ar.log_reward(full, torch.float64))
    assert nar.log_partition == pytest.approx(ar.log_partition, abs=1e-12)
    assert nar.n_states == 5**3 and nar.n_actions == 3 * 4 + 1 and nar.max_length == 4
    # a state with k written words has k parents; the AR version has one
    s = nar.all_states()
    assert torch.equal(nar.backward_mask(s).sum(1), nar.level(s))
    # action a = position * 2^w + word (torchgfn's layout)
    x = nar.step(nar.s0[None], torch.tensor([2 * 4 + 1]))
    assert x.tolist() == [[-1, -1, 1]]
    assert modes_found(nar, ar.all_states()[-64:]) == 2 == nar.n_modes
    with pytest.raises(ValueError, match="multiple of word"):
        NonAutoregressiveBitSequence(length=5, word=2)


def test_ising_energy_bonds_modes_and_torchgfn_convention():
    env = Ising(side=3, J=1.0, beta=0.44)
    assert env.n_bonds == 18 and Ising(3, periodic=False).n_bonds == 12 and Ising(2).n_bonds == 4
    assert torch.equal(env.adjacency, env.adjacency.T) and float(env.adjacency.diagonal().abs().sum()) == 0
    up, down = torch.ones(1, 9, dtype=torch.long), torch.zeros(1, 9, dtype=torch.long)
    assert env.energy(up).item() == env.energy(down).item() == -18.0
    # brute-force E = -J * sum over lattice bonds, right and down neighbours on the torus
    x = env.all_states()
    x = x[(x >= 0).all(1)]  # the 2^9 complete states
    assert x.shape[0] == 512
    sig = (2 * x - 1).reshape(-1, 3, 3).double()
    brute = -(sig * sig.roll(-1, 2)).sum((1, 2)) - (sig * sig.roll(-1, 1)).sum((1, 2))
    torch.testing.assert_close(env.energy(x), brute, rtol=0, atol=1e-12)
    # torchgfn: DiscreteEBM(alpha) with IsingModel(c * A) has log R = alpha * sigma^T (c A) sigma
    alpha, c = 0.7, 0.3
    torchgfn_lr = alpha * ((sig.reshape(-1, 9) @ (c * env.adjacency)) * sig.reshape(-1, 9)).sum(1)
    ours = Ising(3, J=c, beta=2 * alpha).log_reward(x, torch.float64)
    torch.testing.assert_close(ours, torchgfn_lr, rtol=0, atol=1e-12)
    # ground states are the modes; single flips are not
    assert env.n_modes == 2 and env.mode_id(torch.cat([down, up])).tolist() == [0, 1]
    flip = up.clone()
    flip[0, 4] = 0
    assert env.mode_id(flip).tolist() == [-1]
    assert int(torch.argmax(env.true_distribution())) in env.state_index(torch.cat([down, up])).tolist()
    # antiferromagnet on the open 3x3 lattice (bipartite): the two checkerboards
    afm = Ising(3, J=-1.0, periodic=False)
    assert sorted(afm.modes.sum(1).tolist()) == [4, 5]
    # torchgfn's action layout: i sets site i to 0, D + i sets it to 1
    assert env.step(env.s0[None], torch.tensor([3])).tolist()[0][3] == 0
    assert env.step(env.s0[None], torch.tensor([9 + 3])).tolist()[0][3] == 1
    with pytest.raises(ValueError, match="side >= 2"):
        Ising(side=1)
    with pytest.raises(ValueError, match="finite"):
        Ising(side=2, beta=float("inf"))


# ===================================================================================================
# Training: TB reaches the exact target
# ===================================================================================================


# measured on one thread, seeds 0-2: exact L1 0.006-0.007 (NAR), 0.006-0.012 (2x2), 0.21-0.25 (3x3,
# 512 terminal states, 400 steps); log Z error <= 0.013, <= 0.005, <= 0.11; untrained L1 0.7-1.15
@pytest.mark.parametrize(
    ("make", "steps", "l1_bound", "logz_bound"),
    [
        (
            lambda: NonAutoregressiveBitSequence(4, 1, torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]]), beta=2.0),
            300,
            0.04,
            0.05,
        ),
        (lambda: Ising(side=2, J=1.0, beta=0.44), 300, 0.04, 0.05),
        (lambda: Ising(side=3, J=1.0, beta=0.3), 400, 0.4, 0.25),
    ],
    ids=["nar-bitseq", "ising-2x2", "ising-3x3"],
)
def test_tb_trains_on_new_envs(make, steps, l1_bound, logz_bound):
    env = make()
    _, before, after = train_tb(env, steps=steps)
    assert after["l1_sum"] < l1_bound < before["l1_sum"] / 2
    assert after["logz_error"] < logz_bound


# ===================================================================================================
# Clear errors for a wrong user environment
# ===================================================================================================


class _StopLessMask(ChooseK):
    """A common user mistake: forward_mask forgets the stop column."""

    def forward_mask(self, states: Tensor) -> Tensor:
        return super().forward_mask(states)[:, :-1]


class _WideBackwardMask(ChooseK):
    """Another one: backward_mask includes a column for stop."""

    def backward_mask(self, states: Tensor) -> Tensor:
        return F.pad(super().backward_mask(states), (0, 1), value=True)


def test_wrong_mask_shape_raises_value_error():
    env = _StopLessMask(torch.zeros(4), k=2)
    tb = TrajectoryBalance(env, width=8, depth=1)
    with pytest.raises(ValueError, match=r"\(\d+, \d+\)"):
        tb.loss(tb.sample(4, generator=gen(0)))
    env = _WideBackwardMask(torch.zeros(4), k=2)
    tb = TrajectoryBalance(env, width=8, depth=1)
    with pytest.raises(ValueError, match="backward_mask"):
        tb.loss(tb.sample(4, generator=gen(0)))


@pytest.mark.parametrize("bad", ["forward", "backward-uniform"])
def test_wrong_mask_error_names_the_mask_and_n_actions(bad):
    if bad == "forward":
        env, kw = _StopLessMask(torch.zeros(4), k=2), {}
    else:
        env, kw = _WideBackwardMask(torch.zeros(4), k=2), {"uniform_pb": True}
    tb = TrajectoryBalance(env, width=8, depth=1, **kw)
    with pytest.raises(ValueError, match=r"(forward|backward)_mask.*\b[45]\b"):
        tb.loss(tb.sample(4, generator=gen(0)))
