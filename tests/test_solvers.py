"""Tests for flowforge.core.solvers against a closed-form Gaussian-to-Gaussian flow (float64).

The flow: x0 ~ N(0, I), x1 ~ N(m, s^2 I), cosine path alpha = sin(pi t / 2), sigma = cos(pi t / 2).
The marginal is N(alpha m, std^2 I) with std^2 = sigma^2 + alpha^2 s^2, the marginal velocity is
v(x, t) = alpha' m + (std' / std)(x - alpha m), the score is -(x - alpha m) / std^2, and the exact flow
map is x0 -> alpha(t) m + std(t) x0.
"""

from __future__ import annotations

import doctest
import importlib
import math
import pkgutil

import numpy as np
import pytest
import torch

import flowforge.core.solvers as solvers_module
from flowforge.core.manifolds import Euclidean
from flowforge.core.solvers import (
    RK4,
    ButcherTableau,
    Dopri5,
    Euler,
    EulerMaruyama,
    ExplicitRungeKutta,
    Heun,
    Midpoint,
    PseudoCorrector,
    Solver,
    SolverState,
    constant_eps,
    edm_grid,
    shifted_grid,
    solve,
    uniform_grid,
    vanishing_eps,
)
from flowforge.core.time import resolution_shift

DT = torch.float64
M = torch.tensor([1.0, -2.0], dtype=DT)
S = 0.5


def schedule(t: torch.Tensor, s: float = S):
    a = torch.sin(math.pi * t / 2)
    sg = torch.cos(math.pi * t / 2)
    da = math.pi / 2 * torch.cos(math.pi * t / 2)
    dsg = -math.pi / 2 * torch.sin(math.pi * t / 2)
    std = torch.sqrt(sg**2 + a**2 * s**2)
    dstd = (sg * dsg + a * da * s**2) / std
    return a, da, std, dstd


