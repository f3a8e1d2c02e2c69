r"""Discrete GFlowNet environments: the :class:`Environment` protocol, :class:`HyperGrid`, bit sequences
(:class:`BitSequence`, :class:`NonAutoregressiveBitSequence`) and the :class:`Ising` model.

A state is an integer vector; a batch of states is a ``(B, ndim)`` long tensor. Actions are integers
in ``[0, n_actions)``; the **last action** (``n_actions - 1``) is the explicit *stop* action, which
ends a trajectory at the current state (every state of the hypergrid is terminal-able). Backward
actions are the non-stop actions, ``[0, n_actions - 1)``: backward action ``a`` undoes forward action
``a``.

Example:
    >>> env = HyperGrid(ndim=2, height=8)
    >>> s = env.s0.expand(3, 2)
    >>> s = env.step(s, torch.tensor([0, 1, 2]))       # +x, +y, stop
    >>> s.tolist()
    [[1, 0], [0, 1], [0, 0]]
    >>> round(env.log_partition, 5)
    3.10906
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BitSequence", "Environment", "HyperGrid", "Ising", "NonAutoregressiveBitSequence"]


@runtime_checkable
class Environment(Protocol):
    """What a GFlowNet needs from a discrete environment (states are ``(B, ndim)`` long tensors).

    Attributes:
        s0: the initial state, ``(ndim,)``.
        n_actions: number of forward actions; the last one is *stop*.
        obs_dim: size of the float encoding :meth:`obs`.
        max_length: the longest possible trajectory, counted in actions (stop included).

    Methods ``obs``, ``forward_mask``, ``backward_mask``, ``step``, ``backward_step``, ``log_reward``
    act on a batch; enumerable environments add ``all_states()`` and ``state_index(states)``.
    """

    s0: Tensor
    n_actions: int
    obs_dim: int
    max_length: int

    def obs(self, states: Tensor) -> Tensor:
        """``(B, ndim)`` long -> ``(B, obs_dim)`` float encoding for the networks."""
        ...

    def forward_mask(self, states: Tensor) -> Tensor:
        """``(B, n_actions)`` bool: allowed forward actions (stop is last)."""
        ...

    def backward_mask(self, states: Tensor) -> Tensor:
        """``(B, n_actions - 1)`` bool: allowed backward actions (all False at ``s0``)."""
        ...

    def step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Apply forward ``actions`` ``(B,)``; stop leaves the state unchanged."""
        ...

    def backward_step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Undo forward ``actions`` ``(B,)`` (non-stop)."""
        ...

    def log_reward(self, states: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``(B,)`` log-reward of terminal states, in ``dtype`` (default: torch's default dtype)."""
        ...


