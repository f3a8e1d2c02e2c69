r"""Replay buffers of terminal states for off-policy GFlowNet training.

A buffer stores terminal states :math:`x` ``(ndim,)`` with their :math:`\log R(x)`. Training replays
them through :meth:`~flowforge.gflownet.GFlowNet.sample_backward`: a trajectory is drawn backwards
from :math:`x` with :math:`P_B` and the objective (e.g. TB) is evaluated on it (torchgfn's
``TerminatingStateBuffer``; Shen et al. 2023, "Towards Understanding and Improving GFlowNet
Training", ICML, for reward-prioritized replay).

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

import torch
from torch import Tensor

__all__ = ["PrioritizedReplayBuffer", "ReplayBuffer"]


class ReplayBuffer:
    """FIFO buffer of at most ``capacity`` terminal states, sampled uniformly with replacement.

    Attributes:
        states: ``(N, ndim)`` long, oldest first. log_rewards: ``(N,)`` float64.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1; got {capacity}")
        self.capacity = int(capacity)
        self.states: Tensor = torch.empty(0, 0, dtype=torch.long)
        self.log_rewards: Tensor = torch.empty(0, dtype=torch.float64)

    def __len__(self) -> int:
        return int(self.log_rewards.shape[0])

    def _cat(self, states: Tensor, log_rewards: Tensor) -> tuple[Tensor, Tensor]:
        states = states.detach().long().cpu()
        log_rewards = log_rewards.detach().to(torch.float64).cpu().reshape(-1)
        if states.shape[0] != log_rewards.shape[0]:
            raise ValueError("states and log_rewards must have the same batch size")
        if len(self) == 0:
            return states, log_rewards
        return torch.cat([self.states, states]), torch.cat([self.log_rewards, log_rewards])

    def add(self, states: Tensor, log_rewards: Tensor) -> None:
        """Append ``(B, ndim)`` states and their ``(B,)`` log-rewards; evict the oldest beyond capacity."""
        s, r = self._cat(states, log_rewards)
        self.states, self.log_rewards = s[-self.capacity :], r[-self.capacity :]

    def probs(self) -> Tensor:
        """``(N,)`` float64 sampling probabilities (uniform)."""
        return torch.full((len(self),), 1.0 / max(len(self), 1), dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n, ndim)`` stored states drawn with replacement according to :meth:`probs`."""
        if len(self) == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = torch.multinomial(self.probs(), n, replacement=True, generator=generator)
        return self.states[idx]


class PrioritizedReplayBuffer(ReplayBuffer):
    r"""Keeps the ``capacity`` highest-:math:`\log R` *distinct* states; samples by rank,
    :math:`P(i) = w_i / \sum_j w_j`, :math:`w_i = 1 / (k N + \mathrm{rank}_i)` (rank 0 = highest reward).

    Args:
        capacity: maximum number of stored states.
        k: rank-weighting constant (default 0.1; larger is closer to uniform).

    Example:
        >>> buf = PrioritizedReplayBuffer(capacity=2, k=1.0)
        >>> buf.add(torch.tensor([[0], [1], [2], [1]]), torch.tensor([0.0, 5.0, 3.0, 5.0]))
        >>> buf.states.tolist(), [round(p, 4) for p in buf.probs().tolist()]
        ([[1], [2]], [0.6, 0.4])
    """

    def __init__(self, capacity: int, k: float = 0.1) -> None:
        super().__init__(capacity)
        if k <= 0:
            raise ValueError(f"k must be > 0; got {k}")
        self.k = float(k)

    def add(self, states: Tensor, log_rewards: Tensor) -> None:
        """Merge, drop duplicate states, keep the ``capacity`` best (sorted best first)."""
        s, r = self._cat(states, log_rewards)
        uniq, inv = torch.unique(s, dim=0, return_inverse=True)
        first = torch.full((uniq.shape[0],), s.shape[0], dtype=torch.long)
        first = first.scatter_reduce(0, inv, torch.arange(s.shape[0]), reduce="amin")
        s, r = s[first], r[first]
        order = torch.argsort(r, descending=True, stable=True)[: self.capacity]
        self.states, self.log_rewards = s[order], r[order]

    def probs(self) -> Tensor:
        n = len(self)
        w = 1.0 / (self.k * n + torch.arange(n, dtype=torch.float64))
        return w / w.sum()
