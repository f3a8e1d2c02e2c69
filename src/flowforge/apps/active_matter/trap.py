r"""Closed forms for linear AOUPs: the trapped particle's Gaussian stationary law, its score and its EPR.

Without interactions every particle and every spatial dimension is an independent 2-D linear SDE for
:math:`z = (x, g)` (verified reference §3.4):

.. math:: dz = -Bz\,dt + \sqrt{2D}\,dW, \qquad
          B = \begin{pmatrix} A & -v_0 \\ 0 & \gamma \end{pmatrix}, \quad
          D = \begin{pmatrix} \varepsilon & 0 \\ 0 & \gamma \end{pmatrix}.

For :math:`A > 0` the stationary law is :math:`N(0, \Sigma)` with the Lyapunov equation
:math:`B\Sigma + \Sigma B^\top = 2D`, whose solution is :math:`\Sigma_{gg} = 1`,
:math:`\Sigma_{xg} = c = v_0/(A + \gamma)`, :math:`\Sigma_{xx} = (\varepsilon + v_0 c)/A`. The score is
:math:`s = -\Sigma^{-1} z`, the probability-flow velocity :math:`v = b - Ds = (D\Sigma^{-1} - B) z`, and the
entropy production rate of :math:`N` particles in :math:`d` dimensions is

.. math:: \dot S = N d\, \frac{v_0^2\, \gamma}{\varepsilon\, (A + \gamma)},

split into a :math:`g`-part :math:`N d\,\gamma c^2 A / (\varepsilon + \gamma c^2)` and the rest on :math:`x`.
In a periodic box with :math:`A = 0` (free particles) the law is uniform in :math:`x` times
:math:`N(0, I)` in :math:`g`: :math:`s_x = 0`, :math:`s_g = -g`, and the same formula gives
:math:`\dot S = N d\, v_0^2/\varepsilon`.

Example:
    >>> from flowforge.apps.active_matter import AOUP
    >>> sys = AOUP(A=1.0, gamma=1.0, v0=1.0, eps=0.1)  # row 1 of the reference's table
    >>> epr_closed_form(sys), round(epr_lyapunov(sys), 10)
    (10.0, 10.0)
    >>> [round(p, 4) for p in epr_split(sys)]
    [8.5714, 1.4286]
    >>> stationary_covariance(sys)
    tensor([[0.6000, 0.5000],
            [0.5000, 1.0000]], dtype=torch.float64)
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowforge.apps.active_matter.aoup import AOUP, join_state, split_state

__all__ = [
    "drift_matrix",
    "noise_matrix",
    "solve_lyapunov",
    "stationary_covariance",
    "exact_score",
    "epr_closed_form",
    "epr_split",
    "epr_lyapunov",
]


def _need_linear(system: AOUP, what: str) -> None:
    if not system.is_linear:
        raise ValueError(
            f"{what} exists only for linear AOUPs (k=0 or one particle, and no trap inside a periodic box); "
            f"got k={system.k}, n_particles={system.n_particles}, A={system.A}, box={system.box}. "
            "For interacting particles learn the score (StationaryScore) instead"
        )


def _need_trap(system: AOUP, what: str) -> None:
    _need_linear(system, what)
    if system.A <= 0 or system.box is not None:
        raise ValueError(
            f"{what} needs a Gaussian stationary law: a trap A > 0 in the open plane (box=None); "
            f"got A={system.A}, box={system.box}"
        )


def drift_matrix(system: AOUP, dtype: torch.dtype = torch.float64) -> Tensor:
    r""":math:`B = [[A, -v_0], [0, \gamma]]` of one particle and one spatial dimension (``dz = -Bz dt + ...``)."""
    return torch.tensor([[system.A, -system.v0], [0.0, system.gamma]], dtype=dtype)


def noise_matrix(system: AOUP, dtype: torch.dtype = torch.float64) -> Tensor:
    r""":math:`D = \operatorname{diag}(\varepsilon, \gamma)` of one particle and one spatial dimension."""
    return torch.diag(torch.tensor([system.eps, system.gamma], dtype=dtype))


def solve_lyapunov(B: Tensor, Q: Tensor) -> Tensor:
    r"""Solve :math:`B\Sigma + \Sigma B^\top = Q` by the Kronecker form
    :math:`(I \otimes B + B \otimes I)\operatorname{vec}\Sigma = \operatorname{vec} Q` (small matrices)."""
    if B.dim() != 2 or B.shape[0] != B.shape[1] or Q.shape != B.shape:
        raise ValueError(
            f"B and Q must be square and of one shape, got {tuple(B.shape)} and {tuple(Q.shape)}"
        )
    n = B.shape[0]
    eye = torch.eye(n, dtype=B.dtype)
    # row-major vec: vec(B S) = (B kron I) vec(S), vec(S B^T) = (I kron B) vec(S)
    K = torch.kron(B, eye) + torch.kron(eye, B)
    return torch.linalg.solve(K, Q.reshape(-1)).reshape(n, n)


def stationary_covariance(system: AOUP, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""The ``(2, 2)`` stationary covariance of :math:`(x, g)` per particle and dimension (Lyapunov solve)."""
    _need_trap(system, "stationary_covariance")
    return solve_lyapunov(drift_matrix(system, dtype), 2 * noise_matrix(system, dtype))


