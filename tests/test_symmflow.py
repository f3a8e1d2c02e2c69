"""SymmFlow: packing, the joint path, the closed-form joint field of Gaussian classes, a trained toy.

Closed form (float64). Classes y with prior pi_y, x1 | y ~ N(mu_y, s^2 I), code c_y (no dequantisation).
Given y, x_t = t x1 + (1-t) eps ~ N(t mu_y, a^2 I) with a^2 = t^2 s^2 + (1-t)^2, and
c_t = (1-t) c_y + t eps' ~ N((1-t) c_y, t^2 I). The marginal joint velocity is the posterior mix

    v(x, c, t) = sum_y p(y | x_t, c_t) [ mu_y + (t s^2 - (1-t)) / a^2 (x - t mu_y),  (c - c_y) / t ].

At t=1 the code is pure noise, p(y | x_1, c_1) = p(y | x_1), and one Euler step back gives
c_0 = sum_y p(y | x) c_y: the one-step classifier is the Bayes classifier (one-hot code).
"""

import math

import pytest
import torch
from torch import nn

from flowforge.continuous import SymmFlow
from flowforge.continuous.symmflow import pack, unpack
from flowforge.nn import MLP

D64 = torch.float64


class GaussianClasses(nn.Module):
    """The closed-form joint velocity for Gaussian classes, as a 'network' on the packed state."""

    def __init__(self, sf: SymmFlow, mu: torch.Tensor, s: float, offset: float = 0.0):
        super().__init__()
        self.sf, self.mu, self.s, self.offset = [sf], mu, s, offset
        self.dummy = nn.Parameter(torch.zeros(()))

    def posterior(self, x: torch.Tensor, c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """p(y | x_t = x, c_t = c): ``(B, num_classes)``."""
        codes = self.sf[0].codes.to(x.dtype)
        tt = t.clamp_min(1e-12)[:, None]
        a2 = t[:, None] ** 2 * self.s**2 + (1 - t[:, None]) ** 2
        dx = (x[:, None, :] - t[:, None, None] * self.mu[None]).square().sum(-1)
        dc = (c[:, None, :] - (1 - t[:, None, None]) * codes[None]).square().sum(-1)
        return torch.softmax(-dx / (2 * a2) - dc / (2 * tt**2), dim=1)

    def forward(self, state: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sf = self.sf[0]
        x, c = unpack(state, sf.channels)
        shape = x.shape
        x = x.reshape(x.shape[0], -1)
        w = self.posterior(x, c, t)
        tb = t[:, None, None]
        a2 = tb**2 * self.s**2 + (1 - tb) ** 2
        vx_y = self.mu[None] + (tb * self.s**2 - (1 - tb)) / a2 * (x[:, None] - tb * self.mu[None])
        vc_y = (c[:, None] - sf.codes.to(x.dtype)[None]) / t.clamp_min(1e-12)[:, None, None]
        vx = (w[..., None] * vx_y).sum(1).reshape(shape)
        vc = (w[..., None] * vc_y).sum(1)
        return pack(vx, vc) + self.offset


def _triangle(radius: float = 2.0, dim: int = 2) -> torch.Tensor:
    ang = torch.tensor([math.pi / 2 + 2 * math.pi * k / 3 for k in range(3)], dtype=D64)
    mu = torch.zeros(3, dim, dtype=D64)
    mu[:, 0], mu[:, 1] = radius * ang.cos(), radius * ang.sin()
    return mu


def _mixture(mu, s, n, g, dtype=D64):
    y = torch.randint(0, mu.shape[0], (n,), generator=g)
    return mu[y].to(dtype) + s * torch.randn(n, mu.shape[1], generator=g, dtype=dtype), y


def _bayes_accuracy_triangle(radius: float, s: float) -> float:
    """Exact Bayes accuracy of three equal-prior N(mu_k, s^2 I) at the corners of an equilateral
    triangle of circumradius ``radius``: the Bayes region of class k is the 120-degree wedge around
    mu_k, so P(correct) = E_z[ P(|s z2| < sqrt3 (radius + s z1)) ] (1-D quadrature)."""
    z = torch.linspace(-12.0, 12.0, 200_001, dtype=D64)
    u = radius + s * z
    inner = torch.where(u > 0, torch.special.erf(math.sqrt(3) * u / (s * math.sqrt(2))), torch.zeros_like(u))
    return float(torch.trapezoid(torch.exp(-(z**2) / 2) / math.sqrt(2 * math.pi) * inner, z))


# ------------------------------------------------------------------------------------------------
# packing and the path
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event", [(3,), (2, 4, 5), (1, 3)])
def test_pack_unpack_round_trip(event):
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(4, *event, generator=g), torch.randn(4, 6, generator=g)
    s = pack(x, c)
    assert s.shape == (4, event[0] + 6, *event[1:])
    x2, c2 = unpack(s, event[0])
    assert torch.equal(x2, x) and torch.allclose(c2, c)
    if len(event) > 1:  # the label channels are constant copies of the code
        lab = s[:, event[0] :]
        assert torch.equal(lab, c.reshape(4, 6, *([1] * (len(event) - 1))).expand_as(lab))


def test_unpack_reads_the_spatial_mean_of_label_channels():
    v = torch.zeros(1, 2, 2, 2)
    v[0, 1] = torch.tensor([[0.0, 1.0], [2.0, 5.0]])
    assert unpack(v, 1)[1].item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="pack needs"):
        pack(torch.zeros(2, 3), torch.zeros(3, 1))


def test_path_target_is_the_time_derivative_and_ends_are_right():
    sf = SymmFlow(nn.Identity(), (1, 2), num_classes=3)
    g = torch.Generator().manual_seed(1)
    x1, eps = torch.randn(5, 1, 2, generator=g, dtype=D64), torch.randn(5, 1, 2, generator=g, dtype=D64)
    c1, ec = torch.randn(5, 3, generator=g, dtype=D64), torch.randn(5, 3, generator=g, dtype=D64)
    t = torch.rand(5, generator=g, dtype=D64)
    h = 1e-6  # central difference: exact up to rounding on a path that is linear in t
    (xp, cp, *_), (xm, cm, *_) = (sf.interpolate(x1, c1, eps, ec, t + d) for d in (h, -h))
    _, _, u_x, u_c = sf.interpolate(x1, c1, eps, ec, t)
    assert torch.allclose((xp - xm) / (2 * h), u_x, atol=1e-8)
    assert torch.allclose((cp - cm) / (2 * h), u_c, atol=1e-8)
    x0, c0, *_ = sf.interpolate(x1, c1, eps, ec, torch.zeros(5, dtype=D64))
    xe, ce, *_ = sf.interpolate(x1, c1, eps, ec, torch.ones(5, dtype=D64))
    assert torch.equal(x0, eps) and torch.equal(c0, c1)  # t=0: image noise, label data
    assert torch.equal(xe, x1) and torch.equal(ce, ec)  # t=1: image data, label noise


def test_loss_is_the_weighted_regression_on_the_joint_velocity():
    class Zero(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, s, t):
            return torch.zeros_like(s) + self.p

    w = 0.7
    sf = SymmFlow(Zero(), (1, 2, 2), num_classes=3, image_weight=w, label_scale=1.5)
    x1, y = torch.randn(8, 1, 2, 2, dtype=D64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.manual_seed(3)
    loss = sf.loss((x1, y))
    torch.manual_seed(3)  # the same draws, in the loss's order: image noise, label noise, time
    eps, ec = torch.randn_like(x1), torch.randn(8, 3, dtype=D64)
    c1 = 1.5 * (2 * torch.eye(3, dtype=D64)[y] - 1)
    expect = w * (x1 - eps).square().mean() + (1 - w) * (ec - c1).square().mean()
    assert loss.item() == pytest.approx(expect.item(), rel=1e-12)


# ------------------------------------------------------------------------------------------------
# closed-form joint field
# ------------------------------------------------------------------------------------------------


def test_closed_form_field_minimises_the_loss():
    mu, s = _triangle(), 0.8
    sf = SymmFlow(nn.Identity(), (2,), num_classes=3, image_weight=0.6).to(D64)
    x, y = _mixture(mu, s, 40_000, torch.Generator().manual_seed(0))
    losses = {}
    for off in (0.0, 0.3, -0.3):
        sf.net = GaussianClasses(sf, mu, s, offset=off)
        torch.manual_seed(1)
        losses[off] = sf.loss((x, y)).item()
    # a constant offset adds exactly offset^2 to each mean square when the field is the posterior mean
    for off in (0.3, -0.3):
        assert losses[off] - losses[0.0] == pytest.approx(off**2, rel=0.1)


@pytest.mark.parametrize("event", [(2,), (1, 2, 2)])
@pytest.mark.parametrize("code", ["onehot", "ordinal"])
def test_one_step_classifier_is_the_posterior_mean_code(event, code):
    dim = math.prod(event)
    mu, s = _triangle(dim=dim), 1.0
    sf = SymmFlow(nn.Identity(), event, num_classes=3, code=code, label_scale=2.0).to(D64)
    field = GaussianClasses(sf, mu, s)
    sf.net = field
    x, _ = _mixture(mu, s, 500, torch.Generator().manual_seed(0))
    scores = sf.classify(x.reshape(-1, *event), generator=torch.Generator().manual_seed(1))
    post = field.posterior(x, torch.zeros(500, sf.code_dim, dtype=D64), torch.ones(500, dtype=D64))
    c0 = post @ sf.codes
    assert torch.allclose(scores, sf.scores(c0), atol=1e-9)
    if code == "onehot":  # the Bayes classifier, exactly
        assert torch.equal(scores.argmax(1), post.argmax(1))


def test_closed_form_generation_draws_the_requested_class():
    mu, s = _triangle(), 0.5
    sf = SymmFlow(nn.Identity(), (2,), num_classes=3, label_scale=1.0).to(D64)
    sf.net = GaussianClasses(sf, mu, s)
    for k in range(3):
        y = torch.full((2000,), k)
        x = sf.generate(y, generator=torch.Generator().manual_seed(k), steps=40, dtype=D64)
        assert torch.allclose(x.mean(0), mu[k], atol=0.05)
        assert torch.allclose(x.std(0), torch.full((2,), s, dtype=D64), atol=0.04)


# ------------------------------------------------------------------------------------------------
# a trained toy: 3 Gaussian classes in 2-D
# ------------------------------------------------------------------------------------------------


def test_trained_mlp_classifies_near_bayes_and_generates_the_requested_class():
    radius, s = 2.0, 0.8
    mu = _triangle(radius).float()
    torch.manual_seed(0)
    sf = SymmFlow(MLP(dim=2 + 3, width=64, depth=3), (2,), num_classes=3, image_weight=0.5, label_scale=2.0)
    opt = torch.optim.Adam(sf.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(800):
        loss = sf.loss(_mixture(mu, s, 256, g, dtype=torch.float32))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = _mixture(mu, s, 4000, torch.Generator().manual_seed(2), dtype=torch.float32)
    bayes_exact = _bayes_accuracy_triangle(radius, s)  # 0.9719
    bayes_pred = ((x[:, None] - mu[None]) ** 2).sum(-1).argmin(1)
    pred = sf.classify(x, generator=torch.Generator().manual_seed(3)).argmax(1)
    acc = (pred == y).float().mean().item()
    assert acc > bayes_exact - 0.025, (acc, bayes_exact)
    assert (pred == bayes_pred).float().mean().item() > 0.95
    yq = torch.arange(3).repeat_interleave(200)
    xs = sf.generator().sample(600, cond={"y": yq}, generator=torch.Generator().manual_seed(4), steps=16)
    nearest = ((xs[:, None] - mu[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == yq).float().mean().item() >= 0.9


# ------------------------------------------------------------------------------------------------
# codes, reproducibility, errors
# ------------------------------------------------------------------------------------------------


def test_codes_and_dequantisation():
    sf = SymmFlow(nn.Identity(), (2,), num_classes=4, code="ordinal", label_scale=2.0, label_noise=0.5)
    assert sf.code_dim == 1
    assert torch.allclose(sf.codes.squeeze(1), torch.tensor([-2.0, -2 / 3, 2 / 3, 2.0], dtype=sf.codes.dtype))
    y = torch.tensor([0, 1, 2, 3] * 50)
    c = sf.encode(y, generator=torch.Generator().manual_seed(0))
    assert ((c - sf.codes.float()[y]).abs() <= 0.25).all() and (c - sf.codes.float()[y]).abs().max() > 0.2
    assert torch.equal(c, sf.encode(y, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(sf.scores(c).argmax(1), y)  # noise narrower than half the level spacing
    oh = SymmFlow(nn.Identity(), (2,), num_classes=3)
    assert torch.equal(oh.codes, oh.label_scale * (2 * torch.eye(3, dtype=oh.codes.dtype) - 1))
    assert "codes" not in oh.state_dict()  # derived from the config, not a weight


def test_reproducible_with_a_seed():
    torch.manual_seed(0)
    sf = SymmFlow(MLP(dim=(1 + 3, 2, 2), width=16, depth=2), (1, 2, 2), num_classes=3, label_noise=0.1)
    gen = sf.generator()
    a, ya = gen.sample(6, generator=torch.Generator().manual_seed(7), steps=3, return_labels=True)
    b, yb = gen.sample(6, generator=torch.Generator().manual_seed(7), steps=3, return_labels=True)
    c = gen.sample(6, generator=torch.Generator().manual_seed(8), steps=3)
    assert a.shape == (6, 1, 2, 2) and torch.equal(a, b) and torch.equal(ya, yb) and not torch.equal(a, c)
    x = torch.randn(5, 1, 2, 2)
    s1 = sf.classify(x, steps=2, generator=torch.Generator().manual_seed(1))
    s2 = sf.classify(x, steps=2, generator=torch.Generator().manual_seed(1))
    assert s1.shape == (5, 3) and torch.equal(s1, s2)


def test_errors_say_what_to_write():
    with pytest.raises(ValueError, match=r"MLP\(dim=5\)"):
        SymmFlow(MLP(dim=2, width=8, depth=1), (2,), 3)

    class Conv(nn.Module):
        in_channels = out_channels = 1

    with pytest.raises(ValueError, match="in_channels=11"):
        SymmFlow(Conv(), (1, 8, 8), 10)

    class Half(nn.Module):
        def forward(self, s, t):
            return s[:, :2]

    with pytest.raises(ValueError, match="same shape"):
        SymmFlow(Half(), (2,), 3).loss((torch.randn(4, 2), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(ValueError, match="onehot"):
        SymmFlow(nn.Identity(), (2,), 3, code="one-hot")
    sf = SymmFlow(MLP(dim=5, width=8, depth=1), (2,), 3)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        sf.loss((torch.randn(4, 2), torch.tensor([0, 1, 2, 3])))
    with pytest.raises(ValueError, match="labelled"):
        sf.loss(torch.randn(4, 2))
    with pytest.raises(ValueError, match="ODE"):
        sf.generate(torch.tensor([0, 1]), solver="sde")
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        sf.generator().sample(3, cond={"y": torch.tensor([0, 1])})
