"""Riemannian flow matching: manifolds, geodesic path, projected solvers, Riemannian likelihood, vMF data,
the RiemannianFlowMatching model and the ``sphere-vmf`` / ``torus-aldp`` recipes.

Everything in float64 against analytic truth or an independent computation (Chen & Lipman, ICLR 2024).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from flowforge.continuous import RiemannianFlowMatching, TangentProjection
from flowforge.core.geodesic import GeodesicPath
from flowforge.core.likelihood import riemannian_divergence, riemannian_log_prob
from flowforge.core.manifolds import (
    SO3,
    Euclidean,
    FlatTorus,
    Sphere,
    StandardNormalSource,
    UniformSource,
    jvp_geodesic_velocity,
    so3_exp,
    so3_hat,
    so3_log,
)
from flowforge.core.schedules import Cosine, Linear, Polynomial
from flowforge.core.solvers import (
    RK4,
    Dopri5,
    Euler,
    EulerMaruyama,
    Heun,
    Midpoint,
    Projected,
    solve,
    uniform_grid,
)
from flowforge.data import VMFMixture, earth_like_vmf_mixture, vmf_log_prob, vmf_sample
from flowforge.nn import MLP, PeriodicInput

D64 = torch.float64
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alanine_dipeptide"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tangent(m, x, scale=1.0, seed=1):
    u = torch.randn(x.shape, generator=gen(seed), dtype=D64)
    return scale * m.proju(x, u)


MANIFOLDS = [Sphere(2), Sphere(4), FlatTorus(3), SO3(), Euclidean(3)]


def points(m, n=64, seed=0):
    if isinstance(m, Euclidean):
        return torch.randn(n, 3, generator=gen(seed), dtype=D64)
    return m.random_uniform(n, generator=gen(seed), dtype=D64)


class RandomField(nn.Module):
    """A smooth random ambient field f(x, t) (float64 MLP on the flattened point and t)."""

    def __init__(self, event, seed=0, scale=1.0, width=32):
        super().__init__()
        torch.manual_seed(seed)
        self.event = tuple(event)
        d = math.prod(self.event)
        self.net = nn.Sequential(nn.Linear(d + 1, width), nn.Tanh(), nn.Linear(width, d)).double()
        self.scale = scale

    def forward(self, x, t):
        h = torch.cat([x.reshape(len(x), -1), t.reshape(-1, 1).to(x.dtype)], dim=1)
        return self.scale * self.net(h).reshape(len(x), *self.event)


def field_on(m, seed=0, scale=1.0):
    """A smooth random field on ``m`` (periodic in the angles on the torus)."""
    if isinstance(m, FlatTorus):
        torch.manual_seed(seed)
        net = PeriodicInput(MLP(2 * m.dim, 32, 2, out_dim=m.dim)).double()
        return lambda x, t: scale * net(x, t)
    return RandomField(m.event_shape, seed=seed, scale=scale)


# --------------------------------------------------------------------------------------------------
# manifolds: exp/log, distance
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", MANIFOLDS, ids=repr)
def test_log_of_exp_is_identity_for_tangent_vectors(m):
    x = points(m)
    v = tangent(m, x)
    norms = m.norm(x, v)
    v = v * (torch.rand(len(x), generator=gen(2), dtype=D64) * 2.5 / norms.clamp_min(1e-12)).reshape(
        -1, *[1] * (x.dim() - 1)
    )  # |v| in [0, 2.5] < pi: inside the injectivity radius
    y = m.expmap(x, v)
    assert torch.allclose(m.logmap(x, y), v, atol=1e-12)
    assert torch.allclose(m.dist(x, y), m.norm(x, v), atol=1e-12)
    assert float(m.off_manifold(y)) < 1e-14


@pytest.mark.parametrize("m", MANIFOLDS, ids=repr)
def test_exp_of_log_is_identity_and_distance_is_norm_of_log(m):
    x, y = points(m, seed=0), points(m, seed=5)
    u = m.logmap(x, y)
    assert torch.allclose(m.proju(x, u), u, atol=1e-12)  # log lands in the tangent space
    assert torch.allclose(m.expmap(x, u), y, atol=1e-10)
    assert torch.allclose(m.dist(x, y), m.norm(x, u), atol=1e-10)
    assert torch.allclose(m.dist(x, y), m.dist(y, x), atol=1e-10)


def test_sphere_exp_matches_rotation_and_log_matches_acos():
    s = Sphere(2)
    x = points(s)
    u = tangent(s, x)
    n = u.norm(dim=1, keepdim=True)
    axis = torch.linalg.cross(x, u / n, dim=1)  # rotating x about x cross u-hat by |u| moves it along u
    rot = torch.linalg.matrix_exp(so3_hat(axis * n))
    assert torch.allclose(s.expmap(x, u), (rot @ x[:, :, None])[:, :, 0], atol=1e-12)
    y = points(s, seed=3)
    theta = torch.acos((x * y).sum(1).clamp(-1, 1))
    w = y - (x * y).sum(1, keepdim=True) * x
    assert torch.allclose(s.logmap(x, y), theta[:, None] * w / w.norm(dim=1, keepdim=True), atol=1e-10)


def test_sphere_small_angles_are_accurate():
    s = Sphere(2)
    x = points(s, 16)
    for eps in (5e-3, 1e-3, 1e-6, 1e-9, 1e-12, 0.0):
        v = tangent(s, x)
        v = eps * v / v.norm(dim=1, keepdim=True)
        y = s.expmap(x, v)
        assert torch.allclose(s.logmap(x, y), v, rtol=0.0, atol=1e-15 + 1e-12 * eps)
        assert torch.allclose(s.dist(x, y), torch.full((16,), eps, dtype=D64), atol=1e-15)


def test_torus_wraps_the_short_way_and_projx_range():
    t = FlatTorus(1)
    x, y = torch.tensor([[0.1]], dtype=D64), torch.tensor([[2 * math.pi - 0.2]], dtype=D64)
    assert torch.allclose(t.logmap(x, y), torch.tensor([[-0.3]], dtype=D64))
    assert torch.allclose(t.expmap(x, torch.tensor([[-0.3]], dtype=D64)), y)
    z = t.projx(torch.tensor([[-1e-20], [2 * math.pi], [-7.0], [13.0]], dtype=D64))
    assert bool(((z >= 0) & (z < 2 * math.pi)).all())


@pytest.mark.parametrize(
    "theta", [0.0, 1e-12, 1e-8, 1e-5, 1e-3, 0.5, 1.5, 2.5, math.pi - 1e-3, math.pi - 1e-6, math.pi - 1e-9]
)
def test_so3_log_exp_round_trip_near_zero_and_pi(theta):
    n = torch.randn(200, 3, generator=gen(4), dtype=D64)
    w = theta * n / n.norm(dim=1, keepdim=True)
    r = so3_exp(w)
    assert torch.allclose(r, torch.linalg.matrix_exp(so3_hat(w)), atol=1e-14)  # Rodrigues vs the series
    w2 = so3_log(r)
    assert torch.allclose(w2, w, atol=1e-12 if theta < 3 else 5e-9)
    assert torch.allclose(so3_exp(w2), r, atol=1e-14)


def test_so3_log_at_exactly_pi_gives_a_valid_logarithm():
    axes = torch.eye(3, dtype=D64).repeat(3, 1) + torch.tensor(
        [[0.0, 0.0, 0.0]] * 3 + [[0.0, 0.3, 0.0]] * 3 + [[0.1, -0.2, 0.0]] * 3, dtype=D64
    )
    axes = axes / axes.norm(dim=1, keepdim=True)
    r = so3_exp(math.pi * axes)
    w = so3_log(r)
    assert torch.allclose(w.norm(dim=1), torch.full((9,), math.pi, dtype=D64), atol=1e-12)
    assert torch.allclose(so3_exp(w), r, atol=1e-13)


def test_so3_angle_metric_and_haar_sampling():
    g = SO3()
    r = g.random_uniform(50_000, generator=gen(0), dtype=D64)
    g.check_point(r)
    eye = torch.eye(3, dtype=D64).expand_as(r)
    ang = g.dist(eye, r)
    # Haar: the rotation angle has density (1 - cos a) / pi on [0, pi]; E[a] = pi/2 + 2/pi
    assert abs(float(ang.mean()) - (math.pi / 2 + 2 / math.pi)) < 0.01
    # angle metric: |R w^| = |w|, and the distance is the rotation angle
    w = torch.tensor([[0.3, -0.4, 0.0]], dtype=D64)
    assert torch.allclose(g.norm(eye[:1], so3_hat(w)), torch.tensor([0.5], dtype=D64))
    assert math.isclose(g.log_volume, math.log(8 * math.pi**2))


def test_uniform_sampling_matches_volume_by_monte_carlo_area():
    # S^2: the fraction of uniform points in the cap z > 0.5 is its area / 4 pi = 2 pi (1 - 0.5) / 4 pi
    x = Sphere(2).random_uniform(200_000, generator=gen(1), dtype=D64)
    assert abs(float((x[:, 2] > 0.5).double().mean()) - 0.25) < 0.004
    assert math.isclose(Sphere(2).log_volume, math.log(4 * math.pi))
    assert math.isclose(Sphere(1).log_volume, math.log(2 * math.pi))
    assert math.isclose(Sphere(3).log_volume, math.log(2 * math.pi**2))


# --------------------------------------------------------------------------------------------------
# geodesic path
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [Sphere(2), FlatTorus(2), SO3(), Euclidean(3)], ids=repr)
@pytest.mark.parametrize("schedule", [Linear(), Cosine(), Polynomial(2.0)], ids=lambda s: type(s).__name__)
def test_geodesic_path_endpoints_and_velocity_by_finite_differences(m, schedule):
    x0, x1 = points(m, 32, seed=0), points(m, 32, seed=1)
    path = GeodesicPath(m, schedule)
    n = len(x0)
    assert torch.allclose(path.sample(x0, x1, torch.zeros(n, dtype=D64)).x_t, x0, atol=1e-12)
    assert torch.allclose(path.sample(x0, x1, torch.ones(n, dtype=D64)).x_t, x1, atol=1e-10)
    t = torch.rand(n, generator=gen(3), dtype=D64) * 0.9 + 0.05
    ps = path.sample(x0, x1, t)
    h = 1e-5
    fd = (path.sample(x0, x1, t + h).x_t - path.sample(x0, x1, t - h).x_t) / (2 * h)
    if isinstance(m, FlatTorus):  # x_t is wrapped: difference on the torus
        fd = m.logmap(path.sample(x0, x1, t - h).x_t, path.sample(x0, x1, t + h).x_t) / (2 * h)
    assert torch.allclose(ps.target, fd, atol=1e-8)
    assert torch.allclose(m.proju(ps.x_t, ps.target), ps.target, atol=1e-12)  # tangent at x_t
    assert float(m.off_manifold(ps.x_t)) < 1e-12
    jvp = GeodesicPath(m, schedule, use_jvp=True).sample(x0, x1, t).target
    assert torch.allclose(ps.target, jvp, atol=1e-12)


def test_geodesic_speed_is_distance_on_the_linear_schedule():
    s = Sphere(2)
    x0, x1 = points(s, 64, 0), points(s, 64, 1)
    ps = GeodesicPath(s).sample(x0, x1, torch.rand(64, generator=gen(2), dtype=D64))
    assert torch.allclose(ps.target.norm(dim=1), s.dist(x0, x1), atol=1e-12)


def test_jvp_fallback_matches_closed_form_velocity():
    for m in (Sphere(2), SO3(), FlatTorus(2)):
        x = points(m, 8)
        u = tangent(m, x)
        s = torch.rand(8, generator=gen(1), dtype=D64)
        assert torch.allclose(jvp_geodesic_velocity(m, x, u, s), m.geodesic_velocity(x, u, s), atol=1e-12)


# --------------------------------------------------------------------------------------------------
# projected solvers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [Sphere(2), FlatTorus(2), SO3()], ids=repr)
@pytest.mark.parametrize("solver", [Euler(), Midpoint(), RK4(), Dopri5(atol=1e-8, rtol=1e-8)], ids=repr)
def test_projected_solver_stays_on_the_manifold(m, solver):
    f = field_on(m, seed=3, scale=3.0)
    x0 = points(m, 128)
    states = []
    with torch.no_grad():
        out = solve(f, x0, Projected(solver, m), 50 if not solver.adaptive else 4, callback=states.append)
    for s in states:
        assert float(m.off_manifold(s.x)) < 1e-12  # the bar is 1e-6
    m.check_point(out.x, atol=1e-12)


def _sphere_rotation_case():
    s = Sphere(2)
    w = torch.tensor([0.3, -0.5, 0.8], dtype=D64)

    def f(x, t):  # rotation about w at rate (1 + t)|w|, plus a radial part that proju must remove
        return (1 + t)[:, None] * torch.linalg.cross(w.expand_as(x), x, dim=1) + 5.0 * x

    def exact(x0):
        angle = 1.5  # integral of (1 + t) from 0 to 1
        r = torch.linalg.matrix_exp(so3_hat(angle * w))
        return x0 @ r.T

    return s, f, points(s, 16), exact


def _torus_case():
    t = FlatTorus(2)

    def f(x, tt):  # time-only field: x(1) = x0 + (3, -2) + (1, 1) * 1^5, wrapping around
        return torch.tensor([3.0, -2.0], dtype=D64) + 5.0 * tt[:, None] ** 4 + 0.0 * x

    def exact(x0):
        return t.projx(x0 + torch.tensor([4.0, -1.0], dtype=D64))

    return t, f, points(t, 16), exact


def _so3_case():
    g = SO3()
    w = torch.tensor([0.7, 0.2, -1.1], dtype=D64)

    def f(r, t):  # body angular velocity (1 + t) w: R(1) = R0 exp(1.5 w^)
        return (1 + t)[:, None, None] * (r @ so3_hat(w))

    def exact(r0):
        return r0 @ so3_exp(1.5 * w)

    return g, f, points(g, 8), exact


@pytest.mark.parametrize(
    "case", [_sphere_rotation_case, _torus_case, _so3_case], ids=["sphere", "torus", "so3"]
)
@pytest.mark.parametrize("solver", [Euler(), Midpoint(), Heun(), RK4()], ids=repr)
def test_projected_solver_convergence_order(case, solver):
    m, f, x0, exact = case()
    truth = exact(x0)
    ladder = [8, 16, 32, 64] if solver.order < 4 else [4, 8, 16, 32]
    errs = [float(m.dist(solve(f, x0, Projected(solver, m), k).x, truth).max()) for k in ladder]
    if max(errs) < 1e-11:  # exact for this field (e.g. Euler-type methods on a constant field)
        return
    slope = -np.polyfit(np.log(ladder), np.log(errs), 1)[0]
    assert abs(slope - solver.order) < 0.35, (errs, slope)


def test_projected_refuses_sde_and_double_wrapping():
    with pytest.raises(TypeError, match="ODE solver"):
        Projected(EulerMaruyama(lambda x, t: x, lambda t: t, generator=gen(0)), Sphere(2))
    with pytest.raises(TypeError, match="already Projected"):
        Projected(Projected(RK4(), Sphere(2)), Sphere(2))
    with pytest.raises(TypeError, match="projx and proju"):
        Projected(RK4(), object())


# --------------------------------------------------------------------------------------------------
# Riemannian divergence and likelihood
# --------------------------------------------------------------------------------------------------


def _basis(m, x):
    """An orthonormal (ambient Frobenius, up to a constant) tangent basis at x, (d, *event)."""
    if isinstance(m, SO3):
        return torch.stack([x @ so3_hat(e) for e in torch.eye(3, dtype=D64)])
    e = torch.eye(x.numel(), dtype=D64).reshape(-1, *x.shape)
    vs = [m.proju(x[None], ei[None])[0] for ei in e]
    q, _ = torch.linalg.qr(torch.stack([v.flatten() for v in vs], dim=1))
    return q[:, : m.dim].T.reshape(m.dim, *x.shape)


def _divergence_by_flow_volume(m, f, x, t, eps=1e-4):
    """div v at x from the volume change of the map y -> exp_y(eps v(y)) in normal coordinates at x:
    log det of the coordinate Jacobian at the centre = eps div v + O(eps^2), central difference in eps."""
    b = _basis(m, x)
    nb = (b.flatten(1) ** 2).sum(1)

    def chart(xi):
        return m.expmap(
            x[None], (xi[:, None, None] * b if isinstance(m, SO3) else xi[:, None] * b).sum(0)[None]
        )[0]

    def coords(y):
        u = m.logmap(x[None], y[None])[0]
        return (b.flatten(1) @ u.flatten()) / nb

    def logdet(e):
        def step(xi):
            y = chart(xi)
            v = m.proju(y[None], f(y[None], t[:1]))[0]
            return coords(m.expmap(y[None], e * v[None])[0])

        jac = torch.autograd.functional.jacobian(step, torch.zeros(m.dim, dtype=D64))
        return torch.linalg.slogdet(jac)[1]

    return float((logdet(eps) - logdet(-eps)) / (2 * eps))


@pytest.mark.parametrize("m", [Sphere(2), SO3(), FlatTorus(2), Sphere(3)], ids=repr)
def test_riemannian_divergence_matches_flow_volume_change(m):
    f = field_on(m, seed=7, scale=1.5)
    x = points(m, 6, seed=2)
    t = torch.full((6,), 0.3, dtype=D64)
    _, div = riemannian_divergence(f, x, t, m)
    other = torch.tensor([_divergence_by_flow_volume(m, f, x[i], t) for i in range(6)], dtype=D64)
    assert torch.allclose(div, other, atol=1e-6), (div, other)


def test_sphere_divergence_in_spherical_coordinates():
    """div on S^2 by the chart formula (1/sqrt g) d_i(sqrt g a^i), sqrt g = sin(theta), against tr(P Dv)."""
    s = Sphere(2)
    f = RandomField((3,), seed=11, scale=2.0)
    t = torch.tensor([0.6], dtype=D64)

    def emb(q):
        th, ph = q[0], q[1]
        return torch.stack([torch.sin(th) * torch.cos(ph), torch.sin(th) * torch.sin(ph), torch.cos(th)])

    def sqrtg_a(q):  # sqrt(g) a^i with a = (J^T J)^{-1} J^T v
        x = emb(q)
        jac = torch.autograd.functional.jacobian(emb, q, create_graph=True)  # (3, 2)
        v = s.proju(x[None], f(x[None], t))[0]
        a = torch.linalg.solve(jac.T @ jac, jac.T @ v)
        return torch.sin(q[0]) * a

    for q in torch.tensor([[0.7, 0.3], [1.9, -2.0], [2.6, 1.0], [0.4, 3.0]], dtype=D64):
        jac = torch.autograd.functional.jacobian(sqrtg_a, q)
        chart_div = float(torch.diagonal(jac).sum() / torch.sin(q[0]))
        _, div = riemannian_divergence(f, emb(q)[None], t, s)
        assert abs(float(div) - chart_div) < 1e-10
        # and the S^2 form of tr(P Dv): tr(Dv) - x^T Dv x of the tangent field
        x = emb(q)
        dv = torch.autograd.functional.jacobian(lambda y: s.proju(y[None], f(y[None], t))[0], x)
        assert abs(float(torch.trace(dv) - x @ dv @ x) - chart_div) < 1e-10


def test_hutchinson_riemannian_divergence_is_unbiased():
    s = Sphere(2)
    f = RandomField((3,), seed=5, scale=2.0)
    x = points(s, 4, seed=9)
    t = torch.full((4,), 0.2, dtype=D64)
    _, exact = riemannian_divergence(f, x, t, s)
    probes = torch.randn(4000, 4, 3, generator=gen(3), dtype=D64)
    _, est = riemannian_divergence(f, x, t, s, "hutchinson-gaussian", probes)
    rad = torch.randint(0, 2, (4000, 4, 3), generator=gen(4)).to(D64) * 2 - 1
    _, est2 = riemannian_divergence(f, x, t, s, "hutchinson-rademacher", rad)
    assert torch.allclose(est, exact, atol=0.15) and torch.allclose(est2, exact, atol=0.15)


@pytest.mark.parametrize(
    "m,field",
    [
        (
            Sphere(2),
            lambda x, t: (
                (1 + t)[:, None]
                * torch.linalg.cross(torch.tensor([0.2, 0.9, -0.4], dtype=D64).expand_as(x), x, dim=1)
            ),
        ),
        (
            SO3(),
            lambda r, t: so3_hat(torch.tensor([0.4, -1.0, 0.3], dtype=D64)).expand_as(r) @ r,
        ),  # right-invariant
        (FlatTorus(2), lambda x, t: torch.tensor([1.0, -2.5], dtype=D64).expand_as(x)),
    ],
    ids=["sphere-rotation", "so3-right-invariant", "torus-constant"],
)
def test_killing_field_keeps_the_uniform_density(m, field):
    x = points(m, 32, seed=4)
    lp, x0 = riemannian_log_prob(field, x, m, grid=16, return_x0=True)
    assert torch.allclose(lp, torch.full((32,), -m.log_volume, dtype=D64), atol=1e-10)
    m.check_point(x0, atol=1e-12)


def _sphere_quadrature(n_theta=48, n_phi=96):
    z, w = np.polynomial.legendre.leggauss(n_theta)  # Gauss-Legendre in z = cos(theta), uniform in phi
    z, w = torch.tensor(z, dtype=D64), torch.tensor(w, dtype=D64)
    phi = torch.arange(n_phi, dtype=D64) * (2 * math.pi / n_phi)
    zz, pp = torch.meshgrid(z, phi, indexing="ij")
    r = torch.sqrt(1 - zz**2)
    x = torch.stack([r * torch.cos(pp), r * torch.sin(pp), zz], -1).reshape(-1, 3)
    weights = (w[:, None] * torch.full((n_phi,), 2 * math.pi / n_phi, dtype=D64)).reshape(-1)
    return x, weights


def test_density_of_a_random_flow_integrates_to_one_on_the_sphere():
    s = Sphere(2)
    f = RandomField((3,), seed=2, scale=1.5)
    x, w = _sphere_quadrature()
    lp = riemannian_log_prob(f, x, s, solver=RK4(), grid=24)
    assert float(lp.exp().max()) > 1.3 / (4 * math.pi)  # the flow is far from uniform
    assert abs(float((lp.exp() * w).sum()) - 1.0) < 2e-3
    # the quadrature itself integrates the vMF density to 1
    assert (
        abs(float((vmf_log_prob(x, torch.tensor([0.0, 0.6, 0.8], dtype=D64), 5.0).exp() * w).sum()) - 1)
        < 1e-8
    )


def test_density_of_a_random_flow_integrates_to_one_on_the_torus():
    t = FlatTorus(2)
    torch.manual_seed(3)
    f = PeriodicInput(MLP(4, 16, 2, out_dim=2)).double()  # a smooth periodic field
    k = 48
    g = torch.arange(k, dtype=D64) * (2 * math.pi / k)
    x = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    lp = riemannian_log_prob(lambda y, tt: 12.0 * f(y, tt), x, t, grid=32)
    assert float(lp.exp().max()) > 1.3 / (4 * math.pi**2)
    assert abs(float(lp.exp().sum() * (2 * math.pi / k) ** 2) - 1.0) < 2e-3


def test_log_prob_agrees_with_sampling_direction():
    """Solving forward from x0 and back from the result returns x0; log p1(x1) = log p0 - int div."""
    s = Sphere(2)
    f = RandomField((3,), seed=8)
    x0 = points(s, 16, seed=1)
    x1 = solve(f, x0, Projected(RK4(), s), 64).x
    lp, back = riemannian_log_prob(f, x1, s, grid=64, return_x0=True)
    assert torch.allclose(back, x0, atol=1e-8)


def test_riemannian_log_prob_bad_inputs():
    s = Sphere(2)
    f = RandomField((3,))
    x = points(s, 4)
    with pytest.raises(ValueError, match="off the sphere"):
        riemannian_log_prob(f, 1.1 * x, s)
    with pytest.raises(ValueError, match=r"shape \(B, 3\)"):
        riemannian_log_prob(f, x[:, :2], s)
    with pytest.raises(ValueError, match="decreasing grid"):
        riemannian_log_prob(f, x, s, grid=uniform_grid(4))
    with pytest.raises(ValueError, match="generator"):
        riemannian_log_prob(f, x, s, divergence="hutchinson-gaussian")
    with pytest.raises(ValueError, match="plain ODE solver"):
        riemannian_log_prob(f, x, s, solver=Projected(RK4(), s))


# --------------------------------------------------------------------------------------------------
# manifold input checks
# --------------------------------------------------------------------------------------------------


def test_check_point_errors_say_what_to_write():
    with pytest.raises(ValueError, match="projx"):
        Sphere(2).check_point(torch.tensor([[1.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"x.reshape\(-1, 3\)"):
        Sphere(2).check_point(torch.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        Sphere(2).check_point(torch.tensor([[float("nan"), 0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"2 \* math.pi"):
        FlatTorus(2).check_point(torch.tensor([[-3.0, 1.0]]))
    with pytest.raises(ValueError, match="reflections"):
        SO3().check_point(-torch.eye(3)[None])
    with pytest.raises(ValueError, match="rotation matrices"):
        SO3().check_point(2 * torch.eye(3)[None])
    with pytest.raises(ValueError, match="uniform law"):
        Euclidean(2).random_uniform(3)
    with pytest.raises(ValueError, match="infinite volume"):
        UniformSource(Euclidean(2))
    with pytest.raises(ValueError, match="d >= 1"):
        Sphere(0)


# --------------------------------------------------------------------------------------------------
# vMF data
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kappa", [0.5, 6.0, 60.0, 400.0])
def test_vmf_sampler_matches_the_exact_cosine_law_on_s2(kappa):
    mu = torch.tensor([0.36, -0.48, 0.8], dtype=D64)
    x = vmf_sample(mu, kappa, 20_000, generator=gen(0), dtype=D64)
    assert float((x.norm(dim=1) - 1).abs().max()) < 1e-12
    w = (x @ mu).sort().values
    # exact CDF of W = mu.x on S^2: (exp(kappa w) - exp(-kappa)) / (exp(kappa) - exp(-kappa))
    cdf = 1 - torch.expm1(kappa * (w - 1)) / torch.expm1(torch.tensor(-2.0 * kappa, dtype=D64))
    emp = torch.arange(1, len(w) + 1, dtype=D64) / len(w)
    assert float((emp - cdf).abs().max()) < 1.36 / math.sqrt(len(w)) * 1.2  # KS at ~5%
    # the direction orthogonal to mu is uniform: its mean vanishes
    perp = x - (x @ mu)[:, None] * mu
    assert float(perp.mean(0).norm()) < 0.02


def test_vmf_sampler_mean_resultant_in_higher_dimension():
    from scipy.special import ive

    mu = torch.tensor([0.0, 0.0, 0.0, 0.6, 0.8], dtype=D64)
    kappa = 10.0
    x = vmf_sample(mu, kappa, 40_000, generator=gen(1), dtype=D64)
    p = 5
    a_p = ive(p / 2, kappa) / ive(p / 2 - 1, kappa)
    assert abs(float((x @ mu).mean()) - a_p) < 0.005


def test_vmf_mixture_density_integrates_to_one_and_sampling_is_seeded():
    mix = earth_like_vmf_mixture()
    x, w = _sphere_quadrature(200, 400)  # the sharpest cluster has kappa = 400
    assert abs(float((mix.log_prob(x).exp() * w).sum()) - 1.0) < 1e-6
    a, b = mix.sample(100, seed=3), mix.sample(100, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, mix.sample(100, seed=4))
    with pytest.raises(ValueError, match="unit vector"):
        vmf_sample(torch.tensor([1.0, 1.0, 0.0]), 1.0, 3)
    with pytest.raises(ValueError, match="positive"):
        VMFMixture(torch.eye(3)[:1], [1.0], [-1.0])


# --------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------


def test_model_loss_target_sampling_and_log_prob_on_the_sphere():
    torch.manual_seed(0)
    rfm = RiemannianFlowMatching(MLP(3, 32, 2), Sphere(2)).double()
    x1 = earth_like_vmf_mixture().sample(64, seed=0, dtype=D64)
    loss = rfm.loss(x1)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rfm.parameters())
    g = rfm.generator()
    x = g.sample(100, generator=gen(0), steps=8, dtype=D64)
    assert float(Sphere(2).off_manifold(x)) < 1e-12
    lp = g.log_prob(x[:5], steps=8)
    assert lp.shape == (5,) and bool(torch.isfinite(lp).all())
    with pytest.raises(ValueError, match="off the sphere"):
        rfm.loss(2 * x1)
    with pytest.raises(ValueError, match="shape"):
        g.log_prob(x[:, :2])
    with pytest.raises(ValueError, match="ODE"):
        g.sample(3, solver="sde")
    with pytest.raises(TypeError, match="Manifold"):
        RiemannianFlowMatching(MLP(3, 8, 1), "sphere")


def test_model_matches_meta_loss_with_identical_draws():
    """Same weights, batch and RNG: our loss equals Meta flow_matching's GeodesicProbPath loss."""
    fm = pytest.importorskip("flow_matching")
    from flow_matching.path import GeodesicProbPath
    from flow_matching.path.scheduler import CondOTScheduler
    from flow_matching.utils.manifolds import Sphere as MetaSphere

    assert fm.__version__
    torch.manual_seed(0)
    net = MLP(3, 32, 2).double()
    rfm = RiemannianFlowMatching(net, Sphere(2), project_input=True)
    x1 = earth_like_vmf_mixture().sample(128, seed=1, dtype=D64)
    torch.manual_seed(5)
    ours = rfm.loss(x1)
    torch.manual_seed(5)
    ms = MetaSphere()
    x0 = ms.projx(torch.randn_like(x1))
    t = torch.rand(128, dtype=D64)
    ps = GeodesicProbPath(CondOTScheduler(), ms).sample(x_0=x0, x_1=x1, t=t)
    theirs = ((ms.proju(ps.x_t, net(ps.x_t, t)) - ps.dx_t) ** 2).mean()
    assert torch.allclose(ours, theirs, atol=1e-12)


