"""TwinFlow (arXiv 2512.05150): RCGM target, rectify shift, branches, batch split, EMA, sampler.

Analytic truth: x0 ~ N(0, I), x1 ~ N(m, diag c^2) on the linear path (flowforge time), float64:
sigma_t = sqrt(t^2 c^2 + (1 - t)^2), v(x, t) = m + (sigma'/sigma)(x - t m),
psi_{s->t}(x) = t m + (sigma_t / sigma_s)(x - s m), u(x, s, t) = (psi - x) / (t - s).
"""

from __future__ import annotations

import math

import pytest
import torch
from gaussian import linear_flow_map, linear_std, linear_velocity
from torch import nn

from flowforge.continuous import TwinFlow
from flowforge.continuous.twinflow import _BarronOne, rcgm_residual, twinflow_grid
from flowforge.core.objectives import SquaredError
from flowforge.nn import MLP

D64 = torch.float64
M = torch.tensor([1.5, -0.7], dtype=D64)
C = torch.tensor([0.3, 2.0], dtype=D64)


_sig = linear_std


def velocity(x, t, m=M, c=C):
    return linear_velocity(x, t, m, c)


def flow(x, s, t, m=M, c=C):
    return linear_flow_map(x, s, t, m, c)


class GaussMap(nn.Module):
    """The exact average velocity u(x, s=r, t) of x1 ~ N(m, c^2); m, c trainable; + bias on the (0, 1) jump."""

    def __init__(self, m=M, c=C, e2e_bias=None):
        super().__init__()
        self.m, self.c = nn.Parameter(m.clone()), nn.Parameter(c.clone())
        self.e2e_bias = nn.Parameter(torch.zeros(2, dtype=D64) if e2e_bias is None else e2e_bias.clone())

    def forward(self, x, t, r):
        h = t - r
        small = h.abs() < 1e-12
        far = (flow(x, r, t, self.m, self.c) - x) / torch.where(small, torch.ones_like(h), h)[:, None]
        u = torch.where(small[:, None], velocity(x, t, self.m, self.c), far)
        jump = ((r == 0) & (t == 1)).to(x.dtype)[:, None]
        return u + jump * self.e2e_bias


class TwinGauss(nn.Module):
    """Real branch: the exact map of N(m, c^2); fake branch (times > 1, reflect): the map of N(m_fake, c^2)."""

    def __init__(self, m_fake=M, e2e_bias=None):
        super().__init__()
        self.real = GaussMap(e2e_bias=e2e_bias)
        self.fake = GaussMap(m=m_fake)

    def forward(self, x, t, r):
        fake = (t > 1)[:, None]
        return torch.where(fake, self.fake(x, 2 - t, 2 - r), self.real(x, t.clamp(max=1), r.clamp(max=1)))


class TwoTimeMLP(nn.Module):
    """A tiny two-time net for the tests (flowforge.nn.MLP gets two_times elsewhere): u(x, s, t)."""

    def __init__(self, dim=2, width=32, depth=2):
        super().__init__()
        self.mlp = MLP(dim=dim + 1, width=width, depth=depth, out_dim=dim)

    def forward(self, x, t, r):
        return self.mlp(torch.cat([x, r[:, None].to(x.dtype)], 1), t)


