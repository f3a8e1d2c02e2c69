r"""Shared machinery of slot-filling environments (:class:`~flowforge.gflownet.NonAutoregressiveBitSequence`,
:class:`~flowforge.gflownet.Ising`): fill empty slots with values, in any order, then stop.

Example:
    >>> from flowforge.gflownet import Ising
    >>> env = Ising(side=2)
    >>> isinstance(env, SlotFilling), env.step_delta().shape
    (True, torch.Size([9, 4]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SlotFilling"]


class SlotFilling:
    r"""Shared machinery of environments that fill ``n_slots`` empty slots (``-1``) with values in
    ``[0, vocab)``, one slot per action, in any order; stop is allowed only when every slot is full.

    A forward action is a (slot, value) pair; ``value_major=False`` numbers it
    ``slot * vocab + value`` (torchgfn's ``NonAutoregressiveBitSequence``), ``value_major=True``
    ``value * n_slots + slot`` (torchgfn's ``DiscreteEBM``). Backward action ``a`` empties the slot
    that forward action ``a`` filled, and is allowed only if that slot holds that value. Since the mask
    only allows filling empty slots, every move is a fixed displacement ``+(value + 1)`` on its slot
    (:meth:`step_delta`). Subclasses define ``log_reward`` (``-inf`` on incomplete states).

    Enumeration: all :math:`(V+1)^n` states, the last slot varying fastest, with
    :math:`\text{index}(x) = \sum_i (x_i + 1)(V+1)^{n-1-i}`; ``level`` = number of filled slots.
    """

    def _init_slots(self, n_slots: int, vocab: int, value_major: bool) -> None:
        self._n_slots, self._vocab, self._value_major = n_slots, vocab, value_major
        self.n_actions = n_slots * vocab + 1
        self.stop_action = n_slots * vocab
        self.obs_dim = n_slots * (vocab + 1)
        self.max_length = n_slots + 1
        self.n_states = (vocab + 1) ** n_slots
        self.s0 = torch.full((n_slots,), -1, dtype=torch.long)
        a = torch.arange(n_slots * vocab)
        slot, value = (a % n_slots, a // n_slots) if value_major else (a // vocab, a % vocab)
        delta = torch.zeros(self.n_actions, n_slots, dtype=torch.long)
        delta[a, slot] = value + 1  # the stop row stays zero
        self._delta = delta

    def log_reward(self, states: Tensor, dtype: torch.dtype | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def _pairs(self, x: Tensor) -> Tensor:
        """``(B, n_slots, vocab)`` -> ``(B, n_slots * vocab)`` in action order."""
        if self._value_major:
            x = x.transpose(1, 2)
        return x.reshape(x.shape[0], self._n_slots * self._vocab)

    # -- encoding and masks ------------------------------------------------------------------------

    def obs(self, states: Tensor) -> Tensor:
        """One-hot per slot with an extra "empty" class: ``(B, n_slots * (vocab + 1))`` float."""
        x = torch.where(states < 0, self._vocab, states).long()
        return (
            F.one_hot(x, self._vocab + 1).reshape(states.shape[0], self.obs_dim).to(torch.get_default_dtype())
        )

    def level(self, states: Tensor) -> Tensor:
        """``(B,)`` number of filled slots (the topological order of the DAG)."""
        return (states >= 0).sum(1)

    def forward_mask(self, states: Tensor) -> Tensor:
        """``(B, n_actions)``: fill any empty slot with any value; stop only when no slot is empty."""
        empty = states < 0
        moves = self._pairs(empty[:, :, None].expand(-1, -1, self._vocab))
        return torch.cat([moves, ~empty.any(1, keepdim=True)], dim=1)

    def backward_mask(self, states: Tensor) -> Tensor:
        """``(B, n_actions - 1)``: empty slot ``i`` holding value ``v`` (the action that wrote it)."""
        held = F.one_hot(states.clamp(min=0).long(), self._vocab).bool() & (states >= 0)[..., None]
        return self._pairs(held)

    # -- transitions -------------------------------------------------------------------------------

    def step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Fill the slot of each action with its value; stop returns the state unchanged."""
        a = actions.long()
        ok = self.forward_mask(states).gather(1, a.clamp(0, self.stop_action)[:, None]).squeeze(1)
        if bool(((a < 0) | (a > self.stop_action) | ~ok).any()):
            raise ValueError(
                f"{type(self).__name__}.step got an action outside forward_mask(states); mask the policy first"
            )
        return states + self._delta.to(states.device, states.dtype)[a]

    def backward_step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Empty the slot written by forward action ``a`` (allowed by :meth:`backward_mask`)."""
        a = actions.long()
        ok = self.backward_mask(states).gather(1, a.clamp(0, self.stop_action - 1)[:, None]).squeeze(1)
        if bool(((a < 0) | (a >= self.stop_action) | ~ok).any()):
            raise ValueError(
                f"{type(self).__name__}.backward_step got an action outside backward_mask(states)"
            )
        return states - self._delta.to(states.device, states.dtype)[a]

    def step_delta(self) -> Tensor:
        """``(n_actions, n_slots)``: row ``a`` is the displacement of action ``a`` (``value + 1`` on its
        slot, zeros for stop); exact for every action the forward mask allows (rollout hot path)."""
        return self._delta

    # -- enumeration -------------------------------------------------------------------------------

    def all_states(self) -> Tensor:
        """``((V+1)^n, n)`` every state (values ``-1 .. V-1``); row ``k`` has :meth:`state_index` ``k``."""
        grids = torch.meshgrid(*[torch.arange(-1, self._vocab)] * self._n_slots, indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=1)

    def state_index(self, states: Tensor) -> Tensor:
        """``(B,)`` long: :math:`\\sum_i (x_i + 1)(V+1)^{n-1-i}` (torchgfn's ``get_states_indices``)."""
        weights = (self._vocab + 1) ** torch.arange(self._n_slots - 1, -1, -1, device=states.device)
        return ((states.long() + 1) * weights).sum(dim=1)

    @property
    def log_partition(self) -> float:
        """Exact :math:`\\log Z` over the complete states (float64)."""
        return float(torch.logsumexp(self.log_reward(self.all_states(), torch.float64), dim=0))

    def true_distribution(self) -> Tensor:
        """``(n_states,)`` float64 :math:`R(x)/Z` on complete states, 0 on incomplete ones."""
        return torch.softmax(self.log_reward(self.all_states(), torch.float64), dim=0)
