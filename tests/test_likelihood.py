"""Tests for flowforge.core.likelihood against a closed-form Gaussian-to-Gaussian flow (float64).

The flow: x0 ~ N(0, I), x1 ~ N(m, s^2 I), cosine path alpha = sin(pi t / 2), sigma = cos(pi t / 2);
the exact marginal velocity is v(x, t) = alpha' m + (std' / std)(x - alpha m) with
std^2 = sigma^2 + alpha^2 s^2, so log p_1(x1) = log N(x1; m, s^2 I) and the flow maps x1 back to
(x1 - m) / s at t=0.
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import flowforge.core.likelihood as likelihood_module
from flowforge.core.likelihood import divergence, log_prob
from flowforge.core.solvers import (
    RK4,
    Dopri5,
    Euler,
    EulerMaruyama,
    Heun,
    Midpoint,
    PseudoCorrector,
    uniform_grid,
)

DT = torch.float64
LOG_2PI = math.log(2 * math.pi)


def gaussian_velocity(m: torch.Tensor, s: torch.Tensor | float):
    """Exact marginal velocity of the cosine path from N(0, I) to N(m, s^2 I); m broadcasts over event."""

    def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype
        t = t.reshape((-1,) + (1,) * (x.dim() - 1))
        a, sg = torch.sin(math.pi * t / 2), torch.cos(math.pi * t / 2)
        da, dsg = math.pi / 2 * sg, -math.pi / 2 * a
        std = torch.sqrt(sg**2 + a**2 * s**2)
        dstd = (sg * dsg + a * da * s**2) / std
        return da * m + dstd / std * (x - a * m)

    return f


def std_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    z = z.reshape(z.shape[0], -1)
    return -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * LOG_2PI


def gaussian_log_prob(x: torch.Tensor, m: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
    z = ((x - m) / s).reshape(x.shape[0], -1)
    d = z.shape[1]
    log_s = torch.log(torch.as_tensor(s, dtype=x.dtype))
    return -0.5 * (z**2).sum(1) - d * log_s - 0.5 * d * LOG_2PI


M = torch.tensor([1.0, -2.0], dtype=DT)
S = 0.5


def data(n: int = 16, seed: int = 0, m: torch.Tensor = M, s: float = S) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return m + s * torch.randn(n, *m.shape, generator=g, dtype=DT)


# ------------------------------------------------------------------------------------------------
# Exact divergence against the closed form
# ------------------------------------------------------------------------------------------------


def test_exact_log_prob_with_dopri5_matches_closed_form():
    x1 = data()
    lp, x0 = log_prob(
        gaussian_velocity(M, S),
        x1,
        std_normal_log_prob,
        solver=Dopri5(atol=1e-10, rtol=1e-10),
        return_x0=True,
    )
    assert lp.shape == (16,)
    torch.testing.assert_close(lp, gaussian_log_prob(x1, M, S), rtol=0, atol=1e-6)
    torch.testing.assert_close(x0, (x1 - M) / S, rtol=0, atol=1e-6)


def test_exact_log_prob_with_rk4_matches_closed_form_on_a_2d_event():
    m = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], dtype=DT)
    s = 1.7
    x1 = data(6, 1, m, s)
    lp = log_prob(gaussian_velocity(m, s), x1, std_normal_log_prob, solver=RK4(), grid=200)
    torch.testing.assert_close(lp, gaussian_log_prob(x1, m, s), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "solver,steps,tol",
    [(Euler(), 400, 2e-2), (Midpoint(), 100, 1e-3), (Heun(), 100, 1e-3), (PseudoCorrector(), 200, 1e-3)],
    ids=["Euler", "Midpoint", "Heun", "PseudoCorrector"],
)
def test_log_prob_works_with_every_fixed_step_solver(solver, steps, tol):
    x1 = data(8)
    truth = gaussian_log_prob(x1, M, S)
    coarse = log_prob(gaussian_velocity(M, S), x1, std_normal_log_prob, solver=solver, grid=steps // 4)
    fine = log_prob(gaussian_velocity(M, S), x1, std_normal_log_prob, solver=solver, grid=steps)
    assert (fine - truth).abs().max() < tol
    assert (fine - truth).abs().max() < (coarse - truth).abs().max()


def test_default_solver_is_adaptive_and_accurate():
    x1 = data(4)
    lp = log_prob(gaussian_velocity(M, S), x1, std_normal_log_prob)
    torch.testing.assert_close(lp, gaussian_log_prob(x1, M, S), rtol=0, atol=1e-4)


def test_log_prob_under_no_grad_and_detached_by_default():
    x1 = data(4).requires_grad_(True)
    truth = gaussian_log_prob(x1.detach(), M, S)
    with torch.no_grad():
        lp = log_prob(gaussian_velocity(M, S), x1, std_normal_log_prob, solver=RK4(), grid=100)
    assert not lp.requires_grad
    torch.testing.assert_close(lp, truth, rtol=0, atol=1e-6)
    lp = log_prob(gaussian_velocity(M, S), x1, std_normal_log_prob, solver=RK4(), grid=100)
    assert not lp.requires_grad  # create_graph=False: no graph even when the caller tracks gradients


# ------------------------------------------------------------------------------------------------
# Hutchinson estimators
# ------------------------------------------------------------------------------------------------


def test_rademacher_log_prob_is_exact_for_an_isotropic_jacobian():
    x1 = data(8)
    lp = log_prob(
        gaussian_velocity(M, S),
        x1,
        std_normal_log_prob,
        solver=RK4(),
        grid=100,
        divergence="hutchinson-rademacher",
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(lp, gaussian_log_prob(x1, M, S), rtol=0, atol=1e-6)


def test_gaussian_probes_are_drawn_once_and_fixed_during_the_solve():
    # J = c(t) I, so with a fixed probe e the estimate of -int div dt is exactly (|e|^2 / D) times the truth
    x1 = data(32)
    lp, x0 = log_prob(
        gaussian_velocity(M, S),
        x1,
        std_normal_log_prob,
        solver=RK4(),
        grid=100,
        divergence="hutchinson-gaussian",
        n_probes=3,
        generator=torch.Generator().manual_seed(5),
        return_x0=True,
    )
    probes = torch.randn((3, 32, 2), generator=torch.Generator().manual_seed(5), dtype=DT)
    scale = (probes**2).sum(-1).mean(0) / 2
    exact_l = gaussian_log_prob(x1, M, S) - std_normal_log_prob((x1 - M) / S)
    torch.testing.assert_close(lp, std_normal_log_prob(x0) + scale * exact_l, rtol=0, atol=1e-6)
    torch.testing.assert_close(x0, (x1 - M) / S, rtol=0, atol=1e-8)


def test_gaussian_hutchinson_log_prob_is_unbiased():
    x1 = data(4000, 3)
    lp = log_prob(
        gaussian_velocity(M, S),
        x1,
        std_normal_log_prob,
        solver=RK4(),
        grid=20,
        divergence="hutchinson-gaussian",
        generator=torch.Generator().manual_seed(1),
    )
    err = lp - gaussian_log_prob(x1, M, S)
    se = err.std() / math.sqrt(err.numel())
    assert err.std() > 0.1  # it is a random estimate ...
    assert err.mean().abs() < 4 * se, f"mean error {err.mean():.4f}, SE {se:.4f}"  # ... without bias


def _tanh_field(a: torch.Tensor):
    return lambda x, t: torch.tanh(x @ a.T) * (1 + t[:, None])


def _tanh_divergence(a: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return ((1 - torch.tanh(x @ a.T) ** 2) * torch.diagonal(a)).sum(1) * (1 + t)


def test_divergence_helper_exact_and_hutchinson_unbiased():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g, dtype=DT)  # non-diagonal Jacobian
    x = torch.randn(1, 4, generator=g, dtype=DT).expand(20_000, 4)  # one point, many probes
    t = torch.full((20_000,), 0.3, dtype=DT)
    f = _tanh_field(a)
    v, div = divergence(f, x[:3], t[:3], "exact")
    torch.testing.assert_close(v, f(x[:3], t[:3]))
    truth = _tanh_divergence(a, x[:1], t[:1]).item()
    torch.testing.assert_close(div, torch.full((3,), truth, dtype=DT), rtol=0, atol=1e-12)
    for method, draw in [
        ("hutchinson-gaussian", lambda: torch.randn(1, 20_000, 4, generator=g, dtype=DT)),
        ("hutchinson-rademacher", lambda: torch.randint(0, 2, (1, 20_000, 4), generator=g).to(DT) * 2 - 1),
    ]:
        _, est = divergence(f, x, t, method, draw())
        se = est.std() / math.sqrt(est.numel())
        assert se > 0 and abs(est.mean().item() - truth) < 4 * se, (method, est.mean().item(), truth, se)


def test_rademacher_has_lower_variance_than_gaussian_on_a_diagonal_jacobian():
    g = torch.Generator().manual_seed(0)
    d = torch.tensor([0.5, -1.0, 2.0], dtype=DT)
    f = lambda x, t: torch.sin(x) * d  # Jacobian diag(d cos x)
    x = torch.randn(1, 3, generator=g, dtype=DT).expand(5000, 3)
    t = torch.zeros(5000, dtype=DT)
    truth = (torch.cos(x[0]) * d).sum().item()
    _, gauss = divergence(f, x, t, "hutchinson-gaussian", torch.randn(1, 5000, 3, generator=g, dtype=DT))
    rad_probes = torch.randint(0, 2, (1, 5000, 3), generator=g).to(DT) * 2 - 1
    _, rad = divergence(f, x, t, "hutchinson-rademacher", rad_probes)
    assert rad.var() < 1e-20 < gauss.var(), (rad.var().item(), gauss.var().item())
    torch.testing.assert_close(rad, torch.full_like(rad, truth))


# ------------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------------


def test_create_graph_gives_maximum_likelihood_gradients():
    m = M.clone().requires_grad_(True)
    log_s = torch.tensor(math.log(S), dtype=DT, requires_grad=True)
    x1 = data(8)
    lp = log_prob(
        gaussian_velocity(m, log_s.exp()), x1, std_normal_log_prob, solver=RK4(), grid=100, create_graph=True
    )
    gm, gs = torch.autograd.grad(lp.sum(), (m, log_s))
    truth = gaussian_log_prob(x1, m, log_s.exp()).sum()
    tm, ts = torch.autograd.grad(truth, (m, log_s))
    torch.testing.assert_close(gm, tm, rtol=0, atol=1e-6)
    torch.testing.assert_close(gs, ts, rtol=0, atol=1e-6)


def test_create_graph_reaches_the_data():
    x1 = data(4).requires_grad_(True)
    lp = log_prob(gaussian_velocity(M, S), x1, std_normal_log_prob, solver=RK4(), grid=100, create_graph=True)
    (gx,) = torch.autograd.grad(lp.sum(), x1)
    torch.testing.assert_close(gx, -(x1.detach() - M) / S**2, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Errors and docs
# ------------------------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors():
    f, x1 = gaussian_velocity(M, S), data(4)
    with pytest.raises(ValueError, match="decreasing grid"):
        log_prob(f, x1, std_normal_log_prob, solver=RK4(), grid=uniform_grid(10))
    with pytest.raises(ValueError, match="unknown divergence"):
        log_prob(f, x1, std_normal_log_prob, divergence="hutchinson")
    with pytest.raises(ValueError, match="generator="):
        log_prob(f, x1, std_normal_log_prob, divergence="hutchinson-gaussian")
    with pytest.raises(ValueError, match="n_probes"):
        log_prob(
            f,
            x1,
            std_normal_log_prob,
            divergence="hutchinson-gaussian",
            n_probes=0,
            generator=torch.Generator(),
        )
    with pytest.raises(ValueError, match="not EulerMaruyama"):
        em = EulerMaruyama(lambda x, t: -x, 1.0, generator=torch.Generator())
        log_prob(f, x1, std_normal_log_prob, solver=em, grid=10)
    with pytest.raises(ValueError, match="create_graph=True needs gradient mode"), torch.no_grad():
        log_prob(f, x1, std_normal_log_prob, create_graph=True)
    with pytest.raises(ValueError, match="base_log_prob returned shape"):
        log_prob(f, x1, lambda z: z, solver=RK4(), grid=2)
    with pytest.raises(ValueError, match=r"velocity returned shape \(4, 1\)"):
        log_prob(lambda x, t: x[:, :1], x1, std_normal_log_prob, solver=RK4(), grid=2)
    with pytest.raises(ValueError, match="probes of shape"):
        divergence(f, x1, torch.zeros(4, dtype=DT), "hutchinson-gaussian", None)


def test_module_docstring_examples_run():
    result = doctest.testmod(likelihood_module)
    assert result.attempted > 0 and result.failed == 0