class Spy(nn.Module):
    """Records the (t, r) it is called with; returns zeros."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, t, r):
        self.calls.append((t.detach().clone(), r.detach().clone()))
        return x * 0 + self.w


def _times(n, value):
    return torch.full((n,), value, dtype=D64)


# --------------------------------------------------------------------------------------------------
# RCGM target: a fixed point of the exact map, first order in delta
# --------------------------------------------------------------------------------------------------


def test_rcgm_residual_of_exact_map_is_first_order_in_delta():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g, dtype=D64) * 1.3
    s, t = _times(64, 0.25), _times(64, 0.85)
    u = (flow(x, s, t) - x) / 0.6
    v = velocity(x, s)

    def exact(y, a, b):
        return (flow(y, a, b) - y) / (b - a)[:, None]

    res = [
        rcgm_residual(u, x, s, t, v, exact, delta=d, order=2).abs().max().item() for d in (1e-2, 1e-3, 1e-4)
    ]
    assert 8 < res[0] / res[1] < 12 and 8 < res[1] / res[2] < 12  # linear decay: O(delta)
    # the leading term: R = [psi_{s+D,t}(psi_{s,s+D}(x)) - psi_{s+D,t}(x + D v)] / D ~ (D/2) dpsi/dx * dv/dt
    h = 1e-6
    accel = (velocity(flow(x, s, s + h), s + h) - v) / h
    lead = 0.5 * 1e-4 * _sig(t, C) / _sig(s, C) * accel
    torch.testing.assert_close(rcgm_residual(u, x, s, t, v, exact, delta=1e-4), lead, rtol=2e-3, atol=1e-9)
    # a flipped sign (the step x' = x_s - delta v, or the target's own u negated) is O(1), not O(delta)
    assert rcgm_residual(u, x, s, t, -v, exact, delta=1e-4).abs().max() > 0.5
    assert rcgm_residual(-u, x, s, t, v, exact, delta=1e-4).abs().max() > 0.5


def test_rcgm_residual_near_rows_are_flow_matching():
    x = torch.randn(5, 2, dtype=D64)
    s, t = _times(5, 0.4), _times(5, 0.405)  # t - s < delta
    u, v = torch.randn(5, 2, dtype=D64), torch.randn(5, 2, dtype=D64)
    r = rcgm_residual(u, x, s, t, v, lambda y, a, b: torch.full_like(y, 1e6), delta=0.01)
    torch.testing.assert_close(r, u - v)


def test_loss_gradient_vanishes_at_the_exact_map_and_points_back_when_perturbed():
    # SquaredError and a wide clip: the gradient is E[R du/dtheta], and E[R | x_s] = O(delta) at the exact map
    def grad_of(m_real, m_fake):
        net = TwinGauss()
        with torch.no_grad():
            net.real.m.copy_(m_real)
            net.fake.m.copy_(m_fake)  # m_fake = m_real: the fake branch knows the generator's samples
        tf = TwinFlow(net, distance=SquaredError(), clip=1e3, rectify_weight=0.0, event_shape=(2,))
        g = torch.Generator().manual_seed(1)
        x1 = M + C * torch.randn(40_000, 2, generator=g, dtype=D64)
        tf.loss(x1, generator=g).backward()
        return net.real.m.grad.clone(), net.fake.m.grad.clone()

    real0, fake0 = grad_of(M, M)
    b = torch.tensor([0.3, -0.2], dtype=D64)
    real_off, _ = grad_of(M + b, M + b)
    assert real0.norm() < 0.15 * real_off.norm()
    assert float(real_off @ b) > 0  # descent moves m back towards the truth
    _, fake_off = grad_of(M, M + b)  # the fake branch (adv rows) is pulled to the generator's samples
    assert fake0.norm() < 0.15 * fake_off.norm()
    assert float(fake_off @ b) > 0


# --------------------------------------------------------------------------------------------------
# rectify: the distribution-matching shift and its sign
# --------------------------------------------------------------------------------------------------


def test_distribution_shift_matches_closed_form():
    b = torch.tensor([0.05, -0.02], dtype=D64)
    tf = TwinFlow(TwinGauss(m_fake=M + b), event_shape=(2,))
    x1_hat = M + b + C * torch.randn(256, 2, generator=torch.Generator().manual_seed(2), dtype=D64)
    shift = tf.distribution_shift(x1_hat, generator=torch.Generator().manual_seed(3))
    s = torch.rand(256, generator=torch.Generator().manual_seed(3), dtype=D64)  # the first draw inside
    expect = b * (1 - s[:, None]) / _sig(s, C) ** 2  # u_fake - u_real for N(m + b) against N(m)
    torch.testing.assert_close(shift, expect)


def test_rectify_gradient_moves_the_one_step_map_towards_the_data():
    b = torch.tensor([0.2, -0.1], dtype=D64)

    def bias_grad(rectify_weight):
        net = TwinGauss(m_fake=M + b, e2e_bias=b)  # the 1-step map is off by b; the fake branch knows it
        tf = TwinFlow(
            net, split={"e2e": 1}, distance=SquaredError(), rectify_weight=rectify_weight, ema_decay=0.0
        )
        x1 = M + C * torch.randn(512, 2, generator=torch.Generator().manual_seed(4), dtype=D64)
        tf.loss(x1, generator=torch.Generator().manual_seed(5)).backward()
        return net.real.e2e_bias.grad.clone()

    rect = bias_grad(0.5) - bias_grad(0.0)  # the same draws: the difference is the rectify term alone
    assert float(rect @ b) > 0
    assert (rect * b > 0).all()


# --------------------------------------------------------------------------------------------------
# branches and time signs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fake_time", "lo", "hi"), [("reflect", 1.0, 2.0), ("negative", -1.0, 0.0)])
def test_fake_branch_times(fake_time, lo, hi):
    spy = Spy()
    tf = TwinFlow(spy, fake_time=fake_time, ema_decay=0.0, event_shape=(2,))
    b = 16
    tf.loss(torch.randn(b, 2), generator=torch.Generator().manual_seed(0))
    # calls: adv rows' 1-step samples, the main pass, the RCGM chain, the rectify pass
    t_adv, r_adv = spy.calls[0]
    assert bool((t_adv == 1).all() and (r_adv == 0).all())  # the fake data come from the REAL 1-step map
    t, r = spy.calls[1]
    real, adv = slice(0, 3 * b // 4), slice(3 * b // 4, b)
    assert bool(((t[real] >= 0) & (t[real] <= 1) & (r[real] >= 0) & (r[real] <= t[real])).all())
    assert bool(((t[adv] >= lo) & (t[adv] <= hi)).all()) and torch.equal(t[adv], r[adv])
    t_rect, r_rect = spy.calls[-1]
    n = t_rect.shape[0] // 2
    assert bool(((t_rect[:n] >= lo) & (t_rect[:n] <= hi)).all())  # fake half
    assert bool(((t_rect[n:] >= 0) & (t_rect[n:] <= 1)).all()) and torch.equal(t_rect, r_rect)
    s = torch.tensor([0.0, 0.3, 1.0])
    expect = 2 - s if fake_time == "reflect" else -s
    torch.testing.assert_close(tf.fake_times(s), expect)


def test_mlp_time_embedding_tells_negative_and_reflected_times_apart():
    net = MLP(dim=2, width=16, depth=1, time_freqs=4)
    x, s = torch.randn(3, 2), torch.tensor([0.2, 0.5, 0.9])
    for other in (-s, 2 - s):
        assert not torch.allclose(net.time(s), net.time(other))
        assert torch.isfinite(net(x, other)).all()


# --------------------------------------------------------------------------------------------------
# batch split, EMA, distance, gradients, determinism
# --------------------------------------------------------------------------------------------------


def test_part_sizes():
    tf = TwinFlow(TwoTimeMLP(), event_shape=(2,))
    assert tf.part_sizes(8) == {"e2e": 2, "mul": 2, "any": 2, "adv": 2}
    assert tf.part_sizes(10) == {
        "e2e": 2,
        "mul": 2,
        "any": 2,
        "adv": 4,
    }  # official rounding; last takes the rest
    tf = TwinFlow(TwoTimeMLP(), split={"e2e": 1, "any": 3}, event_shape=(2,))
    assert tf.part_sizes(8) == {"e2e": 2, "mul": 0, "any": 6, "adv": 0}
    with pytest.raises(ValueError, match="larger batch"):
        TwinFlow(TwoTimeMLP()).part_sizes(3)


def test_official_ema_warmup():
    net = TwoTimeMLP()
    tf = TwinFlow(net, ema_decay=0.99)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    tf.loss(torch.randn(16, 2)).backward()
    p, pe = next(net.parameters()), next(tf.ema_net.parameters())
    torch.testing.assert_close(pe, p.detach())  # d = 0 at the first update: a copy
    assert math.isclose(float(tf.ema_weight), 0.495, rel_tol=1e-6)
    before = pe.clone()
    opt.step()
    tf.loss(torch.randn(16, 2))
    torch.testing.assert_close(pe, 0.495 * before + 0.505 * p.detach())
    tf.eval()
    tf.loss(torch.randn(16, 2))  # no EMA update outside training
    assert math.isclose(float(tf.ema_weight), 0.495 + 0.505 * (0.99 - 0.495) / 2, rel_tol=1e-6)


def test_barron_gradient_equals_official_form():
    pred = torch.randn(6, 3, dtype=D64, requires_grad=True)
    target = torch.randn(6, 3, dtype=D64)
    c = 1e-3
    _BarronOne(c)(pred, target).sum().backward()
    ours = pred.grad.clone()
    pred.grad = None
    mse = (pred - target).square().mean(1)
    official = mse * ((mse / c**2 + 1.0) ** -0.5).detach() / c  # barron_reweighting_loss, alpha = 1
    official.sum().backward()
    torch.testing.assert_close(ours, pred.grad)


def test_loss_reaches_every_parameter_and_is_deterministic():
    torch.manual_seed(0)
    net = TwoTimeMLP()
    tf = TwinFlow(net)
    x = torch.randn(32, 2)
    l1 = tf.loss(x, generator=torch.Generator().manual_seed(7))
    l1.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert not any(p.requires_grad for p in tf.ema_net.parameters())
    tf2 = TwinFlow(net)
    l2 = tf2.loss(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(l1.detach(), l2.detach())


def test_enhanced_target_needs_labels_and_null():
    with pytest.raises(ValueError, match="null"):
        TwinFlow(TwoTimeMLP(), enhance=0.5)

    class Cond(TwoTimeMLP):
        def forward(self, x, t, r, y):
            return super().forward(x, t, r) + y[:, None].to(x.dtype)

    tf = TwinFlow(Cond(), enhance=0.5, null_label=3)
    assert torch.isfinite(tf.loss((torch.randn(16, 2), torch.randint(0, 3, (16,)))))
    with pytest.raises((ValueError, TypeError)):
        tf.loss(torch.randn(16, 2))


# --------------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------------


def test_one_step_sample_is_exact_with_the_exact_map():
    tf = TwinFlow(TwinGauss(), event_shape=(2,))
    x0 = torch.randn(100, 2, dtype=D64)
    out = tf.generator().sample(100, x0=x0, steps=1)
    torch.testing.assert_close(out, M + C * x0)


def test_any_style_deterministic_follows_the_flow_map_on_any_grid():
    tf = TwinFlow(TwinGauss(), event_shape=(2,))
    x0 = torch.randn(50, 2, dtype=D64)
    out, traj = tf.generator().sample(
        50, x0=x0, steps=3, style="any", stochastic=0.0, gap=(0.001, 0.5), return_trajectory=True
    )
    grid = twinflow_grid(3, (0.001, 0.5), dtype=D64)
    # the start x0 is read as the state at t = 0.001, as in UCGM
    torch.testing.assert_close(out, flow(x0, _times(50, 0.001), _times(50, 1.0)))
    assert traj.shape == (4, 50, 2)
    torch.testing.assert_close(traj[1], flow(x0, _times(50, 0.001), _times(50, float(grid[1]))))


def test_few_style_renoising_keeps_the_law_and_the_seed():
    tf = TwinFlow(TwinGauss(), event_shape=(2,))
    gen = tf.generator()
    a = gen.sample(20_000, steps=2, generator=torch.Generator().manual_seed(0), dtype=D64)
    b = gen.sample(20_000, steps=2, generator=torch.Generator().manual_seed(0), dtype=D64)
    assert torch.equal(a, b)
    assert (a.mean(0) - M).abs().max() < 0.05 and (a.std(0) - C).abs().max() < 0.05


def test_sampler_shapes_and_errors():
    tf = TwinFlow(TwoTimeMLP(), event_shape=(2,))
    gen = tf.generator()
    assert gen.sample(7, steps=1).shape == (7, 2)
    with pytest.raises(ValueError, match="style"):
        gen.sample(3, style="fast")
    with pytest.raises(ValueError, match="steps"):
        gen.sample(3, steps=0)
    with pytest.raises(ValueError, match="stochastic"):
        gen.sample(3, stochastic=1.5)
    with pytest.raises(ValueError, match="gap"):
        gen.sample(3, gap=(0.7, 0.6))
    with pytest.raises(ValueError, match="x0"):
        gen.sample(3, x0=torch.zeros(3, 5))


def test_clear_errors():
    with pytest.raises((TypeError, ValueError), match="two_times=True"):
        TwinFlow(MLP(dim=2, width=8, depth=1)).loss(torch.randn(8, 2))
    with pytest.raises(ValueError, match="fake_time"):
        TwinFlow(TwoTimeMLP(), fake_time="mirror")
    with pytest.raises(ValueError, match="split"):
        TwinFlow(TwoTimeMLP(), split={"e2e": 1, "gan": 1})
    with pytest.raises(ValueError, match="event shape"):
        TwinFlow(TwoTimeMLP(), event_shape=(2,)).loss(torch.randn(8, 3))
    with pytest.raises(RuntimeError, match="event shape"):
        TwinFlow(TwoTimeMLP()).generator()
    with pytest.raises(ValueError, match="ema_decay"):
        TwinFlow(TwoTimeMLP(), ema_decay=1.0)
