r"""Learnable energies of binary configurations, for energy-based GFlowNets (:class:`~flowforge.gflownet.EBGFN`).

An energy maps complete states ``(B, D)`` with values in :math:`\{0, 1\}` to ``(B,)``
:math:`E_\phi(x)`; the model is :math:`p_\phi(x) \propto e^{-E_\phi(x)}` and the GFlowNet trained on it
sees :math:`\log R(x) = -E_\phi(x)` (:class:`~flowforge.gflownet.EnergyEnvironment`).

- :class:`IsingEnergy`: :math:`E_J(x) = -\sigma^\top J \sigma - h^\top\sigma` with spins
  :math:`\sigma = 2x - 1` and a learnable symmetric, zero-diagonal coupling matrix :math:`J` (dense, as in
  Grathwohl et al. 2021's ``lattice_ising_2d`` model that Zhang et al. 2022 use, or restricted to the
  lattice bonds).
- :class:`MLPEnergy`: a generic MLP on :math:`\sigma`.
- :func:`ising_coupling`: the :math:`J` of an :class:`~flowforge.gflownet.Ising` environment in this
  convention, :math:`J = \tfrac{\beta J_\text{bond}}{2} A`, so that :math:`-E_J = ` ``env.log_reward``.

Example:
    >>> import torch
    >>> from flowforge.gflownet import Ising
    >>> env = Ising(side=3, J=0.2, beta=2.0)           # Zhang et al.'s J = 0.2 A
    >>> e = IsingEnergy.from_ising(env)
    >>> x = torch.ones(2, 9, dtype=torch.long)
    >>> torch.allclose(-e(x).double(), env.log_reward(x, torch.float64)), round(float(e.J.detach().max()), 6)
    (True, 0.2)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.choices import unknown_choice
from flowforge.nn.policy import PolicyMLP

__all__ = ["IsingEnergy", "MLPEnergy", "check_binary", "ising_coupling", "lattice_adjacency"]

COUPLINGS = ("dense", "lattice")


def check_binary(x: Tensor, dim: int, what: str = "data") -> Tensor:
    """``x`` as a ``(B, dim)`` long tensor, after checking its shape and that every value is 0 or 1.

    Example:
        >>> check_binary(torch.tensor([[0.0, 1.0]]), 2).tolist()
        [[0, 1]]
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a (B, {dim}) tensor of 0/1 values; got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != dim or x.shape[0] == 0:
        raise ValueError(
            f"{what} must be a non-empty (B, {dim}) tensor of complete configurations with values in {{0, 1}}; "
            f"got shape {tuple(x.shape)} (flatten side x side lattices row-major to side * side sites)"
        )
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} holds NaN or inf; it must hold only 0 and 1")
    if not bool(((x == 0) | (x == 1)).all()):
        bad = x[(x != 0) & (x != 1)][:3].tolist()
        raise ValueError(
            f"{what} must hold only 0 and 1 (spin -1 is written 0, spin +1 is written 1); found {bad}. "
            "Convert spins s in {-1, 1} with x = (s + 1) // 2"
        )
    return x.long()


def lattice_adjacency(side: int, periodic: bool = True) -> Tensor:
    """``(side^2, side^2)`` float64 symmetric 0/1 nearest-neighbour adjacency, sites row-major (the
    :class:`~flowforge.gflownet.Ising` environment's ``adjacency``; a bond is not doubled on a side-2 torus).

    Example:
        >>> lattice_adjacency(3).sum(1).tolist()[:3]
        [4.0, 4.0, 4.0]
    """
    if not isinstance(side, int) or side < 2:
        raise ValueError(f"a lattice needs an integer side >= 2; got side={side!r}")
    d = side * side
    idx = torch.arange(d).reshape(side, side)
    adj = torch.zeros(d, d, dtype=torch.float64)
    for shift in ((0, 1), (1, 0)):
        nb = torch.roll(idx, shifts=(-shift[0], -shift[1]), dims=(0, 1))
        keep = torch.ones(side, side, dtype=torch.bool)
        if not periodic:
            if shift[1]:
                keep[:, -1] = False
            else:
                keep[-1, :] = False
        adj[idx[keep], nb[keep]] = 1.0
    return ((adj + adj.T) > 0).to(torch.float64)


