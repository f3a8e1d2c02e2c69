r"""Outcome-conditioned GFlowNets (OC-GFN): reward-free pre-training and conversion to a new reward.

Pan, Jain, Madan, Bengio (ICLR 2024), "Pre-Training and Fine-Tuning Generative Flow Networks"
(arXiv 2310.03419); the conversion formula is GFlowNet Foundations (Bengio et al. 2023), Prop. 62.
There is no public code; every choice below that is not a formula of the paper is marked *choice*.

**Pre-training.** Every flow and policy is conditioned on an outcome :math:`y` (a terminal state):
:math:`F(s|y)`, :math:`P_F(s'|s,y)`, and the reward is :math:`R(x|y) = \mathbb 1[x = y]`. An
optimal OC-GFN reaches :math:`y` with probability 1 for every :math:`y` ("outcome-reaching").

- *choice, the* :math:`\log 0` *problem*: we train on the floored reward
  :math:`R_\epsilon(x|y) = \max(\mathbb 1[x=y], \epsilon)`, :math:`\log\epsilon` = ``log_floor``
  (default -20). This is a proper GFlowNet with positive rewards whose optimum tends to the exact one
  as :math:`\epsilon \to 0`: it reaches :math:`y` with probability
  :math:`1/(1+\epsilon(|\mathcal X|-1))` and its flow is
  :math:`F^*(s|y) = \mathbb 1[s \preceq y] + \epsilon\,(\#\{x \succeq s\} - \mathbb 1[s \preceq y])`, so failed
  trajectories get the large negative *finite* log-reward :math:`\log\epsilon` and the flow of states
  that cannot reach :math:`y` is learned to be :math:`O(\epsilon)` (what the conversion needs).
- *objective*: detailed balance with an explicit stop edge and a flow head
  (:math:`\log F(s|y) + \log P_F(s'|s,y) - \log F(s'|y) - \log P_B(s|s')`, the stop edge ending at
  :math:`\log R_\epsilon(x|y)`), with :math:`P_B` uniform over parents (exact on the append-only
  :class:`~flowforge.gflownet.BitSequence`, where every state has one parent).
- *choice, the explorer*: the paper proposes outcomes with a GAFlowNet explorer (RND intrinsic
  reward). We draw :math:`y` uniformly over the terminal strings (what RND's novelty bonus aims at on a
  space this small), roll out :math:`P_F(\cdot|\cdot,y)` with :math:`\epsilon`-uniform exploration
  (the *negatives*: on-policy attempts, mostly failures early on), and add every trajectory a
  second time relabelled with its own end point :math:`y' = x` (hindsight relabelling: the
  *positives*, successful by construction), as in the paper's contrastive training.

**Conversion to a reward** :math:`R(y)` (OC-GFN Eq. 5-6):
:math:`P_F^R(s'|s) = \sum_y R(y) F(s|y) P_F(s'|s,y) / \sum_y R(y) F(s|y)`.

- :func:`exact_conversion` sums over every outcome (enumerable spaces only), in float64.
- :class:`AmortizedConversion` learns a numerator :math:`N(s'|s)` (logits over actions, the *same*
  network shape as a plain GFlowNet's :math:`P_F`) and an outcome sampler :math:`Q(y|s,s')` with
  :math:`\big(\log N(s'|s) + \log Q(y|s,s') - \log R(y) - \log F(s|y) - \log P_F(s'|s,y)\big)^2 = 0`
  for all :math:`y`; then :math:`\pi(s'|s) \propto N(s'|s)`. :meth:`AmortizedConversion.to_trajectory_balance`
  gives a plain :class:`~flowforge.gflownet.TrajectoryBalance` initialised from it, to continue with TB on
  :math:`R`. :class:`OutcomeFineTuning` does both in one module for the trainer.

Outcomes are encoded by their bits (``env.bits``) concatenated to the state's ``env.obs``, so the
environment must be a :class:`~flowforge.gflownet.BitSequence` (or provide ``bits``, ``n_words``,
``vocab`` and the enumeration methods).

Example:
    >>> import torch
    >>> from flowforge.gflownet import BitSequence
    >>> env = BitSequence(length=4, word=2)
    >>> oc = OutcomeConditionedGFlowNet(env, width=16, depth=1)
    >>> y = oc.sample_outcomes(3, torch.Generator().manual_seed(0))
    >>> oc.forward_log_probs(env.s0.expand(3, -1), y).shape, oc.log_flow(y, y).shape
    (torch.Size([3, 5]), torch.Size([3]))
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowforge.gflownet.envs.bitseq import BitSequence
from flowforge.gflownet.sampler import rollout as forward_rollout
from flowforge.gflownet.trajectories import Trajectories
from flowforge.gflownet.trajectory_balance import TrajectoryBalance
from flowforge.nn.policy import PolicyMLP, masked_log_softmax

__all__ = [
    "AmortizedConversion",
    "OutcomeConditionedGFlowNet",
    "OutcomeFineTuning",
    "OutcomeGenerator",
    "complete_states",
    "distill_policy",
    "exact_conversion",
    "exact_log_z",
]


def complete_states(env: Any) -> Tensor:
    """``(|X|, ndim)`` the terminal states (the outcomes :math:`y`), in ``env.all_states()`` order
    (enumerable spaces only: at most :math:`2^{20}` outcomes)."""
    if getattr(env, "length", 0) > 20:
        raise ValueError(
            f"cannot enumerate the 2^{env.length} outcomes of {env!r}; pass outcomes=... (e.g. sample_outcomes(n))"
        )
    s = env.all_states()
    return s[env.forward_mask(s)[:, -1]]


def _check_env(env: Any) -> None:
    if not isinstance(env, BitSequence):  # prefix order is assumed (append-only: one path per outcome)
        raise TypeError(
            f"outcome-conditioned GFlowNets here need an append-only BitSequence; got {type(env).__name__}"
        )
    for name in ("bits", "n_words", "vocab", "all_states", "state_index", "length"):
        if not hasattr(env, name):
            raise TypeError(
                f"outcome-conditioned GFlowNets need a BitSequence-like environment (missing {name!r}); "
                f"got {type(env).__name__}: use flowforge.gflownet.BitSequence"
            )


class OutcomeConditionedGFlowNet(nn.Module):
    r"""An outcome-conditioned GFlowNet :math:`F(s|y)`, :math:`P_F(s'|s,y)` trained reward-free to reach
    any outcome :math:`y` (Pan et al. 2024, §4.1), with the floored reward
    :math:`R_\epsilon(x|y) = \max(\mathbb 1[x=y], \epsilon)` and detailed balance (see the module
    docstring for the choices).

    One MLP ``(B, obs_dim + length) -> (B, n_actions + 1)`` reads ``[env.obs(s), env.bits(y)]`` and
    gives the forward logits and :math:`\log F(s|y)` (last output).

    Args:
        env: a :class:`~flowforge.gflownet.BitSequence` (only its structure is used, not its reward).
        width, depth: the MLP's hidden size and number of hidden layers.
        log_floor: :math:`\log\epsilon`, the log-reward of a trajectory that misses its outcome.
        epsilon: uniform exploration mixed into the pre-training rollouts.
        hindsight: also train on every rollout relabelled with its own end point (the positives).

    Example:
        >>> import torch
        >>> from flowforge.gflownet import BitSequence
        >>> oc = OutcomeConditionedGFlowNet(BitSequence(length=4, word=2), width=16, depth=1)
        >>> g = torch.Generator().manual_seed(0)
        >>> y, tr = oc.rollout(5, generator=g)
        >>> tr.states.shape, oc.residuals(tr, y).shape, bool(oc.loss(tr, y) >= 0)
        (torch.Size([4, 5, 2]), torch.Size([3, 5]), True)
        >>> 0.0 <= oc.success_rate() <= 1.0
        True
    """

    key: ClassVar[str] = "ocgfn"
    options: ClassVar[tuple[str, ...]] = ("log_floor", "epsilon", "hindsight")
    makes_own_batches: ClassVar[bool] = True

    def __init__(
        self,
        env: BitSequence,
        *,
        width: int = 256,
        depth: int = 2,
        log_floor: float = -20.0,
        epsilon: float = 0.1,
        hindsight: bool = True,
    ) -> None:
        super().__init__()
        _check_env(env)
        if not log_floor < 0 or not math.isfinite(log_floor):
            raise ValueError(f"log_floor must be a finite negative number (log epsilon), got {log_floor}")
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
        self.env = env
        n_outcomes_log = env.length * math.log(2)
        if log_floor > -n_outcomes_log:
            cap = 1 / (1 + math.exp(log_floor) * (2**env.length - 1))
            raise ValueError(
                f"log_floor={log_floor} caps the outcome-reaching success at {cap:.3g} on 2^{env.length} outcomes "
                f"(the floor's mass adds up over every other outcome); use log_floor <= {-n_outcomes_log - 10:.0f}"
            )
        self.log_floor, self.epsilon, self.hindsight = float(log_floor), float(epsilon), bool(hindsight)
        self.net = PolicyMLP(env.obs_dim + env.length, env.n_actions + 1, width, depth)

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _check_outcomes(self, outcomes: Tensor) -> None:
        if outcomes.ndim != 2 or outcomes.shape[1] != self.env.n_words:
            raise ValueError(
                f"outcomes must be (B, {self.env.n_words}) complete states, got shape {tuple(outcomes.shape)}"
            )
        if bool((outcomes < 0).any()):
            raise ValueError("outcomes must be complete states (no -1 word); draw them with sample_outcomes")

    def _out(self, states: Tensor, outcomes: Tensor) -> Tensor:
        self._check_outcomes(outcomes)
        if states.shape[0] != outcomes.shape[0]:
            raise ValueError(f"{states.shape[0]} states but {outcomes.shape[0]} outcomes; pass one per state")
        x = torch.cat([self.env.obs(states), self.env.bits(outcomes).to(torch.get_default_dtype())], dim=1)
        return self.net(x.to(self._dtype))

    def forward_log_probs(self, states: Tensor, outcomes: Tensor) -> Tensor:
        """``(B, n_actions)`` masked :math:`\\log P_F(\\cdot|s, y)` (``-inf`` where not allowed)."""
        return masked_log_softmax(self._out(states, outcomes)[:, :-1], self.env.forward_mask(states))

    def log_flow(self, states: Tensor, outcomes: Tensor) -> Tensor:
        """``(B,)`` :math:`\\log F(s|y)`."""
        return self._out(states, outcomes)[:, -1]

    def log_reward(self, terminal: Tensor, outcomes: Tensor) -> Tensor:
        """``(B,)`` :math:`\\log R_\\epsilon(x|y)`: 0 if ``x == y``, ``log_floor`` otherwise."""
        hit = (terminal == outcomes).all(1)
        return torch.where(hit, 0.0, self.log_floor).to(self._dtype)

    def sample_outcomes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n, n_words)`` outcomes drawn uniformly over the terminal strings (the explorer, a *choice*)."""
        return torch.randint(0, self.env.vocab, (n, self.env.n_words), generator=generator).to(self._device)

    def rollout(
        self,
        n: int | Tensor,
        generator: torch.Generator | None = None,
        epsilon: float | None = None,
    ) -> tuple[Tensor, Trajectories]:
        """Roll out :math:`P_F(\\cdot|\\cdot, y)` for ``n`` uniform outcomes (or the given ``(B, n_words)``
        outcomes); returns ``(outcomes, trajectories)`` (``log_pf``/``log_pb``/``log_reward`` are those
        of the conditional model, without gradients; :meth:`residuals` recomputes what it needs)."""
        y = self.sample_outcomes(n, generator) if isinstance(n, int) else n.to(self._device)
        self._check_outcomes(y)
        eps = self.epsilon if epsilon is None else epsilon
        S, A = forward_rollout(
            self.env,
            lambda s, allowed: self.forward_log_probs(s, y),
            y.shape[0],
            generator,
            epsilon=eps,
            device=self._device,
            dtype=self._dtype,
        )
        return y, self._trajectories(S, A, y)

    def _trajectories(self, S: Tensor, A: Tensor, y: Tensor) -> Trajectories:
        T, n = A.shape
        valid = A >= 0
        lengths = valid.sum(0)
        terminal = S[lengths - 1, torch.arange(n, device=S.device)]
        z = torch.zeros(T, n, dtype=self._dtype, device=S.device)
        return Trajectories(S, A, valid, lengths, terminal, z, z, self.log_reward(terminal, y))

    def residuals(self, tr: Trajectories, outcomes: Tensor) -> Tensor:
        """``(T, B)`` DB residuals of :math:`R_\\epsilon(\\cdot|y)` (0 on padding)::

        log F(s_t|y) + log P_F(a_t|s_t,y) - log P_B(s_t|s_{t+1}) - Phi_{t+1},
        Phi_{t+1} = log F(s_{t+1}|y) for a move, log R_eps(x|y) for the stop.
        """
        env = self.env
        T1, B, d = tr.states.shape
        T = T1 - 1
        yy = outcomes[None].expand(T1, B, -1).reshape(T1 * B, -1)
        flat = tr.states.reshape(T1 * B, d)
        out = self._out(flat, yy)
        lf = out[:, -1].reshape(T1, B)
        lp = masked_log_softmax(out[:, :-1], env.forward_mask(flat)).reshape(T1, B, -1)[:T]
        lpf = lp.gather(2, tr.actions.clamp(min=0)[..., None]).squeeze(2)
        stop = env.n_actions - 1
        move = tr.valid & (tr.actions != stop)
        bm = env.backward_mask(tr.states[1:].reshape(T * B, d)).reshape(T, B, -1)
        lpb = -bm.sum(-1).clamp(min=1).to(lf.dtype).log()  # uniform P_B over parents
        k = torch.arange(T1, device=lf.device)[:, None]
        phi = torch.where(k == tr.lengths[None], self.log_reward(tr.terminal, outcomes)[None], lf)
        r = phi[:-1] + lpf - torch.where(move, lpb, 0.0) - phi[1:]
        return torch.where(tr.valid, r, r.new_zeros(()))

    def loss(self, batch: Any, outcomes: Tensor | None = None) -> Tensor:
        """Mean squared DB residual. ``batch``: a ``BatchRequest``-like object (``size``, ``generator``):
        ``size`` uniform outcomes are rolled out and, with ``hindsight``, relabelled with their end
        points; or a :class:`~flowforge.gflownet.Trajectories` with its ``outcomes``."""
        if isinstance(batch, Trajectories):
            if outcomes is None:
                raise ValueError("loss(trajectories, outcomes): pass the (B, n_words) outcomes they aimed at")
            tr, y = batch, outcomes
            r = self.residuals(tr, y)
            return r.pow(2).sum() / tr.valid.sum()
        y, tr = self.rollout(int(batch.size), generator=batch.generator)
        r = self.residuals(tr, y)
        total, count = r.pow(2).sum(), tr.valid.sum()
        if self.hindsight:
            r2 = self.residuals(tr, tr.terminal)
            total, count = total + r2.pow(2).sum(), count + tr.valid.sum()
        return total / count

    @torch.no_grad()
    def success_rate(self, outcomes: Tensor | None = None) -> float:
        """Exact mean probability of reaching :math:`y` (no exploration), over ``outcomes``
        (default: every terminal string): :math:`\\prod_t P_F(y_{t+1}|y_{\\le t}, y)` along the path."""
        env = self.env
        y = complete_states(env).to(self._device) if outcomes is None else outcomes.to(self._device)
        self._check_outcomes(y)
        total = torch.zeros(y.shape[0], dtype=torch.float64, device=y.device)
        s = env.s0.to(y.device).expand(y.shape[0], -1).clone()
        for k in range(env.n_words):
            a = y[:, k]
            total += self.forward_log_probs(s, y).gather(1, a[:, None]).squeeze(1).double()
            s = env.step(s, a)
        total += self.forward_log_probs(s, y)[:, -1].double()
        return float(total.exp().mean())

    def generator(self) -> OutcomeGenerator:
        """This model as a Generator: ``sample(n, cond=outcomes)`` gives the reached terminal states."""
        return OutcomeGenerator(self)


