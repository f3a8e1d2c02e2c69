r"""Log-likelihoods of continuous flows by the instantaneous change of variables.

For :math:`\dot x_t = f(x_t, t)` carrying :math:`p_0` (source) at t=0 to :math:`p_1` at t=1,

.. math:: \log p_1(x_1) = \log p_0(x_0) - \int_0^1 \nabla\!\cdot f(x_t, t)\, dt

(Chen et al., *Neural ODEs*, NeurIPS 2018, Thm. 1; Grathwohl et al., *FFJORD*, ICLR 2019, eq. 4).
:func:`log_prob` integrates the augmented ODE :math:`\frac{d}{dt}[x, l] = [f(x, t), \nabla\cdot f(x, t)]`
backwards from :math:`(x_1, 0)` at t=1 to t=0 with any solver of :mod:`flowforge.core.solvers`, packed
as one flat ``(B, D + 1)`` state, so that :math:`\log p_1(x_1) = \log p_0(x_0) + l(0)`.

On a manifold (Chen & Lipman, ICLR 2024, eq. 10; Mathieu & Nickel, NeurIPS 2020) the same identity holds
with the Riemannian divergence and densities w.r.t. the Riemannian volume;
:func:`riemannian_divergence` computes it in ambient coordinates and :func:`riemannian_log_prob`
integrates on the manifold with a :class:`~flowforge.core.solvers.Projected` solver.

Example:
    >>> import torch
    >>> from flowforge.core.solvers import RK4
    >>> f = lambda x, t: x  # x_t = x_0 e^t: p_1 is N(0, e^2 I) for p_0 = N(0, I)
    >>> base = lambda z: -0.5 * (z**2).sum(1) - z.shape[1] * 0.9189385332046727
    >>> x1 = torch.ones(4, 2, dtype=torch.float64)
    >>> lp = log_prob(f, x1, base, solver=RK4(), grid=50)
    >>> truth = base(x1 / torch.e) - 2.0
    >>> bool(torch.allclose(lp, truth, atol=1e-8))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from flowforge.core.manifolds import Manifold
from flowforge.core.solvers import (
    RK4,
    Dopri5,
    EulerMaruyama,
    Projected,
    Solver,
    VelocityField,
    solve,
    uniform_grid,
)

__all__ = ["DivergenceMethod", "divergence", "log_prob", "riemannian_divergence", "riemannian_log_prob"]

DivergenceMethod = Literal["exact", "hutchinson-gaussian", "hutchinson-rademacher"]
_METHODS = ("exact", "hutchinson-gaussian", "hutchinson-rademacher")


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise ValueError(
            f"unknown divergence method {method!r}; write one of {', '.join(repr(m) for m in _METHODS)}"
        )


def divergence(
    f: VelocityField,
    x: Tensor,
    t: Tensor,
    method: DivergenceMethod = "exact",
    probes: Tensor | None = None,
    *,
    create_graph: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""The velocity and its divergence :math:`\nabla\cdot f(x, t) = \operatorname{tr} \partial f/\partial x`.

    ``"exact"`` takes one vector-Jacobian product per dimension (cost ``D`` backward passes; for
    small ``D``). The Hutchinson estimators (Hutchinson, 1989; FFJORD, Grathwohl et al., 2019, §3.1)
    average :math:`\varepsilon^\top (\partial f/\partial x)\, \varepsilon` over the given probes, with
    :math:`E[\varepsilon\varepsilon^\top] = I` (Gaussian or Rademacher entries; Rademacher has the
    smaller variance, zero for a diagonal Jacobian). The batch is differentiated as a sum, so ``f``
    must treat batch entries independently (no batch statistics).

    Gradient mode is enabled internally whatever the caller's context. With ``create_graph=False`` the
    outputs are detached and ``x`` is not differentiated through; with ``True`` both keep their graph
    (to ``x`` and to the parameters of ``f``) for training by maximum likelihood.

    Args:
        f: velocity field, ``f(x, t) -> (B, *event)``.
        x: points, ``(B, *event)``.
        t: times, ``(B,)``.
        method: ``"exact"``, ``"hutchinson-gaussian"`` or ``"hutchinson-rademacher"``.
        probes: ``(P, B, *event)`` probe vectors, required by the Hutchinson methods.
        create_graph: keep the graph of the outputs.

    Returns:
        ``(v, div)``: the velocity ``(B, *event)`` and the divergence (estimate) ``(B,)``.
    """
    _check_method(method)
    if method != "exact":
        if probes is None or probes.dim() != x.dim() + 1 or probes.shape[1:] != x.shape:
            got = None if probes is None else tuple(probes.shape)
            raise ValueError(
                f"{method} needs probes of shape (P, *x.shape) = (P, {', '.join(map(str, x.shape))}), "
                f"got {got}"
            )
    with torch.enable_grad():
        if not (create_graph and x.requires_grad):
            x = x.detach().requires_grad_(True)
        v = f(x, t)
        if not isinstance(v, Tensor) or v.shape != x.shape:
            shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(
                f"velocity returned shape {shape} for x of shape {tuple(x.shape)}; the field must return "
                "a tensor shaped like x, f(x, t) -> (B, *event)"
            )
        if not v.requires_grad:  # the field does not depend on x (e.g. a constant): zero divergence
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        elif method == "exact":
            vf = v.reshape(x.shape[0], -1)
            d = vf.shape[1]
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for i in range(d):
                (g,) = torch.autograd.grad(
                    vf[:, i].sum(),
                    x,
                    retain_graph=create_graph or i < d - 1,
                    create_graph=create_graph,
                    allow_unused=True,
                )
                if g is not None:
                    div = div + g.reshape(x.shape[0], -1)[:, i]
        else:
            n = probes.shape[0]
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for k in range(n):
                (g,) = torch.autograd.grad(
                    v,
                    x,
                    grad_outputs=probes[k],
                    retain_graph=create_graph or k < n - 1,
                    create_graph=create_graph,
                    allow_unused=True,
                )
                if g is not None:
                    div = div + (g * probes[k]).reshape(x.shape[0], -1).sum(1)
            div = div / n
    if not create_graph:
        v, div = v.detach(), div.detach()
    return v, div


