"""Schedules, paths and parameterisation conversions against autograd and closed forms (float64)."""

import pytest
import torch
from gaussian import GaussianFlow

from flowforge.core.paths import (
    AffinePath,
    BrownianGamma,
    StochasticInterpolant,
    TrigonometricInterpolant,
    convert,
)
from flowforge.core.schedules import Cosine, Linear, Polynomial, VariancePreserving


@pytest.fixture(autouse=True)
def float64():
    """Analytic checks run in float64; restore the default afterwards (tests share a process)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


SCHEDULES = [
    Linear(),
    Cosine(),
    VariancePreserving(),
    Polynomial(2.0),
    Polynomial(0.7),
    TrigonometricInterpolant(BrownianGamma(1.0)),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_schedule_derivatives_match_autograd(schedule):
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64, requires_grad=True)
    out = schedule(t)
    da = torch.autograd.grad(out.alpha.sum(), t, retain_graph=True)[0]
    ds = torch.autograd.grad(out.sigma.sum(), t)[0]
    torch.testing.assert_close(out.d_alpha, da, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.d_sigma, ds, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("schedule", [Linear(), Cosine(), Polynomial(2.0)], ids=lambda s: type(s).__name__)
def test_schedule_boundary_conditions(schedule):
    out = schedule(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(out.alpha, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(out.sigma, torch.tensor([1.0, 0.0]))


def test_brownian_gamma_derivative_matches_autograd():
    t = torch.linspace(0.05, 0.95, 19, requires_grad=True)
    g, dg = BrownianGamma(0.7)(t)
    torch.testing.assert_close(dg, torch.autograd.grad(g.sum(), t)[0])


def test_trig_interpolant_preserves_variance():
    t = torch.linspace(0.01, 0.99, 33)
    gam = BrownianGamma(2.0)
    s = TrigonometricInterpolant(gam)(t)
    torch.testing.assert_close(s.alpha**2 + s.sigma**2 + gam(t)[0] ** 2, torch.ones_like(t))


def test_affine_path_target_is_time_derivative():
    x0, x1 = torch.randn(8, 3), torch.randn(8, 3)
    t = torch.rand(8, requires_grad=True)
    path = AffinePath(Cosine())
    ps = path.sample(x0, x1, t)
    jac = torch.stack([torch.autograd.grad(ps.x_t[:, k].sum(), t, retain_graph=True)[0] for k in range(3)], 1)
    torch.testing.assert_close(ps.target, jac)


def test_interpolant_target_is_time_derivative_for_fixed_noise():
    path = StochasticInterpolant(Linear(), BrownianGamma(1.0))
    x0, x1 = torch.randn(8, 2), torch.randn(8, 2)
    t = (0.1 + 0.8 * torch.rand(8)).requires_grad_()
    g = torch.Generator().manual_seed(0)
    ps = path.sample(x0, x1, t, generator=g)
    x_t = lambda tt: path.sample(x0, x1, tt, generator=torch.Generator().manual_seed(0)).x_t  # noqa: E731
    jac = torch.stack([torch.autograd.grad(x_t(t)[:, k].sum(), t)[0] for k in range(2)], 1)
    torch.testing.assert_close(ps.target, jac)
    torch.testing.assert_close(
        ps.x_t, 0 + t.detach()[:, None] * x1 + (1 - t.detach())[:, None] * x0 + ps.gamma[:, None] * ps.z
    )


PATHS = [
    AffinePath(Linear()),
    AffinePath(Cosine()),
    AffinePath(VariancePreserving()),
    AffinePath(Polynomial(2.0)),
    StochasticInterpolant(Linear(), BrownianGamma(1.0)),
    StochasticInterpolant(TrigonometricInterpolant(BrownianGamma(0.5)), BrownianGamma(0.5)),
]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{type(p).__name__}-{type(p.schedule).__name__}")
def test_conversions_of_exact_velocity_give_exact_score_and_posterior_mean(path):
    flow = GaussianFlow(path, m=torch.tensor([1.5, -0.5]), s=0.7)
    x, t = torch.randn(64, 2) * 2, 0.05 + 0.9 * torch.rand(64)
    v = flow.velocity(x, t)
    torch.testing.assert_close(convert(v, x, t, path, src="velocity", dst="score"), flow.score(x, t))
    torch.testing.assert_close(convert(v, x, t, path, src="velocity", dst="x1"), flow.x1_mean(x, t))
    for kind in ("x1", "x0", "score"):
        back = convert(convert(v, x, t, path, src="velocity", dst=kind), x, t, path, src=kind, dst="velocity")
        torch.testing.assert_close(back, v)


def test_convert_rejects_unknown_prediction():
    with pytest.raises(ValueError, match="use one of"):
        convert(torch.zeros(2, 2), torch.zeros(2, 2), torch.rand(2), AffinePath(), src="velocity", dst="eps")


def test_path_shape_errors_say_what_to_pass():
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        AffinePath().sample(torch.zeros(4, 2), torch.zeros(4, 2), torch.rand(4, 1))
    with pytest.raises(ValueError, match="must match"):
        AffinePath().sample(torch.zeros(4, 2), torch.zeros(4, 3), torch.rand(4))
