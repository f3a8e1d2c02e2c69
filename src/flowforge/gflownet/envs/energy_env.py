r"""An environment whose reward is a (learnable) energy module: :math:`\log R(x) = -E_\phi(x)`.

The seam between a GFlowNet and an energy that changes during training (EB-GFN, Zhang et al. 2022):
:class:`EnergyEnvironment` wraps any enumerable or plain environment, keeps its states, actions and masks,
and replaces its reward by the *current* energy, evaluated without gradients on every call (nothing is
cached, so a GFlowNet step always sees the energy as it is now, and the GFlowNet's loss never reaches
:math:`\phi`).

Example:
    >>> import torch
    >>> from flowforge.gflownet import Ising, IsingEnergy
    >>> env = EnergyEnvironment(Ising(side=2), IsingEnergy(side=2, init_std=0.0))
    >>> x = torch.tensor([[0, 1, 1, 0], [-1, 1, 1, 0]])
    >>> env.log_reward(x, torch.float64).tolist(), env.n_actions, env.evaluations
    ([0.0, -inf], 9, 1)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EnergyEnvironment"]

#: what the wrapper takes from the wrapped environment: states, actions, masks, encodings, enumeration
DELEGATED = frozenset(
    {
        "s0",
        "n_actions",
        "obs_dim",
        "max_length",
        "ndim",
        "n_states",
        "stop_action",
        "obs",
        "forward_mask",
        "backward_mask",
        "step",
        "backward_step",
        "step_delta",
        "forward_forbidden",
        "all_states",
        "state_index",
        "level",
        "side",
        "periodic",
    }
)


class EnergyEnvironment:
    r"""``env`` with the reward :math:`\log R(x) = -E_\phi(x)` of an energy module (complete states only).

    Everything about states and actions (``s0``, ``n_actions``, masks, ``step``, ``obs``, the enumeration
    and the rollout hooks ``step_delta`` / ``forward_forbidden``) is the wrapped environment's; its reward
    and everything derived from it (``log_reward_fast``, ``true_distribution``, ``modes``, ``J``...) is
    not passed through: :meth:`true_distribution` and :attr:`log_partition` here are those of the
    current energy's Boltzmann distribution :math:`e^{-E_\phi}/Z_\phi`. The wrapped environment stays
    reachable as :attr:`base`.

    Args:
        env: a discrete environment whose complete states (where ``forward_mask`` allows stop) the energy
            accepts, e.g. :class:`~flowforge.gflownet.Ising` with an
            :class:`~flowforge.gflownet.IsingEnergy`.
        energy: an ``nn.Module`` ``(B, ndim) -> (B,)`` :math:`E_\phi(x)`.

    Attributes:
        evaluations: number of configurations the energy has been evaluated on through :meth:`log_reward`
            (a cost counter for equal-budget comparisons; not saved in checkpoints).
    """

    def __init__(self, env: Any, energy: nn.Module) -> None:
        if isinstance(env, EnergyEnvironment):
            raise TypeError("env is already an EnergyEnvironment; wrap the plain environment (env.base)")
        if not callable(energy):
            raise TypeError(f"energy must be a module (B, ndim) -> (B,); got {type(energy).__name__}")
        self.base = env
        self.energy = energy
        self.evaluations = 0

    def __getattr__(self, name: str) -> Any:
        if name in DELEGATED and "base" in self.__dict__:
            return getattr(self.__dict__["base"], name)
        raise AttributeError(
            f"EnergyEnvironment has no {name!r}: only states, actions, masks and the enumeration come from the "
            f"wrapped environment, the reward comes from the energy; use .base.{name} for the wrapped one's"
        )

    def __repr__(self) -> str:
        return f"EnergyEnvironment({self.base!r}, {type(self.energy).__name__})"

    def log_reward(self, states: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``(B,)`` :math:`-E_\\phi(x)` (no gradient) for complete states, ``-inf`` otherwise."""
        dtype = dtype or torch.get_default_dtype()
        full = self.base.forward_mask(states)[:, -1]
        out = torch.full((states.shape[0],), float("-inf"), dtype=dtype, device=states.device)
        n = int(full.sum())
        if n:
            with torch.no_grad():
                e = self.energy(states[full])
            if e.shape != (n,):
                raise ValueError(
                    f"the energy must return one value per configuration, shape ({n},); got {tuple(e.shape)}"
                )
            self.evaluations += n
            out[full] = -e.to(dtype=dtype, device=states.device)
        return out

    def true_distribution(self) -> Tensor:
        """``(n_states,)`` float64 :math:`e^{-E_\\phi(x)}/Z_\\phi` on complete states, 0 on incomplete ones."""
        return torch.softmax(self.log_reward(self.base.all_states(), torch.float64), dim=0)

    @property
    def log_partition(self) -> float:
        """:math:`\\log Z_\\phi` over the complete states (float64, by enumeration)."""
        return float(torch.logsumexp(self.log_reward(self.base.all_states(), torch.float64), dim=0))