_divergence = divergence  # `log_prob` has a keyword argument of the same name


def _draw_probes(
    divergence: str, n_probes: int, generator: torch.Generator | None, x1: Tensor
) -> Tensor | None:
    """Hutchinson probes ``(n_probes, B, *event)`` (Gaussian or Rademacher); ``None`` for the exact divergence."""
    if divergence == "exact":
        return None
    if isinstance(n_probes, bool) or int(n_probes) != n_probes or n_probes < 1:
        raise ValueError(f"n_probes must be an integer >= 1, got {n_probes!r}")
    if generator is None:
        raise ValueError(
            f"divergence={divergence!r} draws random probes: pass generator=torch.Generator()"
            ".manual_seed(0), or use divergence='exact'"
        )
    shape = (int(n_probes), *x1.shape)
    if divergence == "hutchinson-gaussian":
        return torch.randn(shape, generator=generator, dtype=x1.dtype, device=x1.device)
    return torch.randint(0, 2, shape, generator=generator, device=x1.device).to(x1.dtype) * 2 - 1


def log_prob(
    f: VelocityField,
    x1: Tensor,
    base_log_prob: Callable[[Tensor], Tensor],
    *,
    solver: Solver | None = None,
    grid: Tensor | int | None = None,
    divergence: DivergenceMethod = "exact",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
    return_x0: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Log-density of ``x1`` under the flow of ``f`` from the base density (FFJORD's estimator).

    Integrates :math:`\frac{d}{dt}[x, l] = [f(x, t), \nabla\cdot f(x, t)]` from :math:`(x_1, 0)` at
    t=1 back to t=0 and returns :math:`\log p_0(x_0) + l(0) = \log p_0(x_0) - \int_0^1 \nabla\cdot f\,dt`
    (Chen et al., 2018; Grathwohl et al., 2019). The solver's steps are reused on the flat augmented
    state ``(B, D + 1)``; with Hutchinson estimators ``n_probes`` probes per sample are drawn once from
    ``generator`` and held fixed during the solve, as FFJORD does, so the estimate is unbiased.

    Works inside the caller's ``torch.no_grad()``: gradient mode is enabled internally only for the
    divergence, and the result carries no graph unless ``create_graph=True`` (which needs gradient
    mode on and backpropagates through the solve, to ``x1`` and the parameters of ``f``).

    Args:
        f: velocity field ``f(x, t) -> (B, *event)``; must treat batch entries independently.
        x1: data points at t=1, ``(B, *event)``.
        base_log_prob: ``log p_0``, mapping ``(B, *event) -> (B,)``.
        solver: any ODE solver (default ``Dopri5(atol=1e-5, rtol=1e-5)``); not an SDE solver.
        grid: decreasing 1-D tensor of times from 1 to 0, or an int ``K`` for
            ``uniform_grid(K, 1.0, 0.0)``; default ``[1, 0]`` for adaptive solvers and 100 uniform
            steps otherwise.
        divergence: ``"exact"`` (``D`` backward passes per evaluation), ``"hutchinson-gaussian"`` or
            ``"hutchinson-rademacher"``.
        n_probes: probes per sample for the Hutchinson estimators.
        generator: the ``torch.Generator`` the probes are drawn from (required for Hutchinson).
        create_graph: keep the graph for gradients (maximum-likelihood training).
        return_x0: also return the point ``x0`` reached at t=0.

    Returns:
        ``log p_1(x1)`` of shape ``(B,)``, or ``(log_p, x0)`` with ``x0`` of shape ``(B, *event)``.
    """
    _check_method(divergence)
    if not isinstance(x1, Tensor) or x1.dim() < 1 or not x1.is_floating_point():
        raise ValueError("x1 must be a floating-point tensor of shape (B, *event)")
    if isinstance(solver, EulerMaruyama):
        raise ValueError(
            "log_prob integrates the probability-flow ODE; pass an ODE solver such as RK4() or "
            "Dopri5(atol=1e-5, rtol=1e-5), not EulerMaruyama"
        )
    if create_graph and not torch.is_grad_enabled():
        raise ValueError(
            "create_graph=True needs gradient mode: call log_prob outside torch.no_grad(), or pass "
            "create_graph=False for a detached evaluation"
        )
    if solver is None:
        solver = Dopri5(atol=1e-5, rtol=1e-5)
    if grid is None:
        grid = torch.tensor([1.0, 0.0], dtype=torch.float64) if getattr(solver, "adaptive", False) else 100
    if isinstance(grid, int) and not isinstance(grid, bool):
        grid = uniform_grid(grid, 1.0, 0.0)
    if isinstance(grid, Tensor) and grid.dim() == 1 and grid.numel() >= 2 and not grid[0] > grid[-1]:
        raise ValueError(
            f"log_prob integrates from t=1 back to t=0; pass a decreasing grid such as "
            f"uniform_grid(100, 1.0, 0.0) or an int number of steps, got a grid from {float(grid[0])} "
            f"to {float(grid[-1])}"
        )

    b, event = x1.shape[0], x1.shape[1:]
    d = math.prod(event)
    probes = _draw_probes(divergence, n_probes, generator, x1)

    def augmented(z: Tensor, t: Tensor) -> Tensor:
        x = z[:, :d].reshape(b, *event)
        v, div = _divergence(f, x, t, divergence, probes, create_graph=create_graph)
        return torch.cat([v.reshape(b, d), div.reshape(b, 1)], dim=1)

    x_start = x1 if create_graph else x1.detach()
    z1 = torch.cat([x_start.reshape(b, d), torch.zeros(b, 1, dtype=x1.dtype, device=x1.device)], dim=1)
    z0 = solve(augmented, z1, solver, grid).x
    x0 = z0[:, :d].reshape(b, *event)
    lp0 = base_log_prob(x0)
    if not isinstance(lp0, Tensor) or lp0.shape != (b,):
        shape = tuple(lp0.shape) if isinstance(lp0, Tensor) else type(lp0).__name__
        raise ValueError(f"base_log_prob returned shape {shape} for a batch of {b}; it must return (B,)")
    lp = lp0 + z0[:, d]
    return (lp, x0) if return_x0 else lp


# --------------------------------------------------------------------------------------------------
# Manifolds
# --------------------------------------------------------------------------------------------------


def _probe_check(method: str, probes: Tensor | None, x: Tensor) -> None:
    if method != "exact" and (probes is None or probes.dim() != x.dim() + 1 or probes.shape[1:] != x.shape):
        got = None if probes is None else tuple(probes.shape)
        raise ValueError(
            f"{method} needs probes of shape (P, *x.shape) = (P, {', '.join(map(str, x.shape))}), got {got}"
        )


def riemannian_divergence(
    f: VelocityField,
    x: Tensor,
    t: Tensor,
    manifold: Manifold,
    method: DivergenceMethod = "exact",
    probes: Tensor | None = None,
    *,
    create_graph: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""The tangent field :math:`v = P_x f(x, t)` and its Riemannian divergence, in ambient coordinates.

    For a submanifold :math:`\mathcal M \subset \mathbb R^n` with the induced metric (any constant
    multiple of it gives the same divergence), an orthonormal basis :math:`e_1, \dots, e_d` of
    :math:`T_x\mathcal M` and the Levi-Civita connection :math:`\nabla_{e_i} v = P_x\, Dv\, e_i`
    (the tangential part of the ambient derivative, Gauss formula),

    .. math::
        \operatorname{div}_{\mathcal M} v = \sum_i \langle \nabla_{e_i} v, e_i\rangle
        = \sum_i \langle Dv\, e_i, e_i\rangle = \operatorname{tr}(P_x\, Dv\, P_x) = \operatorname{tr}(Dv\, P_x),

    where :math:`Dv` is the ambient Jacobian of *any* smooth extension of :math:`v` off the manifold
    (only its derivatives along tangent directions enter, because of the projector :math:`P_x`). The
    exact method takes one vector-Jacobian product per ambient coordinate with the projected cotangent
    :math:`P_x \varepsilon_j` (:math:`\operatorname{tr}(P Dv) = \sum_j (P\varepsilon_j)^\top Dv\,
    \varepsilon_j`); Hutchinson uses projected probes :math:`z = P_x\varepsilon`, for which
    :math:`E[z^\top Dv\, z] = \operatorname{tr}(Dv\, P_x)`. On the flat torus :math:`P = I` and this is
    the Euclidean divergence; on :math:`S^2 \subset \mathbb R^3`, :math:`P = I - xx^\top` and
    :math:`\operatorname{div} v = \operatorname{tr} Dv - x^\top Dv\, x`.

    Args:
        f: field ``f(x, t) -> (B, *event)`` (projected to the tangent space here); must treat batch
            entries independently.
        x: points on the manifold, ``(B, *event)``.
        t: times, ``(B,)``.
        manifold: gives ``proju``.
        method: ``"exact"``, ``"hutchinson-gaussian"`` or ``"hutchinson-rademacher"``.
        probes: ``(P, B, *event)`` ambient probes for Hutchinson.
        create_graph: keep the graph (see :func:`divergence`).

    Returns:
        ``(v, div)``: the tangent field ``(B, *event)`` and the divergence ``(B,)``.

    Example:
        >>> import torch
        >>> from flowforge.core.manifolds import Sphere
        >>> x = torch.tensor([[0.6, 0.0, 0.8]], dtype=torch.float64)
        >>> north = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        >>> f = lambda x, t: north.expand_as(x)  # tangent part: the gradient of the height z
        >>> v, div = riemannian_divergence(f, x, torch.zeros(1), Sphere(2))
        >>> round(float(div), 10)  # div grad z = Laplace-Beltrami of z = -2 z on S^2
        -1.6
    """
    _check_method(method)
    _probe_check(method, probes, x)
    with torch.enable_grad():
        if not (create_graph and x.requires_grad):
            x = x.detach().requires_grad_(True)
        v = manifold.proju(x, f(x, t))
        if not isinstance(v, Tensor) or v.shape != x.shape:
            shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(
                f"velocity returned shape {shape} for x of shape {tuple(x.shape)}; the field must return "
                "a tensor shaped like x, f(x, t) -> (B, *event)"
            )
        b = x.shape[0]
        div = torch.zeros(b, dtype=x.dtype, device=x.device)
        if v.requires_grad:
            if method == "exact":
                d = x[0].numel()
                xd = x.detach()
                for i in range(d):
                    e = torch.zeros(b, d, dtype=x.dtype, device=x.device)
                    e[:, i] = 1.0
                    cot = manifold.proju(xd, e.reshape(x.shape))
                    (g,) = torch.autograd.grad(
                        v, x, grad_outputs=cot, retain_graph=create_graph or i < d - 1,
                        create_graph=create_graph, allow_unused=True,
                    )  # fmt: skip
                    if g is not None:
                        div = div + g.reshape(b, -1)[:, i]
            else:
                n = probes.shape[0]
                xd = x.detach()
                for k in range(n):
                    z = manifold.proju(xd, probes[k])
                    (g,) = torch.autograd.grad(
                        v, x, grad_outputs=z, retain_graph=create_graph or k < n - 1,
                        create_graph=create_graph, allow_unused=True,
                    )  # fmt: skip
                    if g is not None:
                        div = div + (g * z).reshape(b, -1).sum(1)
                div = div / n
    if not create_graph:
        v, div = v.detach(), div.detach()
    return v, div


class _WithLogDensity:
    """The manifold times a flat line: the augmented state ``(B, D + 1)`` of :func:`riemannian_log_prob`."""

    def __init__(self, manifold: Manifold, event: tuple[int, ...]) -> None:
        self.manifold, self.event = manifold, event
        self.d = math.prod(event)

    def _split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z[:, : self.d].reshape(z.shape[0], *self.event), z[:, self.d :]

    def projx(self, z: Tensor) -> Tensor:
        x, rest = self._split(z)
        return torch.cat([self.manifold.projx(x).reshape(z.shape[0], self.d), rest], dim=1)

    def proju(self, z: Tensor, u: Tensor) -> Tensor:
        x, _ = self._split(z)
        ux, urest = self._split(u)
        return torch.cat([self.manifold.proju(x, ux).reshape(z.shape[0], self.d), urest], dim=1)

    def __repr__(self) -> str:
        return f"{self.manifold!r} x R"


def riemannian_log_prob(
    f: VelocityField,
    x1: Tensor,
    manifold: Manifold,
    base_log_prob: Callable[[Tensor], Tensor] | None = None,
    *,
    solver: Solver | None = None,
    grid: Tensor | int | None = None,
    divergence: DivergenceMethod = "exact",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
    return_x0: bool = False,
    atol: float | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Log-density (w.r.t. the Riemannian volume) of points ``x1`` on a manifold under the flow of ``f``.

    .. math:: \log p_1(x_1) = \log p_0(x_0) - \int_0^1 \operatorname{div}_{\mathcal M} v_t(x_t)\, dt,
        \qquad v_t = P_{x_t} f(x_t, t)

    (Chen & Lipman, ICLR 2024, eq. 10; Mathieu & Nickel, NeurIPS 2020): the augmented ODE
    :math:`\frac{d}{dt}[x, l] = [v, \operatorname{div}_{\mathcal M} v]` (:func:`riemannian_divergence`)
    is integrated from :math:`(x_1, 0)` at t=1 back to t=0 by the ``solver`` wrapped in
    :class:`~flowforge.core.solvers.Projected` on :math:`\mathcal M \times \mathbb R`, so :math:`x_t`
    stays on the manifold. Hutchinson probes are drawn once from ``generator`` and held fixed.

    Args:
        f: field ``f(x, t)``; its tangent part is used.
        x1: points on the manifold, ``(B, *event)`` (checked with ``manifold.check_point(x1, atol)``).
        manifold: the manifold.
        base_log_prob: ``log p_0`` ``(B, *event) -> (B,)``; default the uniform law
            (:math:`-\log\mathrm{vol}\,\mathcal M`).
        solver: an ODE solver (default ``RK4()``), wrapped in ``Projected`` here.
        grid: decreasing grid from 1 to 0, or an int number of uniform steps (default 100; ``[1, 0]``
            for an adaptive solver).
        divergence: ``"exact"`` (one VJP per ambient coordinate), ``"hutchinson-gaussian"`` or
            ``"hutchinson-rademacher"``.
        n_probes: Hutchinson probes per sample.
        generator: draws the probes (required for Hutchinson).
        create_graph: keep the graph for gradients.
        return_x0: also return the point reached at t=0.
        atol: tolerance of the on-manifold check of ``x1`` (default 1e-4 in float32, 1e-8 in float64).

    Returns:
        ``(B,)`` log-densities (nats), or ``(log_p, x0)``.

    Example:
        >>> import torch, math
        >>> from flowforge.core.manifolds import Sphere
        >>> w = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
        >>> rot = lambda x, t: torch.linalg.cross(w.expand_as(x), x, dim=-1)  # a Killing field: div = 0
        >>> x = Sphere(2).random_uniform(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> lp = riemannian_log_prob(rot, x, Sphere(2), grid=10)
        >>> bool(torch.allclose(lp, torch.full((4,), -math.log(4 * math.pi), dtype=torch.float64)))
        True
    """
    _check_method(divergence)
    manifold.check_point(x1, atol, name="x1")
    if isinstance(solver, (EulerMaruyama, Projected)):
        raise ValueError(
            "riemannian_log_prob wraps the solver in Projected itself; pass a plain ODE solver such as RK4()"
        )
    if create_graph and not torch.is_grad_enabled():
        raise ValueError(
            "create_graph=True needs gradient mode: call outside torch.no_grad(), or pass create_graph=False"
        )
    solver = RK4() if solver is None else solver
    if grid is None:
        grid = torch.tensor([1.0, 0.0], dtype=torch.float64) if getattr(solver, "adaptive", False) else 100
    if isinstance(grid, int) and not isinstance(grid, bool):
        grid = uniform_grid(grid, 1.0, 0.0)
    if isinstance(grid, Tensor) and grid.dim() == 1 and grid.numel() >= 2 and not grid[0] > grid[-1]:
        raise ValueError(
            "riemannian_log_prob integrates from t=1 back to t=0; pass a decreasing grid such as "
            f"uniform_grid(100, 1.0, 0.0) or an int number of steps, got {float(grid[0])} -> {float(grid[-1])}"
        )
    base = manifold.uniform_log_prob if base_log_prob is None else base_log_prob
    b, event = x1.shape[0], tuple(x1.shape[1:])
    d = math.prod(event)
    probes = _draw_probes(divergence, n_probes, generator, x1)

    def augmented(z: Tensor, t: Tensor) -> Tensor:
        x = z[:, :d].reshape(b, *event)
        v, div = riemannian_divergence(f, x, t, manifold, divergence, probes, create_graph=create_graph)
        return torch.cat([v.reshape(b, d), div.reshape(b, 1)], dim=1)

    x_start = x1 if create_graph else x1.detach()
    z1 = torch.cat([x_start.reshape(b, d), torch.zeros(b, 1, dtype=x1.dtype, device=x1.device)], dim=1)
    z0 = solve(augmented, z1, Projected(solver, _WithLogDensity(manifold, event)), grid).x
    x0 = z0[:, :d].reshape(b, *event)
    lp0 = base(x0)
    if not isinstance(lp0, Tensor) or lp0.shape != (b,):
        shape = tuple(lp0.shape) if isinstance(lp0, Tensor) else type(lp0).__name__
        raise ValueError(f"base_log_prob returned shape {shape} for a batch of {b}; it must return (B,)")
    lp = lp0 + z0[:, d]
    return (lp, x0) if return_x0 else lp
