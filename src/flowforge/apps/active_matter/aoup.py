r"""Active Ornstein-Uhlenbeck particles (AOUP): the system of Boffi & Vanden-Eijnden (arXiv:2309.12991).

:math:`N` particles in :math:`d` dimensions with positions :math:`x_i` and Ornstein-Uhlenbeck
self-propulsions :math:`g_i` (reference code ``py/common/drifts.py``, ``mips`` / ``step_mips_OU_EM``):

.. math::

    dx_i &= \Big(v_0\, g_i + k \sum_{j \ne i} F_{ij} - A\, x_i\Big)\,dt + \sqrt{2\varepsilon}\, dW_i, \\
    dg_i &= -\gamma\, g_i\, dt + \sqrt{2\gamma}\, dW'_i,

with the softplus-smoothed elastic repulsion between disks of radius :math:`r` (minimum image in a
periodic box)

.. math:: F_{ij} = \operatorname{softplus}_\beta\big(2r - |x_{ij}|\big)\, \hat x_{ij}, \qquad
          \operatorname{softplus}_\beta(u) = \tfrac{1}{\beta}\log\big(1 + e^{\beta u}\big),

:math:`x_{ij} = x_i - x_j`. The marginal of every :math:`g_i` is :math:`N(0, I_d)`. As a drift-diffusion
:math:`dz = b(z)\,dt + \sqrt{2D}\,dW` on :math:`z = (x, g)` the diffusion is
:math:`D = \operatorname{diag}(\varepsilon \text{ on } x, \gamma \text{ on } g)`; with
:math:`\varepsilon = 0` only :math:`g` is noisy (hypoelliptic) and :math:`D` is singular.

**State layout.** A batch of states is one tensor ``z`` of shape ``(B, N, 2, d)``: ``z[:, :, 0]`` holds
the positions :math:`x` and ``z[:, :, 1]`` the propulsions :math:`g` (:func:`split_state`,
:func:`join_state`). Permuting particles permutes axis 1.

Two set-ups are used: (a) a harmonic trap (``A > 0``, ``box=None``; with ``k = 0`` or one particle the
system is linear Gaussian, see :mod:`~flowforge.apps.active_matter.trap`); (b) a periodic box
:math:`[-L, L]^d` (``box=L``, usually ``A = 0``) with the repulsion (``k > 0``).

Example:
    >>> import torch
    >>> sys = AOUP(n_particles=2, v0=1.0, k=2.0, box=3.0)
    >>> z = torch.zeros(5, 2, 2, 2, dtype=torch.float64)
    >>> z[:, 1, 0, 0] = 1.0  # particle 1 one unit right of particle 0: they overlap and repel
    >>> sys.drift(z)[0, :, 0]  # b_x of both particles: pushed apart along the first axis
    tensor([[-2.0001,  0.0000],
            [ 2.0001,  0.0000]], dtype=torch.float64)
    >>> sys.diffusion_like(z)[0, 0]
    tensor([[0.1000, 0.1000],
            [1.0000, 1.0000]], dtype=torch.float64)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from flowforge.apps.active_matter.periodic import minimum_image

__all__ = ["AOUP", "split_state", "join_state"]


def split_state(z: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, N, 2, d) -> (x, g)``, each ``(B, N, d)``."""
    return z[:, :, 0], z[:, :, 1]


def join_state(x: Tensor, g: Tensor) -> Tensor:
    """``x, g: (B, N, d) -> z: (B, N, 2, d)``."""
    return torch.stack([x, g], dim=2)


def _finite_at_least(name: str, value: Any, low: float, strict: bool) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        rel = ">" if strict else ">="
        raise ValueError(f"AOUP: {name} must be a finite number {rel} {low}, got {value!r}")