def _col(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return u.reshape((-1,) + (1,) * (x.dim() - 1))


def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    assert t.shape == (x.shape[0],) and t.dtype == x.dtype, (t.shape, t.dtype)
    a, da, std, dstd = (_col(u, x) for u in schedule(t))
    return da * M + dstd / std * (x - a * M)


def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a, _, std, _ = (_col(u, x) for u in schedule(t))
    return -(x - a * M) / std**2


def flow_map(x0: torch.Tensor, t: float) -> torch.Tensor:
    a, _, std, _ = schedule(torch.tensor(t, dtype=DT))
    return a * M + std * x0


def x0_batch(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=DT)


def endpoint_error(solver: Solver, steps: int, backward: bool = False) -> float:
    x0 = x0_batch()
    x1 = flow_map(x0, 1.0)
    if backward:
        out = solve(velocity, x1, solver, uniform_grid(steps, 1.0, 0.0))
        return (out.x - x0).abs().max().item()
    return (solve(velocity, x0, solver, steps).x - x1).abs().max().item()


# ------------------------------------------------------------------------------------------------
# Convergence orders: one generic test for every exported solver (house rule 4)
# ------------------------------------------------------------------------------------------------

# A nonlinear, coupled, time-dependent field with a closed-form flow (float64): in polar form
# u = |x|^2 and angle th, with s(t) = t + t^2/2,
#   du/ds = 2 a u (1 - u)  ->  u(s) = 1 / (1 + C e^{-2 a s}),  C = 1/u0 - 1,
#   dth/ds = w u           ->  th(s) = th0 + w (s + log((1 + C e^{-2as}) / (1 + C)) / (2a)).
# (The Gaussian-to-Gaussian flow above is linear in x, where Dormand-Prince's tableau converges
# faster than its order, so it cannot tell order 5 from order 6.)
NL_A, NL_W = 0.5, 1.0


def nonlinear_field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    assert t.shape == (x.shape[0],) and t.dtype == x.dtype, (t.shape, t.dtype)
    u = x.square().sum(-1, keepdim=True)
    jx = torch.stack([-x[:, 1], x[:, 0]], -1)
    return (1.0 + t).unsqueeze(-1) * (NL_A * (1 - u) * x + NL_W * u * jx)


def nonlinear_flow_map(x0: torch.Tensor, t: float) -> torch.Tensor:
    s = t + t * t / 2
    u0 = x0.square().sum(-1)
    c = 1 / u0 - 1
    e = math.exp(-2 * NL_A * s)
    u = 1 / (1 + c * e)
    th = torch.atan2(x0[:, 1], x0[:, 0]) + NL_W * (s + torch.log((1 + c * e) / (1 + c)) / (2 * NL_A))
    return u.sqrt().unsqueeze(-1) * torch.stack([th.cos(), th.sin()], -1)


def nonlinear_x0(n: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    angle = 2 * math.pi * torch.rand(n, generator=g, dtype=DT)
    radius = 0.5 + torch.rand(n, generator=g, dtype=DT)
    return radius.unsqueeze(-1) * torch.stack([angle.cos(), angle.sin()], -1)


def _is_solver_class(obj: object) -> bool:
    return (
        isinstance(obj, type)
        and not getattr(obj, "_is_protocol", False)
        and callable(getattr(obj, "init", None))
        and callable(getattr(obj, "step", None))
    )


# every solver class that flowforge.core.solvers exports: a new one is tested without editing this file
SOLVER_CLASSES = [getattr(solvers_module, n) for n in solvers_module.__all__]
SOLVER_CLASSES = [c for c in SOLVER_CLASSES if _is_solver_class(c)]
# the classes whose constructor needs arguments; every other one is built as cls()
ODE_FACTORIES = {
    ExplicitRungeKutta: lambda: ExplicitRungeKutta(Dopri5.tableau),
    # tolerances so loose that every step is accepted and the first step spans the whole interval:
    # one 5th-order Dormand-Prince step per grid interval, i.e. a fixed-step method
    Dopri5: lambda: Dopri5(atol=1e6, rtol=1e6, first_step=1.0),
    # on flat space the projections are identities: the wrapped solver's order must come through
    solvers_module.Projected: lambda: solvers_module.Projected(RK4(), Euclidean(2)),
}
SDE_FACTORIES = {
    EulerMaruyama: lambda score, eps, noise: EulerMaruyama(score, eps, noise=noise),
}
LADDER = [8, 16, 32, 64, 128, 256, 512]
ERROR_FLOOR = 1e-11  # errors below this are round-off, not truncation


def _slope(steps, errs) -> float:
    return float(-np.polyfit(np.log(steps), np.log(errs), 1)[0])


def _ode_slope(solver: Solver, backward: bool) -> tuple[float, list, list]:
    """Slope of log(error) vs log(steps) on the finest 4 ladder points above the round-off floor."""
    x0 = nonlinear_x0()
    x1 = nonlinear_flow_map(x0, 1.0)
    errs = []
    for k in LADDER:
        states = []
        if backward:
            out = solve(nonlinear_field, x1, solver, uniform_grid(k, 1.0, 0.0), callback=states.append)
            errs.append((out.x - x0).abs().max().item())
        else:
            out = solve(nonlinear_field, x0, solver, k, callback=states.append)
            errs.append((out.x - x1).abs().max().item())
        if solver.adaptive:  # the factory must make it a fixed-step method: one accepted step per interval
            assert states[-1].n_accepted == k and states[-1].n_rejected == 0, (k, states[-1])
        if errs[-1] < ERROR_FLOOR:  # finer grids only measure round-off
            break
    kept = [(k, e) for k, e in zip(LADDER, errs) if e > ERROR_FLOOR][-4:]
    assert len(kept) == 4, f"errors {errs}: fewer than 4 above the round-off floor {ERROR_FLOOR}"
    steps, used = zip(*kept)
    return _slope(steps, used), list(steps), errs


def _orthonormal_noise(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``z`` made orthogonal to the constant and to the columns of ``x`` and exactly white (1/n).

    With such noise, and a drift affine in ``x``, the sample mean and covariance of Euler–Maruyama's
    output follow the scheme's moment recursion exactly: the weak error is measured without
    Monte-Carlo error.
    """
    n = x.shape[0]
    basis = torch.cat([torch.ones(n, 1, dtype=x.dtype), x.reshape(n, -1)], 1)
    q, _ = torch.linalg.qr(torch.cat([basis, z.reshape(n, -1)], 1))
    return (q[:, basis.shape[1] :] * math.sqrt(n)).reshape(z.shape)


def _sde_weak_errors(make, steps, backward: bool) -> list[float]:
    """Weak error (first two moments) at t=1 (or t=0 backward) on the Gaussian interpolant SDE."""
    g = torch.Generator().manual_seed(0)
    white = _orthonormal_noise(torch.randn(64, 2, generator=g, dtype=DT), torch.zeros(64, 0, dtype=DT))
    errs = []
    for k in steps:
        noise = lambda x: _orthonormal_noise(torch.randn(x.shape, generator=g, dtype=DT), x)  # noqa: E731
        solver = make(score, constant_eps(0.5), noise)
        if backward:
            out = solve(velocity, M + S * white, solver, uniform_grid(k, 1.0, 0.0)).x
            mean, var = torch.zeros(2, dtype=DT), 1.0
        else:
            out = solve(velocity, white, solver, k).x
            mean, var = M, S**2
        errs.append(
            max(
                (out.mean(0) - mean).abs().max().item(), (out.var(0, unbiased=False) - var).abs().max().item()
            )
        )
    return errs


def _sde_strong_errors(make, steps, lam: float = 1.0, eps: float = 0.5) -> list[float]:
    """RMS pathwise error at t=1 on the Ornstein–Uhlenbeck SDE dX = -lam X dt + sqrt(2 eps) dW
    (score 0), every step count driven by the same fine Brownian path."""
    n, fine = 500, 2048
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(n, 2, generator=g, dtype=DT)
    dw = torch.randn(fine, n, 2, generator=g, dtype=DT) * math.sqrt(1.0 / fine)
    s = torch.arange(fine, dtype=DT) / fine
    exact = math.exp(-lam) * x0 + math.sqrt(2 * eps) * (torch.exp(-lam * (1 - s))[:, None, None] * dw).sum(0)
    w = torch.cat([torch.zeros(1, n, 2, dtype=DT), dw.cumsum(0)])
    errs = []
    for k in steps:
        r, calls = fine // k, [0]

        def noise(x, r=r, calls=calls, k=k):
            i = calls[0]
            calls[0] += 1
            return (w[(i + 1) * r] - w[i * r]) * math.sqrt(k)

        solver = make(lambda x, t: torch.zeros_like(x), constant_eps(eps), noise)
        out = solve(lambda x, t: -lam * x, x0, solver, k).x
        errs.append((out - exact).square().sum(-1).mean().sqrt().item())
    return errs


def test_every_exported_solver_class_is_found():
    names = {c.__name__ for c in SOLVER_CLASSES}
    assert {"Euler", "Midpoint", "Heun", "RK4", "PseudoCorrector", "Dopri5", "EulerMaruyama"} <= names


@pytest.mark.parametrize("cls", SOLVER_CLASSES, ids=[c.__name__ for c in SOLVER_CLASSES])
def test_convergence_slope_matches_declared_order(cls):
    """House rule 4: the fitted slope of log(error) against log(steps) is the declared order
    (within 15%, at least 0.25), forward and backward in time."""
    if cls in SDE_FACTORIES:
        make = SDE_FACTORIES[cls]
        solver = make(score, constant_eps(0.5), torch.randn_like)
        steps = [8, 16, 32, 64, 128]
        for backward in (False, True):
            errs = _sde_weak_errors(make, steps, backward)
            slope = _slope(steps, errs)
            assert abs(slope - solver.weak_order) <= 0.25, f"weak slope {slope:.3f}, errors {errs}"
        errs = _sde_strong_errors(make, steps)
        slope = _slope(steps, errs)
        assert abs(slope - solver.order) <= 0.25, f"strong slope {slope:.3f}, errors {errs}"
        return
    try:
        solver = ODE_FACTORIES.get(cls, cls)()
    except TypeError as e:
        raise AssertionError(
            f"{cls.__name__}() needs arguments: add it to ODE_FACTORIES or SDE_FACTORIES"
        ) from e
    for backward in (False, True):
        slope, steps, errs = _ode_slope(solver, backward)
        tol = max(0.25, 0.15 * solver.order)
        assert abs(slope - solver.order) <= tol, (
            f"{cls.__name__} ({'backward' if backward else 'forward'}): slope {slope:.3f} on steps {steps}, "
            f"declared order {solver.order}; errors {errs}"
        )


# ------------------------------------------------------------------------------------------------
# Runge–Kutta tableaus
# ------------------------------------------------------------------------------------------------

RK_CLASSES = [c for c in SOLVER_CLASSES if issubclass(c, ExplicitRungeKutta) and c is not ExplicitRungeKutta]
TABLEAUS = {
    c.__name__: c.tableau for c in SOLVER_CLASSES if isinstance(getattr(c, "tableau", None), ButcherTableau)
}


def _order_conditions(t: ButcherTableau) -> dict[int, list[float]]:
    """Residuals of the Runge–Kutta order conditions (one per rooted tree, Hairer et al. Table II.2.2)."""
    s = t.stages
    a = np.zeros((s, s))
    for i, row in enumerate(t.a):
        a[i, : len(row)] = row
    b, c = np.array(t.b), np.array(t.c)
    ac, ac2, a2c = a @ c, a @ c**2, a @ a @ c
    return {
        1: [b.sum() - 1],
        2: [b @ c - 1 / 2],
        3: [b @ c**2 - 1 / 3, b @ ac - 1 / 6],
        4: [b @ c**3 - 1 / 4, b @ (c * ac) - 1 / 8, b @ ac2 - 1 / 12, b @ a2c - 1 / 24],
        5: [
            b @ c**4 - 1 / 5,
            b @ (c**2 * ac) - 1 / 10,
            b @ (c * ac2) - 1 / 15,
            b @ (c * a2c) - 1 / 30,
            b @ (ac * ac) - 1 / 20,
            b @ (a @ c**3) - 1 / 20,
            b @ (a @ (c * ac)) - 1 / 40,
            b @ (a @ ac2) - 1 / 60,
            b @ (a @ a2c) - 1 / 120,
        ],
    }


@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_tableau_meets_exactly_its_declared_order_conditions(name):
    t = TABLEAUS[name]
    conds = _order_conditions(t)
    for p in range(1, t.order + 1):
        assert max(abs(r) for r in conds[p]) < 1e-12, f"{name}: order-{p} conditions {conds[p]}"
    if t.order + 1 in conds:  # the declared order is not an understatement either
        assert max(abs(r) for r in conds[t.order + 1]) > 1e-6, (
            f"{name} meets the order-{t.order + 1} conditions"
        )


@pytest.mark.parametrize("cls", RK_CLASSES, ids=[c.__name__ for c in RK_CLASSES])
def test_runge_kutta_classes_are_their_tableau(cls):
    solver = cls()
    assert (
        solver.order == cls.order == cls.tableau.order and isinstance(solver, Solver) and not solver.adaptive
    )
    out = solve(velocity, x0_batch(), solver, 5)
    assert out.nfe == 5 * cls.tableau.stages
    generic = solve(velocity, x0_batch(), ExplicitRungeKutta(cls.tableau), 5)
    assert torch.equal(out.x, generic.x)


@pytest.mark.parametrize("cls,per_step", [(Euler, 1), (Midpoint, 2), (Heun, 2), (RK4, 4)])
def test_fixed_step_nfe(cls, per_step):
    assert solve(velocity, x0_batch(), cls(), 7).nfe == 7 * per_step


# Frozen copies of the hand-written steps these classes had before they became tableaus.
def _old_euler(f, x, t, t_next):
    h = t_next - t
    return x + h * f(x, t)


def _old_midpoint(f, x, t, t_next):
    h = t_next - t
    k1 = f(x, t)
    k2 = f(x + 0.5 * h * k1, t + 0.5 * h)
    return x + h * k2


def _old_heun(f, x, t, t_next):
    h = t_next - t
    d = f(x, t)
    d_tilde = f(x + h * d, t_next)
    return x + 0.5 * h * (d + d_tilde)


def _old_rk4(f, x, t, t_next):
    h = t_next - t
    k1 = f(x, t)
    k2 = f(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = f(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = f(x + h * k3, t_next)
    return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


OLD_STEPS = [(Euler, _old_euler), (Midpoint, _old_midpoint), (Heun, _old_heun), (RK4, _old_rk4)]


@pytest.mark.parametrize("cls,old_step", OLD_STEPS, ids=[c.__name__ for c, _ in OLD_STEPS])
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_tableau_solvers_match_the_old_hand_written_steps(cls, old_step, backward):
    grid = shifted_grid(16, 2.0)  # non-uniform steps
    if backward:
        grid = grid.flip(0)
    x0 = nonlinear_x0(16, seed=3)
    if backward:  # start on the flow's image of x0, where the backward flow stays bounded
        x0 = nonlinear_flow_map(x0, 1.0)

    def f(x, t):
        return nonlinear_field(x, torch.full((x.shape[0],), float(t), dtype=DT))

    out = solve(nonlinear_field, x0, cls(), grid, return_trajectory=True)
    x = x0
    for k in range(len(grid) - 1):
        x = old_step(f, x, float(grid[k]), float(grid[k + 1]))
        torch.testing.assert_close(out.trajectory[k + 1], x, rtol=0, atol=1e-12)
    assert (out.x - x0).abs().max() > 0.1  # the field moved the points: the comparison has teeth


def test_butcher_tableau_rejects_inconsistent_coefficients():
    with pytest.raises(ValueError, match="same number of stages"):
        ButcherTableau(a=((), (1.0,)), b=(1.0,), c=(0.0, 1.0), order=1)
    with pytest.raises(ValueError, match="row 1 of a has 2 entries"):
        ButcherTableau(a=((), (0.5, 0.5)), b=(0.5, 0.5), c=(0.0, 1.0), order=2)
    with pytest.raises(ValueError, match="row sums"):
        ButcherTableau(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 0.5), order=2)
    with pytest.raises(ValueError, match="sum to 1"):
        ButcherTableau(a=((), (1.0,)), b=(0.5, 0.6), c=(0.0, 1.0), order=2)
    with pytest.raises(ValueError, match="integer >= 1"):
        ButcherTableau(a=((),), b=(1.0,), c=(0.0,), order=0)
    with pytest.raises(TypeError, match="ButcherTableau"):
        ExplicitRungeKutta("rk4")
    t = ButcherTableau(a=[[], [1]], b=[0.5, 0.5], c=[0, 1], order=2)
    assert t.a == ((), (1.0,)) and t.stages == 2 and t == Heun.tableau
    with pytest.raises(AttributeError):
        t.order = 3


def test_pseudo_corrector_costs_one_nfe_per_step_after_the_first():
    assert solve(velocity, x0_batch(), PseudoCorrector(), 1).nfe == 2
    assert solve(velocity, x0_batch(), PseudoCorrector(), 9).nfe == 10


def test_pseudo_corrector_follows_flowturbo_update():
    x0 = x0_batch(3)
    grid = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=DT)
    out = solve(velocity, x0, PseudoCorrector(), grid, return_trajectory=True)

    def tv(t):
        return torch.full((3,), t, dtype=DT)

    x, d = x0, velocity(x0, tv(0.0))
    for k in range(3):
        t0, t1 = float(grid[k]), float(grid[k + 1])
        h = t1 - t0
        d_tilde = velocity(x + h * d, tv(t1))
        x = x + h / 2 * (d + d_tilde)
        d = d_tilde  # reuse the velocity at the predicted point, not f(x_{i+1})
        torch.testing.assert_close(out.trajectory[k + 1], x, rtol=0, atol=1e-14)
    assert out.nfe == 4


def test_pseudo_corrector_beats_heun_at_equal_nfe():
    for k in (4, 8, 16):
        heun = endpoint_error(Heun(), k)  # 2k NFE
        pc_steps = 2 * k - 1  # 2k NFE
        assert solve(velocity, x0_batch(), PseudoCorrector(), pc_steps).nfe == 2 * k
        pc = endpoint_error(PseudoCorrector(), pc_steps)
        assert pc < heun, f"NFE {2 * k}: pseudo-corrector error {pc:.3e} vs Heun error {heun:.3e}"


# ------------------------------------------------------------------------------------------------
# Dopri5
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_dopri5_error_within_tolerance_and_nfe_grows(backward):
    x0 = x0_batch()
    x1 = flow_map(x0, 1.0)
    start, target = (x1, x0) if backward else (x0, x1)
    grid = torch.tensor([1.0, 0.0] if backward else [0.0, 1.0], dtype=DT)
    nfes = []
    for tol in (1e-3, 1e-4, 1e-5, 1e-6):
        calls = []
        out = solve(velocity, start, Dopri5(atol=tol, rtol=tol), grid, callback=calls.append)
        err = (out.x - target).abs().max().item()
        assert err <= 10 * tol, f"tol {tol}: error {err:.3e}"
        assert len(calls) == 1 and calls[0].n_accepted > 0
        assert isinstance(out.nfe, int) and out.nfe > 0
        nfes.append(out.nfe)
    assert all(a <= b for a, b in zip(nfes, nfes[1:])) and nfes[0] < nfes[-1], f"nfe vs tol: {nfes}"


def test_dopri5_nfe_counts_every_evaluation():
    calls = [0]

    def counted(x, t):
        calls[0] += 1
        return velocity(x, t)

    out = solve(counted, x0_batch(), Dopri5(1e-6, 1e-6), uniform_grid(3))
    assert out.nfe == calls[0]


def test_dopri5_lands_on_every_grid_point():
    x0 = x0_batch()
    grid = torch.tensor([0.0, 0.1, 0.25, 0.6, 1.0], dtype=DT)
    out = solve(velocity, x0, Dopri5(1e-9, 1e-9), grid, return_trajectory=True)
    for k, t in enumerate(grid.tolist()):
        torch.testing.assert_close(out.trajectory[k], flow_map(x0, t), rtol=0, atol=1e-7)


def test_dopri5_first_step_and_limits():
    x0 = x0_batch()
    out = solve(velocity, x0, Dopri5(1e-6, 1e-6, first_step=1e-3), 1)
    assert (out.x - flow_map(x0, 1.0)).abs().max() < 1e-5
    with pytest.raises(RuntimeError, match="max_steps"):
        solve(velocity, x0, Dopri5(1e-10, 1e-10, max_steps=3), 1)
    for kwargs in ({"atol": 0.0}, {"rtol": -1.0}, {"max_steps": 0}, {"first_step": 0.0}):
        with pytest.raises(ValueError, match="Dopri5"):
            Dopri5(**kwargs)


# ------------------------------------------------------------------------------------------------
# Euler–Maruyama
# ------------------------------------------------------------------------------------------------


def _check_moments(x: torch.Tensor, mean: torch.Tensor, var: float, n_se: float = 5.0) -> None:
    n = x.shape[0]
    se_mean = x.std(0) / math.sqrt(n)
    se_var = x.var(0) * math.sqrt(2.0 / (n - 1))
    dm = (x.mean(0) - mean).abs()
    dv = (x.var(0) - var).abs()
    assert (dm < n_se * se_mean).all(), f"mean off by {dm.tolist()} (SE {se_mean.tolist()})"
    assert (dv < n_se * se_var).all(), f"variance off by {dv.tolist()} (SE {se_var.tolist()})"


@pytest.mark.parametrize(
    "eps,steps", [(constant_eps(0.5), 500), (vanishing_eps(1.0), 250)], ids=["const", "vanish"]
)
def test_euler_maruyama_matches_target_moments(eps, steps):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(20_000, 2, generator=g, dtype=DT)
    out = solve(velocity, x0, EulerMaruyama(score, eps, generator=g), steps)
    assert out.nfe == 2 * steps - (1 if eps(torch.zeros(1, dtype=DT)).item() == 0 else 0)
    _check_moments(out.x, M, S**2)


def test_euler_maruyama_backward_reaches_source():
    g = torch.Generator().manual_seed(2)
    x1 = M + S * torch.randn(20_000, 2, generator=g, dtype=DT)
    out = solve(
        velocity, x1, EulerMaruyama(score, vanishing_eps(1.0), generator=g), uniform_grid(250, 1.0, 0.0)
    )
    _check_moments(out.x, torch.zeros(2, dtype=DT), 1.0)


def test_euler_maruyama_same_seed_same_samples():
    def run(seed):
        solver = EulerMaruyama(score, constant_eps(0.5), generator=torch.Generator().manual_seed(seed))
        return solve(velocity, x0_batch(), solver, 10).x

    assert torch.equal(run(3), run(3))
    assert not torch.allclose(run(3), run(4))


def test_euler_maruyama_with_zero_eps_is_euler():
    em = EulerMaruyama(score, constant_eps(0.0), generator=torch.Generator().manual_seed(0))
    a = solve(velocity, x0_batch(), em, 12)
    b = solve(velocity, x0_batch(), Euler(), 12)
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe == 12


def test_euler_maruyama_update_and_noise_free_final_step():
    x0 = x0_batch(4)
    e0 = 0.3
    calls = []

    def noise(x):
        calls.append(x.shape)
        return torch.full_like(x, 0.7)

    out = solve(velocity, x0, EulerMaruyama(score, e0, noise=noise), torch.tensor([0.0, 0.4, 1.0], dtype=DT))
    tv = lambda t: torch.full((4,), t, dtype=DT)
    x = x0 + 0.4 * (velocity(x0, tv(0.0)) + e0 * score(x0, tv(0.0))) + math.sqrt(2 * e0 * 0.4) * 0.7
    x = x + 0.6 * (velocity(x, tv(0.4)) + e0 * score(x, tv(0.4)))  # lands on t=1: no noise
    torch.testing.assert_close(out.x, x, rtol=0, atol=1e-14)
    assert len(calls) == 1

    # backward in time the score term changes sign: dX = [b - eps s] dt + sqrt(2 eps) dW
    back = solve(velocity, x0, EulerMaruyama(score, e0, noise=noise), torch.tensor([0.9, 0.5], dtype=DT))
    y = x0 - 0.4 * (velocity(x0, tv(0.9)) - e0 * score(x0, tv(0.9))) + math.sqrt(2 * e0 * 0.4) * 0.7
    torch.testing.assert_close(back.x, y, rtol=0, atol=1e-14)


def test_euler_maruyama_needs_explicit_randomness_and_valid_outputs():
    with pytest.raises(ValueError, match="generator="):
        EulerMaruyama(score, constant_eps(1.0))
    with pytest.raises(ValueError, match="noise returned shape"):
        solve(velocity, x0_batch(), EulerMaruyama(score, 1.0, noise=lambda x: x[:, :1]), 3)
    with pytest.raises(ValueError, match="eps"):
        solve(velocity, x0_batch(), EulerMaruyama(score, lambda t: -t, noise=torch.randn_like), 3)
    with pytest.raises(ValueError, match="e0 >= 0"):
        constant_eps(-1.0)
    vanish = vanishing_eps(2.0)(torch.tensor([0.0, 0.5, 1.0], dtype=DT))
    torch.testing.assert_close(vanish, torch.tensor([0.0, 2.0, 0.0], dtype=DT))


# ------------------------------------------------------------------------------------------------
# solve(): round trip, callback, trajectory, gradients, errors
# ------------------------------------------------------------------------------------------------


def test_rk4_round_trip():
    x0 = x0_batch()
    x1 = solve(velocity, x0, RK4(), 100).x
    back = solve(velocity, x1, RK4(), uniform_grid(100, 1.0, 0.0)).x
    assert (back - x0).abs().max() < 1e-8


def test_callback_trajectory_and_event_shapes():
    x0 = torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(0), dtype=DT)
    states = []
    out = solve(velocity, x0, Heun(), 6, callback=states.append, return_trajectory=True)
    assert len(states) == 6 and all(isinstance(s, SolverState) for s in states)
    assert [s.nfe for s in states] == [2, 4, 6, 8, 10, 12]
    torch.testing.assert_close(torch.tensor([float(s.t) for s in states], dtype=DT), out.times[1:])
    assert out.trajectory.shape == (7, 5, 3, 2)
    assert torch.equal(out.trajectory[0], x0) and torch.equal(out.trajectory[-1], out.x)
    assert solve(velocity, x0, Heun(), 6).trajectory is None
    assert (out.x - flow_map(x0, 1.0)).abs().max() < 0.1


@pytest.mark.parametrize(
    "solver", [Euler(), Midpoint(), Heun(), RK4(), PseudoCorrector(), Dopri5(1e-8, 1e-8)]
)
def test_gradients_flow_through_solve(solver):
    x0 = x0_batch(3).requires_grad_(True)
    x1 = solve(velocity, x0, solver, 64).x
    (g,) = torch.autograd.grad(x1.sum(), x0)
    torch.testing.assert_close(g, torch.full_like(x0, S), rtol=0, atol=5e-3)  # d x1 / d x0 = std(1) = s
    assert isinstance(solver, Solver)


def test_solve_accepts_time_tensor_state():
    state = Euler().init(velocity, x0_batch(2), torch.tensor(0.0, dtype=DT))
    state = Euler().step(velocity, state, torch.tensor(0.5, dtype=DT))
    assert state.nfe == 1 and float(state.t) == 0.5


def test_bad_inputs_give_clear_errors():
    x0 = x0_batch()
    with pytest.raises(ValueError, match="strictly monotone"):
        solve(velocity, x0, Euler(), torch.tensor([0.0, 0.5, 0.4, 1.0]))
    with pytest.raises(ValueError, match="strictly monotone"):
        solve(velocity, x0, Euler(), torch.tensor([0.0, 0.5, 0.5, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        solve(velocity, x0, Euler(), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="1-D"):
        solve(velocity, x0, Euler(), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="steps >= 1"):
        solve(velocity, x0, Euler(), 0)
    with pytest.raises(TypeError, match="grid"):
        solve(velocity, x0, Euler(), [0.0, 1.0])
    with pytest.raises(ValueError, match=r"velocity returned shape \(8, 1\) for x of shape \(8, 2\)"):
        solve(lambda x, t: x[:, :1], x0, RK4(), 2)
    with pytest.raises(ValueError, match="floating-point"):
        solve(velocity, torch.zeros(3, 2, dtype=torch.long), Euler(), 2)


# ------------------------------------------------------------------------------------------------
# Grids
# ------------------------------------------------------------------------------------------------


def test_uniform_and_shifted_grids():
    g = uniform_grid(4)
    assert g.dtype == DT and g.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert uniform_grid(3, 1.0, 0.0)[0] == 1.0 and uniform_grid(3, 1.0, 0.0)[-1] == 0.0
    torch.testing.assert_close(shifted_grid(8, 1.0), uniform_grid(8))
    sg = shifted_grid(8, 3.0)
    torch.testing.assert_close(sg, resolution_shift(uniform_grid(8), 3.0))
    assert sg[0] == 0.0 and sg[-1] == 1.0 and (sg.diff() > 0).all() and sg[4] < 0.5
    with pytest.raises(ValueError, match="steps >= 1"):
        uniform_grid(0)
    with pytest.raises(ValueError, match="t0 != t1"):
        uniform_grid(3, 0.5, 0.5)


def test_edm_grid_is_karras_schedule_in_flowforge_time():
    n, smin, smax, rho = 6, 0.002, 80.0, 7.0
    g = edm_grid(n, smin, smax, rho)
    assert g.shape == (n + 1,) and g.dtype == DT and (g.diff() > 0).all()
    assert g[-1].item() == 1.0
    assert g[0].item() == pytest.approx(1.0 / 81.0, rel=1e-12)
    sigma = (1.0 - g[:-1]) / g[:-1]  # sigma_EDM = (1 - t) / t
    i = torch.arange(n, dtype=DT)
    karras = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    torch.testing.assert_close(sigma, karras, rtol=1e-10, atol=0)
    assert edm_grid(1).tolist() == pytest.approx([1 / 81, 1.0])
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        edm_grid(4, sigma_min=1.0, sigma_max=0.5)


@pytest.mark.parametrize("name", ["", *sorted(m.name for m in pkgutil.iter_modules(solvers_module.__path__))])
def test_module_docstring_examples_run(name):
    module = importlib.import_module(f"flowforge.core.solvers{'.' + name if name else ''}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_every_fixed_step_solver_has_a_name_for_the_cli():
    from flowforge.continuous import SOLVERS

    named = set(SOLVERS.values())
    for name in solvers_module.__all__:
        obj = getattr(solvers_module, name)
        rk = solvers_module.ExplicitRungeKutta
        if isinstance(obj, type) and issubclass(obj, rk) and obj is not rk:
            assert obj in named, f"{name} has no name in flowforge.continuous.SOLVERS"