def test_model_on_so3_and_euclidean():
    torch.manual_seed(0)

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = MLP(9, 16, 1)

        def forward(self, x, t):
            return self.mlp(x.reshape(len(x), 9), t).reshape(x.shape)

    rfm = RiemannianFlowMatching(Flat(), SO3()).double()
    r = SO3().random_uniform(16, generator=gen(0), dtype=D64)
    assert rfm.loss(r).ndim == 0
    g = rfm.generator()
    x = g.sample(8, generator=gen(1), steps=4, dtype=D64)
    SO3().check_point(x, atol=1e-12)
    assert bool(torch.isfinite(g.log_prob(x, steps=4)).all())
    eu = RiemannianFlowMatching(MLP(2, 16, 1), Euclidean(2), source=StandardNormalSource(2))
    assert eu.loss(torch.randn(8, 2)).ndim == 0


def test_tangent_projection_wrapper():
    v = TangentProjection(lambda x, t: torch.ones_like(x), Sphere(2), project_input=True)
    out = v(torch.tensor([[0.0, 0.0, 3.0]]), torch.zeros(1))
    assert torch.allclose(out, torch.tensor([[1.0, 1.0, 0.0]]))


# --------------------------------------------------------------------------------------------------
# recipes
# --------------------------------------------------------------------------------------------------


