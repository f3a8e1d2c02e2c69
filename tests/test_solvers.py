"""Tests for flowforge.core.solvers against a closed-form Gaussian-to-Gaussian flow (float64).

The flow: x0 ~ N(0, I), x1 ~ N(m, s^2 I), cosine path alpha = sin(pi t / 2), sigma = cos(pi t / 2).
The marginal is N(alpha m, std^2 I) with std^2 = sigma^2 + alpha^2 s^2, the marginal velocity is
v(x, t) = alpha' m + (std' / std)(x - alpha m), the score is -(x - alpha m) / std^2, and the exact flow
map is x0 -> alpha(t) m + std(t) x0.
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

import flowforge.core.solvers as solvers_module
from flowforge.core.solvers import (
    RK4,
    Dopri5,
    Euler,
    EulerMaruyama,
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
# Convergence orders
# ------------------------------------------------------------------------------------------------

FIXED = [
    (Euler, [16, 32, 64, 128]),
    (Midpoint, [8, 16, 32, 64]),
    (Heun, [8, 16, 32, 64]),
    (RK4, [16, 32, 64, 128]),
    (PseudoCorrector, [8, 16, 32, 64]),
]


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("cls,steps", FIXED, ids=[c.__name__ for c, _ in FIXED])
def test_fixed_step_convergence_slope_matches_declared_order(cls, steps, backward):
    solver = cls()
    errs = [endpoint_error(solver, n, backward) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(slope - solver.order) <= 0.25, f"{cls.__name__}: slope {slope:.3f}, errors {errs}"


@pytest.mark.parametrize("cls,per_step", [(Euler, 1), (Midpoint, 2), (Heun, 2), (RK4, 4)])
def test_fixed_step_nfe(cls, per_step):
    assert solve(velocity, x0_batch(), cls(), 7).nfe == 7 * per_step


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


def test_module_docstring_examples_run():
    result = doctest.testmod(solvers_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
