r"""The Ising model as a GFlowNet environment (torchgfn's ``DiscreteEBM`` with ``IsingModel``; Zhang et al. 2022).

Example:
    >>> env = Ising(side=2, J=1.0, beta=0.5)
    >>> env.n_states, env.n_modes
    (81, 2)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowforge.gflownet.envs.slots import SlotFilling

__all__ = ["Ising"]


class Ising(SlotFilling):
    r"""Ising model on a ``side x side`` lattice as a GFlowNet environment: torchgfn's ``DiscreteEBM``
    with its ``IsingModel`` energy (Zhang et al. 2022, "Generative Flow Networks for Discrete
    Probabilistic Modeling", ICML; EB-GFN).

    :math:`D = \text{side}^2` sites; a state is ``(D,)`` in :math:`\{-1, 0, 1\}` with ``-1`` = unset,
    :math:`s_0` all unset. Forward action ``i`` sets site ``i`` to 0 and action ``D + i`` sets it to
    1 (site ``i`` must be unset); stop (action ``2D``) only when every site is set. Backward action
    ``a`` unsets the site that ``a`` set (torchgfn's layout). With spins
    :math:`\sigma_i = 2 x_i - 1` and the lattice bonds :math:`\langle ij \rangle` (each unordered
    pair of nearest neighbours once; wrap-around bonds if ``periodic``),

    .. math::

        E(x) = -J \sum_{\langle ij \rangle} \sigma_i \sigma_j, \qquad \log R(x) = -\beta E(x),

    so for :math:`J > 0` (ferromagnetic) aligned spins have the highest reward and the two ground
    states (all 0, all 1) are the modes. Incomplete states have :math:`\log R = -\infty`.

    Conventions vs torchgfn: ``DiscreteEBM(alpha)`` with ``IsingModel(c * A)`` (``A`` the 0/1
    adjacency, :attr:`adjacency`) has :math:`\log R = \alpha\,\sigma^\top (cA) \sigma
    = 2 \alpha c \sum_{\langle ij\rangle} \sigma_i\sigma_j`, which is ``Ising(J=c, beta=2 * alpha)``
    here (the same factor 2 relates Zhang et al.'s :math:`x^\top J x` to this bond sum). The default
    ``beta = 0.44`` is near the critical coupling :math:`\ln(1+\sqrt2)/2` of the infinite lattice;
    torchgfn's ``train_ising.py`` default ``J=0.44`` corresponds to ``beta * J = 0.88``. On a
    ``side = 2`` torus the wrap-around bonds coincide with the open ones and are not doubled (as in
    torchgfn's ``make_J``). :meth:`obs` is one-hot per site (unset/0/1, ``obs_dim = 3D``) where
    torchgfn feeds the raw states; :meth:`true_distribution` lives on all :math:`3^D` states (0 on
    incomplete ones) where torchgfn's ``true_dist`` lists the :math:`2^D` terminal states.

    Args:
        side: lattice side (``>= 2``); :math:`3^{D}` states are enumerated (``side = 3``: 19683).
        J: coupling (``> 0`` ferromagnetic, ``< 0`` antiferromagnetic).
        beta: inverse temperature.
        periodic: wrap-around (torus) bonds.

    Attributes:
        adjacency: ``(D, D)`` float64 symmetric 0/1 bond matrix :math:`A` (sites row-major).
        n_bonds: number of bonds, :math:`\tfrac12 \sum_{ij} A_{ij}`.

    Example:
        >>> env = Ising(side=3, J=1.0, beta=0.44)
        >>> env.n_states, env.n_actions, env.n_bonds
        (19683, 19, 18)
        >>> up = torch.ones(1, 9, dtype=torch.long)
        >>> env.energy(up).tolist(), round(env.log_reward(up, torch.float64).item(), 2)
        ([-18.0], 7.92)
        >>> s = env.step(env.s0[None], torch.tensor([9 + 4]))     # site 4 := 1
        >>> s.tolist()[0], env.mode_id(torch.zeros(1, 9, dtype=torch.long)).tolist(), env.n_modes
        ([-1, -1, -1, -1, 1, -1, -1, -1, -1], [0], 2)
    """

    def __init__(self, side: int = 3, J: float = 1.0, beta: float = 0.44, periodic: bool = True) -> None:
        if not isinstance(side, int) or side < 2:
            raise ValueError(f"Ising needs an integer side >= 2 (a side x side lattice); got side={side!r}")
        if not (math.isfinite(J) and math.isfinite(beta)):
            raise ValueError(f"Ising needs finite J and beta; got J={J}, beta={beta}")
        self.side, self.J, self.beta, self.periodic = side, float(J), float(beta), bool(periodic)
        self.ndim = side * side
        self._init_slots(self.ndim, 2, value_major=True)
        idx = torch.arange(self.ndim).reshape(side, side)
        adj = torch.zeros(self.ndim, self.ndim, dtype=torch.float64)
        for shift in ((0, 1), (1, 0)):  # right and down neighbours
            nb = torch.roll(idx, shifts=(-shift[0], -shift[1]), dims=(0, 1))
            keep = torch.ones(side, side, dtype=torch.bool)
            if not self.periodic:  # drop the wrap-around bonds
                if shift[1]:
                    keep[:, -1] = False
                else:
                    keep[-1, :] = False
            adj[idx[keep], nb[keep]] = 1.0
        self.adjacency = ((adj + adj.T) > 0).to(torch.float64)  # symmetric 0/1, bonds deduplicated
        self.n_bonds = int(self.adjacency.sum()) // 2
        self._modes: Tensor | None = None

    def __repr__(self) -> str:
        return f"Ising(side={self.side}, J={self.J}, beta={self.beta}, periodic={self.periodic})"

    def energy(self, states: Tensor) -> Tensor:
        """``(B,)`` float64 :math:`E = -J \\sum_{\\langle ij\\rangle} \\sigma_i\\sigma_j` of complete states."""
        sigma = (2 * states - 1).to(torch.float64)
        adj = self.adjacency.to(states.device)
        return -0.5 * self.J * ((sigma @ adj) * sigma).sum(1)

    def log_reward(self, states: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``(B,)`` :math:`-\\beta E(x)` for complete states, ``-inf`` otherwise."""
        dtype = dtype or torch.get_default_dtype()
        lr = -self.beta * self.energy(states)
        full = (states >= 0).all(1)
        return torch.where(full, lr, torch.full_like(lr, float("-inf"))).to(dtype)

    @property
    def modes(self) -> Tensor:
        """``(M, D)`` the ground states (minimum energy): all 0 and all 1 for :math:`J > 0`; found by
        enumerating the :math:`2^D` configurations otherwise (``D <= 20``)."""
        if self._modes is None:
            if self.J > 0:
                self._modes = torch.stack([torch.zeros(self.ndim), torch.ones(self.ndim)]).long()
            else:
                if self.ndim > 20:
                    raise ValueError(
                        f"Ising.modes with J <= 0 enumerates 2^D configurations; D={self.ndim} > 20"
                    )
                grids = torch.meshgrid(*[torch.arange(2)] * self.ndim, indexing="ij")
                x = torch.stack([g.reshape(-1) for g in grids], dim=1)
                e = self.energy(x)
                self._modes = x[e <= e.min() + 1e-9]
        return self._modes

    def mode_id(self, states: Tensor) -> Tensor:
        """``(B,)`` index into :attr:`modes` of a ground state, else -1."""
        m = self.modes.to(states.device)
        eq = (states[:, None, :] == m[None]).all(-1)
        return torch.where(eq.any(1), eq.long().argmax(1), -1)

    @property
    def n_modes(self) -> int:
        """Number of ground states (2 for :math:`J > 0`)."""
        return int(self.modes.shape[0])
