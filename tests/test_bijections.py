"""Normalizing-flow bijections: the shared battery (house rule 3) plus spline, structure and fit tests.

The battery runs every bijection in float64 with parameters moved away from their (identity) initial
values: (a) inverse round trip, (b) log-determinant against the autograd Jacobian and forward +
inverse = 0, (c) the 2-D density integrates to 1, (d) gradients reach every parameter, (e) a
safetensors save/load round trip into a fresh instance gives identical outputs.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from flowforge.data import Standardizer, toy2d
from flowforge.nn import MADE
from flowforge.normalizing import (
    MAF,
    NAF,
    NSF,
    UNAF,
    ActNorm,
    Affine,
    AffineCoupling,
    Compose,
    Flow,
    LULinear,
    MaskedAutoregressive,
    NeuralAutoregressive,
    Permutation,
    RandomPermutation,
    RealNVP,
    ResidualBlock,
    ResidualFlow,
    Reverse,
    SplineAutoregressive,
    SplineCoupling,
    UnconstrainedAutoregressive,
    rq_spline,
    soft_clip,
)
from flowforge.train.checkpoint import load_safetensors, save_safetensors

torch.set_num_threads(1)  # small models: one thread is faster on a shared 2-core machine

NUM_CLASSES, CTX = 3, 2
H = (16, 16)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _order(dim: int, seed: int) -> torch.Tensor:
    return torch.randperm(dim, generator=_gen(seed))


# name -> (factory(dim, seed) -> module, conditioning kind). The seed only matters for random parts
# (orders, permutations), so a fresh instance with another seed must be restored by load_state_dict.
CASES = {
    "affine-coupling": (lambda d, s: AffineCoupling(d, H), None),
    "affine-coupling-mask": (lambda d, s: AffineCoupling(d, H, mask=torch.arange(d) < d // 2), None),
    "maf-layer": (lambda d, s: MaskedAutoregressive(d, H, order=_order(d, s)), None),
    "spline-coupling": (lambda d, s: SplineCoupling(d, H, bins=5, bound=3.0), None),
    "spline-ar": (lambda d, s: SplineAutoregressive(d, H, order=_order(d, s), bins=5, bound=3.0), None),
    "permutation": (lambda d, s: Permutation(_order(d, s)), None),
    "random-permutation": (lambda d, s: RandomPermutation(d, seed=s), None),
    "reverse": (lambda d, s: Reverse(), None),
    "actnorm": (lambda d, s: ActNorm(d), None),
    "lulinear": (lambda d, s: LULinear(d), None),
    "affine": (
        lambda d, s: Affine(1.0 + torch.randn(d, generator=_gen(s)), 0.5 + torch.rand(d, generator=_gen(s))),
        None,
    ),
    "compose": (
        lambda d, s: Compose(
            [
                SplineCoupling(d, (8,), bins=4, bound=3.0),
                Reverse(),
                ActNorm(d),
                MaskedAutoregressive(d, (8,)),
                LULinear(d),
            ]
        ),
        None,
    ),
    "flow": (lambda d, s: Flow([AffineCoupling(d, H), Reverse(), ActNorm(d)], event_shape=(d,)), None),
    "NSF": (lambda d, s: NSF(d, transforms=2, hidden=H, bins=5, bound=3.0), None),
    "NSF-coupling": (lambda d, s: NSF(d, transforms=2, hidden=H, bins=5, bound=3.0, coupling=True), None),
    "MAF": (lambda d, s: MAF(d, transforms=3, hidden=H), None),
    "RealNVP": (lambda d, s: RealNVP(d, transforms=3, hidden=H), None),
    "naf-layer": (lambda d, s: NeuralAutoregressive(d, H, order=_order(d, s), components=4), None),
    "unaf-layer": (
        lambda d, s: UnconstrainedAutoregressive(
            d, H, order=_order(d, s), embedding=4, integrand=(8,), nodes=17
        ),
        None,
    ),
    "NAF": (lambda d, s: NAF(d, transforms=2, hidden=H, components=4), None),
    "UNAF": (lambda d, s: UNAF(d, transforms=2, hidden=H, embedding=4, integrand=(8,), nodes=17), None),
    # exact log-det mode; the roulette estimator has its own tests in tests/test_residual_flow.py
    "residual-block": (lambda d, s: ResidualBlock(d, H, logdet="exact"), None),
    "ResidualFlow": (lambda d, s: ResidualFlow(d, blocks=2, hidden=H, logdet="exact"), None),
    # conditional variants
    "affine-coupling|context": (lambda d, s: AffineCoupling(d, H, context=CTX), "context"),
    "maf-layer|y": (
        lambda d, s: MaskedAutoregressive(d, H, order=_order(d, s), num_classes=NUM_CLASSES),
        "y",
    ),
    "spline-coupling|y": (lambda d, s: SplineCoupling(d, H, bins=5, bound=3.0, num_classes=NUM_CLASSES), "y"),
    "spline-ar|both": (
        lambda d, s: SplineAutoregressive(d, H, bins=5, bound=3.0, context=CTX, num_classes=NUM_CLASSES),
        "both",
    ),
    "NSF|y": (lambda d, s: NSF(d, transforms=2, hidden=H, bins=5, bound=3.0, num_classes=NUM_CLASSES), "y"),
    "MAF|context": (lambda d, s: MAF(d, transforms=2, hidden=H, context=CTX), "context"),
    "NAF|both": (
        lambda d, s: NAF(d, transforms=2, hidden=H, components=4, context=CTX, num_classes=NUM_CLASSES),
        "both",
    ),
    "UNAF|y": (
        lambda d, s: UNAF(
            d, transforms=2, hidden=H, embedding=4, integrand=(8,), nodes=17, num_classes=NUM_CLASSES
        ),
        "y",
    ),
    "RealNVP|both": (
        lambda d, s: RealNVP(d, transforms=2, hidden=H, context=CTX, num_classes=NUM_CLASSES),
        "both",
    ),
}
NAMES = list(CASES)


def make(name: str, dim: int, seed: int = 0, perturb: bool = True) -> nn.Module:
    """The bijection in float64, with every parameter moved away from its identity initialisation."""
    torch.manual_seed(seed)  # default initialisations draw from the global generator
    m = CASES[name][0](dim, seed).double()
    if perturb:
        g = torch.Generator().manual_seed(1234 + seed)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for mod in m.modules():
            if isinstance(mod, ActNorm):
                mod.initialized.fill_(True)
    return m


def conds(name: str, b: int, seed: int = 0) -> dict[str, torch.Tensor]:
    kind = CASES[name][1]
    g = torch.Generator().manual_seed(99 + seed)
    out = {}
    if kind in ("y", "both"):
        out["y"] = torch.arange(b) % NUM_CLASSES
    if kind in ("context", "both"):
        out["context"] = torch.randn(b, CTX, generator=g, dtype=torch.float64)
    return out


def points(b: int, d: int, seed: int = 0) -> torch.Tensor:
    # spread 2: some points fall outside the spline bound (3) and exercise the identity tails
    return 2.0 * torch.randn(b, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------------------------- battery


def test_battery_covers_every_exported_bijection():
    import flowforge.normalizing as nf

    exported = {
        obj
        for name in nf.__all__
        if isinstance(obj := getattr(nf, name), type)
        and issubclass(obj, nn.Module)
        and hasattr(obj, "inverse")
    }
    exported -= {nf.TARFlow, nf.TARFlowBlock}  # their own battery: tests/test_tarflow.py
    exported -= {nf.CNF, nf.FFJORD}  # ODE solver error: their own battery in tests/test_cnf.py
    # image layers (B, C, H, W): their own battery in tests/test_glow.py
    exported -= {nf.Glow, nf.ActNorm2d, nf.InvConv2d, nf.AffineCoupling2d, nf.Squeeze}
    # particle systems on the mean-free subspace: their own battery in tests/test_eq_coupling.py
    exported -= {nf.AugmentedEquivariantFlow, nf.EquivariantCoupling}
    exported -= {nf.VideoTARFlow}  # videos (B, F, ...): its own battery in tests/test_video.py
    covered = {type(CASES[name][0](3, 0)) for name in NAMES}
    missing = sorted(c.__name__ for c in exported - covered)
    assert not missing, f"add these bijections to CASES so the battery runs over them: {missing}"
    assert {NSF, MAF, RealNVP, Flow, Compose} <= covered


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name):
    m = make(name, 3)
    x, c = points(64, 3), conds(name, 64)
    z, ladj = m(x, **c)
    assert z.shape == x.shape and ladj.shape == (64,)
    assert not torch.allclose(z, x), "perturbed bijection should not be the identity"
    x2, ladj_inv = m.inverse(z, **c)
    torch.testing.assert_close(x2, x, atol=1e-8, rtol=0)
    torch.testing.assert_close(ladj + ladj_inv, torch.zeros_like(ladj), atol=1e-8, rtol=0)
    z2 = points(64, 3, seed=1)
    torch.testing.assert_close(m(m.inverse(z2, **c)[0], **c)[0], z2, atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_log_det_matches_autograd_jacobian(name):
    m = make(name, 3)
    x, c = points(4, 3, seed=2), conds(name, 4)
    z, ladj = m(x, **c)
    _, ladj_inv = m.inverse(z, **c)
    for i in range(x.shape[0]):
        ci = {k: v[i : i + 1] for k, v in c.items()}
        jac = jacobian(lambda xi, ci=ci: m(xi[None], **ci)[0][0], x[i])
        sign, logdet = torch.linalg.slogdet(jac)
        assert sign != 0
        torch.testing.assert_close(ladj[i], logdet, atol=1e-8, rtol=1e-8)
        jac_inv = jacobian(lambda zi, ci=ci: m.inverse(zi[None], **ci)[0][0], z[i])
        torch.testing.assert_close(ladj_inv[i], torch.linalg.slogdet(jac_inv)[1], atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(jac @ jac_inv, torch.eye(3, dtype=jac.dtype), atol=1e-8, rtol=0)


def _as_flow(m: nn.Module) -> Flow:
    return m if isinstance(m, Flow) else Flow(m, event_shape=(2,)).double()


@pytest.mark.parametrize("name", NAMES)
def test_density_integrates_to_one_in_2d(name):
    flow = _as_flow(make(name, 2))
    n, lim = 350, 10.0  # midpoint rule, spacing 0.057 (errors <= 6e-4 here); < 1e-6 mass falls outside
    h = 2 * lim / n
    u = -lim + h * (torch.arange(n, dtype=torch.float64) + 0.5)  # midpoints
    grid = torch.cartesian_prod(u, u)
    c = {k: v[:1].expand(grid.shape[0], *v.shape[1:]) for k, v in conds(name, 1).items()}
    with torch.no_grad():
        mass = flow.log_prob(grid, **c).exp().sum().item() * h * h
    assert abs(mass - 1) < 5e-3, f"density of {name} integrates to {mass}"


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    flow = _as_flow(make(name, 2))
    x = points(64, 2, seed=3).requires_grad_(True)
    flow.log_prob(x, **conds(name, 64)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in flow.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"no gradient for {pname}"
            assert torch.isfinite(p.grad).all(), f"non-finite gradient for {pname}"
            assert p.grad.abs().sum() > 0, f"zero gradient for {pname}"


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, tmp_path):
    m = make(name, 3, seed=0)
    path = tmp_path / "bijection.safetensors"
    save_safetensors(path, {k: v.contiguous() for k, v in m.state_dict().items()})
    fresh = make(name, 3, seed=1, perturb=False)  # other random order / permutation, identity weights
    fresh.load_state_dict(load_safetensors(path))
    x, c = points(32, 3), conds(name, 32)
    for a, b in zip(m(x, **c), fresh(x, **c)):
        assert torch.equal(a, b)
    for a, b in zip(m.inverse(x, **c), fresh.inverse(x, **c)):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------- splines


def _spline_params(shape, k, scale=1.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(*shape, n, generator=g, dtype=dtype) for n in (k, k, k - 1))


def test_spline_monotone_and_identity_outside_bound():
    x = torch.linspace(-7, 7, 4001, dtype=torch.float64)
    w, h, d = (p.expand(x.shape[0], -1) for p in _spline_params((1,), 8, scale=2.0))
    y, ladj = rq_spline(x, w, h, d, bound=5.0)
    assert (y.diff() > 0).all()
    out = x.abs() > 5
    assert torch.equal(y[out], x[out]) and torch.equal(ladj[out], torch.zeros_like(ladj[out]))
    assert not torch.allclose(y[~out], x[~out])
    # the map sends [-B, B] onto itself and is continuous at the ends
    yb, _ = rq_spline(torch.tensor([-5.0, 5.0], dtype=torch.float64), w[:2], h[:2], d[:2], bound=5.0)
    torch.testing.assert_close(yb, torch.tensor([-5.0, 5.0], dtype=torch.float64), atol=1e-12, rtol=0)
    xi, _ = rq_spline(y, w, h, d, bound=5.0, inverse=True)
    assert (xi.diff() > 0).all()
    torch.testing.assert_close(xi, x, atol=1e-10, rtol=0)


def test_spline_is_linear_for_uniform_parameters():
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)
    z = torch.zeros(101, 6, dtype=torch.float64)
    y, ladj = rq_spline(x, z, z, z[:, :5], bound=3.0)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj, torch.zeros_like(ladj), atol=1e-12, rtol=0)
    # equal widths and heights (any values) with unit derivatives: every bin has slope 1, the map is linear
    w = torch.randn(101, 6, dtype=torch.float64)
    y, ladj = rq_spline(x, w, w, z[:, :5], bound=3.0)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj, torch.zeros_like(ladj), atol=1e-12, rtol=0)
    # uniform bins but heights scaled differently: still piecewise rational, not the identity
    y2, _ = rq_spline(x, z, torch.randn(101, 6, dtype=torch.float64), z[:, :5], bound=3.0)
    assert not torch.allclose(y2, x)


def test_spline_ladj_matches_derivative():
    x = torch.linspace(-5.5, 5.5, 301, dtype=torch.float64).requires_grad_(True)
    w, h, d = _spline_params((301,), 7, scale=1.5, seed=1)
    y, ladj = rq_spline(x, w, h, d, bound=5.0)
    (dydx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(ladj, dydx.log(), atol=1e-10, rtol=1e-10)
    yd = y.detach().requires_grad_(True)
    xi, ladj_inv = rq_spline(yd, w, h, d, bound=5.0, inverse=True)
    (dxdy,) = torch.autograd.grad(xi.sum(), yd)
    torch.testing.assert_close(ladj_inv, dxdy.log(), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ladj + ladj_inv, torch.zeros_like(ladj), atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "dtype,tol_y,tol_x,tol_ladj", [(torch.float32, 2e-5, 1e-4, 1e-2), (torch.float64, 1e-12, 1e-12, 1e-9)]
)
def test_spline_numerics(dtype, tol_y, tol_x, tol_ladj):
    g = torch.Generator().manual_seed(0)
    n, k, bound = 20_000, 8, 5.0
    x = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1).mul(bound * 1.1).to(dtype)
    for scale in (1.0, 5.0):  # scale 5: bin widths spread over e^10, strongly curved bins
        w, h, d = _spline_params((n,), k, scale=scale, seed=1, dtype=dtype)
        y, ladj = rq_spline(x, w, h, d, bound)
        xi, ladj_inv = rq_spline(y, w, h, d, bound, inverse=True)
        assert torch.isfinite(y).all() and torch.isfinite(ladj).all() and torch.isfinite(ladj_inv).all()
        # the round-trip error in y units (x itself is not recoverable where the map is nearly flat)
        torch.testing.assert_close((xi - x) * ladj.exp(), torch.zeros_like(x), atol=tol_y, rtol=0)
        steep = ladj > -2
        torch.testing.assert_close(xi[steep], x[steep], atol=tol_x, rtol=0)
        torch.testing.assert_close(
            ladj[steep] + ladj_inv[steep], torch.zeros_like(x[steep]), atol=tol_ladj, rtol=0
        )
    atol = tol_x
    # exactly at the knots and at the ends of the interval
    w, h, d = _spline_params((1,), k, seed=2, dtype=dtype)
    frac = 1e-3 + (1 - 1e-3 * k) * torch.softmax(w[0], -1)
    knots = torch.cat([torch.zeros(1, dtype=dtype), frac.cumsum(0)]) * 2 * bound - bound
    xk = knots.clamp(-bound, bound).requires_grad_(True)
    wk, hk, dk = (p.expand(xk.shape[0], -1) for p in (w, h, d))
    y, ladj = rq_spline(xk, wk, hk, dk, bound)
    (gx,) = torch.autograd.grad(y.sum() + ladj.sum(), xk)
    assert torch.isfinite(gx).all()
    torch.testing.assert_close(
        rq_spline(y, wk, hk, dk, bound, inverse=True)[0], xk.detach(), atol=atol, rtol=0
    )
    # extreme parameters stay finite and monotone
    w, h, d = _spline_params((1,), k, scale=50.0, seed=3, dtype=dtype)
    xs = torch.linspace(-bound, bound, 5001, dtype=dtype)
    y, ladj = rq_spline(xs, *(p.expand(5001, -1) for p in (w, h, d)), bound)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    assert (y.diff() >= -2 * torch.finfo(dtype).eps * bound).all()  # monotone up to rounding in flat parts


def test_spline_argument_errors():
    x = torch.zeros(3)
    w, h, d = torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 3)
    with pytest.raises(ValueError, match="bound must be > 0"):
        rq_spline(x, w, h, d, bound=0.0)
    with pytest.raises(ValueError, match=r"derivatives \(\*, K-1\)"):
        rq_spline(x, w, h, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="bins must be an integer >= 1"):
        SplineAutoregressive(2, bins=0)
    with pytest.raises(ValueError, match="bound must be > 0"):
        NSF(2, bound=-1.0)


# ----------------------------------------------------------------------------------------------- structure


def test_soft_clip_bounds_log_scale():
    a = torch.linspace(-1e4, 1e4, 1001, dtype=torch.float64)
    s = soft_clip(a, 2.0)
    assert (s.abs() < 2.0).all() and (s.diff() > 0).all()
    torch.testing.assert_close(
        soft_clip(torch.tensor(1e-6, dtype=torch.float64)), torch.tensor(1e-6, dtype=torch.float64)
    )


@pytest.mark.parametrize("cls", [MaskedAutoregressive, SplineAutoregressive])
def test_autoregressive_jacobian_is_triangular_in_order(cls):
    d = 5
    order = torch.tensor([3, 0, 4, 1, 2])
    torch.manual_seed(0)
    m = cls(d, (32, 32), order=order).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = 0.5 * torch.randn(d, dtype=torch.float64)
    jac = jacobian(lambda v: m(v[None])[0][0], x)
    for i in range(d):
        for j in range(d):
            if order[j] > order[i]:
                assert jac[i, j] == 0, (i, j)
            elif order[j] < order[i]:
                assert jac[i, j] != 0, (i, j)
    assert (jac.diagonal() > 0).all()
    # in the given order the Jacobian is lower triangular
    perm = torch.argsort(order)
    assert torch.equal(jac[perm][:, perm].triu(1), torch.zeros(d, d, dtype=torch.float64))


def test_coupling_leaves_the_conditioning_half_alone():
    mask = torch.tensor([True, False, False, True])
    m = AffineCoupling(4, (16,), mask=mask).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(4, dtype=torch.float64)
    jac = jacobian(lambda v: m(v[None])[0][0], x)
    torch.testing.assert_close(jac[~mask], torch.eye(4, dtype=torch.float64)[~mask])
    block = jac[mask][:, mask]
    torch.testing.assert_close(block, torch.diag(block.diagonal()))
    assert (jac[mask][:, ~mask] != 0).all()


def test_made_connectivity_and_conditioning():
    torch.manual_seed(0)
    net = MADE(4, params=3, hidden=(32, 32), order=[2, 0, 3, 1], context=2, num_classes=3).double()
    with torch.no_grad():
        net.output.weight.normal_()
    x, c = torch.randn(4, dtype=torch.float64), torch.randn(1, 2, dtype=torch.float64)
    jac = jacobian(lambda v: net(v[None], c, torch.tensor([1]))[0], x)  # (4, 3, 4)
    order = torch.tensor([2, 0, 3, 1])
    dep = jac.abs().sum(1) > 0
    assert torch.equal(dep, order[None, :] < order[:, None])
    out1 = net(x[None], c, torch.tensor([1]))
    assert not torch.allclose(out1, net(x[None], c + 1, torch.tensor([1])))
    assert not torch.allclose(out1, net(x[None], c, torch.tensor([2])))


def test_layers_start_as_identity_and_ignore_unused_conditioning():
    x = torch.randn(8, 3)
    extra = {"y": torch.zeros(8, dtype=torch.long), "context": torch.randn(8, 5)}
    for m in [
        AffineCoupling(3),
        MaskedAutoregressive(3),
        SplineCoupling(3),
        SplineAutoregressive(3),
        LULinear(3),
        NSF(3),
        MAF(3),
        RealNVP(3),
    ]:
        z, ladj = m(x, **extra)
        torch.testing.assert_close(z, x, atol=1e-5, rtol=0)
        torch.testing.assert_close(ladj, torch.zeros(8), atol=1e-5, rtol=0)
    assert Reverse()(x, **extra)[0].shape == x.shape


def test_actnorm_data_dependent_init_once_and_persisted():
    layer = ActNorm(2)
    x = torch.randn(500, 2) * torch.tensor([3.0, 0.5]) + torch.tensor([1.0, -2.0])
    layer.eval()
    z, _ = layer(x)
    assert torch.equal(z, x) and not layer.initialized  # eval mode: no initialisation
    layer.train()
    z, ladj = layer(x)
    assert layer.initialized
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, correction=0), torch.ones(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(ladj, -torch.log(x.std(0, correction=0)).sum().expand(500), atol=1e-5, rtol=0)
    loc = layer.loc.detach().clone()
    layer(x * 10)  # a second batch does not re-initialise
    assert torch.equal(layer.loc.detach(), loc)
    fresh = ActNorm(2)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.initialized and torch.equal(fresh(x * 10)[0], layer(x * 10)[0])


def test_errors_say_what_to_write():
    with pytest.raises(ValueError, match=r"shape \(B, 2\).*dim=3"):
        SplineAutoregressive(2)(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        NSF(2)(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"shape \(B, 3\)"):
        MaskedAutoregressive(3)(torch.randn(4, 3, 1))
    with pytest.raises(ValueError, match="permutation of 0..2"):
        MaskedAutoregressive(3, order=[0, 0, 1])
    with pytest.raises(ValueError, match="bool tensor of shape"):
        AffineCoupling(3, mask=torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="both True"):
        SplineCoupling(2, mask=torch.tensor([True, True]))
    with pytest.raises(ValueError, match="dim >= 2"):
        AffineCoupling(1)
    with pytest.raises(ValueError, match="non-empty"):
        MaskedAutoregressive(2, hidden=())
    with pytest.raises(ValueError, match=r"pass context=\(B, 2\)"):
        MAF(2, context=2).log_prob(torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"pass y=\(B,\)"):
        NSF(2, num_classes=3).log_prob(torch.randn(3, 2))
    with pytest.raises(ValueError, match="permutation of 0..D-1"):
        Permutation([0, 2])
    with pytest.raises(ValueError, match="transforms must be"):
        MAF(2, transforms=0)


# ----------------------------------------------------------------------------------------------- fitting


def test_sampling_matches_density_direction():
    torch.manual_seed(0)
    flow = NSF(2, transforms=2, hidden=(16, 16), num_classes=2).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    y = torch.tensor([0, 1] * 50)
    x, log_q = flow.sample_and_log_prob(100, cond={"y": y}, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(flow.log_prob(x, y=y), log_q, atol=1e-10, rtol=1e-10)
    assert x.dtype == torch.float64 and not torch.allclose(x[y == 0].mean(0), x[y == 1].mean(0), atol=0.05)


def test_one_bin_spline_is_the_identity():
    # one bin with unit end derivatives is the line y = x: nothing to learn (bins >= 2 for a real spline)
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)
    y, ladj = rq_spline(x, torch.randn(7, 1), torch.randn(7, 1), torch.zeros(7, 0), bound=2.0)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    assert torch.equal(ladj, torch.zeros(7, dtype=torch.float64))


def test_small_nsf_fits_moons():
    t0 = time.perf_counter()
    train, test = toy2d("moons", 4000, seed=0), toy2d("moons", 2000, seed=1)
    sc = Standardizer.fit(train)
    xtr, xte = sc.forward(train), sc.forward(test)
    torch.manual_seed(0)
    flow = NSF(2, transforms=2, hidden=(32, 32), bins=8, bound=4.0)
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss = flow.loss(xtr[torch.randint(0, 4000, (256,), generator=g)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        nll = -flow.log_prob(xte).mean().item()
    # a Gaussian fit of standardised data scores log(2 pi e) = 2.84, converged NSFs about 1.14; this
    # run reaches 1.26-1.29 over seeds
    assert nll < 1.40, nll
    assert time.perf_counter() - t0 < 30