class OutcomeGenerator:
    """``sample(n, cond=None | (n, n_words) outcomes, generator=...) -> (n, n_words)`` reached states
    (uniform outcomes when ``cond`` is None); other generators' options are ignored.

    Example:
        >>> from flowforge.gflownet import BitSequence
        >>> gen = OutcomeConditionedGFlowNet(BitSequence(4, 2), width=8, depth=1).generator()
        >>> gen.sample(3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 2])
    """

    def __init__(self, model: OutcomeConditionedGFlowNet) -> None:
        self.model = model

    @torch.no_grad()
    def sample(
        self, n: int, *, cond: Any = None, generator: torch.Generator | None = None, **_: Any
    ) -> Tensor:
        """``(n, n_words)`` terminal states reached when aiming at ``cond`` (default: uniform outcomes)."""
        target = n if cond is None else torch.as_tensor(cond).long()
        return self.model.rollout(target, generator=generator, epsilon=0.0)[1].terminal


@torch.no_grad()
def exact_conversion(
    model: Any,
    log_reward: Tensor,
    outcomes: Tensor | None = None,
    *,
    chunk: int = 1 << 16,
) -> Tensor:
    r"""Exact marginal policy of an outcome-conditioned model for downstream rewards, float64
    (OC-GFN Eq. 5-6; GFlowNet Foundations Prop. 62):

    .. math::

        \log P_F^R(a|s) = \log\sum_y R(y) F(s|y) P_F(a|s,y) - \log\sum_{a'} \sum_y R(y) F(s|y) P_F(a'|s,y).

    Args:
        model: anything with ``env``, ``log_flow(states, outcomes) -> (B,)`` and
            ``forward_log_probs(states, outcomes) -> (B, n_actions)`` (an
            :class:`OutcomeConditionedGFlowNet`).
        log_reward: ``(|Y|,)`` or ``(K, |Y|)`` :math:`\log R(y)` of ``K`` rewards at the outcomes.
        outcomes: ``(|Y|, n_words)``; default every terminal string (:func:`complete_states`).
        chunk: number of (state, outcome) pairs per network call.

    Returns:
        ``(n_states, n_actions)`` (or ``(K, n_states, n_actions)``) masked log-probabilities in
        ``env.all_states()`` order; use ``lambda s: out[env.state_index(s)]`` as a policy for
        :func:`~flowforge.gflownet.terminal_distribution`. Complete states stop with probability 1.
    """
    env = model.env
    y = complete_states(env) if outcomes is None else outcomes
    lr = log_reward.to(torch.float64)
    squeeze = lr.ndim == 1
    lr = lr[None] if squeeze else lr
    if lr.ndim != 2 or lr.shape[1] != y.shape[0]:
        raise ValueError(
            f"log_reward must be ({y.shape[0]},) or (K, {y.shape[0]}): one value per outcome; "
            f"got shape {tuple(log_reward.shape)}"
        )
    states = env.all_states()
    mask = env.forward_mask(states)
    K, n_y = lr.shape
    out = torch.full((K, states.shape[0], env.n_actions), float("-inf"), dtype=torch.float64)
    inner = (~mask[:, -1]).nonzero().squeeze(1)  # states that are not complete
    per = max(1, chunk // n_y)
    dev = next(model.parameters()).device if isinstance(model, nn.Module) else torch.device("cpu")
    for i in range(0, inner.numel(), per):
        idx = inner[i : i + per]
        m = idx.numel()
        s = states[idx].repeat_interleave(n_y, 0).to(dev)
        yy = y.repeat(m, 1).to(dev)
        lf = model.log_flow(s, yy).double().cpu().reshape(m, n_y)
        lp = model.forward_log_probs(s, yy).double().cpu().reshape(m, n_y, -1)
        w = lr[:, None, :, None] + lf[None, :, :, None] + lp[None]  # (K, m, Y, A)
        out[:, idx] = torch.logsumexp(w, dim=2)
    out = torch.where(mask[None], out, torch.tensor(float("-inf"), dtype=torch.float64))
    out = out - torch.logsumexp(out, dim=-1, keepdim=True)
    done = mask[:, -1]
    out[:, done] = torch.where(mask[done], 0.0, float("-inf")).to(torch.float64)
    return out[0] if squeeze else out


@torch.no_grad()
def exact_log_z(model: Any, log_reward: Tensor, outcomes: Tensor | None = None) -> Tensor:
    """:math:`\\log \\sum_y R(y) F(s_0|y)`, the converted flow at :math:`s_0` (the estimate of
    :math:`\\log Z`); ``log_reward`` ``(|Y|,)`` or ``(K, |Y|)`` -> scalar or ``(K,)``, float64."""
    env = model.env
    dev = next(model.parameters()).device
    y = (complete_states(env) if outcomes is None else outcomes).to(dev)
    s0 = env.s0.to(dev)[None].expand(y.shape[0], -1)
    lf = model.log_flow(s0, y).double().cpu()
    return torch.logsumexp(log_reward.to(torch.float64) + lf, dim=-1)


def distill_policy(
    env: Any,
    log_probs: Tensor,
    *,
    log_z: float = 0.0,
    width: int = 256,
    depth: int = 2,
    steps: int = 500,
    lr: float = 3e-3,
    seed: int = 0,
) -> TrajectoryBalance:
    """A :class:`~flowforge.gflownet.TrajectoryBalance` (uniform :math:`P_B`, ``pf`` a
    :class:`~flowforge.gflownet.PolicyMLP`) whose policy is fitted to a table of log-probabilities
    ``(n_states, n_actions)`` (e.g. :func:`exact_conversion`) by full-batch cross-entropy over every
    state with more than one allowed action; :math:`\\log Z` starts at ``log_z``. Uses no reward."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        pf = PolicyMLP(env.obs_dim, env.n_actions, width, depth)
    states = env.all_states()
    mask = env.forward_mask(states)
    keep = mask.sum(1) > 1
    x, m = env.obs(states[keep]), mask[keep]
    target = log_probs[keep].exp().to(x.dtype)
    opt = torch.optim.Adam(pf.parameters(), lr=lr)
    for _ in range(steps):
        lp = masked_log_softmax(pf(x), m)
        loss = -(target * torch.where(m, lp, lp.new_zeros(()))).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return TrajectoryBalance(env, pf, uniform_pb=True, init_log_z=float(log_z))


class AmortizedConversion(nn.Module):
    r"""Amortised conversion of a pre-trained OC-GFN to a reward :math:`R` (Pan et al. 2024, §4.2):
    a numerator :math:`N(s'|s)` (a :class:`~flowforge.gflownet.PolicyMLP` ``obs_dim -> n_actions``
    of log-numerators, the same shape as a plain GFlowNet's :math:`P_F`) and an outcome sampler
    :math:`Q(y|s,s')` trained with

    .. math::

        \delta(s, s', y) = \log N(s'|s) + \log Q(y|s,s') - \log R(y) - \log F(s|y) - \log P_F(s'|s,y),

    zero for every :math:`y` at the optimum, where :math:`N(s'|s) = \sum_y R(y)F(s|y)P_F(s'|s,y)`
    and :math:`Q` is the posterior over outcomes. The policy is :math:`\pi(s'|s) \propto N(s'|s)`.

    *Choices* (none of them is specified by the paper):

    - :math:`Q(y|s,s')` is a forward policy on the same append-only tree that *starts at*
      :math:`s'` (MLP input ``[obs(y_<k), obs(s), onehot(a)]``, one word per step), so its support
      is the outcomes reachable from :math:`s'`. For the others :math:`F(s'|y) = 0` at the exact
      optimum and only the floor :math:`\epsilon` gives them mass, so this drops an
      :math:`O(\epsilon)` term of :math:`N`. (A first version that drew all of :math:`y` from
      :math:`s_0` had to learn to copy the prefix and did not get below L1 1.5 in 1,000 steps on
      12-bit strings.)
    - Each step rolls out ``size`` trajectories of :math:`\pi` (:math:`\epsilon`-uniform exploration)
      and uses every move :math:`(s, a)` on them twice: with one :math:`y \sim Q(\cdot|s,a)`
      (:math:`\epsilon`-mixed so every reachable outcome has positive probability; on-policy, this is
      what pushes down :math:`Q`'s mass where the numerator is small), and with the rollout's own end
      point as :math:`y` (hindsight, off-policy; the residual must vanish for every :math:`y`).
      Reward evaluations per step: ``size`` end points plus one per move.
    - The pre-trained model is frozen (its parameters do not train).

    Args:
        model: a pre-trained :class:`OutcomeConditionedGFlowNet` (frozen here).
        env: the downstream environment (its ``log_reward`` is :math:`\log R`; same length/word).
        width, depth: size of the numerator and sampler MLPs.
        epsilon: exploration for the state rollouts and the outcome sampler.

    Example:
        >>> import torch
        >>> from flowforge.gflownet import BitSequence
        >>> env = BitSequence(length=4, word=2, modes=2, beta=2.0)
        >>> oc = OutcomeConditionedGFlowNet(env, width=16, depth=1)
        >>> conv = AmortizedConversion(oc, env, width=16, depth=1)
        >>> res = conv.residuals(4, torch.Generator().manual_seed(0))
        >>> res.shape, conv.forward_log_probs(env.s0[None]).shape
        (torch.Size([16]), torch.Size([1, 5]))
        >>> type(conv.to_trajectory_balance()).__name__
        'TrajectoryBalance'
    """

    key: ClassVar[str] = "oc-conversion"
    options: ClassVar[tuple[str, ...]] = ("epsilon",)
    makes_own_batches: ClassVar[bool] = True

    def __init__(
        self,
        model: OutcomeConditionedGFlowNet,
        env: BitSequence,
        *,
        width: int = 256,
        depth: int = 2,
        epsilon: float = 0.1,
    ) -> None:
        super().__init__()
        _check_env(env)
        if (env.length, env.word) != (model.env.length, model.env.word):
            raise ValueError(
                f"the downstream env ({env.length} bits, word {env.word}) must have the pre-trained "
                f"model's length and word ({model.env.length}, {model.env.word})"
            )
        model = copy.deepcopy(model)  # a frozen copy: the caller's model can keep training
        for p in model.parameters():
            p.requires_grad_(False)
        self.env, self.model, self.epsilon = env, model, float(epsilon)
        self.numerator = PolicyMLP(env.obs_dim, env.n_actions, width, depth)
        self.sampler = PolicyMLP(2 * env.obs_dim + env.n_actions, env.n_actions, width, depth)

    @property
    def _dtype(self) -> torch.dtype:
        return self.numerator[0].weight.dtype

    @property
    def _device(self) -> torch.device:
        return self.numerator[0].weight.device

    def log_numerator(self, states: Tensor) -> Tensor:
        """``(B, n_actions)`` :math:`\\log N(\\cdot|s)` (unnormalised, unmasked)."""
        return self.numerator(self.env.obs(states).to(self._dtype))

    def forward_log_probs(self, states: Tensor) -> Tensor:
        """``(B, n_actions)`` masked :math:`\\log \\pi(\\cdot|s)`, :math:`\\pi \\propto N`."""
        return masked_log_softmax(self.log_numerator(states), self.env.forward_mask(states))

    def _q_logits(self, partial: Tensor, ctx: Tensor) -> Tensor:
        x = torch.cat([self.env.obs(partial).to(self._dtype), ctx], dim=1)
        logits = self.sampler(x)
        return logits.masked_fill(~self.env.forward_mask(partial), float("-inf"))

    def _context(self, states: Tensor, actions: Tensor) -> Tensor:
        oh = F.one_hot(actions, self.env.n_actions).to(self._dtype)
        return torch.cat([self.env.obs(states).to(self._dtype), oh], dim=1)

    def sample_outcomes(
        self, states: Tensor, actions: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``y ~ Q(\\cdot|s, a)`` (:math:`\\epsilon`-mixed) ``(B, n_words)`` and :math:`\\log Q(y|s,a)`
        ``(B,)`` of the unmixed sampler, with gradients; the rollout starts at :math:`s' = s + a`."""
        env = self.env
        ctx = self._context(states, actions)
        y = env.step(states, actions)
        with torch.no_grad():
            for _ in range(env.n_words):
                go = ~env.forward_mask(y)[:, -1]
                if not bool(go.any()):
                    break
                p = torch.softmax(self._q_logits(y[go], ctx[go]), -1)[:, : env.vocab]
                p = (1 - self.epsilon) * p + self.epsilon / env.vocab
                w = torch.multinomial(p.cpu(), 1, generator=generator).squeeze(1).to(y.device)
                y[go] = env.step(y[go], w)
        return y, self.log_q(states, actions, y)

    def _delta(self, s: Tensor, a: Tensor, y: Tensor, lq: Tensor) -> Tensor:
        with torch.no_grad():
            lf = self.model.log_flow(s, y).to(self._dtype)
            lpf = self.model.forward_log_probs(s, y).gather(1, a[:, None]).squeeze(1).to(self._dtype)
            lr = self.env.log_reward(y, self._dtype)
        ln = self.log_numerator(s).gather(1, a[:, None]).squeeze(1)
        return ln + lq - lr - lf - lpf

    def log_q(self, states: Tensor, actions: Tensor, outcomes: Tensor) -> Tensor:
        """``(B,)`` :math:`\\log Q(y|s, a)` of complete outcomes ``(B, n_words)`` that extend
        :math:`s' = s + a` (with gradients); ``-inf`` for outcomes that do not."""
        env = self.env
        ctx = self._context(states, actions)
        start = env.level(states) + 1
        pos = torch.arange(env.n_words, device=outcomes.device)
        P = torch.cat([torch.where(pos[None] < k, outcomes, -1) for k in range(env.n_words)])
        lq = torch.log_softmax(self._q_logits(P, ctx.repeat(env.n_words, 1)), -1)
        lq = lq.gather(1, outcomes.t().reshape(-1)[:, None]).squeeze(1).reshape(env.n_words, -1)
        used = pos[:, None] >= start[None]  # word k is drawn by Q when k >= level(s')
        total = torch.where(used, lq, lq.new_zeros(())).sum(0)
        ok = (torch.where(pos[None] < start[:, None], outcomes, -1) == env.step(states, actions)).all(1)
        return torch.where(ok, total, float("-inf"))

    def residuals(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(2M,)`` :math:`\\delta(s, a, y)` on the ``M`` moves :math:`(s, a)` of ``n`` rollouts of
        :math:`\\pi`: first with :math:`y \\sim Q(\\cdot|s,a)` (on-policy, :math:`\\epsilon`-mixed),
        then with :math:`y` = the end point of the rollout through :math:`(s, a)` (hindsight,
        off-policy: an outcome known to be reachable from :math:`s'`)."""
        return self.residuals_and_outcomes(n, generator)[0]

    def residuals_and_outcomes(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`residuals`, the ``(n, n_words)`` rollout end points and the ``(M, n_words)`` outcomes
        drawn from :math:`Q`: every string whose reward the step evaluated (for discovery counts)."""
        env = self.env
        S, A = forward_rollout(
            env,
            lambda s, allowed: self.forward_log_probs(s),
            n,
            generator,
            epsilon=self.epsilon,
            device=self._device,
            dtype=self._dtype,
        )
        move = (A >= 0) & (A != env.n_actions - 1)
        lengths = (A >= 0).sum(0)
        terminal = S[lengths - 1, torch.arange(n, device=S.device)]
        s, a = S[:-1][move], A[move]
        y_h = terminal[None].expand(A.shape[0], -1, -1)[move]
        y, lq = self.sample_outcomes(s, a, generator)
        res = torch.cat([self._delta(s, a, y, lq), self._delta(s, a, y_h, self.log_q(s, a, y_h))])
        return res, terminal, y

    def loss(self, batch: Any) -> Tensor:
        """Mean squared :meth:`residuals` on ``batch.size`` rollouts (``batch``: ``size``, ``generator``)."""
        return self.residuals(int(batch.size), batch.generator).pow(2).mean()

    @torch.no_grad()
    def log_z(self) -> Tensor:
        """:math:`\\log \\sum_a N(a|s_0)`, the estimate of :math:`\\log Z` that TB starts from."""
        s0 = self.env.s0.to(self._device)[None]
        ln = self.log_numerator(s0).masked_fill(~self.env.forward_mask(s0), float("-inf"))
        return torch.logsumexp(ln, -1)[0]

    def to_trajectory_balance(self, **kwargs: Any) -> TrajectoryBalance:
        """A plain :class:`~flowforge.gflownet.TrajectoryBalance` on the downstream env whose ``pf`` is a
        copy of the numerator and whose :math:`\\log Z` starts at :meth:`log_z` (uniform :math:`P_B`)."""
        kwargs.setdefault("init_log_z", float(self.log_z()))
        kwargs.setdefault("uniform_pb", True)
        return TrajectoryBalance(self.env, copy.deepcopy(self.numerator), **kwargs)


class OutcomeFineTuning(nn.Module):
    r"""Fine-tuning a pre-trained OC-GFN to a reward in one trainable module: the first
    ``convert_steps`` calls of :meth:`loss` train the :class:`AmortizedConversion`; then
    :math:`\log Z` is set to :math:`\log\sum_a N(a|s_0)` and trajectory balance continues on the
    downstream reward with :math:`P_F = \mathrm{softmax}(N)` (the numerator network itself) and a
    uniform :math:`P_B`. ``convert_steps=0`` skips the conversion.

    Args:
        model: the pre-trained :class:`OutcomeConditionedGFlowNet`.
        env: the downstream :class:`~flowforge.gflownet.BitSequence`.
        convert_steps: number of conversion steps before TB.
        width, depth, epsilon: for :class:`AmortizedConversion`.
        tb_epsilon, log_z_lr_scale: for the :class:`~flowforge.gflownet.TrajectoryBalance` stage.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from flowforge.gflownet import BitSequence
        >>> env = BitSequence(length=4, word=2, modes=2)
        >>> ft = OutcomeFineTuning(OutcomeConditionedGFlowNet(env, width=8, depth=1), env,
        ...                        convert_steps=1, width=8, depth=1)
        >>> batch = SimpleNamespace(size=4, generator=torch.Generator().manual_seed(0))
        >>> ft.loss(batch).item() >= 0, int(ft.step), ft.loss(batch).item() >= 0, int(ft.step)
        (True, 1, True, 2)
    """

    key: ClassVar[str] = "oc-finetune"
    options: ClassVar[tuple[str, ...]] = ("convert_steps", "epsilon", "tb_epsilon", "log_z_lr_scale")
    makes_own_batches: ClassVar[bool] = True

    def __init__(
        self,
        model: OutcomeConditionedGFlowNet,
        env: BitSequence,
        *,
        convert_steps: int = 500,
        width: int = 256,
        depth: int = 2,
        epsilon: float = 0.1,
        tb_epsilon: float = 0.0,
        log_z_lr_scale: float = 100.0,
    ) -> None:
        super().__init__()
        if convert_steps < 0:
            raise ValueError(f"convert_steps must be >= 0, got {convert_steps}")
        self.env, self.convert_steps = env, int(convert_steps)
        self.conversion = AmortizedConversion(model, env, width=width, depth=depth, epsilon=epsilon)
        self.tb = TrajectoryBalance(
            env,
            self.conversion.numerator,
            uniform_pb=True,
            epsilon=tb_epsilon,
            log_z_lr_scale=log_z_lr_scale,
        )
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def loss(self, batch: Any) -> Tensor:
        """Conversion loss for the first ``convert_steps`` calls, then the TB loss."""
        k = int(self.step)
        self.step += 1
        if k < self.convert_steps:
            return self.conversion.loss(batch)
        if k == self.convert_steps:
            with torch.no_grad():
                self.tb.log_z_raw.fill_(float(self.conversion.log_z()) / self.tb.log_z_lr_scale)
        return self.tb.loss(batch)

    def forward_log_probs(self, states: Tensor) -> Tensor:
        """``(B, n_actions)`` masked :math:`\\log \\pi(\\cdot|s)` (the numerator's softmax)."""
        return self.tb.forward_log_probs(states)

    @property
    def log_z(self) -> Tensor:
        """TB's :math:`\\log Z` (during conversion: :math:`\\log\\sum_a N(a|s_0)`)."""
        return self.tb.log_z if int(self.step) > self.convert_steps else self.conversion.log_z()

    def sample(self, n: int, generator: torch.Generator | None = None, **kw: Any) -> Trajectories:
        """``n`` trajectories of the current policy (see :meth:`GFlowNet.sample`)."""
        return self.tb.sample(n, generator=generator, **kw)

    def generator(self) -> Any:
        """The current policy as a Generator of terminal states."""
        return self.tb.generator()
