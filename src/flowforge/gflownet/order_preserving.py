r"""Order-preserving trajectory balance, OP-TB.

Order-preserving GFlowNets (Chen & Mauch, ICLR 2024, "Order-Preserving GFlowNets",
arXiv 2310.00386) need no scalar reward, only an order on the terminal states. A TB-parameterised
GFlowNet implies, per trajectory, the reward

.. math::

    \log \hat R(\tau) = \log Z + \sum_t \log P_F(s_{t+1} \mid s_t) - \sum_t \log P_B(s_t \mid s_{t+1}),

and for a batch :math:`X = \{x_1, \dots, x_B\}` of terminal states the order-preserving loss is the
cross-entropy between the target :math:`P(x \mid X) = \mathbb 1[x \in \mathrm{Pareto}(X)] /
|\mathrm{Pareto}(X)|` and the model's :math:`\hat P(x \mid X) = \mathrm{softmax}_X(\log \hat R)`
(the paper's :math:`\mathcal L_{OP}` with the Pareto order on the batch; the authors' code:
``multi/grid_cond_gfn.py::ordering_loss_ce``).

Example:
    >>> import torch
    >>> from flowforge.gflownet import MultiObjectiveHyperGrid
    >>> op = OrderPreservingTB(MultiObjectiveHyperGrid(ndim=2, height=4), width=8, depth=1)
    >>> op.key, op.options, op.log_z_raw.requires_grad
    ('optb', ('kl_weight',), False)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowforge.gflownet.envs.multiobjective import pareto_front
from flowforge.gflownet.trajectories import Trajectories
from flowforge.gflownet.trajectory_balance import TrajectoryBalance

__all__ = ["OrderPreservingTB"]


class OrderPreservingTB(TrajectoryBalance):
    r"""Order-preserving trajectory balance, OP-TB (Chen & Mauch, ICLR 2024, arXiv 2310.00386).

    For a batch of trajectories ending in :math:`X = \{x_b\}`, with
    :math:`\log \hat R_b = \log Z + \sum_t \log P_F - \sum_t \log P_B` along trajectory :math:`b`,

    .. math::

        \mathcal L = -\sum_b P(x_b \mid X) \log \mathrm{softmax}(\log \hat R)_b
        \;+\; \lambda_{KL} \, \overline{KL}\big(\mathcal U(\text{parents}) \,\|\, P_B\big),

    :math:`P(x_b \mid X) = \mathbb 1[x_b \in \mathrm{Pareto}(X)] / |\mathrm{Pareto}(X)|` from
    ``env.objectives`` (:func:`pareto_front`, higher is better). The second term is the paper's
    optional regulariser of a learned :math:`P_B` (``KLTrajectoryBalance`` in the authors' NAS code,
    ``KLDivLoss(log P_B, uniform)`` averaged over the visited non-initial states); it is 0 for the
    default uniform :math:`P_B`, as in the authors' multi-objective hypergrid. No TB residual enters:
    for TB, :math:`\hat R` is defined through the trajectory itself, so the cross-entropy shapes
    :math:`P_F` directly, and the sampler's terminal distribution is
    :math:`p(x) = \mathbb E_{P_B(\tau|x)}[\hat R(\tau)] / Z`.

    :math:`\log Z` cancels in the softmax (the loss is shift-invariant, its gradient is 0 in exact
    arithmetic), so it is kept only for the paper's definition of :math:`\hat R`, frozen: it would
    otherwise receive nothing but rounding noise, which Adam rescales into full-size steps.
    The env's scalar ``log_reward`` is not used by the loss.

    Args:
        env: an environment with ``objectives(states) -> (B, K)`` (e.g. :class:`MultiObjectiveHyperGrid`).
        pf, pb, width, depth, epsilon, temperature, replay_buffer, replay_ratio: see
            :class:`~flowforge.gflownet.GFlowNet`; ``uniform_pb`` defaults to True unless ``pb`` is given.
            With replay, on-policy and replayed trajectories form two batches, each with its own Pareto set.
        kl_weight: :math:`\lambda_{KL} \ge 0` (the paper uses 0.1 with a learned :math:`P_B`; default 0).

    Example:
        >>> from flowforge.gflownet import MultiObjectiveHyperGrid
        >>> env = MultiObjectiveHyperGrid(ndim=2, height=4)
        >>> op = OrderPreservingTB(env, width=16, depth=1)
        >>> tr = op.sample(8, generator=torch.Generator().manual_seed(0))
        >>> op.pareto_target(tr).sum().item(), op.loss(tr).ndim, op.pb is None
        (1.0, 0, True)
    """

    key: ClassVar[str] = "optb"
    options: ClassVar[tuple[str, ...]] = ("kl_weight",)
    local_search_mh: ClassVar[bool] = False  # the target is a learned reward, not R/Z

    def __init__(
        self,
        env: Any,
        pf: nn.Module | None = None,
        pb: nn.Module | None = None,
        *,
        kl_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if not callable(getattr(env, "objectives", None)):
            raise ValueError(
                f"OrderPreservingTB needs an environment with objectives(states) -> (B, K); {env!r} has none "
                "(use MultiObjectiveHyperGrid, or add an objectives method)"
            )
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0; got {kl_weight}")
        if pb is None and "uniform_pb" not in kwargs:
            kwargs["uniform_pb"] = True
        super().__init__(env, pf, pb, **kwargs)
        self.kl_weight = float(kl_weight)
        self.log_z_raw.requires_grad_(False)

    def predicted_log_reward(self, tr: Trajectories) -> Tensor:
        """``(B,)`` :math:`\\log \\hat R = \\log Z + \\sum \\log P_F - \\sum \\log P_B` per trajectory."""
        return self.log_z.detach() + tr.log_pf.sum(0) - tr.log_pb.sum(0)

    def pareto_target(self, tr: Trajectories) -> Tensor:
        """``(B,)`` :math:`P(x_b \\mid X) = \\mathbb 1[x_b \\in \\mathrm{Pareto}(X)] / |\\mathrm{Pareto}(X)|`."""
        front = pareto_front(self.env.objectives(tr.terminal))
        t = front.to(tr.log_pf.dtype)
        return t / t.sum()

    def order_loss(self, tr: Trajectories) -> Tensor:
        """:math:`-\\sum_b P(x_b|X) \\log \\mathrm{softmax}(\\log \\hat R)_b` (scalar)."""
        return -(self.pareto_target(tr) * torch.log_softmax(self.predicted_log_reward(tr), dim=0)).sum()

    def backward_kl(self, tr: Trajectories) -> Tensor:
        """Mean over visited non-initial states of :math:`KL(\\mathcal U(\\text{parents}) \\| P_B)` (0 if uniform)."""
        if self.pb is None:
            return tr.log_pf.new_zeros(())
        move = tr.valid & (tr.actions != self.env.n_actions - 1)
        states = tr.states[1:][move]
        if states.shape[0] == 0:
            return tr.log_pf.new_zeros(())
        mask = self.env.backward_mask(states)
        log_pb = self.backward_log_probs(states)
        log_u = -mask.sum(1, keepdim=True).to(log_pb.dtype).log()
        kl = torch.where(mask, log_u.exp() * (log_u - log_pb), log_pb.new_zeros(()))
        return kl.sum(1).mean()

    def objective(self, tr: Trajectories) -> Tensor:
        complete = getattr(tr, "complete", None)
        if complete is not None and not bool(complete.all()):
            raise ValueError(
                "OrderPreservingTB needs complete trajectories (ending with stop): the order is defined "
                "on terminal states only; train on sample(...) batches, not truncated ones"
            )
        loss = self.order_loss(tr)
        if self.kl_weight > 0:
            loss = loss + self.kl_weight * self.backward_kl(tr)
        return loss
