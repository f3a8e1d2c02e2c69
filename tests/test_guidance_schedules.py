"""Guidance schedules (constant CFG, interval CFG, RAAG) through ``guided`` and ``FlowMatching.generator``.

The exact test bed is the class-conditional Gaussian mixture of
shared/reference/verified-guidance-finetune-inverse.md sections 1 and 4 (float64): one isotropic Gaussian
N(m_k, s_k^2 I) per class, source N(0, I), linear path; the null label gives the mixture's velocity.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowforge import FlowMatching
from flowforge.core.guidance import (
    RAAG,
    ClassifierFreeGuidance,
    ConstantGuidance,
    GuidanceSchedule,
    IntervalGuidance,
    guided,
)
from flowforge.nn import MLP

F64 = torch.float64
MEANS = torch.tensor([[2.0, 0.0, 1.0], [-1.0, 1.5, 0.0], [0.0, -2.0, -1.0]], dtype=F64)
STDS = torch.tensor([0.3, 0.6, 0.9], dtype=F64)
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
NULL = 3


def _component_velocity(x, t, k):
    """v_k(x, t) = m_k + (t s_k^2 - (1 - t)) / C_k (x - t m_k), C_k = t^2 s_k^2 + (1 - t)^2 (section 1)."""
    m, s2 = MEANS[k], STDS[k] ** 2
    c = t**2 * s2 + (1 - t) ** 2
    return m + ((t * s2 - (1 - t)) / c)[:, None] * (x - t[:, None] * m)


def _mixture_velocity(x, t):
    """sum_k gamma_k(x, t) v_k(x, t) with responsibilities from a softmax over log-weights."""
    logits, vs = [], []
    for k in range(len(WEIGHTS)):
        kk = torch.full_like(t, k, dtype=torch.long)
        c = t**2 * STDS[k] ** 2 + (1 - t) ** 2
        r2 = (x - t[:, None] * MEANS[k]).square().sum(1)
        logits.append(WEIGHTS[k].log() - 0.5 * x.shape[1] * c.log() - 0.5 * r2 / c)
        vs.append(_component_velocity(x, t, kk))
    gamma = torch.stack(logits, 1).softmax(1)
    return (gamma[:, :, None] * torch.stack(vs, 1)).sum(1)


class GMMField(nn.Module):
    """The exact class-conditional velocity; counts its calls and the batch sizes it saw."""

    num_classes = NULL

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x, t, y):
        self.calls.append(x.shape[0])
        out = _mixture_velocity(x, t)
        cond = y != NULL
        if cond.any():
            out[cond] = _component_velocity(x[cond], t[cond], y[cond])
        return out


def _recovered_weight(out, v_c, v_u):
    """w such that out = v_u + w (v_c - v_u), per sample."""
    d = v_c - v_u
    return ((out - v_u) * d).sum(1) / d.square().sum(1)


# ---- RAAG's w(rho) --------------------------------------------------------------------------------


def test_raag_weight_of_ratio_starts_at_w_max_decreases_and_tends_to_one():
    raag = RAAG(w_max=18.0, alpha=12.0)
    rho = torch.linspace(0, 2, 201, dtype=F64)  # beyond ~2.5, 1 + 17 exp(-12 rho) rounds to 1
    w = raag.weight_of_ratio(rho)
    assert float(w[0]) == 18.0
    assert bool((w.diff() < 0).all())
    assert float(raag.weight_of_ratio(torch.tensor(50.0, dtype=F64))) == pytest.approx(1.0, abs=1e-12)
    assert float(w[10]) == pytest.approx(1 + 17 * math.exp(-12 * 0.1), rel=1e-14)
    # it is the weight the schedule returns: rho = 0 where conditional and unconditional agree
    v = torch.randn(4, 3, dtype=F64)
    torch.testing.assert_close(raag.weight(torch.rand(4, dtype=F64), v, v), torch.full((4,), 18.0, dtype=F64))


def test_raag_ratio_at_t0_is_the_closed_form_mean_ratio_through_guided():
    # section 4: at t = 0, v_c - v_u = m_c - m_bar and v_u = m_bar - x0, so rho = |m_c - m_bar| / |m_bar - x0|
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(9, 3, generator=g, dtype=F64)
    y = torch.arange(9) % 3
    t = torch.zeros(9, dtype=F64)
    m_bar = (WEIGHTS[:, None] * MEANS).sum(0)
    rho = (MEANS[y] - m_bar).norm(dim=1) / (m_bar - x0).norm(dim=1)
    raag = RAAG(w_max=7.0, alpha=1.5)
    out = guided(GMMField(), x0, t, {"y": y}, null=NULL, schedule=raag)
    v_c, v_u = MEANS[y] - x0, m_bar - x0
    torch.testing.assert_close(_recovered_weight(out, v_c, v_u), 1 + 6 * torch.exp(-1.5 * rho))
    torch.testing.assert_close(out, v_u + (1 + 6 * torch.exp(-1.5 * rho))[:, None] * (v_c - v_u))


def test_raag_along_time_uses_the_closed_form_velocities_of_each_row():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, generator=g, dtype=F64)
    t = torch.linspace(0.05, 0.95, 12, dtype=F64)
    y = torch.tensor([0, 1, 2] * 4)
    v_c, v_u = _component_velocity(x, t, y), _mixture_velocity(x, t)
    rho = (v_c - v_u).norm(dim=1) / v_u.norm(dim=1)
    out = guided(GMMField(), x, t, {"y": y}, null=NULL, schedule=RAAG())
    torch.testing.assert_close(_recovered_weight(out, v_c, v_u), 1 + 17 * torch.exp(-12 * rho))
    # the ratio spikes at the first (noisiest) steps in this mixture: w is damped early
    assert float(rho[:3].mean()) > float(rho[-3:].mean())


def test_per_sample_and_batch_ratios_differ_when_the_batch_elements_differ():
    v_u = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=F64)
    v_c = torch.tensor([[1.0, 0.5], [2.0, 0.1]], dtype=F64)  # rho = 0.5 and 0.05
    t = torch.rand(2, dtype=F64)
    per = RAAG(w_max=5.0, alpha=2.0).weight(t, v_c, v_u)
    batch = RAAG(w_max=5.0, alpha=2.0, per_sample=False).weight(t, v_c, v_u)
    torch.testing.assert_close(per, 1 + 4 * torch.exp(-2 * torch.tensor([0.5, 0.05], dtype=F64)))
    rho_batch = math.sqrt(0.5**2 + 0.1**2) / math.sqrt(1 + 4)  # one ratio over the whole batch tensor
    torch.testing.assert_close(batch, torch.full((2,), 1 + 4 * math.exp(-2 * rho_batch), dtype=F64))
    assert not torch.allclose(per, batch)
    # identical elements: both agree
    same_c, same_u = v_c[:1].repeat(2, 1), v_u[:1].repeat(2, 1)
    torch.testing.assert_close(
        RAAG(per_sample=False).weight(t, same_c, same_u), RAAG().weight(t, same_c, same_u)
    )
    # ||v_u|| = 0 is clamped, not a division by zero
    assert torch.isfinite(RAAG().weight(t, v_c, torch.zeros_like(v_u))).all()


# ---- constant and interval schedules ----------------------------------------------------------------


class Lin(nn.Module):
    def forward(self, x, t, y):
        return x * (1 + t[:, None]) + y[:, None].to(x.dtype)


def test_constant_schedule_equals_the_old_classifier_free_guidance():
    net, w = Lin(), 2.5
    x, t, y = torch.randn(5, 2), torch.rand(5), torch.tensor([0, 1, 2, 1, 0])
    old = net(x, t, torch.full_like(y, 7)) + w * (net(x, t, y) - net(x, t, torch.full_like(y, 7)))
    for out in (
        guided(net, x, t, {"y": y}, null=7, schedule=ConstantGuidance(w)),
        guided(net, x, t, {"y": y}, null=7, schedule=w),
        ClassifierFreeGuidance(net, w, null_label=7)(x, t, y=y),
        ClassifierFreeGuidance(net, ConstantGuidance(w), null_label=7)(x, t, y=y),
    ):
        torch.testing.assert_close(out, old, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ClassifierFreeGuidance(net, 1.0, null_label=7)(x, t, y=y), net(x, t, y))
    assert isinstance(RAAG(), GuidanceSchedule) and isinstance(IntervalGuidance(2, 0, 1), GuidanceSchedule)


def test_interval_schedule_is_one_outside_and_w_inside():
    g = IntervalGuidance(4.0, 0.25, 0.6)
    t = torch.tensor([0.0, 0.2, 0.25, 0.4, 0.6, 0.61, 1.0])
    z = torch.zeros(7, 2)
    torch.testing.assert_close(g.weight(t, z, z), torch.tensor([1.0, 1.0, 4.0, 4.0, 4.0, 1.0, 1.0]))
    # through guided: plain conditional outside, CFG inside
    net, x, y = Lin(), torch.randn(7, 2), torch.arange(7) % 3
    out = guided(net, x, t, {"y": y}, null=3, schedule=g)
    v_c, v_u = net(x, t, y), net(x, t, torch.full_like(y, 3))
    inside = (t >= 0.25) & (t <= 0.6)
    torch.testing.assert_close(out[~inside], v_c[~inside])
    torch.testing.assert_close(out[inside], (v_u + 4.0 * (v_c - v_u))[inside])
    # the paper's (sigma_lo, sigma_hi] on the linear path: sigma = (1 - t) / t, t = 1 / (1 + sigma)
    s = IntervalGuidance.from_sigma(2.0, sigma_lo=0.28, sigma_hi=5.42)
    assert (s.t_lo, s.t_hi) == pytest.approx((1 / 6.42, 1 / 1.28))
    sig = torch.tensor([0.1, 0.3, 5.0, 6.0])
    tt = 1 / (1 + sig)
    torch.testing.assert_close(s.weight(tt, z[:4], z[:4]), torch.tensor([1.0, 2.0, 2.0, 1.0]))
    assert IntervalGuidance.from_sigma(2.0, 0.0, math.inf).t_lo == 0.0
    with pytest.raises(ValueError, match="t_lo <= t_hi"):
        IntervalGuidance(2.0, 0.7, 0.3)


def test_guided_drops_only_the_keyed_condition_and_works_for_maps():
    seen = {}

    def field(x, t, seg, extra):
        seen.update(x=x.shape, seg=seg.clone(), extra=extra.shape)
        return x * seg.float().mean((1, 2))[:, None, None, None] + extra[:, :1]

    x, t = torch.randn(2, 1, 4, 4), torch.rand(2)
    seg = torch.randint(0, 5, (2, 4, 4))
    out = guided(
        field, x, t, {"seg": seg, "extra": torch.randn(2, 2, 4, 4)}, key="seg", null=5, schedule=RAAG()
    )
    assert out.shape == (2, 1, 4, 4) and seen["x"] == (4, 1, 4, 4) and seen["extra"] == (4, 2, 4, 4)
    assert torch.equal(seen["seg"][:2], seg) and bool((seen["seg"][2:] == 5).all())
    with pytest.raises(ValueError, match="cond=\\{'y': labels\\}"):
        guided(field, x, t, {"seg": seg}, null=5, schedule=2.0)
    with pytest.raises(TypeError, match="schedule must be"):
        guided(field, x, t, {"y": seg}, null=5, schedule="raag")


# ---- FlowMatching.generator ---------------------------------------------------------------------------


def test_one_network_call_per_euler_step_with_a_doubled_batch():
    for kw in ({"schedule": RAAG()}, {"guidance": 3.0}, {"guidance": IntervalGuidance(3.0, 0.2, 0.8)}):
        net = GMMField()
        fm = FlowMatching(net, event_shape=(3,))
        x = fm.generator(**kw).sample(
            6,
            cond={"y": torch.arange(6) % 3},
            solver="euler",
            steps=5,
            generator=torch.Generator().manual_seed(0),
        )
        assert net.calls == [12] * 5, kw
        assert torch.isfinite(x).all()
    net = GMMField()
    FlowMatching(net, event_shape=(3,)).generator(guidance=1.0).sample(
        6, cond={"y": torch.arange(6) % 3}, steps=2
    )
    assert net.calls == [6] * 4  # Heun, no guidance: one plain call per stage


def test_generator_with_raag_runs_on_a_tiny_conditional_model():
    torch.manual_seed(0)
    fm = FlowMatching(MLP((1, 4, 4), 16, 2, num_classes=3), label_dropout=0.2)
    fm.loss((torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))))
    y = torch.tensor([0, 1, 2, 0])

    def draw(**kw):
        gen = fm.generator(**kw)
        return gen.sample(4, cond={"y": y}, steps=3, generator=torch.Generator().manual_seed(1))

    a, b = draw(schedule=RAAG(w_max=6.0, alpha=4.0)), draw(schedule=RAAG(w_max=6.0, alpha=4.0))
    assert a.shape == (4, 1, 4, 4) and torch.isfinite(a).all() and torch.equal(a, b)
    assert not torch.allclose(a, draw())  # guidance changed the samples
    assert torch.equal(draw(guidance=1.0), draw())
    with pytest.raises(ValueError, match="cond="):
        fm.generator(schedule=RAAG()).sample(2, steps=2)


def test_guidance_acts_in_velocity_space_for_x1_predictions():
    torch.manual_seed(0)
    net = MLP(2, 16, 2, num_classes=3)
    fm = FlowMatching(net, prediction="x1", event_shape=(2,))
    x, t, y = torch.randn(6, 2), 0.1 + 0.8 * torch.rand(6), torch.tensor([0, 1, 2, 0, 1, 2])
    v_c, v_u = fm.velocity(x, t, y=y), fm.velocity(x, t, y=torch.full_like(y, 3))
    raag = RAAG(w_max=5.0, alpha=3.0)
    out = fm.generator(schedule=raag).field(x, t, y=y)
    torch.testing.assert_close(out, v_u + raag.weight(t, v_c, v_u)[:, None] * (v_c - v_u))
    # guiding the raw x1 prediction instead gives another ratio, hence another field
    in_x1 = fm.to_velocity(ClassifierFreeGuidance(net, raag, null_label=3), x, t, y=y)
    assert not torch.allclose(out, in_x1, atol=1e-4)
    # a constant weight commutes with the affine conversion: the old behaviour is kept
    old = fm.to_velocity(ClassifierFreeGuidance(net, 2.5, null_label=3), x, t, y=y)
    torch.testing.assert_close(fm.generator(guidance=2.5).field(x, t, y=y), old, rtol=1e-5, atol=1e-5)


def test_generator_guidance_errors_say_what_to_write():
    plain = FlowMatching(MLP(2, 8, 1), event_shape=(2,))
    with pytest.raises(ValueError, match="null_label"):
        plain.generator(guidance=2.0)
    with pytest.raises(ValueError, match="null_label"):
        plain.generator(schedule=RAAG())
    plain.generator(schedule=RAAG(), null=0)  # an explicit null is enough
    cond = FlowMatching(MLP(2, 8, 1, num_classes=3), event_shape=(2,))
    with pytest.raises(ValueError, match="not both"):
        cond.generator(guidance=2.0, schedule=RAAG())
    with pytest.raises(TypeError, match="GuidanceSchedule"):
        cond.generator(guidance="raag")
    with pytest.raises(ValueError, match="alpha"):
        RAAG(alpha=-1.0)