@dataclass(frozen=True)
class AOUP:
    """Parameters of an AOUP system (names as in the reference code).

    Attributes:
        n_particles: :math:`N`.
        dim: spatial dimension :math:`d` (2 in the paper).
        v0: self-propulsion speed :math:`v_0` (multiplies :math:`g` in the :math:`x` drift).
        gamma: OU relaxation rate :math:`\\gamma` of :math:`g` (its noise is :math:`\\sqrt{2\\gamma}`).
        eps: translational noise :math:`\\varepsilon` on :math:`x` (0: hypoelliptic).
        A: harmonic trap stiffness (:math:`-A x` in the drift).
        k: repulsion stiffness (0: free particles).
        radius: particle radius :math:`r` (the repulsion acts below distance :math:`2r`).
        beta: softplus sharpness :math:`\\beta` (7.5 in the reference code).
        box: half-width :math:`L` of the periodic box :math:`[-L, L]^d`; ``None``: the open plane.
    """

    n_particles: int = 1
    dim: int = 2
    v0: float = 1.0
    gamma: float = 1.0
    eps: float = 0.1
    A: float = 0.0
    k: float = 0.0
    radius: float = 1.0
    beta: float = 7.5
    box: float | None = None

    def __post_init__(self) -> None:
        for name in ("n_particles", "dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"AOUP: {name} must be an integer >= 1, got {v!r}")
        _finite_at_least("v0", self.v0, -math.inf, False)
        _finite_at_least("gamma", self.gamma, 0.0, True)
        _finite_at_least("eps", self.eps, 0.0, False)
        _finite_at_least("A", self.A, 0.0, False)
        _finite_at_least("k", self.k, 0.0, False)
        _finite_at_least("radius", self.radius, 0.0, True)
        _finite_at_least("beta", self.beta, 0.0, True)
        if self.box is not None:
            _finite_at_least("box", self.box, 0.0, True)
        elif self.A == 0:
            raise ValueError(
                "AOUP: in the open plane (box=None) there is no stationary state without a trap; "
                "set A > 0 (e.g. A=1.0) or give a periodic box (e.g. box=5.0)"
            )

    # ------------------------------------------------------------------ layout
    @property
    def state_shape(self) -> tuple[int, int, int]:
        """``(N, 2, d)``: one state is positions and propulsions of every particle."""
        return (self.n_particles, 2, self.dim)

    @property
    def is_linear(self) -> bool:
        """True when the dynamics are linear (no interactions, and no wrap that breaks the trap force)."""
        free = self.k == 0 or self.n_particles == 1
        return free and (self.box is None or self.A == 0)

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a JSON-friendly dict (``AOUP(**d)`` rebuilds the system)."""
        return asdict(self)

    def check_state(self, z: Tensor, what: str = "z") -> None:
        """Raise a clear error unless ``z`` is a ``(B, N, 2, d)`` floating tensor of this system."""
        if not isinstance(z, Tensor):
            raise TypeError(f"{what} must be a torch.Tensor of shape (B, {self.n_particles}, 2, {self.dim})")
        if z.dim() != 4 or tuple(z.shape[1:]) != self.state_shape:
            raise ValueError(
                f"{what} must have shape (B, N, 2, d) = (B, {self.n_particles}, 2, {self.dim}) "
                f"(z[:, :, 0] positions, z[:, :, 1] propulsions), got {tuple(z.shape)}"
            )
        if not z.is_floating_point():
            raise TypeError(f"{what} must be a floating tensor, got {z.dtype}; use z.double()")

    # ------------------------------------------------------------------ forces
    def _pairs(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """Minimum-image components ``[r_ij^a]`` (each ``(B,N,N)``), distances ``(B,N,N)`` (1 on the diagonal)
        and the off-diagonal mask ``(N,N)``. Kept per component: contiguous ``(B,N,N)`` tensors are much
        faster than reductions over a trailing axis of size ``d``."""
        comps = [minimum_image(x[:, :, None, a] - x[:, None, :, a], self.box) for a in range(x.shape[-1])]
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        sq = eye.expand_as(comps[0]).clone()
        for c in comps:
            sq = sq.addcmul_(c, c)
        # a differentiable norm: the diagonal (r_ii = 0) gets distance 1 and is masked out afterwards
        return comps, torch.sqrt(sq), 1 - eye

    def repulsion(self, x: Tensor) -> Tensor:
        r""":math:`\sum_{j\ne i} F_{ij}` (without the stiffness :math:`k`), ``(B, N, d) -> (B, N, d)``."""
        if self.n_particles == 1:
            return torch.zeros_like(x)
        comps, dist, off = self._pairs(x)
        mag = F.softplus(2 * self.radius - dist, beta=self.beta) * off / dist
        return torch.stack([(mag * c).sum(-1) for c in comps], -1)

    def drift(self, z: Tensor) -> Tensor:
        r"""The drift :math:`b(z)`, ``(B, N, 2, d) -> (B, N, 2, d)``."""
        self.check_state(z)
        x, g = split_state(z)
        bx = self.v0 * g - self.A * x
        if self.k != 0 and self.n_particles > 1:
            bx = bx + self.k * self.repulsion(x)
        return join_state(bx, -self.gamma * g)

    def drift_divergence(self, z: Tensor) -> Tensor:
        r"""Per-particle divergences :math:`[\nabla_{x_i}\cdot b_{x,i},\ \nabla_{g_i}\cdot b_{g,i}]`, ``(B, N, 2)``.

        With :math:`\rho = |x_{ij}|` and :math:`f(\rho) = \operatorname{softplus}_\beta(2r - \rho)`,
        :math:`\nabla_{x_i}\cdot(f(\rho)\hat x_{ij}) = f'(\rho) + f(\rho)(d-1)/\rho` with
        :math:`f'(\rho) = -\sigma(\beta(2r - \rho))` (reference ``div_particle_force``), so

        .. math:: \nabla_{x_i}\cdot b_{x,i} = k\sum_{j\ne i}\Big[\frac{(d-1) f(\rho_{ij})}{\rho_{ij}}
                  - \sigma\big(\beta(2r - \rho_{ij})\big)\Big] - A d, \qquad
                  \nabla_{g_i}\cdot b_{g,i} = -\gamma d.
        """
        self.check_state(z)
        x, _ = split_state(z)
        b, n, d = x.shape
        div_x = torch.full((b, n), -self.A * d, dtype=z.dtype, device=z.device)
        if self.k != 0 and n > 1:
            _, dist, off = self._pairs(x)
            u = 2 * self.radius - dist
            terms = F.softplus(u, beta=self.beta) * (d - 1) / dist - torch.sigmoid(self.beta * u)
            div_x = div_x + self.k * (terms * off).sum(2)
        div_g = torch.full_like(div_x, -self.gamma * d)
        return torch.stack([div_x, div_g], dim=2)

    # ------------------------------------------------------------------ noise
    def diffusion_like(self, z: Tensor) -> Tensor:
        r"""The diagonal of :math:`D` laid out like ``z``: :math:`\varepsilon` on positions, :math:`\gamma` on
        propulsions, ``(B, N, 2, d)``."""
        scale = torch.tensor([self.eps, self.gamma], dtype=z.dtype, device=z.device)
        return scale[None, None, :, None].expand_as(z)

    def noisy_like(self, z: Tensor) -> Tensor:
        """Boolean mask of the coordinates that carry noise (all when ``eps > 0``, else only ``g``)."""
        return self.diffusion_like(z) > 0
