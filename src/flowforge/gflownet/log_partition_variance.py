r"""Log-partition variance, "ZVar" (Zhang et al. 2023, "Robust Scheduling with GFlowNets", ICLR;
torchgfn's ``LogPartitionVarianceGFlowNet``): TB without a learned :math:`\log Z`.

Example:
    >>> import torch
    >>> from flowforge.gflownet import HyperGrid
    >>> zv = LogPartitionVariance(HyperGrid(2, 4), width=8, depth=1)
    >>> zv.key, bool(zv.log_z.isnan())  # no batch seen yet
    ('zvar', True)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowforge.core.contracts import Environment
from flowforge.gflownet.base import GFlowNet
from flowforge.gflownet.trajectories import Trajectories, require_complete

__all__ = ["LogPartitionVariance"]


class LogPartitionVariance(GFlowNet):
    r"""Log-partition variance loss, "ZVar" (Zhang et al. 2023, "Robust Scheduling with GFlowNets",
    ICLR; torchgfn's ``LogPartitionVarianceGFlowNet``).

    Each trajectory gives an estimate :math:`\zeta(\tau) = \log R(x) + \sum_t \log P_B - \sum_t \log P_F`
    of :math:`\log Z` (exact for every :math:`\tau` at the optimum), and

    .. math::

        \mathcal L = \frac1B \sum_b \big(\zeta_b - \bar\zeta\big)^2, \qquad
        \bar\zeta = \frac1B \sum_b \zeta_b,

    so no :math:`\log Z` parameter is learned. :attr:`log_z` reports an exponential moving average
    (``log_z_momentum``) of the batch means seen by :meth:`objective` in training mode.

    Args: as :class:`GFlowNet`, plus ``log_z_momentum`` (default 0.9).

    Example:
        >>> from flowforge.gflownet import HyperGrid
        >>> zv = LogPartitionVariance(HyperGrid(2, 4), width=8, depth=1)
        >>> tr = zv.sample(6, generator=torch.Generator().manual_seed(0))
        >>> zv.residuals(tr).shape, bool(zv.loss(tr) >= 0)
        (torch.Size([6]), True)
    """

    key: ClassVar[str] = "zvar"
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        env: Environment,
        pf: nn.Module | None = None,
        pb: nn.Module | None = None,
        *,
        log_z_momentum: float = 0.9,
        **kwargs: Any,
    ) -> None:
        super().__init__(env, pf, pb, **kwargs)
        self.log_z_momentum = float(log_z_momentum)
        self.register_buffer("log_z_estimate", torch.tensor(float("nan")))

    @property
    def log_z(self) -> Tensor:
        return self.log_z_estimate

    def residuals(self, tr: Trajectories) -> Tensor:
        """``(B,)`` :math:`\\zeta = \\log R + \\sum \\log P_B - \\sum \\log P_F`."""
        require_complete(tr, "the log-partition variance loss")
        return tr.log_reward + tr.log_pb.sum(0) - tr.log_pf.sum(0)

    def objective(self, tr: Trajectories) -> Tensor:
        z = self.residuals(tr)
        if self.training:
            with torch.no_grad():
                m = z.mean().to(self.log_z_estimate.dtype)
                old = self.log_z_estimate
                new = m if bool(old.isnan()) else self.log_z_momentum * old + (1 - self.log_z_momentum) * m
                self.log_z_estimate.copy_(new)
        return (z - z.mean()).pow(2).mean()
