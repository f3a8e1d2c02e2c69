r"""Simulating AOUPs: one-step transitions (with their kernel score) and stationary samples.

Two integrators (reference code ``step_mips_OU_EM``):

- ``"em"``: Euler-Maruyama for the positions and the exact Ornstein-Uhlenbeck step for the propulsions,

  .. math:: x' = x + b_x(x, g)\,h + \sqrt{2\varepsilon h}\,\xi_x, \qquad
            g' = e^{-\gamma h} g + \sqrt{1 - e^{-2\gamma h}}\,\xi_g,

  then positions are wrapped into the periodic box.
- ``"exact"`` (linear systems only, :attr:`AOUP.is_linear`): the exact discrete-time transition of the
  linear Gaussian SDE per particle and dimension, :math:`z' = \Phi z + L\xi` with :math:`\Phi = e^{-Bh}`
  and :math:`LL^\top = Q = \int_0^h e^{-Bs} 2D e^{-B^\top s} ds`, both from one matrix exponential
  (Van Loan, 1978: :math:`\exp\big(h\,[[B, 2D], [0, -B^\top]]\big) = [[\cdot, \Phi^{-1}Q], [0, \Phi^{-\top}]]`,
  over a short step that is then doubled, which keeps long steps accurate).

Each step also returns the score of its own Gaussian kernel at the new point,
:math:`\kappa = \nabla_{z'}\log p(z' \mid z)` (``-\xi_x/\sqrt{2\varepsilon h}``,
``-\xi_g/\sqrt{1-e^{-2\gamma h}}`` for ``"em"``; :math:`-L^{-\top}\xi` for ``"exact"``), which is the
regression target of denoising score matching on SDE increments
(:func:`~flowforge.apps.active_matter.increment_dsm_loss`). Coordinates without noise
(:math:`\varepsilon = 0`) get :math:`\kappa = 0`.

Example:
    >>> import torch
    >>> from flowforge.apps.active_matter import AOUP, stationary_covariance
    >>> sys = AOUP(A=1.0, v0=1.0, eps=0.1)
    >>> z = simulate_stationary(sys, 20_000, generator=torch.Generator().manual_seed(0))
    >>> z.shape
    torch.Size([20000, 1, 2, 2])
    >>> emp = torch.cov(z[:, 0, :, 0].T)  # (x, g) covariance of the first spatial dimension
    >>> bool((emp - stationary_covariance(sys)).abs().max() < 0.03)
    True
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from flowforge.apps.active_matter.aoup import AOUP, join_state, split_state
from flowforge.apps.active_matter.periodic import wrap
from flowforge.apps.active_matter.trap import drift_matrix, noise_matrix

__all__ = ["Step", "StepMethod", "em_step", "exact_step", "exact_transition", "step", "simulate_stationary"]

StepMethod = Literal["auto", "em", "exact"]


class Step(NamedTuple):
    """One transition: the new state ``z`` and its kernel score ``kernel_score`` (both ``(B, N, 2, d)``)."""

    z: Tensor
    kernel_score: Tensor


def _check_dt(dt: float) -> None:
    if not (isinstance(dt, int | float) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"the time step must be a finite number > 0, got {dt!r}; e.g. dt=1e-3")


def _check_noise(z: Tensor, noise: Tensor) -> None:
    if noise.shape != z.shape:
        raise ValueError(
            f"noise must be standard normal draws shaped like z {tuple(z.shape)}, got {tuple(noise.shape)}"
        )


def em_step(system: AOUP, z: Tensor, dt: float, noise: Tensor) -> Step:
    """Euler-Maruyama on ``x``, exact OU on ``g``, then the periodic wrap (see the module docstring)."""
    system.check_state(z)
    _check_dt(dt)
    _check_noise(z, noise)
    x, g = split_state(z)
    nx, ng = split_state(noise)
    bx = split_state(system.drift(z))[0]
    sx = math.sqrt(2 * system.eps * dt)
    decay = math.exp(-system.gamma * dt)
    sg = math.sqrt(-math.expm1(-2 * system.gamma * dt))
    x_new = wrap(x + dt * bx + sx * nx, system.box)
    g_new = decay * g + sg * ng
    kx = -nx / sx if sx > 0 else torch.zeros_like(nx)
    return Step(join_state(x_new, g_new), join_state(kx, -ng / sg))


def exact_transition(system: AOUP, dt: float, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    r"""``(Phi, L)``: the ``(2, 2)`` mean map :math:`e^{-Bh}` and the Cholesky factor of the step covariance
    :math:`Q` of one particle and dimension (Van Loan's matrix exponential)."""
    _check_dt(dt)
    B, D = drift_matrix(system), noise_matrix(system)
    # Van Loan's exponential loses Q to cancellation when h * rate is large: take it over a short step
    # h / 2^n and double n times (Phi(2h) = Phi(h)^2, Q(2h) = Phi(h) Q(h) Phi(h)^T + Q(h))
    rate = float(torch.linalg.matrix_norm(B, ord=1))
    n = max(0, math.ceil(math.log2(max(dt * rate / 0.5, 1.0))))
    M = torch.zeros(4, 4, dtype=torch.float64)
    M[:2, :2], M[:2, 2:], M[2:, 2:] = B, 2 * D, -B.T
    E = torch.linalg.matrix_exp(M * (dt / 2**n))
    Phi = E[2:, 2:].T
    Q = Phi @ E[:2, 2:]
    for _ in range(n):
        Q = Phi @ Q @ Phi.T + Q
        Phi = Phi @ Phi
    Q = 0.5 * (Q + Q.T)
    return Phi.to(dtype), torch.linalg.cholesky(Q).to(dtype)


def exact_step(system: AOUP, z: Tensor, dt: float, noise: Tensor) -> Step:
    """The exact transition of a linear AOUP over time ``dt`` (any size), then the periodic wrap."""
    system.check_state(z)
    _check_noise(z, noise)
    if not system.is_linear:
        raise ValueError(
            "the exact step needs a linear AOUP (k=0 or one particle, no trap in a box); "
            "use method='em' for interacting particles"
        )
    Phi, L = exact_transition(system, dt, z.dtype)
    Phi, L = Phi.to(z.device), L.to(z.device)
    new = torch.einsum("ab,...bd->...ad", Phi, z) + torch.einsum("ab,...bd->...ad", L, noise)
    # grad log N(z'; Phi z, Q) = -Q^{-1} L xi = -L^{-T} xi
    kappa = -torch.linalg.solve_triangular(L.T, noise.transpose(-2, -1).unsqueeze(-1), upper=True)
    kappa = kappa.squeeze(-1).transpose(-2, -1)
    x, g = split_state(new)
    return Step(join_state(wrap(x, system.box), g), kappa)


def _resolve(system: AOUP, method: str) -> str:
    if method not in ("auto", "em", "exact"):
        raise ValueError(f"unknown step method {method!r}; write method='auto', 'em' or 'exact'")
    if method == "auto":
        return "exact" if system.is_linear else "em"
    return method


def step(system: AOUP, z: Tensor, dt: float, noise: Tensor, method: StepMethod = "auto") -> Step:
    """One transition by ``method`` (``"auto"``: exact for linear systems, else EM with exact OU)."""
    m = _resolve(system, method)
    return exact_step(system, z, dt, noise) if m == "exact" else em_step(system, z, dt, noise)


def default_burn_in(system: AOUP) -> float:
    """20 relaxation times of the slowest of the OU rate and the trap (the reference's ``thermalize_fac``)."""
    rates = [system.gamma] + ([system.A] if system.A > 0 else [])
    return 20.0 / min(rates)


def initial_state(
    system: AOUP, n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """``n`` starting states: ``g ~ N(0, I)``; ``x`` uniform in the box, or ``N(0, I)`` in a trap."""
    N, d = system.n_particles, system.dim
    g = torch.randn(n, N, d, generator=generator, dtype=dtype)
    if system.box is not None:
        x = (2 * torch.rand(n, N, d, generator=generator, dtype=dtype) - 1) * system.box
    else:
        x = torch.randn(n, N, d, generator=generator, dtype=dtype)
    return join_state(x, g)


def simulate_stationary(
    system: AOUP,
    n_samples: int,
    *,
    dt: float = 1e-3,
    burn_in: float | None = None,
    thin: float | None = None,
    n_chains: int | None = None,
    method: StepMethod = "auto",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    init: Tensor | None = None,
) -> Tensor:
    r"""``n_samples`` (approximately) stationary states ``(n_samples, N, 2, d)``.

    ``n_chains`` independent chains start from :func:`initial_state` (or ``init``), run for ``burn_in``
    time units, then keep one state every ``thin`` time units until ``n_samples`` are kept (in the order
    keep 1 of every chain, keep 2 of every chain, ...).

    Args:
        system: the AOUP.
        n_samples: how many states to return.
        dt: the Euler-Maruyama step (``method="em"``). The exact method needs no small step: it jumps over
            ``burn_in`` and each ``thin`` in one exact transition, and ``dt`` is not used.
        burn_in: time before the first kept state; default 20 relaxation times (:func:`default_burn_in`).
        thin: time between kept states of one chain; default ``1/gamma``.
        n_chains: parallel chains; default ``n_samples`` for the exact method (independent draws) and
            ``min(n_samples, 1024)`` for EM.
        method: ``"auto"`` (exact when linear), ``"em"`` or ``"exact"``.
        generator: the source of randomness.
        dtype: floating dtype of the simulation.
        init: ``(n_chains, N, 2, d)`` starting states (optional).
    """
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    _check_dt(dt)
    m = _resolve(system, method)
    burn_in = default_burn_in(system) if burn_in is None else burn_in
    thin = 1.0 / system.gamma if thin is None else thin
    if not (math.isfinite(burn_in) and burn_in >= 0):
        raise ValueError(f"burn_in is a time >= 0, got {burn_in!r}")
    _check_dt(thin)
    if init is not None:
        system.check_state(init, "init")
        z = init.to(dtype)
        n_chains = z.shape[0]
    else:
        if n_chains is None:
            n_chains = n_samples if m == "exact" else min(n_samples, 1024)
        if n_chains < 1:
            raise ValueError(f"n_chains must be >= 1, got {n_chains}")
        z = initial_state(system, n_chains, generator=generator, dtype=dtype)
    n_keep = -(-n_samples // n_chains)

    def advance(z: Tensor, time: float) -> Tensor:
        if time <= 0:
            return z
        if m == "exact":
            return exact_step(system, z, time, torch.randn(z.shape, generator=generator, dtype=dtype)).z
        n = max(1, round(time / dt))
        for _ in range(n):
            z = em_step(system, z, dt, torch.randn(z.shape, generator=generator, dtype=dtype)).z
        return z

    z = advance(z, burn_in)
    kept = []
    for i in range(n_keep):
        if i > 0:
            z = advance(z, thin)
        kept.append(z)
    return torch.cat(kept)[:n_samples]
