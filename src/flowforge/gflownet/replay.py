r"""Replay buffers of terminal states for off-policy GFlowNet training.

A buffer stores terminal states :math:`x` ``(ndim,)`` with their :math:`\log R(x)`. Training replays
them through :meth:`~flowforge.gflownet.GFlowNet.sample_backward`: a trajectory is drawn backwards
from :math:`x` with :math:`P_B` and the objective (e.g. TB) is evaluated on it (torchgfn's
``TerminatingStateBuffer``; Shen et al. 2023, "Towards Understanding and Improving GFlowNet
Training", ICML, for reward-prioritized replay).

Both are ``nn.Module`` s whose contents are preallocated buffers (``capacity`` rows) plus a ``count``:
a :class:`~flowforge.gflownet.GFlowNet` holding one saves and restores it with its ``state_dict()``, so
a resumed run replays exactly what the interrupted one would have.

- :class:`ReplayBuffer`: first-in first-out, uniform sampling with replacement.
- :class:`PrioritizedReplayBuffer`: keeps the ``capacity`` highest-reward distinct states and samples
  by rank, :math:`P(i) \propto 1 / (k N + \mathrm{rank}_i)` with rank 0 the best (the rank-based
  weighting of Tripp et al. 2020, "Sample-Efficient Optimization in the Latent Space of Deep
  Generative Models via Weighted Retraining"); small ``k`` favours the top states, large ``k``
  approaches uniform.

Example:
    >>> import torch
    >>> buf = ReplayBuffer(capacity=3)
    >>> buf.add(torch.tensor([[0, 1], [2, 2], [3, 0], [1, 1]]), torch.tensor([0.0, 1.0, 2.0, 3.0]))
    >>> len(buf), buf.states.tolist()                    # the oldest state was evicted
    (3, [[2, 2], [3, 0], [1, 1]])
    >>> buf.sample(5, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["PrioritizedReplayBuffer", "ReplayBuffer"]


class ReplayBuffer(nn.Module):
    """FIFO buffer of at most ``capacity`` terminal states, sampled uniformly with replacement.

    Args:
        capacity: maximum number of stored states.
        state_shape: shape of one state (e.g. ``env.s0.shape``); default: that of the first :meth:`add`
            (a :class:`~flowforge.gflownet.GFlowNet` reserves it from its environment).

    Attributes:
        states: ``(N, *state_shape)`` long, oldest first. log_rewards: ``(N,)`` float64.
        stored_states, stored_log_rewards, count: the preallocated buffers behind them
            (``(capacity, *state_shape)``, ``(capacity,)``, scalar), part of ``state_dict()``.
    """

    def __init__(self, capacity: int, state_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1; got {capacity}")
        self.capacity = int(capacity)
        self.register_buffer("stored_states", torch.zeros(0, dtype=torch.long))
        self.register_buffer("stored_log_rewards", torch.zeros(self.capacity, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        if state_shape is not None:
            self.reserve(state_shape)

    def extra_repr(self) -> str:
        return f"capacity={self.capacity}"

    def reserve(self, state_shape: Sequence[int]) -> None:
        """Allocate room for ``capacity`` states of shape ``state_shape`` (no-op if already allocated)."""
        shape = (self.capacity, *state_shape)
        if tuple(self.stored_states.shape) == shape:
            return
        if len(self) > 0:
            raise ValueError(
                f"this replay buffer holds states of shape {tuple(self.stored_states.shape[1:])}, "
                f"not {tuple(state_shape)}; use one buffer per environment"
            )
        self.stored_states = torch.zeros(shape, dtype=torch.long, device=self.count.device)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> ReplayBuffer:
        """``.to(device)`` moves the buffer; ``.float()`` / ``.half()`` leave the log-rewards in float64."""
        keep = self.stored_log_rewards
        super()._apply(fn, recurse)
        if self.stored_log_rewards.dtype != torch.float64:
            self.stored_log_rewards = keep.to(self.stored_log_rewards.device)
        return self

    def __len__(self) -> int:
        return int(self.count)

    @property
    def states(self) -> Tensor:
        return self.stored_states[: len(self)]

    @property
    def log_rewards(self) -> Tensor:
        return self.stored_log_rewards[: len(self)]

    def _cat(self, states: Tensor, log_rewards: Tensor) -> tuple[Tensor, Tensor]:
        """The stored contents followed by the new ``states`` and ``log_rewards``."""
        self.reserve(states.shape[1:])
        states = states.detach().long().to(self.stored_states.device)
        log_rewards = log_rewards.detach().to(self.stored_log_rewards.device, torch.float64).reshape(-1)
        if states.shape[0] != log_rewards.shape[0]:
            raise ValueError("states and log_rewards must have the same batch size")
        if states.shape[1:] != self.stored_states.shape[1:]:
            raise ValueError(
                f"states of shape {tuple(states.shape[1:])} do not fit a buffer of "
                f"{tuple(self.stored_states.shape[1:])} states"
            )
        if len(self) == 0:
            return states, log_rewards
        return torch.cat([self.states, states]), torch.cat([self.log_rewards, log_rewards])

    @torch.no_grad()
    def _store(self, states: Tensor, log_rewards: Tensor) -> None:
        """Overwrite the contents (at most ``capacity`` rows) in place."""
        k = states.shape[0]
        self.stored_states[:k].copy_(states)
        self.stored_log_rewards[:k].copy_(log_rewards)
        self.count.fill_(k)

    def add(self, states: Tensor, log_rewards: Tensor) -> None:
        """Append ``(B, ndim)`` states and their ``(B,)`` log-rewards; evict the oldest beyond capacity."""
        s, r = self._cat(states, log_rewards)
        self._store(s[-self.capacity :], r[-self.capacity :])

    def probs(self) -> Tensor:
        """``(N,)`` float64 sampling probabilities (uniform), on the CPU."""
        return torch.full((len(self),), 1.0 / max(len(self), 1), dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n, ndim)`` stored states drawn with replacement according to :meth:`probs`."""
        if len(self) == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        probs = self.probs()
        if generator is not None:
            probs = probs.to(generator.device)
        idx = torch.multinomial(probs, n, replacement=True, generator=generator)
        return self.states[idx.to(self.stored_states.device)]


