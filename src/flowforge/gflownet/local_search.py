r"""Local search GFlowNets, LS-GFN (Kim et al. 2024, "Local Search GFlowNets", ICLR): refine sampled
objects by *destroy* (go back :math:`K` steps with :math:`P_B`) and *reconstruct* (rebuild with :math:`P_F`).

From a terminal state :math:`x` of a trajectory with :math:`n` moves, a path
:math:`x \dashrightarrow \tilde s` of :math:`K = \lceil \text{back\_ratio}\cdot n\rceil` backward moves is
drawn with :math:`P_B`, then :math:`\tilde s \dashrightarrow x'` is rebuilt with :math:`P_F`. The candidate
is accepted

- ``filter="deterministic"``: if :math:`R(x') \ge R(x)` (greedy, the paper's default);
- ``filter="mh"``: with probability
  :math:`\min\Big(1, \frac{R(x')\,P_B(x' \dashrightarrow \tilde s \mid x')\,P_F(\tilde s \dashrightarrow x)}
  {R(x)\,P_B(x \dashrightarrow \tilde s \mid x)\,P_F(\tilde s \dashrightarrow x')}\Big)` (paper, Eq. 6).

The MH move is computed on complete trajectories: the backward path to :math:`s_0` is drawn in full
with :math:`P_B` (a Gibbs refresh of :math:`\tau \mid x`) and the prefix :math:`s_0 \dashrightarrow
\tilde s` is shared, so its terms cancel. It leaves :math:`R(x)/Z` invariant exactly when the junction
index :math:`n - K` is the same from :math:`x` and :math:`x'`: ``back_ratio=1`` (the junction is
:math:`s_0`), or environments whose trajectories all have one length (bit sequences).
Note: torchgfn 2.4.1's ``LocalSearchSampler`` writes this ratio with the :math:`P_F`/:math:`P_B` terms
inverted (``+ log_pb(prev) + log_pf(new) - log_pb(new) - log_pf(prev)``); that chain does not leave
:math:`R/Z` invariant (``tests/test_gfn_local_search.py`` checks the kernel exactly).

The rebuild uses the plain policy (no ``epsilon``, ``temperature``), whose :math:`P_F` enters the ratio.

Example:
    >>> import torch
    >>> from flowforge.gflownet import HyperGrid, TrajectoryBalance
    >>> tb = TrajectoryBalance(HyperGrid(2, 4), width=8, depth=1)
    >>> g = torch.Generator().manual_seed(0)
    >>> ls = LocalSearch(back_ratio=0.5, iterations=2, filter="deterministic")
    >>> tr = tb.sample(6, generator=g)
    >>> refined, accepted = ls.refine(tb, tr, generator=g)
    >>> refined.terminal.shape, bool((refined.log_reward >= tr.log_reward).all()), 0 <= accepted <= 12
    (torch.Size([6, 2]), True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from flowforge.core.choices import unknown_choice
from flowforge.core.contracts import Environment
from flowforge.gflownet.sampler import backward_rollout, rollout
from flowforge.gflownet.trajectories import Trajectories

__all__ = ["LocalSearch", "cat_trajectories", "mh_log_ratio"]

FILTERS = ("deterministic", "mh")


class _Model(Protocol):
    """What local search needs of a :class:`~flowforge.gflownet.GFlowNet`."""

    env: Environment

    def backward_log_probs(self, states: Tensor) -> Tensor: ...

    def trajectories_from_actions(self, states: Tensor, actions: Tensor) -> Trajectories: ...

    def rollout_policy(self) -> Any: ...

    def parameters(self) -> Any: ...


def _pad(states: Tensor, actions: Tensor, T: int) -> tuple[Tensor, Tensor]:
    """Pad ``(T0 + 1, B, d)`` states (repeat the last row) and ``(T0, B)`` actions (``-1``) to ``T`` actions."""
    extra = T - actions.shape[0]
    if extra <= 0:
        return states, actions
    states = torch.cat([states, states[-1:].expand(extra, *states.shape[1:])])
    actions = torch.cat([actions, actions.new_full((extra, actions.shape[1]), -1)])
    return states, actions


def _pad_tr(tr: Trajectories, T: int) -> Trajectories:
    extra = T - tr.actions.shape[0]
    if extra <= 0:
        return tr
    states, actions = _pad(tr.states, tr.actions, T)
    z = tr.log_pf.new_zeros((extra, tr.log_pf.shape[1]))
    return Trajectories(
        states=states,
        actions=actions,
        valid=torch.cat([tr.valid, tr.valid.new_zeros(z.shape)]),
        lengths=tr.lengths,
        terminal=tr.terminal,
        log_pf=torch.cat([tr.log_pf, z]),
        log_pb=torch.cat([tr.log_pb, z]),
        log_reward=tr.log_reward,
        complete=tr.complete,
    )


def cat_trajectories(a: Trajectories, b: Trajectories) -> Trajectories:
    """One batch of ``B_a + B_b`` trajectories (padded to the longer ``T``; gradients kept)."""
    T = max(a.actions.shape[0], b.actions.shape[0])
    a, b = _pad_tr(a, T), _pad_tr(b, T)
    complete = (
        None if a.complete is None and b.complete is None else torch.cat([a.is_complete, b.is_complete])
    )
    return Trajectories(
        states=torch.cat([a.states, b.states], 1),
        actions=torch.cat([a.actions, b.actions], 1),
        valid=torch.cat([a.valid, b.valid], 1),
        lengths=torch.cat([a.lengths, b.lengths]),
        terminal=torch.cat([a.terminal, b.terminal]),
        log_pf=torch.cat([a.log_pf, b.log_pf], 1),
        log_pb=torch.cat([a.log_pb, b.log_pb], 1),
        log_reward=torch.cat([a.log_reward, b.log_reward]),
        complete=complete,
    )


def _splice(prev_s: Tensor, prev_a: Tensor, j: Tensor, rec_s: Tensor, rec_a: Tensor) -> tuple[Tensor, Tensor]:
    """Prefix ``s_0..s_j`` of ``prev`` then the rebuild from ``s_j``: ``(T + 1, B, d)``, ``(T, B)``."""
    Tr, B = rec_a.shape
    T = int(j.max()) + Tr
    ar = torch.arange(B, device=j.device)[None]
    t = torch.arange(T + 1, device=j.device)[:, None]
    prefix = t <= j[None]
    ps = prev_s[t.clamp(max=prev_s.shape[0] - 1).expand(T + 1, B), ar.expand(T + 1, B)]
    rs = rec_s[(t - j[None]).clamp(0, Tr), ar.expand(T + 1, B)]
    states = torch.where(prefix[..., None], ps, rs)
    ta = t[:-1]
    pa = prev_a[ta.clamp(max=prev_a.shape[0] - 1).expand(T, B), ar.expand(T, B)]
    k = ta - j[None]
    ra = rec_a[k.clamp(0, Tr - 1), ar.expand(T, B)]
    ra = torch.where(k < Tr, ra, torch.full_like(ra, -1))
    return states, torch.where(ta < j[None], pa, ra)


def mh_log_ratio(old: Trajectories, new: Trajectories) -> Tensor:
    r"""``(B,)`` log Metropolis-Hastings ratio of moving from complete trajectories ``old`` (to :math:`x`) to
    ``new`` (to :math:`x'`) that share their prefix up to the junction :math:`\tilde s`:
    :math:`\log R(x') + \log P_B(\tau'|x') + \log P_F(\tau) - \log R(x) - \log P_B(\tau|x) - \log P_F(\tau')`
    (the shared prefix cancels, leaving Kim et al. 2024, Eq. 6)."""
    return (
        new.log_reward
        + new.log_pb.sum(0)
        + old.log_pf.sum(0)
        - old.log_reward
        - old.log_pb.sum(0)
        - new.log_pf.sum(0)
    )


@dataclass(frozen=True)
class LocalSearch:
    r"""Destroy-and-reconstruct refinement of terminal states (Kim et al. 2024, LS-GFN); stateless.

    Args:
        back_ratio: fraction of each trajectory's :math:`n` moves undone, :math:`K = \lceil
            \text{back\_ratio}\cdot n\rceil`, in ``(0, 1]``.
        iterations: number of destroy/reconstruct/filter rounds (the paper's :math:`I`); each round
            starts from the states the previous one kept.
        filter: ``"deterministic"`` (accept if :math:`R(x') \ge R(x)`) or ``"mh"`` (Metropolis-Hastings).
        back_steps: a fixed number of moves undone, :math:`K = \min(\text{back\_steps}, n)`, instead of
            ``back_ratio`` (Zhang et al. 2022's :math:`K`-step back-and-forth proposal); ``None``: use the ratio.

    With ``GFlowNet(..., local_search=LocalSearch(...))`` the on-policy batch of :meth:`GFlowNet.loss`
    is refined and the objective is taken on the originals and the refined trajectories together.
    """

    back_ratio: float = 0.5
    iterations: int = 1
    filter: str = "deterministic"
    back_steps: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.back_ratio <= 1.0:
            raise ValueError(f"back_ratio is the fraction of moves undone, in (0, 1]; got {self.back_ratio}")
        if int(self.iterations) != self.iterations or self.iterations < 1:
            raise ValueError(f"iterations must be an integer >= 1; got {self.iterations}")
        if self.filter not in FILTERS:
            raise unknown_choice("local search filter", self.filter, FILTERS)
        if self.back_steps is not None and (int(self.back_steps) != self.back_steps or self.back_steps < 1):
            raise ValueError(
                f"back_steps must be an integer >= 1 (or None: use back_ratio); got {self.back_steps}"
            )

    @torch.no_grad()
    def _round(
        self, model: _Model, x: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One destroy/reconstruct/filter round from terminal states ``x`` ``(B, d)``: the kept states
        ``(T + 1, B, d)``, actions ``(T, B)`` and the ``(B,)`` bool acceptances."""
        env = model.env
        stop = env.n_actions - 1
        prev_s, prev_a = backward_rollout(env, model.backward_log_probs, x, generator)
        moves = ((prev_a >= 0) & (prev_a != stop)).sum(0)
        if self.back_steps is None:
            K = torch.ceil(self.back_ratio * moves.double()).long()
        else:
            K = moves.clamp(max=int(self.back_steps))
        j = moves - K
        B = x.shape[0]
        junction = prev_s[j, torch.arange(B, device=x.device)]
        p = next(iter(model.parameters()))
        rec_s, rec_a = rollout(
            env, model.rollout_policy(), B, generator, device=p.device, dtype=p.dtype, start=junction
        )
        new_s, new_a = _splice(prev_s, prev_a, j, rec_s, rec_a)
        old = model.trajectories_from_actions(prev_s, prev_a)
        new = model.trajectories_from_actions(new_s, new_a)
        if self.filter == "deterministic":
            accept = new.log_reward >= old.log_reward
        else:
            log_ratio = mh_log_ratio(old, new)
            gdev = generator.device if generator is not None else log_ratio.device
            u = torch.rand(B, generator=generator, device=gdev, dtype=log_ratio.dtype).to(log_ratio.device)
            accept = u < log_ratio.clamp(max=0.0).exp()
        T = max(prev_a.shape[0], new_a.shape[0])
        prev_s, prev_a = _pad(prev_s, prev_a, T)
        new_s, new_a = _pad(new_s, new_a, T)
        states = torch.where(accept[None, :, None], new_s, prev_s)
        actions = torch.where(accept[None], new_a, prev_a)
        return states, actions, accept

    @torch.no_grad()
    def step(
        self, model: _Model, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """One destroy/reconstruct/filter round on terminal states ``x`` ``(B, d)``: the kept terminal states
        ``(B, d)`` and the ``(B,)`` bool acceptances (no trajectories are rebuilt for a loss).

        With ``filter="mh"`` this is one step of a Markov chain that leaves :math:`R/Z` invariant
        (under the same-junction condition of the module docstring), e.g. the negative-sample kernel of
        EB-GFN (:class:`~flowforge.gflownet.EBGFN`).
        """
        p = next(iter(model.parameters()))
        x = x.detach().to(p.device)
        states, actions, acc = self._round(model, x, generator)
        lengths = (actions >= 0).sum(0)
        return states[lengths - 1, torch.arange(x.shape[0], device=x.device)], acc

    def refine(
        self,
        model: _Model,
        batch: Trajectories | Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Trajectories, int]:
        """Refined complete trajectories and the number of accepted moves (over all rounds).

        Args:
            model: a :class:`~flowforge.gflownet.GFlowNet` (its :math:`P_F`, :math:`P_B` and env).
            batch: complete :class:`Trajectories` (their terminal states are used) or terminal states
                ``(B, d)``.
            generator: the source of randomness.

        Returns:
            ``(tr, accepted)``: ``tr`` has ``B`` trajectories, each the accepted candidate
            :math:`s_0 \\dashrightarrow \\tilde s \\dashrightarrow x'` or, if rejected, the
            :math:`P_B`-drawn path to the kept :math:`x`; ``log_pf``/``log_pb`` recomputed with
            gradients, so any objective can use it.
        """
        if isinstance(batch, Trajectories):
            if batch.complete is not None and not bool(batch.complete.all()):
                raise ValueError(
                    "local search refines complete trajectories (ending with stop); pass the on-policy "
                    "batch before truncate(), or terminal states (B, ndim)"
                )
            x = batch.terminal
        else:
            x = batch
        p = next(iter(model.parameters()))
        x = x.detach().to(p.device)
        accepted = 0
        states = actions = None
        for _ in range(self.iterations):
            states, actions, acc = self._round(model, x, generator)
            accepted += int(acc.sum())
            lengths = (actions >= 0).sum(0)
            x = states[lengths - 1, torch.arange(x.shape[0], device=x.device)]
        assert states is not None and actions is not None
        return model.trajectories_from_actions(states, actions), accepted
