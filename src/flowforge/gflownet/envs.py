r"""Discrete GFlowNet environments: the :class:`Environment` protocol and the :class:`HyperGrid`.

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

__all__ = ["BitSequence", "Environment", "HyperGrid"]


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