class HyperGrid:
    r"""The hypergrid of Bengio et al. (2021), "Flow Network based Generative Models for Non-Iterative
    Diverse Candidate Generation" (NeurIPS), as used by torchgfn and Malkin et al. (2022).

    States :math:`x \in \{0, \dots, H-1\}^D`, :math:`s_0 = 0`; actions: +1 on one coordinate (not past
    :math:`H-1`) or stop (:math:`D + 1` actions). With :math:`a_i = |x_i / (H-1) - 0.5|`,

    .. math::

        R(x) = R_0 + R_1 \prod_i \mathbb 1[0.25 < a_i \le 0.5] + R_2 \prod_i \mathbb 1[0.3 < a_i < 0.4].

    Modes are the states with :math:`R \ge R_0 + R_1 + R_2`; they sit in the :math:`2^D` corners
    (one state per corner for :math:`H = 8`). The encoding :meth:`obs` is one-hot per coordinate
    ("K-hot"), ``obs_dim = D * H``.

    Args:
        ndim: :math:`D`.
        height: :math:`H`.
        r0, r1, r2: the reward constants (defaults 0.1, 0.5, 2.0).

    Example:
        >>> env = HyperGrid(ndim=2, height=8)
        >>> sorted(set(env.log_reward(env.all_states(), torch.float64).exp().round(decimals=3).tolist()))
        [0.1, 0.6, 2.6]
        >>> env.modes.tolist()
        [[1, 1], [1, 6], [6, 1], [6, 6]]
    """

    def __init__(
        self, ndim: int = 2, height: int = 8, r0: float = 0.1, r1: float = 0.5, r2: float = 2.0
    ) -> None:
        if ndim < 1 or height < 2:
            raise ValueError(f"HyperGrid needs ndim >= 1 and height >= 2; got ndim={ndim}, height={height}")
        if r0 <= 0:
            raise ValueError(f"HyperGrid needs r0 > 0 so that log R is finite; got r0={r0}")
        self.ndim, self.height = ndim, height
        self.r0, self.r1, self.r2 = r0, r1, r2
        self.n_actions = ndim + 1
        self.stop_action = ndim
        self.obs_dim = ndim * height
        self.max_length = ndim * (height - 1) + 1
        self.n_states = height**ndim
        self.s0 = torch.zeros(ndim, dtype=torch.long)
        self._eye = torch.eye(height)  # K-hot lookup table (obs)
        # row a = e_a for a move, zeros for stop (the rollout's unchecked step)
        self._lr_table: tuple | None = None  # (key, log R of all states, index weights), see _log_reward_fast
        self._units = torch.cat([torch.eye(ndim, dtype=torch.long), torch.zeros(1, ndim, dtype=torch.long)])

    def __repr__(self) -> str:
        return f"HyperGrid(ndim={self.ndim}, height={self.height}, r0={self.r0}, r1={self.r1}, r2={self.r2})"

    # -- encoding and masks ------------------------------------------------------------------------

    def obs(self, states: Tensor) -> Tensor:
        """K-hot encoding: ``(B, ndim)`` -> ``(B, ndim * height)`` float (default dtype)."""
        eye = self._eye
        dtype = torch.get_default_dtype()
        if eye.device != states.device or eye.dtype != dtype:
            eye = self._eye = torch.eye(self.height, dtype=dtype, device=states.device)
        return eye[states.long()].reshape(states.shape[0], -1)

    def forward_mask(self, states: Tensor) -> Tensor:
        """``(B, ndim + 1)`` bool: +1 on coordinate ``i`` allowed while ``x_i < H - 1``; stop always."""
        stop = torch.ones(states.shape[0], 1, dtype=torch.bool, device=states.device)
        return torch.cat([states < self.height - 1, stop], dim=1)

    def backward_mask(self, states: Tensor) -> Tensor:
        """``(B, ndim)`` bool: -1 on coordinate ``i`` allowed while ``x_i > 0``."""
        return states > 0

    # -- transitions -------------------------------------------------------------------------------

    def step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Forward step: ``x + e_a`` for ``a < ndim``; the stop action ``ndim`` returns ``x`` unchanged."""
        ok = self.forward_mask(states).gather(1, actions.long().clamp(0, self.ndim)[:, None]).squeeze(1)
        if bool(((actions < 0) | (actions > self.ndim) | ~ok).any()):
            raise ValueError(
                "HyperGrid.step got an action outside forward_mask(states); mask the policy first"
            )
        return states + F.one_hot(actions.long(), self.n_actions)[:, : self.ndim].to(states.dtype)

    def _step_delta(self) -> Tensor:
        """``(ndim + 1, ndim)``: row ``a`` is the displacement of action ``a`` (``e_a``, zeros for stop);
        rollouts use ``s + delta[a]``, an unchecked :meth:`step` for actions drawn from the masked policy."""
        return self._units

    def _forward_forbidden(self, states: Tensor) -> Tensor:
        """``~forward_mask(states)`` in two ops (rollout hot path)."""
        return F.pad(states >= self.height - 1, (0, 1))

    def backward_step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Backward step: ``x - e_a`` for ``a < ndim`` (``a`` must be allowed by :meth:`backward_mask`)."""
        ok = self.backward_mask(states).gather(1, actions.long().clamp(0, self.ndim - 1)[:, None]).squeeze(1)
        if bool(((actions < 0) | (actions >= self.ndim) | ~ok).any()):
            raise ValueError("HyperGrid.backward_step got an action outside backward_mask(states)")
        return states - F.one_hot(actions.long(), self.ndim).to(states.dtype)

    # -- reward ------------------------------------------------------------------------------------

    def log_reward(self, states: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``(B,)`` :math:`\\log R(x)` in ``dtype`` (default: torch's default dtype)."""
        dtype = dtype or torch.get_default_dtype()
        a = (states.to(torch.float64) / (self.height - 1) - 0.5).abs()
        band1 = ((a > 0.25) & (a <= 0.5)).all(dim=1)
        band2 = ((a > 0.3) & (a < 0.4)).all(dim=1)
        r = self.r0 + self.r1 * band1.to(torch.float64) + self.r2 * band2.to(torch.float64)
        return r.log().to(dtype)

    def _log_reward_fast(self, states: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """:meth:`log_reward` by table lookup, for states known to be on the grid (rollouts)."""
        if self.n_states > 1 << 20:  # keep the table small
            return self.log_reward(states, dtype)
        dtype = dtype or torch.get_default_dtype()
        key = (states.device, dtype)
        if self._lr_table is None or self._lr_table[0] != key:
            table = self.log_reward(self.all_states(), dtype).to(states.device)
            weights = self.height ** torch.arange(self.ndim - 1, -1, -1, device=states.device)
            self._lr_table = (key, table, weights)
        _, table, weights = self._lr_table
        return table[(states.long() * weights).sum(dim=1)]

    def mode_mask(self, states: Tensor) -> Tensor:
        """``(B,)`` bool: :math:`R(x) \\ge R_0 + R_1 + R_2`."""
        rmax = self.r0 + self.r1 + self.r2
        return self.log_reward(states, torch.float64) >= math.log(rmax) - 1e-9

    def mode_id(self, states: Tensor) -> Tensor:
        """``(B,)`` long: which of the :math:`2^D` corner modes a mode state belongs to (-1 if not a mode)."""
        corner = (states.to(torch.float64) / (self.height - 1) > 0.5).long()
        weights = 2 ** torch.arange(self.ndim - 1, -1, -1, device=states.device)
        return torch.where(self.mode_mask(states), (corner * weights).sum(1), -1)

    @property
    def n_modes(self) -> int:
        """Number of corner modes that contain at least one mode state (``2^D`` for the usual sizes)."""
        return int(self.mode_id(self.all_states()).unique().ge(0).sum())

    @property
    def modes(self) -> Tensor:
        """``(M, ndim)`` all mode states, in :meth:`all_states` order."""
        s = self.all_states()
        return s[self.mode_mask(s)]

    # -- enumeration -------------------------------------------------------------------------------

    def all_states(self) -> Tensor:
        """``(H^D, ndim)`` every state; row ``k`` has :meth:`state_index` ``k`` (last coordinate fastest)."""
        grids = torch.meshgrid(*[torch.arange(self.height)] * self.ndim, indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=1)

    def state_index(self, states: Tensor) -> Tensor:
        """``(B,)`` long: :math:`\\sum_i x_i H^{D-1-i}`."""
        weights = self.height ** torch.arange(self.ndim - 1, -1, -1, device=states.device)
        return (states.long() * weights).sum(dim=1)

    @property
    def log_partition(self) -> float:
        """Exact :math:`\\log Z = \\log \\sum_x R(x)` (float64)."""
        return float(torch.logsumexp(self.log_reward(self.all_states(), torch.float64), dim=0))

    def true_distribution(self) -> Tensor:
        """``(H^D,)`` float64 target :math:`\\pi(x) = R(x) / Z` in :meth:`all_states` order."""
        return torch.softmax(self.log_reward(self.all_states(), torch.float64), dim=0)


class BitSequence:
    r"""Append-only bit strings (torchgfn's ``BitSequence``; Malkin et al. 2022, §5.2): a sequence of
    ``length`` bits is built left to right, one ``word``-bit word per action.

    A state is the ``(n_words,)`` vector of word values in ``[0, 2^w)``, with ``-1`` for positions not
    yet written; :math:`s_0` is all ``-1``. Forward actions ``0 .. 2^w - 1`` write that word at the
    next free position; the stop action (``2^w``) is allowed only on complete sequences, which are
    the terminal states. Each state has exactly one parent (backward action = its last word), so
    :math:`P_B = 1` and the GFlowNet target is exact. The reward of a complete string :math:`x` is

    .. math::

        R(x) = \exp\big(-\beta \min_{m \in \mathcal M} d_H(x, m)\big)

    (Hamming distance in bits to a mode set :math:`\mathcal M`); incomplete states have
    :math:`\log R = -\infty`. ``modes``: an ``(M, length)`` 0/1 tensor, or an int ``M`` for
    ``M`` modes drawn uniformly with ``seed``. Enumerable: all prefixes, ordered by the number of
    written words, then lexicographically (:meth:`all_states`, :meth:`state_index`); the exact DP of
    :mod:`flowforge.gflownet.exact` uses :meth:`level` (words written) as topological order.

    Example:
        >>> env = BitSequence(length=4, word=2, modes=torch.tensor([[1, 0, 1, 1]]), beta=1.0)
        >>> s = env.step(env.step(env.s0[None], torch.tensor([2])), torch.tensor([3]))
        >>> s.tolist(), env.bits(s).tolist(), env.log_reward(s).tolist()
        ([[2, 3]], [[1, 0, 1, 1]], [-0.0])
        >>> env.n_states, env.forward_mask(s).tolist()
        (21, [[False, False, False, False, True]])
    """

    def __init__(
        self,
        length: int = 8,
        word: int = 2,
        modes: Tensor | int = 4,
        beta: float = 1.0,
        seed: int = 0,
    ) -> None:
        if word < 1 or length < word or length % word:
            raise ValueError(f"BitSequence needs length a positive multiple of word; got {length}, {word}")
        self.length, self.word, self.beta = length, word, float(beta)
        self.n_words = length // word
        self.vocab = 2**word
        if isinstance(modes, int):
            g = torch.Generator().manual_seed(seed)
            modes = torch.randint(0, 2, (modes, length), generator=g)
        modes = torch.as_tensor(modes).long()
        if modes.ndim != 2 or modes.shape[1] != length or bool(((modes != 0) & (modes != 1)).any()):
            raise ValueError(f"modes must be an (M, {length}) 0/1 tensor")
        self.mode_bits = modes
        self.n_actions = self.vocab + 1
        self.stop_action = self.vocab
        self.obs_dim = self.n_words * (self.vocab + 1)
        self.max_length = self.n_words + 1
        self.n_states = sum(self.vocab**k for k in range(self.n_words + 1))
        self.s0 = torch.full((self.n_words,), -1, dtype=torch.long)

    def __repr__(self) -> str:
        return f"BitSequence(length={self.length}, word={self.word}, modes={self.mode_bits.shape[0]}, beta={self.beta})"

    def level(self, states: Tensor) -> Tensor:
        """``(B,)`` number of written words (the topological order of the DAG)."""
        return (states >= 0).sum(1)

    def bits(self, states: Tensor) -> Tensor:
        """``(B, length)`` 0/1 bits of complete states (most significant bit first within a word)."""
        shifts = torch.arange(self.word - 1, -1, -1, device=states.device)
        return ((states.clamp(min=0)[..., None] >> shifts) & 1).reshape(states.shape[0], -1)

    def obs(self, states: Tensor) -> Tensor:
        """One-hot per position with an extra "empty" class: ``(B, n_words * (2^w + 1))``."""
        x = torch.where(states < 0, self.vocab, states).long()
        return F.one_hot(x, self.vocab + 1).reshape(states.shape[0], -1).to(torch.get_default_dtype())

    def forward_mask(self, states: Tensor) -> Tensor:
        """``(B, 2^w + 1)``: words while not complete, stop only when complete."""
        full = (states >= 0).all(1)
        return torch.cat([(~full)[:, None].expand(-1, self.vocab), full[:, None]], dim=1)

    def backward_mask(self, states: Tensor) -> Tensor:
        """``(B, 2^w)``: only the last written word can be removed (all False at :math:`s_0`)."""
        n = self.level(states)
        last = states.gather(1, (n - 1).clamp(min=0)[:, None]).squeeze(1)
        m = F.one_hot(last.clamp(min=0), self.vocab).bool()
        return m & (n > 0)[:, None]

    def step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Write word ``a`` at the next free position; stop returns the state unchanged."""
        a = actions.long()
        ok = self.forward_mask(states).gather(1, a.clamp(0, self.vocab)[:, None]).squeeze(1)
        if bool(((a < 0) | (a > self.vocab) | ~ok).any()):
            raise ValueError(
                "BitSequence.step got an action outside forward_mask(states); mask the policy first"
            )
        out = states.clone()
        move = a < self.vocab
        rows = move.nonzero().squeeze(1)
        out[rows, self.level(states)[rows]] = a[rows]
        return out

    def backward_step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Erase the last word (``actions`` must equal it, see :meth:`backward_mask`)."""
        a = actions.long()
        ok = self.backward_mask(states).gather(1, a.clamp(0, self.vocab - 1)[:, None]).squeeze(1)
        if bool(((a < 0) | (a >= self.vocab) | ~ok).any()):
            raise ValueError("BitSequence.backward_step got an action outside backward_mask(states)")
        out = states.clone()
        out[torch.arange(states.shape[0], device=states.device), self.level(states) - 1] = -1
        return out

    def min_distance(self, states: Tensor) -> Tensor:
        """``(B,)`` long: :math:`\\min_m d_H(x, m)` for complete states."""
        b = self.bits(states)
        return (b[:, None, :] != self.mode_bits.to(b.device)[None]).sum(-1).min(1).values

    def log_reward(self, states: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``(B,)`` :math:`-\\beta \\min_m d_H(x, m)` for complete states, ``-inf`` otherwise."""
        dtype = dtype or torch.get_default_dtype()
        lr = -self.beta * self.min_distance(states).to(torch.float64)
        full = (states >= 0).all(1)
        return torch.where(full, lr, torch.full_like(lr, float("-inf"))).to(dtype)

    def mode_id(self, states: Tensor) -> Tensor:
        """``(B,)`` index of the mode a complete state equals, else -1."""
        b = self.bits(states)
        eq = (b[:, None, :] == self.mode_bits.to(b.device)[None]).all(-1) & (states >= 0).all(1)[:, None]
        return torch.where(eq.any(1), eq.long().argmax(1), -1)

    @property
    def n_modes(self) -> int:
        """Number of distinct modes."""
        return int(torch.unique(self.mode_bits, dim=0).shape[0])

    def all_states(self) -> Tensor:
        """``(n_states, n_words)``: prefixes by level, lexicographic within a level (row k has index k)."""
        rows = [self.s0[None]]
        for k in range(1, self.n_words + 1):
            grids = torch.meshgrid(*[torch.arange(self.vocab)] * k, indexing="ij")
            pre = torch.stack([g.reshape(-1) for g in grids], dim=1)
            rows.append(torch.cat([pre, torch.full((pre.shape[0], self.n_words - k), -1)], dim=1))
        return torch.cat(rows)

    def state_index(self, states: Tensor) -> Tensor:
        """``(B,)`` long: :math:`\\sum_{j<k} V^j + \\sum_{i<k} x_i V^{k-1-i}` for a level-``k`` prefix."""
        k = self.level(states)
        offsets = torch.tensor(
            [sum(self.vocab**j for j in range(i)) for i in range(self.n_words + 1)], device=states.device
        )
        pos = torch.arange(self.n_words, device=states.device)[None]
        expo = (k[:, None] - 1 - pos).clamp(min=0)
        val = (states.clamp(min=0) * self.vocab**expo * (pos < k[:, None])).sum(1)
        return offsets[k] + val

    @property
    def log_partition(self) -> float:
        """Exact :math:`\\log Z` over the :math:`2^{\\text{length}}` complete strings (float64)."""
        return float(torch.logsumexp(self.log_reward(self.all_states(), torch.float64), dim=0))

    def true_distribution(self) -> Tensor:
        """``(n_states,)`` float64 :math:`R(x)/Z` on complete states, 0 on prefixes."""
        return torch.softmax(self.log_reward(self.all_states(), torch.float64), dim=0)


class _SlotFilling:
    r"""Shared machinery of environments that fill ``n_slots`` empty slots (``-1``) with values in
    ``[0, vocab)``, one slot per action, in any order; stop is allowed only when every slot is full.

    A forward action is a (slot, value) pair; ``value_major=False`` numbers it
    ``slot * vocab + value`` (torchgfn's ``NonAutoregressiveBitSequence``), ``value_major=True``
    ``value * n_slots + slot`` (torchgfn's ``DiscreteEBM``). Backward action ``a`` empties the slot
    that forward action ``a`` filled, and is allowed only if that slot holds that value. Since the mask
    only allows filling empty slots, every move is a fixed displacement ``+(value + 1)`` on its slot
    (:meth:`_step_delta`). Subclasses define ``log_reward`` (``-inf`` on incomplete states).

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

    def _step_delta(self) -> Tensor:
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


class NonAutoregressiveBitSequence(_SlotFilling):
    r"""Bit strings written one word at a time at *any* empty position (torchgfn's
    ``NonAutoregressiveBitSequence``; the task of Malkin et al. 2022, §5.2, without the left-to-right
    order).

    A state is the ``(n_words,)`` vector of word values in ``[0, 2^w)``, ``-1`` for empty positions;
    :math:`s_0` is all ``-1``. Forward action ``a = i * 2^w + v`` writes word ``v`` at empty
    position ``i`` (``n_words * 2^w`` moves); stop (the last action) is allowed only on complete
    strings. Backward action ``a`` erases position ``i`` if it holds ``v``, so a state with ``k``
    written words has ``k`` parents and :math:`P_B` matters (unlike :class:`BitSequence`). The
    reward is :class:`BitSequence`'s,

    .. math::

        R(x) = \exp\big(-\beta \min_{m \in \mathcal M} d_H(x, m)\big),

    with the same ``modes`` argument (``(M, length)`` 0/1 tensor, or a count drawn with ``seed``)
    and the same ``bits``, ``min_distance`` and ``mode_id``. torchgfn uses
    :math:`\log R = -\text{reward\_exponent}\cdot d / \text{length}` and block-pattern modes, i.e.
    ``reward_exponent = beta * length``. Enumerable: all :math:`(2^w + 1)^{n}` states
    (:meth:`all_states`, last position fastest); ``level`` is the number of written words.

    Args:
        length: number of bits; a positive multiple of ``word``.
        word: bits per word :math:`w`.
        modes: ``(M, length)`` 0/1 tensor, or ``M`` random modes.
        beta: :math:`\beta`; larger is sharper.
        seed: seed of the random modes.

    Example:
        >>> env = NonAutoregressiveBitSequence(length=4, word=2, modes=torch.tensor([[1, 0, 1, 1]]))
        >>> s = env.step(env.s0[None], torch.tensor([1 * 4 + 3]))   # word 3 at position 1
        >>> s = env.step(s, torch.tensor([0 * 4 + 2]))              # word 2 at position 0
        >>> s.tolist(), env.bits(s).tolist(), env.log_reward(s).tolist()
        ([[2, 3]], [[1, 0, 1, 1]], [-0.0])
        >>> env.backward_mask(s).nonzero()[:, 1].tolist()           # two parents
        [2, 7]
        >>> env.n_states, env.n_actions
        (25, 9)
    """

    def __init__(
        self,
        length: int = 8,
        word: int = 1,
        modes: Tensor | int = 4,
        beta: float = 1.0,
        seed: int = 0,
    ) -> None:
        if word < 1 or length < word or length % word:
            raise ValueError(
                f"NonAutoregressiveBitSequence needs length a positive multiple of word; got {length}, {word}"
            )
        self._seq = BitSequence(length, word, modes, beta, seed)  # reward, bits and modes
        self.length, self.word, self.beta = length, word, float(beta)
        self.n_words, self.vocab = self._seq.n_words, self._seq.vocab
        self.mode_bits = self._seq.mode_bits
        self._init_slots(self.n_words, self.vocab, value_major=False)

    def __repr__(self) -> str:
        return (
            f"NonAutoregressiveBitSequence(length={self.length}, word={self.word}, "
            f"modes={self.mode_bits.shape[0]}, beta={self.beta})"
        )

    def bits(self, states: Tensor) -> Tensor:
        """``(B, length)`` 0/1 bits of complete states (see :meth:`BitSequence.bits`)."""
        return self._seq.bits(states)

    def min_distance(self, states: Tensor) -> Tensor:
        """``(B,)`` long: :math:`\\min_m d_H(x, m)` for complete states."""
        return self._seq.min_distance(states)

    def log_reward(self, states: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``(B,)`` :math:`-\\beta \\min_m d_H(x, m)` for complete states, ``-inf`` otherwise."""
        return self._seq.log_reward(states, dtype)

    def mode_id(self, states: Tensor) -> Tensor:
        """``(B,)`` index of the mode a complete state equals, else -1."""
        return self._seq.mode_id(states)

    @property
    def n_modes(self) -> int:
        """Number of distinct modes."""
        return self._seq.n_modes


class Ising(_SlotFilling):
    r"""Ising model on a ``side x side`` lattice as a GFlowNet environment: torchgfn's ``DiscreteEBM``
    with its ``IsingModel`` energy (Zhang et al. 2022, "Generative Flow Networks for Discrete
    Probabilistic Modeling", ICML; EB-GFN).

    :math:`D = \text{side}^2` sites; a state is ``(D,)`` in :math:`\{-1, 0, 1\}` with ``-1`` = unset,
    :math:`s_0` all unset. Forward action ``i`` sets site ``i`` to 0 and action ``D + i`` sets it to
    1 (site ``i`` must be unset); stop (action ``2D``) only when every site is set. Backward action
    ``a`` unsets the site that ``a`` set (torchgfn's layout). With spins
    :math:`\sigma_i = 2 x_i - 1` and the lattice bonds :math:`\langle ij \rangle` (each unordered
    pair of nearest neighbours once; wrap-around bonds if ``periodic``),

    .. math::

        E(x) = -J \sum_{\langle ij \rangle} \sigma_i \sigma_j, \qquad \log R(x) = -\beta E(x),

    so for :math:`J > 0` (ferromagnetic) aligned spins have the highest reward and the two ground
    states (all 0, all 1) are the modes. Incomplete states have :math:`\log R = -\infty`.

    Conventions vs torchgfn: ``DiscreteEBM(alpha)`` with ``IsingModel(c * A)`` (``A`` the 0/1
    adjacency, :attr:`adjacency`) has :math:`\log R = \alpha\,\sigma^\top (cA) \sigma
    = 2 \alpha c \sum_{\langle ij\rangle} \sigma_i\sigma_j`, which is ``Ising(J=c, beta=2 * alpha)``
    here (the same factor 2 relates Zhang et al.'s :math:`x^\top J x` to this bond sum). The default
    ``beta = 0.44`` is near the critical coupling :math:`\ln(1+\sqrt2)/2` of the infinite lattice;
    torchgfn's ``train_ising.py`` default ``J=0.44`` corresponds to ``beta * J = 0.88``. On a
    ``side = 2`` torus the wrap-around bonds coincide with the open ones and are not doubled (as in
    torchgfn's ``make_J``). :meth:`obs` is one-hot per site (unset/0/1, ``obs_dim = 3D``) where
    torchgfn feeds the raw states; :meth:`true_distribution` lives on all :math:`3^D` states (0 on
    incomplete ones) where torchgfn's ``true_dist`` lists the :math:`2^D` terminal states.

    Args:
        side: lattice side (``>= 2``); :math:`3^{D}` states are enumerated (``side = 3``: 19683).
        J: coupling (``> 0`` ferromagnetic, ``< 0`` antiferromagnetic).
        beta: inverse temperature.
        periodic: wrap-around (torus) bonds.

    Attributes:
        adjacency: ``(D, D)`` float64 symmetric 0/1 bond matrix :math:`A` (sites row-major).
        n_bonds: number of bonds, :math:`\tfrac12 \sum_{ij} A_{ij}`.

    Example:
        >>> env = Ising(side=3, J=1.0, beta=0.44)
        >>> env.n_states, env.n_actions, env.n_bonds
        (19683, 19, 18)
        >>> up = torch.ones(1, 9, dtype=torch.long)
        >>> env.energy(up).tolist(), round(env.log_reward(up, torch.float64).item(), 2)
        ([-18.0], 7.92)
        >>> s = env.step(env.s0[None], torch.tensor([9 + 4]))     # site 4 := 1
        >>> s.tolist()[0], env.mode_id(torch.zeros(1, 9, dtype=torch.long)).tolist(), env.n_modes
        ([-1, -1, -1, -1, 1, -1, -1, -1, -1], [0], 2)
    """

    def __init__(self, side: int = 3, J: float = 1.0, beta: float = 0.44, periodic: bool = True) -> None:
        if not isinstance(side, int) or side < 2:
            raise ValueError(f"Ising needs an integer side >= 2 (a side x side lattice); got side={side!r}")
        if not (math.isfinite(J) and math.isfinite(beta)):
            raise ValueError(f"Ising needs finite J and beta; got J={J}, beta={beta}")
        self.side, self.J, self.beta, self.periodic = side, float(J), float(beta), bool(periodic)
        self.ndim = side * side
        self._init_slots(self.ndim, 2, value_major=True)
        idx = torch.arange(self.ndim).reshape(side, side)
        adj = torch.zeros(self.ndim, self.ndim, dtype=torch.float64)
        for shift in ((0, 1), (1, 0)):  # right and down neighbours
            nb = torch.roll(idx, shifts=(-shift[0], -shift[1]), dims=(0, 1))
            keep = torch.ones(side, side, dtype=torch.bool)
            if not self.periodic:  # drop the wrap-around bonds
                if shift[1]:
                    keep[:, -1] = False
                else:
                    keep[-1, :] = False
            adj[idx[keep], nb[keep]] = 1.0
        self.adjacency = ((adj + adj.T) > 0).to(torch.float64)  # symmetric 0/1, bonds deduplicated
        self.n_bonds = int(self.adjacency.sum()) // 2
        self._modes: Tensor | None = None

    def __repr__(self) -> str:
        return f"Ising(side={self.side}, J={self.J}, beta={self.beta}, periodic={self.periodic})"

    def energy(self, states: Tensor) -> Tensor:
        """``(B,)`` float64 :math:`E = -J \\sum_{\\langle ij\\rangle} \\sigma_i\\sigma_j` of complete states."""
        sigma = (2 * states - 1).to(torch.float64)
        adj = self.adjacency.to(states.device)
        return -0.5 * self.J * ((sigma @ adj) * sigma).sum(1)

    def log_reward(self, states: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``(B,)`` :math:`-\\beta E(x)` for complete states, ``-inf`` otherwise."""
        dtype = dtype or torch.get_default_dtype()
        lr = -self.beta * self.energy(states)
        full = (states >= 0).all(1)
        return torch.where(full, lr, torch.full_like(lr, float("-inf"))).to(dtype)

    @property
    def modes(self) -> Tensor:
        """``(M, D)`` the ground states (minimum energy): all 0 and all 1 for :math:`J > 0`; found by
        enumerating the :math:`2^D` configurations otherwise (``D <= 20``)."""
        if self._modes is None:
            if self.J > 0:
                self._modes = torch.stack([torch.zeros(self.ndim), torch.ones(self.ndim)]).long()
            else:
                if self.ndim > 20:
                    raise ValueError(
                        f"Ising.modes with J <= 0 enumerates 2^D configurations; D={self.ndim} > 20"
                    )
                grids = torch.meshgrid(*[torch.arange(2)] * self.ndim, indexing="ij")
                x = torch.stack([g.reshape(-1) for g in grids], dim=1)
                e = self.energy(x)
                self._modes = x[e <= e.min() + 1e-9]
        return self._modes

    def mode_id(self, states: Tensor) -> Tensor:
        """``(B,)`` index into :attr:`modes` of a ground state, else -1."""
        m = self.modes.to(states.device)
        eq = (states[:, None, :] == m[None]).all(-1)
        return torch.where(eq.any(1), eq.long().argmax(1), -1)

    @property
    def n_modes(self) -> int:
        """Number of ground states (2 for :math:`J > 0`)."""
        return int(self.modes.shape[0])