def exact_score(system: AOUP, z: Tensor) -> Tensor:
    r"""The exact stationary score :math:`\nabla\log\rho(z)`, ``(B, N, 2, d) -> (B, N, 2, d)``.

    Trap: :math:`-\Sigma^{-1}(x, g)` per particle and dimension; periodic box with ``A = 0``:
    :math:`(0, -g)`.
    """
    _need_linear(system, "exact_score")
    system.check_state(z)
    x, g = split_state(z)
    if system.box is not None:  # A = 0: uniform in x, N(0, I) in g
        return join_state(torch.zeros_like(x), -g)
    P = torch.linalg.inv(stationary_covariance(system, torch.float64)).to(z)
    return -torch.einsum("ab,nbd->nad", P, z.reshape(-1, 2, system.dim)).reshape(z.shape)


def _need_noise(system: AOUP, what: str) -> None:
    if system.eps <= 0:
        raise ValueError(
            f"{what}: with eps=0 the full entropy production diverges (like 1/eps); the reference uses only "
            "the g-part then (entropy_production(...).g_part); give eps > 0 for the closed form"
        )


def epr_closed_form(system: AOUP) -> float:
    r""":math:`\dot S = N d\, v_0^2\gamma / (\varepsilon(A + \gamma))` (verified reference §3.4)."""
    _need_linear(system, "epr_closed_form")
    _need_noise(system, "epr_closed_form")
    s = system
    return s.n_particles * s.dim * s.v0**2 * s.gamma / (s.eps * (s.A + s.gamma))


def epr_split(system: AOUP) -> tuple[float, float]:
    r"""``(x_part, g_part)`` of the closed form: :math:`g`-part :math:`N d\,\gamma c^2 A/(\varepsilon + \gamma c^2)`."""
    total = epr_closed_form(system)
    s = system
    c = s.v0 / (s.A + s.gamma)
    g_part = s.n_particles * s.dim * s.gamma * c**2 * s.A / (s.eps + s.gamma * c**2)
    return total - g_part, g_part


def epr_lyapunov(system: AOUP) -> float:
    r"""The EPR from the numerical Lyapunov solution (an independent check of :func:`epr_closed_form`):
    :math:`N d\,[\operatorname{tr}(D\Sigma^{-1}) - 2\operatorname{tr}B + \operatorname{tr}(B\Sigma B^\top D^{-1})]`,
    which is :math:`E[v^\top D^{-1} v]` for :math:`v = (D\Sigma^{-1} - B)z`, :math:`z \sim N(0, \Sigma)`."""
    _need_trap(system, "epr_lyapunov")
    _need_noise(system, "epr_lyapunov")
    B, D = drift_matrix(system), noise_matrix(system)
    S = stationary_covariance(system)
    per = (
        torch.trace(D @ torch.linalg.inv(S))
        - 2 * torch.trace(B)
        + torch.trace(B @ S @ B.T @ torch.linalg.inv(D))
    )
    return float(system.n_particles * system.dim * per)
