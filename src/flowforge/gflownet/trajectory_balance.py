r"""Trajectory balance, TB (Malkin et al. 2022, "Trajectory balance: improved credit assignment in GFlowNets").

:math:`\big(\log Z + \sum_t \log P_F(s_{t+1}|s_t) - \log R(x) - \sum_t \log P_B(s_t|s_{t+1})\big)^2`.

**log Z learning rate.** torchgfn trains :math:`\log Z` with lr 1e-1 and the policy with 1e-3. The
flowforge trainer has one learning rate, so :class:`TrajectoryBalance` stores a raw parameter and uses
:math:`\log Z = s \cdot \text{raw}` with ``log_z_lr_scale`` :math:`s = 100` by default: under Adam the
effective step on :math:`\log Z` is then :math:`s` times the policy's (1e-1 at lr 1e-3).

Example:
    >>> import torch
    >>> from flowforge.gflownet import HyperGrid
    >>> tb = TrajectoryBalance(HyperGrid(ndim=2, height=4), width=16, depth=1, init_log_z=1.0)
    >>> tr = tb.sample(5, generator=torch.Generator().manual_seed(0))
    >>> tb.residuals(tr).shape, tb.loss(tr).ndim, round(float(tb.log_z), 4), tb.key
    (torch.Size([5]), 0, 1.0, 'tb')
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowforge.core.contracts import Environment
from flowforge.gflownet.base import GFlowNet
from flowforge.gflownet.trajectories import Trajectories, require_complete

__all__ = ["TrajectoryBalance"]


class TrajectoryBalance(GFlowNet):
    r"""Trajectory balance (Malkin et al. 2022):
    :math:`\mathcal L = \mathbb E_\tau\big(\log Z + \sum_t \log P_F - \log R(x) - \sum_t \log P_B\big)^2`.

    Args:
        env, pf, pb, uniform_pb, width, depth, epsilon, temperature: see :class:`GFlowNet`.
        init_log_z: initial :math:`\log Z`.
        log_z_lr_scale: :math:`\log Z = s\cdot\text{raw}`; under Adam :math:`\log Z` moves :math:`s`
            times faster than the policy (default 100: lr 1e-3 -> 1e-1 as in torchgfn).
    """

    key: ClassVar[str] = "tb"
    options: ClassVar[tuple[str, ...]] = ("log_z_lr_scale",)

    def __init__(
        self,
        env: Environment,
        pf: nn.Module | None = None,
        pb: nn.Module | None = None,
        *,
        init_log_z: float = 0.0,
        log_z_lr_scale: float = 100.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(env, pf, pb, **kwargs)
        self.log_z_lr_scale = float(log_z_lr_scale)
        self.log_z_raw = nn.Parameter(torch.tensor(init_log_z / self.log_z_lr_scale))

    @property
    def log_z(self) -> Tensor:
        return self.log_z_raw * self.log_z_lr_scale

    def residuals(self, tr: Trajectories) -> Tensor:
        """``(B,)`` :math:`\\log Z + \\sum \\log P_F - \\log R - \\sum \\log P_B`."""
        require_complete(tr, "trajectory balance")
        return self.log_z + tr.log_pf.sum(0) - tr.log_pb.sum(0) - tr.log_reward

    def objective(self, tr: Trajectories) -> Tensor:
        return self.residuals(tr).pow(2).mean()
