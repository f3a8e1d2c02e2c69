r"""Bit-sequence environments (torchgfn's; Malkin et al. 2022, §5.2): append-only :class:`BitSequence`
and :class:`NonAutoregressiveBitSequence` (any free position), with a Hamming-distance reward to modes.

Example:
    >>> env = BitSequence(length=4, word=2, modes=torch.tensor([[1, 0, 1, 1]]))
    >>> env.n_actions, env.max_length, env.log_reward(torch.tensor([[2, 3]])).tolist()
    (5, 3, [-0.0])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from flowforge.gflownet.envs.slots import SlotFilling

__all__ = ["BitSequence", "NonAutoregressiveBitSequence"]


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
            if modes < 1:
                raise ValueError(f"BitSequence needs n_modes >= 1 modes; got {modes}; write e.g. n_modes=4")
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


class NonAutoregressiveBitSequence(SlotFilling):
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
