r"""Detailed balance, DB (Bengio et al. 2023, "GFlowNet Foundations"; the flow-matching view of Bengio
et al. 2021), with an explicit stop edge; forward-looking FL-DB (Pan et al. 2023) with ``forward_looking``.

Per transition :math:`\big(\log F(s) + \log P_F(s'|s) - \log F(s') - \log P_B(s|s')\big)^2`, with
:math:`\log F` of the sink replaced by :math:`\log R(x)` on the stop transition.

Example:
    >>> import torch
    >>> from flowforge.gflownet import HyperGrid
    >>> db = DetailedBalance(HyperGrid(2, 4), width=8, depth=1)
    >>> tr = db.sample(4, generator=torch.Generator().manual_seed(0))
    >>> db.residuals(tr).shape == tr.actions.shape, db.loss(tr).ndim, db.key
    (True, 0, 'db')
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from flowforge.gflownet.state_flow import StateFlowGFlowNet
from flowforge.gflownet.trajectories import Trajectories

__all__ = ["DetailedBalance"]


class DetailedBalance(StateFlowGFlowNet):
    r"""Detailed balance with an explicit stop edge (Bengio et al. 2023, GFlowNet Foundations):
    per transition :math:`\big(\log F(s) + \log P_F(s'|s) - \log F(s') - \log P_B(s|s')\big)^2` and per
    stop :math:`\big(\log F(x) + \log P_F(\text{stop}|x) - \log R(x)\big)^2`, averaged over transitions.

    With ``forward_looking=True`` this is FL-DB (Pan et al. 2023): :math:`\log F = \log\tilde F + \log R(s)`,
    i.e. per move :math:`\big(\log\tilde F(s) + \log P_F - \log\tilde F(s') - \log P_B + \mathcal E(s')
    - \mathcal E(s)\big)^2` and, per stop, :math:`\big(\log\tilde F(x) + \log P_F(\text{stop}|x)\big)^2`.

    Args: as :class:`GFlowNet`, plus ``logf`` (state-flow net ``(B, obs_dim) -> (B, 1)``),
    ``forward_looking`` and ``incomplete`` (fraction of on-policy trajectories cut before their stop).

    Example:
        >>> from flowforge.gflownet import HyperGrid
        >>> fl = DetailedBalance(HyperGrid(2, 4), width=8, depth=1, forward_looking=True, incomplete=0.5)
        >>> tr = fl.sample(6, generator=torch.Generator().manual_seed(0))
        >>> cut = fl.truncate(tr, (tr.lengths - 1).clamp(min=1))  # drop the stop actions
        >>> bool(cut.is_complete.all()), fl.loss(cut).ndim
        (False, 0)
    """

    key: ClassVar[str] = "db"
    options: ClassVar[tuple[str, ...]] = ("incomplete",)

    def residuals(self, tr: Trajectories) -> Tensor:
        """``(T, B)`` residuals (0 on padding)."""
        phi = self._phi(tr)
        r = phi[:-1] + tr.log_pf - tr.log_pb - phi[1:]
        return torch.where(tr.valid, r, r.new_zeros(()))

    def objective(self, tr: Trajectories) -> Tensor:
        tr = self._training_view(tr)
        return self.residuals(tr).pow(2).sum() / tr.valid.sum()