def test_sphere_vmf_recipe_trains_samples_and_evaluates(tmp_path):
    from flowforge.recipes import evaluate, sample, train_recipe

    out = tmp_path / "run"
    train_recipe(
        "sphere-vmf", steps=20, out=out, progress=False,
        overrides={"width": 32, "depth": 2, "batch_size": 64, "nll_points": 64, "eval_steps": 4, "sample_steps": 8},
    )  # fmt: skip
    x = sample(out, 50, seed=0)
    assert x.shape == (50, 3) and float(Sphere(2).off_manifold(x)) < 1e-6
    res = evaluate(out, n_samples=200)
    assert set(res) >= {"nll", "nll_floor", "nll_uniform", "mmd", "mmd_control", "off_manifold"}
    assert res["off_manifold"] < 1e-6 and math.isfinite(res["nll"])
    assert res["nll_floor"] < res["nll_uniform"]
    with pytest.raises(ValueError, match="qmc"):
        evaluate(out, qmc=True)


needs_aldp = pytest.mark.skipif(not DATA.is_dir(), reason=f"alanine dipeptide files not found in {DATA}")


@needs_aldp
def test_torus_aldp_recipe_smoke(tmp_path, monkeypatch):
    pytest.importorskip("openmm", reason="OpenMM is not installed (pip install 'flowforge[aldp]')")
    from flowforge.recipes import evaluate, train_recipe

    monkeypatch.setenv("FLOWFORGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    over = {"data_dir": str(DATA), "n_train": 300, "width": 32, "depth": 2, "batch_size": 64}
    train_recipe("torus-aldp", steps=10, out=out, progress=False,
                 overrides={**over, "nll_points": 32, "eval_steps": 2, "sample_steps": 4})  # fmt: skip
    res = evaluate(out, n_samples=100)
    assert res["off_manifold"] == 0.0 or res["off_manifold"] < 1e-6
    assert math.isfinite(res["nll"]) and math.isfinite(res["nll_histogram"])
    assert math.isclose(res["nll_uniform"], 2 * math.log(2 * math.pi))
    assert os.path.isdir(tmp_path / "cache")