class PrioritizedReplayBuffer(ReplayBuffer):
    r"""Keeps the ``capacity`` highest-:math:`\log R` *distinct* states; samples by rank,
    :math:`P(i) = w_i / \sum_j w_j`, :math:`w_i = 1 / (k N + \mathrm{rank}_i)` (rank 0 = highest reward).

    Args:
        capacity: maximum number of stored states.
        k: rank-weighting constant (default 0.1; larger is closer to uniform).
        state_shape: see :class:`ReplayBuffer`.

    Example:
        >>> buf = PrioritizedReplayBuffer(capacity=2, k=1.0)
        >>> buf.add(torch.tensor([[0], [1], [2], [1]]), torch.tensor([0.0, 5.0, 3.0, 5.0]))
        >>> buf.states.tolist(), [round(p, 4) for p in buf.probs().tolist()]
        ([[1], [2]], [0.6, 0.4])
        >>> sorted(buf.state_dict())
        ['count', 'stored_log_rewards', 'stored_states']
    """

    def __init__(self, capacity: int, k: float = 0.1, state_shape: Sequence[int] | None = None) -> None:
        super().__init__(capacity, state_shape)
        if k <= 0:
            raise ValueError(f"k must be > 0; got {k}")
        self.k = float(k)

    def extra_repr(self) -> str:
        return f"capacity={self.capacity}, k={self.k}"

    def add(self, states: Tensor, log_rewards: Tensor) -> None:
        """Merge, drop duplicate states, keep the ``capacity`` best (sorted best first)."""
        s, r = self._cat(states, log_rewards)
        uniq, inv = torch.unique(s, dim=0, return_inverse=True)
        first = torch.full((uniq.shape[0],), s.shape[0], dtype=torch.long, device=s.device)
        first = first.scatter_reduce(0, inv, torch.arange(s.shape[0], device=s.device), reduce="amin")
        s, r = s[first], r[first]
        order = torch.argsort(r, descending=True, stable=True)[: self.capacity]
        self._store(s[order], r[order])

    def probs(self) -> Tensor:
        n = len(self)
        w = 1.0 / (self.k * n + torch.arange(n, dtype=torch.float64))
        return w / w.sum()
