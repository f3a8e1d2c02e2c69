r"""Edge flow matching, the GFlowNet :class:`FlowMatching` objective (Bengio et al. 2021, "Flow Network
based Generative Models for Non-Iterative Diverse Candidate Generation"; not the continuous-time flow
matching of :mod:`flowforge.continuous`).

Example:
    >>> import torch
    >>> from flowforge.gflownet import HyperGrid
    >>> fm = FlowMatching(HyperGrid(2, 4), width=8, depth=1)
    >>> fm.key, fm.pb is None, fm.log_z.ndim
    ('fm', True, 0)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowforge.core.contracts import Environment
from flowforge.gflownet.base import GFlowNet
from flowforge.gflownet.trajectories import Trajectories

__all__ = ["FlowMatching"]


class FlowMatching(GFlowNet):
    r"""Flow matching (Bengio et al. 2021, "Flow Network based Generative Models for Non-Iterative
    Diverse Candidate Generation", NeurIPS), with the terminal reward as the stop edge's flow.

    The ``pf`` network's first ``n_actions - 1`` outputs are log edge flows
    :math:`\log F(s \to s')` (its stop output is unused); the stop edge has flow :math:`R(s)` where
    stopping is allowed. For each visited non-initial state :math:`s` the residual is

    .. math::

        \delta(s) = \log \sum_{s' \to s} F(s' \to s)
        - \log\Big(\sum_{s \to s''} F(s \to s'') + R(s)\,\mathbb 1[\text{stop allowed at } s]\Big),

    computed with ``logsumexp``; parents :math:`s'` are enumerated with ``env.backward_mask`` and
    ``env.backward_step`` (backward action ``a`` undoes forward action ``a``). The loss is the mean
    of :math:`\delta^2` over visited non-initial states. The forward policy is
    :math:`P_F(s''|s) \propto F(s \to s'')`, :math:`P_F(\text{stop}|s) \propto R(s)`, and
    :math:`\log Z` is the out-flow of :math:`s_0`. No backward policy is needed (``uniform_pb`` is
    the default; it only fills ``Trajectories.log_pb``).

    Args: as :class:`GFlowNet`.

    Example:
        >>> from flowforge.gflownet import HyperGrid
        >>> fm = FlowMatching(HyperGrid(2, 4), width=8, depth=1)
        >>> tr = fm.sample(4, generator=torch.Generator().manual_seed(0))
        >>> fm.residuals(tr).ndim, fm.loss(tr).ndim
        (1, 0)
    """

    key: ClassVar[str] = "fm"
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, env: Environment, pf: nn.Module | None = None, pb: nn.Module | None = None, **kwargs: Any
    ) -> None:
        if pb is None and "uniform_pb" not in kwargs:
            kwargs["uniform_pb"] = True
        super().__init__(env, pf, pb, **kwargs)

    def forward_logits(self, states: Tensor, mask: Tensor) -> Tensor:
        """``(B, n_actions)``: log edge flows for moves, :math:`\\log R(s)` for stop (``-inf`` if masked)."""
        out = super().forward_logits(states, mask)
        stop = mask[:, -1]
        lr = self.env.log_reward(states, out.dtype)
        lr = torch.where(stop, lr, torch.full_like(lr, float("-inf")))
        return torch.cat([out[:, :-1], lr[:, None]], dim=1)

    def log_outflow(self, states: Tensor) -> Tensor:
        """``(B,)`` :math:`\\log(\\sum_{s''} F(s \\to s'') + R(s)\\mathbb 1[\\text{stop}])`."""
        mask = self.env.forward_mask(states)
        logits = self.forward_logits(states, mask).masked_fill(~mask, float("-inf"))
        return torch.logsumexp(logits, dim=1)

    def log_inflow(self, states: Tensor) -> Tensor:
        """``(B,)`` :math:`\\log \\sum_{s' \\to s} F(s' \\to s)` (``-inf`` at :math:`s_0`)."""
        bmask = self.env.backward_mask(states)
        rows, acts = bmask.nonzero(as_tuple=True)
        parents = self.env.backward_step(states[rows], acts)
        pmask = self.env.forward_mask(parents)
        edge = self.forward_logits(parents, pmask).gather(1, acts[:, None]).squeeze(1)
        table = torch.full(bmask.shape, float("-inf"), dtype=edge.dtype, device=edge.device)
        table = table.index_put((rows, acts), edge)
        return torch.logsumexp(table, dim=1)

    @property
    def log_z(self) -> Tensor:
        """Out-flow of :math:`s_0`."""
        return self.log_outflow(self.env.s0.to(self._device)[None])[0]

    def residuals(self, tr: Trajectories) -> Tensor:
        """``(M,)`` :math:`\\delta(s)` for the ``M`` non-initial states visited by the batch."""
        move = tr.valid & (tr.actions != self.env.n_actions - 1)
        states = tr.states[1:][move]
        return self.log_inflow(states) - self.log_outflow(states)

    def objective(self, tr: Trajectories) -> Tensor:
        r = self.residuals(tr)
        if r.numel() == 0:  # every trajectory stopped at s0: nothing to match
            return self.log_z * 0.0
        return r.pow(2).mean()
