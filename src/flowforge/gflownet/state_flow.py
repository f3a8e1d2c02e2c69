r"""The state-flow base of detailed and sub-trajectory balance: a :math:`\log F(s)` head, optionally
*forward-looking* (FL-GFN; Pan et al. 2023), and training on incomplete trajectories.

Example:
    >>> import torch
    >>> from flowforge.gflownet import DetailedBalance, HyperGrid
    >>> db = DetailedBalance(HyperGrid(2, 4), width=8, depth=1, forward_looking=True)
    >>> isinstance(db, StateFlowGFlowNet), db.log_flow(torch.zeros(3, 2, dtype=torch.long)).shape
    (True, torch.Size([3]))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.contracts import Environment
from flowforge.gflownet.base import GFlowNet
from flowforge.gflownet.trajectories import Trajectories
from flowforge.nn.policy import PolicyMLP, call_policy

__all__ = ["StateFlowGFlowNet"]


class StateFlowGFlowNet(GFlowNet):
    r"""Base of :class:`~flowforge.gflownet.DetailedBalance` and
    :class:`~flowforge.gflownet.SubTrajectoryBalance` (not an objective itself): a GFlowNet with a state-flow head (``logf`` net, obs -> 1), optionally *forward-looking*.

    Forward-looking (FL-GFN; Pan et al. 2023, "Better Training of GFlowNets with Local Credit and
    Incomplete Trajectories", ICML): with an energy :math:`\mathcal E` defined on every state and
    :math:`R(x) = e^{-\mathcal E(x)}`, the flow is :math:`\log F(s) = \log \tilde F(s) - \mathcal E(s)`
    where the network gives :math:`\log \tilde F`; here :math:`-\mathcal E(s)` is ``env.log_reward(s)``,
    which must then be finite on every state. The stop edge keeps :math:`\log R(x)`, so the terminal
    boundary :math:`\tilde F(x) P_F(\text{stop}|x) = 1` is enforced by the loss itself; where stop is
    the only allowed action it reads :math:`\tilde F(x) = 1` and is built in (:math:`\log\tilde F = 0`
    there). Every residual is local, so incomplete trajectories (:meth:`GFlowNet.truncate`) are valid
    training data.

    Args:
        logf: state-flow net ``(B, obs_dim) -> (B, 1)``; default :class:`PolicyMLP`.
        forward_looking: use the FL parameterisation above.
        incomplete: fraction of each on-policy batch cut at a uniform random move before its stop
            (:meth:`GFlowNet.truncate`), to train from incomplete trajectories.
        free_terminal_flow: the FL-GFN reference code's variant (``set/gflownet.py``): no stop residual
            and :math:`\log\tilde F(x)` a free network output on terminal states. The boundary is then
            not enforced and the sampler is :math:`\propto \tilde F(x) R(x)`: biased (on the set task
            10x the exact L1 of the default), but a flatter, more exploratory sampler with a higher
            top-k reward there (benchmarks/gfn_fl.py, RESULTS-gfn-fl.md). Needs ``forward_looking``.
    """

    def __init__(
        self,
        env: Environment,
        pf: nn.Module | None = None,
        pb: nn.Module | None = None,
        *,
        logf: nn.Module | None = None,
        forward_looking: bool = False,
        incomplete: float = 0.0,
        free_terminal_flow: bool = False,
        width: int = 256,
        depth: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(env, pf, pb, width=width, depth=depth, **kwargs)
        if not 0.0 <= incomplete <= 1.0:
            raise ValueError(f"incomplete must be a fraction in [0, 1]; got {incomplete}")
        if incomplete == 1.0 and not forward_looking:
            raise ValueError(
                "incomplete=1 cuts every stop, so no reward would enter the loss; use forward_looking=True "
                "(rewards of partial objects) or incomplete < 1"
            )
        if free_terminal_flow and not forward_looking:
            raise ValueError(
                "free_terminal_flow is a variant of forward-looking losses; set forward_looking=True"
            )
        self.logf = logf if logf is not None else PolicyMLP(env.obs_dim, 1, width, depth)
        self.forward_looking, self.incomplete = bool(forward_looking), float(incomplete)
        self.free_terminal_flow = bool(free_terminal_flow)

    def log_flow(self, states: Tensor) -> Tensor:
        """``(B,)`` :math:`\\log F(s)` (forward-looking: :math:`\\log \\tilde F(s) + \\log R(s)`)."""
        lf = call_policy(self.logf, self._obs(states)).reshape(-1)
        if not self.forward_looking:
            return lf
        if self.free_terminal_flow:
            return lf + self._state_log_reward(states)
        # the boundary F~(x) P_F(stop|x) = 1 pins log F~(x) = 0 where stop is the only action: no reward
        # is needed for it, so incomplete trajectories that reach such x still see the boundary
        only_stop = ~self.env.forward_mask(states)[:, :-1].any(1)
        return torch.where(only_stop, lf.new_zeros(()), lf) + self._state_log_reward(states)

    def _state_log_reward(self, states: Tensor) -> Tensor:
        lr = self.env.log_reward(states, self._dtype)
        if not bool(lr.isfinite().all()):
            raise ValueError(
                f"forward_looking needs env.log_reward finite on every state (an energy of partial objects); "
                f"{self.env!r} gives -inf/nan on some intermediate states. Use forward_looking=False"
            )
        return lr

    @property
    def log_z(self) -> Tensor:
        """:math:`\\log F(s_0)`."""
        return self.log_flow(self.env.s0.to(self._device)[None])[0]

    def _training_view(self, tr: Trajectories) -> Trajectories:
        """``tr`` without its stop actions under ``free_terminal_flow``, else unchanged."""
        if not self.free_terminal_flow:
            return tr
        return self.truncate(tr, (tr.lengths - tr.is_complete.long()).clamp(min=1))

    def _phi(self, tr: Trajectories) -> Tensor:
        """``(T + 1, B)``: :math:`\\log F(s_k)` for ``k < length``, :math:`\\log R(x)` at ``k = length``
        of a complete trajectory (an incomplete one ends at :math:`\\log F` of its last state)."""
        T1, B, _ = tr.states.shape
        lf = self.log_flow(tr.states.reshape(T1 * B, -1)).reshape(T1, B)
        k = torch.arange(T1, device=lf.device)[:, None]
        sink = (k == tr.lengths[None]) & tr.is_complete[None]
        return torch.where(sink, tr.log_reward[None], lf)

    def _on_policy(self, tr: Trajectories, generator: torch.Generator | None) -> Trajectories:
        """Cut a fraction ``incomplete`` of the batch at a uniform random move before its stop."""
        if self.incomplete == 0.0:
            return tr
        g_dev = generator.device if generator is not None else tr.lengths.device
        u = torch.rand(2, tr.lengths.numel(), generator=generator, device=g_dev).to(tr.lengths.device)
        moves = tr.lengths - 1
        keep = 1 + (u[0] * moves).long().clamp(max=(moves - 1).clamp(min=0))  # uniform in [1, moves]
        cut = (u[1] < self.incomplete) & (moves > 0)
        if self.incomplete == 1.0:
            self._check_forced_stops(tr)
        return self.truncate(tr, torch.where(cut, keep, tr.lengths))

    def _check_forced_stops(self, tr: Trajectories) -> None:
        """With every trajectory cut, only stops that are the sole allowed action (F~ = 1 built in) are
        learned; a state that may stop *or* move would keep an untrained stop probability."""
        m = self.env.forward_mask(tr.states[:-1][tr.valid])
        if bool((m[:, -1] & m[:, :-1].any(1)).any()):
            raise ValueError(
                f"incomplete=1 leaves untrained the stop probability of states that may stop or move "
                f"({self.env!r} has them); use incomplete < 1 so that some trajectories keep their stop"
            )