def ising_coupling(env: Any) -> Tensor:
    r"""``(D, D)`` float64 coupling :math:`J = \tfrac{\beta J_\text{bond}}{2} A` of an
    :class:`~flowforge.gflownet.Ising` environment in :class:`IsingEnergy`'s convention
    (:math:`\sigma^\top J \sigma = \beta J_\text{bond} \sum_{\langle ij\rangle} \sigma_i\sigma_j`).

    Zhang et al. 2022 (after Grathwohl et al. 2021) write the lattice model as :math:`J = \varsigma A`;
    that is ``Ising(J=varsigma, beta=2)`` here, whose coupling this returns as :math:`\varsigma A`.

    Example:
        >>> from flowforge.gflownet import Ising
        >>> float(ising_coupling(Ising(side=3, J=0.2, beta=2.0)).max())
        0.2
    """
    for name in ("adjacency", "J", "beta"):
        if not hasattr(env, name):
            raise TypeError(
                f"ising_coupling needs an Ising environment (adjacency, J, beta); got {type(env).__name__}"
            )
    return 0.5 * env.beta * env.J * env.adjacency.to(torch.float64)


class IsingEnergy(nn.Module):
    r"""Learnable Ising energy :math:`E_J(x) = -\sigma^\top J \sigma - h^\top \sigma`, :math:`\sigma = 2x-1`.

    :math:`J = \text{lr\_scale}\cdot M \odot \tfrac12 (W + W^\top)`, with :math:`W` a free ``(D, D)``
    parameter and :math:`M` the mask of learnable pairs: every off-diagonal pair (``couplings="dense"``,
    Grathwohl et al. 2021's ``lattice_ising_2d`` model used by Zhang et al. 2022, Sec. 5, where all
    :math:`D^2` entries of :math:`J` are compared with the truth) or only the lattice bonds
    (``couplings="lattice"``). The diagonal is fixed at 0 (it only adds the constant
    :math:`\operatorname{tr} J`). With ``bias=True`` a field :math:`h` is learned as well.

    Contrastive divergence moves :math:`J` along
    :math:`-\nabla_J \mathcal L = \mathbb E_\text{data}[\sigma\sigma^\top] - \mathbb E_\text{neg}[\sigma\sigma^\top]`.

    Args:
        side: lattice side; :math:`D = \text{side}^2` sites, row-major.
        periodic: wrap-around bonds (used by ``couplings="lattice"`` and :attr:`adjacency`).
        couplings: ``"dense"`` or ``"lattice"``.
        init_std: :math:`W` starts as ``init_std`` times a standard normal draw (Grathwohl et al.: 0.01).
        bias: learn a field :math:`h` (starts at 0).
        lr_scale: :math:`J = s\cdot(\dots)`; under Adam :math:`J` moves :math:`s` times faster than the
            other parameters of a single-learning-rate trainer.
        generator: source of the initial :math:`W`.

    Example:
        >>> e = IsingEnergy(side=2, init_std=0.0)
        >>> e(torch.tensor([[0, 1, 1, 0]])).tolist(), e.J.shape
        ([-0.0], torch.Size([4, 4]))
    """

    def __init__(
        self,
        side: int,
        *,
        periodic: bool = True,
        couplings: str = "dense",
        init_std: float = 0.01,
        bias: bool = False,
        lr_scale: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if couplings not in COUPLINGS:
            raise unknown_choice("couplings", couplings, COUPLINGS)
        if not (math.isfinite(init_std) and init_std >= 0):
            raise ValueError(f"init_std must be a finite number >= 0; got {init_std}")
        if not (math.isfinite(lr_scale) and lr_scale > 0):
            raise ValueError(f"lr_scale must be > 0; got {lr_scale}")
        self.side, self.periodic, self.couplings = side, bool(periodic), couplings
        self.dim = side * side
        self.lr_scale = float(lr_scale)
        adj = lattice_adjacency(side, periodic)
        self.register_buffer("adjacency", adj.float())
        eye = torch.eye(self.dim, dtype=torch.bool)
        mask = (adj > 0) if couplings == "lattice" else ~eye
        self.register_buffer("mask", mask.float())
        w = torch.randn(self.dim, self.dim, generator=generator) * init_std / self.lr_scale
        self.W = nn.Parameter(w)
        self.h = nn.Parameter(torch.zeros(self.dim)) if bias else None

    @classmethod
    def from_ising(cls, env: Any, *, dtype: torch.dtype | None = None, **kwargs: Any) -> IsingEnergy:
        """An energy equal to ``env``'s (:func:`ising_coupling`), e.g. to start from or to compare with;
        ``dtype``: the parameters' (``torch.float64`` for exact comparisons)."""
        e = cls(env.side, periodic=env.periodic, init_std=0.0, **kwargs)
        if dtype is not None:
            e = e.to(dtype)
        e.set_coupling(ising_coupling(env))
        return e

    def extra_repr(self) -> str:
        return f"side={self.side}, couplings={self.couplings!r}, bias={self.h is not None}"

    @property
    def J(self) -> Tensor:
        """``(D, D)`` the symmetric, zero-diagonal coupling matrix (with gradients)."""
        return self.lr_scale * self.mask * 0.5 * (self.W + self.W.T)

    @torch.no_grad()
    def set_coupling(self, J: Tensor) -> None:
        """Set :math:`J` (``(D, D)`` symmetric; the entries outside the learnable mask must be 0)."""
        J = torch.as_tensor(J, dtype=torch.float64)
        if J.shape != (self.dim, self.dim) or not torch.allclose(J, J.T):
            raise ValueError(
                f"J must be a symmetric ({self.dim}, {self.dim}) matrix; got shape {tuple(J.shape)}"
            )
        if bool((J * (1 - self.mask.double())).abs().gt(0).any()):
            raise ValueError(f"J has entries outside the learnable pairs of couplings={self.couplings!r}")
        self.W.copy_((J / self.lr_scale).to(self.W.dtype))

    def forward(self, x: Tensor) -> Tensor:
        """``(B,)`` :math:`E_J(x)` of ``(B, D)`` configurations in :math:`\\{0, 1\\}` (any dtype)."""
        sigma = 2 * x.to(self.W.dtype) - 1
        e = -((sigma @ self.J) * sigma).sum(-1)
        if self.h is not None:
            e = e - sigma @ self.h
        return e


class MLPEnergy(nn.Module):
    r"""Generic energy :math:`E_\phi(x) = \mathrm{MLP}_\phi(2x - 1)`, ``(B, D) -> (B,)`` (Zhang et al. 2022
    use such an MLP energy on binarised data).

    Args:
        dim: number of sites :math:`D`.
        width, depth: hidden width and number of hidden layers.

    Example:
        >>> MLPEnergy(4, width=8, depth=1)(torch.zeros(3, 4, dtype=torch.long)).shape
        torch.Size([3])
    """

    def __init__(self, dim: int, width: int = 256, depth: int = 2) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"MLPEnergy needs an integer dim >= 1; got {dim!r}")
        self.dim = dim
        self.net = PolicyMLP(dim, 1, width, depth)

    def forward(self, x: Tensor) -> Tensor:
        """``(B,)`` energies of ``(B, D)`` configurations in :math:`\\{0, 1\\}`."""
        p = next(self.net.parameters())
        return self.net(2 * x.to(p.dtype) - 1).squeeze(-1)
