r"""The batch that every GFlowNet objective reads: :class:`Trajectories` (padded, stop action included).

Example:
    >>> import torch
    >>> from flowforge.gflownet import HyperGrid, TrajectoryBalance
    >>> tr = TrajectoryBalance(HyperGrid(2, 4), width=8, depth=1).sample(3, generator=torch.Generator().manual_seed(0))
    >>> tr.states.shape[1:], tr.actions.shape == tr.valid.shape == tr.log_pf.shape, bool(tr.is_complete.all())
    (torch.Size([3, 2]), True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Trajectories", "require_complete"]


@dataclass
class Trajectories:
    """A batch of ``B`` trajectories padded to ``T`` actions (the stop action included).

    Attributes:
        states: ``(T + 1, B, ndim)`` long; after its stop action a trajectory repeats its last state.
        actions: ``(T, B)`` long, ``-1`` after the stop action.
        valid: ``(T, B)`` bool, True for real actions (moves and the stop).
        lengths: ``(B,)`` number of actions including stop (``n + 1`` for ``n`` moves).
        terminal: ``(B, ndim)`` the terminal states :math:`x` (of an incomplete trajectory: its last state).
        log_pf: ``(T, B)`` :math:`\\log P_F(a_t | s_t)` of the *unexplored* policy (0 when not valid).
        log_pb: ``(T, B)`` :math:`\\log P_B(s_t | s_{t+1})`; 0 for stop and padding.
        log_reward: ``(B,)`` :math:`\\log R(x)` (for an incomplete trajectory: of its last state).
        complete: ``(B,)`` bool, True where the trajectory ends with its stop action; ``None`` means
            all complete. Incomplete trajectories (:meth:`GFlowNet.truncate`) train only objectives
            that need no terminal reward: forward-looking DB/SubTB (and plain DB/SubTB on the moves).
    """

    states: Tensor
    actions: Tensor
    valid: Tensor
    lengths: Tensor
    terminal: Tensor
    log_pf: Tensor
    log_pb: Tensor
    log_reward: Tensor
    complete: Tensor | None = None

    @property
    def is_complete(self) -> Tensor:
        """``(B,)`` bool: :attr:`complete`, all True when it is ``None``."""
        if self.complete is None:
            return torch.ones_like(self.lengths, dtype=torch.bool)
        return self.complete


def require_complete(tr: Trajectories, what: str) -> None:
    """Raise a ValueError naming ``what`` unless every trajectory of ``tr`` ends with its stop action."""
    if tr.complete is not None and not bool(tr.complete.all()):
        raise ValueError(
            f"{what} needs complete trajectories (ending with the stop action); incomplete ones train "
            "DetailedBalance / SubTrajectoryBalance with forward_looking=True"
        )
