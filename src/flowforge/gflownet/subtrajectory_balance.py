r"""Sub-trajectory balance, SubTB (Madan et al. 2023, "Learning GFlowNets from partial episodes for
improved convergence and stability"), "geometric within" weighting (torchgfn's default); FL-SubTB
(Pan et al. 2023) with ``forward_looking``.

Example:
    >>> import torch
    >>> from flowforge.gflownet import HyperGrid
    >>> st = SubTrajectoryBalance(HyperGrid(2, 4), width=8, depth=1, lamda=0.9)
    >>> tr = st.sample(4, generator=torch.Generator().manual_seed(0))
    >>> r, mask = st.residuals(tr)
    >>> r.shape[:2] == mask.shape[:2] == (tr.actions.shape[0] + 1,) * 2, st.loss(tr).ndim, st.key
    (True, 0, 'subtb')
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowforge.core.contracts import Environment
from flowforge.gflownet.state_flow import StateFlowGFlowNet
from flowforge.gflownet.trajectories import Trajectories

__all__ = ["SubTrajectoryBalance"]


class SubTrajectoryBalance(StateFlowGFlowNet):
    r"""Sub-trajectory balance (Madan et al. 2023), "geometric within" weighting.

    For positions :math:`0 \le i < j \le L` of a trajectory with :math:`L` actions (position
    :math:`L` is the sink, :math:`\Phi_L = \log R(x)`; else :math:`\Phi_k = \log F(s_k)`),

    .. math::

        r_{ij} = \Phi_i + \sum_{k=i}^{j-1} (\log P_F(a_k) - \log P_B(a_k)) - \Phi_j, \qquad
        \mathcal L = \frac1B \sum_b \frac{\sum_{i<j} \lambda^{j-i} r_{ij}^2}{\sum_{i<j} \lambda^{j-i}}.

    ``forward_looking=True`` gives FL-SubTB (Pan et al. 2023): :math:`\Phi_k = \log\tilde F(s_k) + \log R(s_k)`,
    still :math:`\Phi_L = \log R(x)` at the sink of a complete trajectory.

    Args: as :class:`DetailedBalance`, plus ``lamda`` :math:`\lambda` (default 0.9).
    """

    key: ClassVar[str] = "subtb"
    options: ClassVar[tuple[str, ...]] = ("lamda", "incomplete")

    def __init__(
        self,
        env: Environment,
        pf: nn.Module | None = None,
        pb: nn.Module | None = None,
        *,
        lamda: float = 0.9,
        **kwargs: Any,
    ) -> None:
        if not lamda > 0:
            raise ValueError(f"lamda weights sub-trajectories by lamda^length and must be > 0; got {lamda}")
        super().__init__(env, pf, pb, **kwargs)
        self.lamda = lamda

    def residuals(self, tr: Trajectories) -> tuple[Tensor, Tensor]:
        """``(T+1, T+1, B)`` residuals :math:`r_{ij}` and the bool mask of pairs ``i < j <= L``."""
        phi = self._phi(tr)
        c = torch.cat([phi.new_zeros(1, phi.shape[1]), (tr.log_pf - tr.log_pb).cumsum(0)])  # (T+1, B)
        r = (phi - c)[:, None] - (phi - c)[None, :]  # r[i, j] = phi_i - c_i - phi_j + c_j
        k = torch.arange(phi.shape[0], device=phi.device)
        mask = (k[:, None] < k[None, :])[..., None] & (k[None, :, None] <= tr.lengths[None, None])
        return r, mask

    def objective(self, tr: Trajectories) -> Tensor:
        r, mask = self.residuals(self._training_view(tr))
        k = torch.arange(r.shape[0], device=r.device, dtype=r.dtype)
        w = (self.lamda ** (k[None, :] - k[:, None]).clamp(min=0))[..., None] * mask
        per_traj = (w * r.pow(2)).sum((0, 1)) / w.sum((0, 1))
        return per_traj.mean()
