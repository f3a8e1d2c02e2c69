"""Neural autoregressive flows: NAF (deep sigmoidal transformer) and UNAF (UMNN, Clenshaw-Curtis integral).

The shared battery in tests/test_bijections.py runs over both layers and both flows; here: the scalar
transformers (monotone, derivative, tails), the bisection inverse, the quadrature against closed forms,
a short fit on moons and the errors.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from flowforge.data import Standardizer, toy2d
from flowforge.normalizing import (
    NAF,
    UNAF,
    Flow,
    NeuralAutoregressive,
    UnconstrainedAutoregressive,
    clenshaw_curtis,
)
from flowforge.normalizing.neural_autoregressive import _dsf, _solve

torch.set_num_threads(1)


def _perturb(m: torch.nn.Module, scale: float = 0.5, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


def _dsf_params(k: int = 5, seed: int = 0) -> torch.Tensor:
    return 2.0 * torch.randn(7, 3, 3 * k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------ transformers


def test_dsf_is_strictly_increasing_with_the_right_derivative():
    k, p = 5, _dsf_params()
    x = torch.linspace(-30, 30, 2001, dtype=torch.float64)
    z, log_d = _dsf(x[:, None, None].expand(-1, *p.shape[:2]), p[None].expand(x.numel(), -1, -1, -1), k)
    assert torch.isfinite(z).all() and torch.isfinite(log_d).all()
    assert (z.diff(dim=0) > 0).all(), "DSF transformer must be strictly increasing"
    xs = (3 * torch.randn(7, 3, dtype=torch.float64)).requires_grad_(True)
    zs, ld = _dsf(xs, p, k)
    (grad,) = torch.autograd.grad(zs.sum(), xs)
    torch.testing.assert_close(ld, grad.log(), atol=1e-10, rtol=1e-10)


def test_dsf_tails_stay_finite_in_float32():
    k, p = 4, _dsf_params(4, seed=1).float()
    for v in (-80.0, 80.0):
        z, log_d = _dsf(torch.full((7, 3), v), p, k)
        assert torch.isfinite(z).all() and torch.isfinite(log_d).all()
        assert (z.sign() == math.copysign(1, v)).all()  # onto R: far tails keep the sign


def test_dsf_layer_starts_as_the_identity():
    x = torch.randn(16, 3)
    z, ladj = NeuralAutoregressive(3, (8,), components=6)(x)
    torch.testing.assert_close(z, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(ladj, torch.zeros(16), atol=1e-5, rtol=0)
    z, ladj = UnconstrainedAutoregressive(3, (8,), integrand=(8,), nodes=9)(x)
    torch.testing.assert_close(z, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(ladj, torch.zeros(16), atol=1e-6, rtol=0)


def test_umnn_integrand_is_positive_and_integral_increasing():
    torch.manual_seed(0)
    layer = _perturb(UnconstrainedAutoregressive(1, (8,), embedding=3, integrand=(16, 16), nodes=33).double())
    h = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = torch.linspace(-8, 8, 801, dtype=torch.float64)
    g = layer.g(x.expand(5, -1), h)
    assert (g > 0).all()
    big_f = layer.integral(x[:, None].expand(-1, 5), h[None].expand(x.numel(), -1, -1))
    assert (big_f.diff(dim=0) > 0).all(), "UMNN transformer must be strictly increasing"
    torch.testing.assert_close(big_f[x.numel() // 2], torch.zeros(5, dtype=torch.float64))  # F(0) = 0


def test_umnn_log_det_is_the_derivative_of_the_quadrature():
    # ladj = log g(x), the derivative of the exact integral; the quadrature's own derivative (central
    # differences) agrees up to the rule's error, which shrinks as nodes grow (algebraically: ELU + 1 has
    # a kink in its second derivative)
    h = torch.randn(9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    for nodes, tol in ((33, 3e-4), (129, 1e-5)):
        torch.manual_seed(0)
        layer = UnconstrainedAutoregressive(1, (8,), embedding=3, integrand=(16,), nodes=nodes).double()
        _perturb(layer)
        eps = 1e-5
        fd = (layer.integral(x + eps, h) - layer.integral(x - eps, h)) / (2 * eps)
        g = layer.g(x[:, None], h)[:, 0]
        assert ((fd - g).abs() / g).max() < tol, nodes


def test_dsf_scalar_inverse_by_bisection_reaches_far_tails():
    k = 4
    p = torch.randn(200, 1, 3 * k, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = torch.linspace(-40, 40, 200, dtype=torch.float64)[:, None]
    z, _ = _dsf(x, p, k)
    x2 = _solve(lambda t: _dsf(t, p, k), z, "test")
    torch.testing.assert_close(x2, x, atol=1e-9, rtol=1e-11)


# ------------------------------------------------------------------------------------------- quadrature


def test_clenshaw_curtis_matches_closed_forms():
    s, w = clenshaw_curtis(33)
    assert torch.allclose(w.sum(), torch.tensor(2.0, dtype=torch.float64), atol=1e-14)
    for deg in range(0, 33):  # exact for polynomials of degree <= nodes - 1
        exact = 0.0 if deg % 2 else 2.0 / (deg + 1)
        assert abs(float((w * s**deg).sum()) - exact) < 1e-13, deg
    s5, w5 = clenshaw_curtis(6)  # an odd N
    assert abs(float((w5 * s5**4).sum()) - 0.4) < 1e-13


def test_umnn_integral_matches_closed_form_for_known_integrand():
    layer = UnconstrainedAutoregressive(2, (8,), embedding=2, integrand=(8,), nodes=33).double()
    # g(t; h) = (1 + h_0^2) exp(h_1 t) > 0, so F(x) = (1 + h_0^2) (exp(h_1 x) - 1) / h_1
    layer.g = lambda t, h: (1 + h[..., :1] ** 2) * torch.exp(h[..., 1:2] * t)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 2, generator=g, dtype=torch.float64)
    x = 4 * torch.randn(50, generator=g, dtype=torch.float64)
    exact = (1 + h[:, 0] ** 2) * torch.expm1(h[:, 1] * x) / h[:, 1]
    torch.testing.assert_close(layer.integral(x, h), exact, atol=1e-9, rtol=1e-10)
    # fewer nodes: a larger error, so the rule is really used
    coarse = UnconstrainedAutoregressive(2, (8,), embedding=2, integrand=(8,), nodes=5).double()
    coarse.g = layer.g
    assert (coarse.integral(x, h) - exact).abs().max() > 1e-4


# -------------------------------------------------------------------------------------------- inverses


@pytest.mark.parametrize(
    "make",
    [
        lambda: NeuralAutoregressive(4, (16, 16), order=[2, 0, 3, 1], components=6),
        lambda: UnconstrainedAutoregressive(4, (16, 16), order=[3, 1, 0, 2], integrand=(16,), nodes=17),
        lambda: NAF(4, transforms=2, hidden=(16,), components=4, context=2),
        lambda: UNAF(4, transforms=2, hidden=(16,), integrand=(8,), nodes=17, context=2),
    ],
    ids=["naf-layer", "unaf-layer", "NAF", "UNAF"],
)
def test_bisection_inverse_round_trip_float64(make):
    torch.manual_seed(0)
    m = _perturb(make().double(), 0.3)
    g = torch.Generator().manual_seed(3)
    x = 4 * torch.randn(128, 4, generator=g, dtype=torch.float64)
    x[0] = 10.0  # tails
    x[1] = -10.0
    cond = {"context": torch.randn(128, 2, generator=g, dtype=torch.float64)}
    z, ladj = m(x, **cond)
    x2, ladj_inv = m.inverse(z, **cond)
    torch.testing.assert_close(x2, x, atol=1e-9, rtol=1e-10)
    torch.testing.assert_close(ladj + ladj_inv, torch.zeros_like(ladj), atol=1e-9, rtol=0)


def test_inverse_in_float32_and_sampling():
    torch.manual_seed(0)
    for flow in (
        _perturb(NAF(2, transforms=2, hidden=(16,), components=4), 0.3),
        _perturb(UNAF(2, transforms=2, hidden=(16,), integrand=(8,), nodes=17), 0.3),
    ):
        x = torch.randn(64, 2)
        x2 = flow.inverse(flow(x)[0])[0]
        torch.testing.assert_close(x2, x, atol=1e-4, rtol=1e-4)
        s = flow.sample(32, generator=torch.Generator().manual_seed(0))
        assert s.shape == (32, 2) and torch.isfinite(s).all()


def test_inverse_jacobian_is_the_inverse_of_the_forward_one():
    from torch.autograd.functional import jacobian

    torch.manual_seed(0)
    m = _perturb(UnconstrainedAutoregressive(3, (16,), integrand=(8,), nodes=17).double(), 0.3)
    x = torch.randn(1, 3, dtype=torch.float64)
    z = m(x)[0]
    jf = jacobian(lambda v: m(v[None])[0][0], x[0])
    ji = jacobian(lambda v: m.inverse(v[None])[0][0], z[0])
    torch.testing.assert_close(jf @ ji, torch.eye(3, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(m(x)[1][0], torch.linalg.slogdet(jf)[1], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(
    "make",
    [
        lambda: NeuralAutoregressive(3, (16,), order=[1, 2, 0], components=4, num_classes=2),
        lambda: UnconstrainedAutoregressive(3, (16,), integrand=(8,), nodes=17, num_classes=2),
        lambda: NAF(3, transforms=2, hidden=(16,), components=4),
        lambda: UNAF(3, transforms=2, hidden=(16,), integrand=(8,), nodes=17),
    ],
    ids=["naf-layer", "unaf-layer", "NAF", "UNAF"],
)
def test_log_det_matches_autograd(make):
    from torch.autograd.functional import jacobian

    torch.manual_seed(0)
    m = _perturb(make().double(), 0.3)
    x = 2 * torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    y = torch.tensor([0, 1, 1])
    _, ladj = m(x, y=y)
    for i in range(3):
        jac = jacobian(lambda v, i=i: m(v[None], y=y[i : i + 1])[0][0], x[i])
        if not isinstance(m, Flow):  # a layer: each scalar transformer is increasing
            assert (torch.diagonal(jac) > 0).all()
        torch.testing.assert_close(ladj[i], torch.linalg.slogdet(jac)[1], atol=1e-9, rtol=1e-9)


# ---------------------------------------------------------------------------------------------- fitting


@pytest.mark.parametrize(
    "make",
    [
        lambda: NAF(2, transforms=2, hidden=(32, 32), components=8),
        lambda: UNAF(2, transforms=2, hidden=(32, 32), integrand=(16, 16), nodes=17),
    ],
    ids=["NAF", "UNAF"],
)
def test_short_fit_on_moons_lowers_the_nll(make):
    t0 = time.perf_counter()
    train, test = toy2d("moons", 2000, seed=0), toy2d("moons", 1000, seed=1)
    sc = Standardizer.fit(train)
    xtr, xte = sc.forward(train), sc.forward(test)
    torch.manual_seed(0)
    flow = make()
    with torch.no_grad():
        nll0 = -flow.log_prob(xte).mean().item()  # the identity: about log(2 pi e) = 2.84
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        loss = flow.loss(xtr[torch.randint(0, 2000, (256,), generator=g)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        nll = -flow.log_prob(xte).mean().item()
    assert abs(nll0 - math.log(2 * math.pi * math.e)) < 0.1, nll0
    assert nll < nll0 - 0.4, (nll0, nll)
    assert time.perf_counter() - t0 < 15


# ----------------------------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="components must be an integer >= 1"):
        NeuralAutoregressive(2, components=0)
    with pytest.raises(ValueError, match="nodes must be an integer >= 2"):
        UnconstrainedAutoregressive(2, nodes=1)
    with pytest.raises(ValueError, match="embedding must be an integer >= 1"):
        UnconstrainedAutoregressive(2, embedding=0)
    with pytest.raises(ValueError, match="hidden"):
        UnconstrainedAutoregressive(2, integrand=())
    with pytest.raises(ValueError, match="order must be a permutation"):
        NeuralAutoregressive(3, order=[0, 0, 1])
    with pytest.raises(ValueError, match=r"expects points of shape \(B, 2\)"):
        NeuralAutoregressive(2)(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"points of shape \(B, 2\)"):
        UNAF(2).log_prob(torch.randn(4, 3))
    with pytest.raises(ValueError, match="non-finite"):
        NeuralAutoregressive(2, (8,)).inverse(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="non-finite"):
        UnconstrainedAutoregressive(2, (8,)).inverse(torch.tensor([[float("inf"), 0.0]]))
    with pytest.raises(ValueError, match="transforms must be an integer >= 1"):
        NAF(2, transforms=0)
    with pytest.raises(ValueError, match="transforms must be an integer >= 1"):
        UNAF(2, transforms=0)
    with pytest.raises(ValueError, match="clenshaw_curtis: nodes"):
        clenshaw_curtis(1)
