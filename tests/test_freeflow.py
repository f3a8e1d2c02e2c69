"""FreeFlow (arXiv 2511.19428): predictor and corrector fixed points, gradient signs, start states, sampler.

Analytic truth: x0 ~ N(0, I), teacher data N(m, diag c^2) on the linear path (flowforge time), float64:
sigma_t = sqrt(t^2 c^2 + (1 - t)^2), v(x, t) = m + (sigma'/sigma)(x - t m),
psi_{s->t}(x) = t m + (sigma_t / sigma_s)(x - s m), u(x, s, t) = (psi - x) / (t - s).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import pytest
import torch
from gaussian import linear_flow_map, linear_std, linear_velocity
from torch import nn

from flowforge.core.time import TimeSampler
from flowforge.distill import FreeFlow
from flowforge.nn import MLP

D64 = torch.float64
M = torch.tensor([1.5, -0.7], dtype=D64)
C = torch.tensor([0.3, 2.0], dtype=D64)


_sig = linear_std


def velocity(x, t, m=M, c=C):
    return linear_velocity(x, t, m, c)


def flow(x, s, t, m=M, c=C):
    return linear_flow_map(x, s, t, m, c)


class GaussVelocity(nn.Module):
    """The exact marginal velocity of N(m, c^2) data; m trainable (for the corrector net)."""

    def __init__(self, m=M, c=C):
        super().__init__()
        self.m, self.c = nn.Parameter(m.clone()), nn.Parameter(c.clone())
        self.event_shape = (2,)

    def forward(self, x, t):
        return velocity(x, t, self.m, self.c)


class GaussMap(nn.Module):
    """The exact average velocity u(x, s=r, t) of N(m, c^2) data; m, c trainable."""

    def __init__(self, m=M, c=C):
        super().__init__()
        self.m, self.c = nn.Parameter(m.clone()), nn.Parameter(c.clone())
        self.event_shape = (2,)

    def forward(self, x, t, r):
        h = t - r
        small = h.abs() < 1e-12
        far = (flow(x, r, t, self.m, self.c) - x) / torch.where(small, torch.ones_like(h), h)[:, None]
        return torch.where(small[:, None], velocity(x, t, self.m, self.c), far)


class TwoTimeMLP(nn.Module):
    """A tiny two-time net for the tests (flowforge.nn.MLP gets two_times elsewhere): u(x, s, t)."""

    def __init__(self, dim=2, width=32, depth=2):
        super().__init__()
        self.mlp = MLP(dim=dim + 1, width=width, depth=depth, out_dim=dim)

    def forward(self, x, t, r):
        return self.mlp(torch.cat([x, r[:, None].to(x.dtype)], 1), t)


class Away(TimeSampler):
    """Times in [0.05, 0.95] (the exact u(x0, 0, t) is 0/0 at t = 0 in floating point)."""

    def from_uniform(self, u):
        return 0.05 + 0.9 * u


class Request(NamedTuple):  # what the Trainer passes with data=None
    size: int
    generator: torch.Generator
    device: torch.device


def _times(n, value):
    return torch.full((n,), value, dtype=D64)


def _exact(**kw):
    kw.setdefault("corrector_fraction", 0.0)
    return FreeFlow(GaussMap(), GaussVelocity().requires_grad_(False), time=Away(), **kw)


# --------------------------------------------------------------------------------------------------
# predictor
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("derivative", ["jvp", "fd"])
@pytest.mark.parametrize("s0", [0.0, 0.3])
def test_exact_map_is_a_fixed_point_of_the_predictor(derivative, s0):
    ff = _exact(derivative=derivative)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=D64)
    s = _times(64, s0)
    t = s0 + (1 - s0) * torch.linspace(0.05, 1.0, 64, dtype=D64)
    u, target = ff.predictor(x, s, t)
    torch.testing.assert_close(u, (flow(x, s, t) - x) / (t - s)[:, None])
    tol = 1e-10 if derivative == "jvp" else 1e-5
    assert (u - target).abs().max() < tol
    loss, delta = ff.predictor_loss(x, s, t)
    assert loss < 1e-6 and delta.max() < tol


def test_perturbed_student_is_pulled_back_by_the_predictor():
    b = torch.tensor([0.3, -0.2], dtype=D64)
    ff = _exact()
    with torch.no_grad():
        ff.student.m.add_(b)
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=D64)
    t = torch.rand(256, generator=torch.Generator().manual_seed(2), dtype=D64) * 0.9 + 0.05
    u, target = ff.predictor(x, torch.zeros_like(t), t)
    # Delta_G = dX/dt - v_T(X) = b (1 - t) / sigma_t^2 for a student whose data mean is off by b
    torch.testing.assert_close(u.detach() - target, b * (1 - t[:, None]) / _sig(t, C) ** 2)
    loss, _ = ff.predictor_loss(x, torch.zeros_like(t), t)
    assert loss > 1e-3
    loss.backward()
    assert float(ff.student.m.grad @ b) > 0  # descent moves the student's mean back
    assert ff.teacher.m.grad is None


def test_multi_step_rows_keep_the_fixed_point():
    for path in ("teacher", "student"):
        ff = _exact(multi_step_fraction=1.0, start_path=path)
        assert ff.loss(128, generator=torch.Generator().manual_seed(3)) < 1e-6
    ff = _exact(multi_step_fraction=0.5)
    with torch.no_grad():
        ff.student.c.mul_(1.2)
    assert ff.loss(128, generator=torch.Generator().manual_seed(3)) > 1e-2


def test_start_states_follow_the_teacher_path():
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(4), dtype=D64)
    s = torch.linspace(0.1, 0.9, 32, dtype=D64)
    exact = flow(x0, torch.zeros_like(s), s)
    err = [(_exact(teacher_steps=k).start_states(x0, s) - exact).abs().max() for k in (8, 16, 32)]
    assert err[0] < 0.03
    assert 3.5 < err[0] / err[1] < 5 and 3.5 < err[1] / err[2] < 5  # Heun: second order
    own = _exact(start_path="student").start_states(x0, s)
    torch.testing.assert_close(own, flow(x0, torch.zeros_like(s), s))


# --------------------------------------------------------------------------------------------------
# corrector
# --------------------------------------------------------------------------------------------------


def test_corrector_vanishes_when_the_student_matches_the_teacher():
    ff = _exact(corrector_fraction=0.25, corrector=GaussVelocity())
    x0, noise = torch.randn(64, 2, dtype=D64), torch.randn(64, 2, dtype=D64)
    r = torch.rand(64, dtype=D64)
    surrogate, fm, delta = ff.corrector_terms(x0, r, noise)
    assert delta.max() < 1e-12 and abs(float(surrogate.detach())) < 1e-12
    surrogate.backward()
    assert ff.student.m.grad.abs().max() < 1e-12


def test_corrector_pushes_a_biased_student_towards_the_teacher():
    b = torch.tensor([0.2, -0.1], dtype=D64)
    student = GaussMap(m=M + b)
    fake = GaussVelocity(m=M + b)  # an exact g_psi: the velocity of the student's own samples
    ff = FreeFlow(student, GaussVelocity().requires_grad_(False), corrector=fake, time=Away())
    x0, noise = torch.randn(64, 2, dtype=D64), torch.randn(64, 2, dtype=D64)
    r = torch.rand(64, generator=torch.Generator().manual_seed(5), dtype=D64)
    surrogate, fm, delta = ff.corrector_terms(x0, r, noise)
    expect = b * (1 - r[:, None]) / _sig(r, C) ** 2  # Delta_N = g - v_T
    torch.testing.assert_close(delta, expect.norm(dim=1))
    surrogate.backward()
    assert float(student.m.grad @ b) > 0  # descent removes the bias
    assert fake.m.grad is None  # the surrogate does not train g_psi
    fm.backward()
    assert fake.m.grad is not None and student.m.grad is not None


def test_corrector_balance_scales_the_surrogate_linearly_in_alpha():
    def total(alpha):
        torch.manual_seed(0)
        student, corr = TwoTimeMLP().double(), MLP(dim=2, width=16, depth=1).double()
        teacher = MLP(dim=2, width=16, depth=1).double()
        ff = FreeFlow(student, teacher, corrector=corr, alpha=alpha, event_shape=(2,))
        return float(ff.loss(32, generator=torch.Generator().manual_seed(6)).detach())

    l1, l2, l3 = total(1.0), total(2.0), total(3.0)
    assert abs((l3 - l2) - (l2 - l1)) < 1e-10 and abs(l2 - l1) > 1e-6


# --------------------------------------------------------------------------------------------------
# the full loss: batch forms, gradients, determinism
# --------------------------------------------------------------------------------------------------


def test_loss_batch_forms_gradients_and_determinism():
    torch.manual_seed(0)
    teacher = MLP(dim=2, width=16, depth=2)
    ff = FreeFlow(TwoTimeMLP(), teacher, event_shape=(2,))
    loss = ff.loss(Request(16, torch.Generator().manual_seed(7), torch.device("cpu")))
    loss.backward()
    assert all(p.grad is not None for p in ff.student.parameters())
    assert all(p.grad is not None for p in ff.corrector.parameters())
    assert all(p.grad is None and not p.requires_grad for p in ff.teacher.parameters())
    a = ff.loss(torch.zeros(16, 2), generator=torch.Generator().manual_seed(8))
    b = ff.loss(16, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.detach(), b.detach())  # a tensor batch gives only its size: no data is read
    ff.train()
    assert not ff.teacher.training and ff.student.training


def test_class_labels_are_drawn_or_taken():
    class CondTwoTime(TwoTimeMLP):
        num_classes = 3

        def forward(self, x, t, r, y):
            return super().forward(x, t, r) + y[:, None].to(x.dtype)

    class CondVelocity(nn.Module):
        def forward(self, x, t, y):
            return -x + y[:, None].to(x.dtype)

    ff = FreeFlow(
        CondTwoTime(), CondVelocity(), corrector=MLP(dim=2, width=8, depth=1, num_classes=3), event_shape=(2,)
    )
    assert ff.num_classes == 3
    assert torch.isfinite(ff.loss(8, generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(ff.loss((torch.zeros(8, 2), torch.randint(0, 3, (8,)))))


# --------------------------------------------------------------------------------------------------
# sampling and errors
# --------------------------------------------------------------------------------------------------


def test_one_step_and_composed_samples_are_exact_with_the_exact_map():
    ff = _exact(multi_step_fraction=0.5)
    x0 = torch.randn(100, 2, dtype=D64)
    gen = ff.generator()
    torch.testing.assert_close(gen.sample(100, x0=x0), M + C * x0)
    out, traj = gen.sample(100, x0=x0, steps=4, return_trajectory=True)
    torch.testing.assert_close(out, M + C * x0)
    assert traj.shape == (5, 100, 2)
    torch.testing.assert_close(traj[2], flow(x0, _times(100, 0.0), _times(100, 0.5)))


def test_sampler_seed_shapes_and_warning():
    ff = FreeFlow(TwoTimeMLP(), MLP(dim=2, width=8, depth=1), corrector_fraction=0.0, event_shape=(2,))
    gen = ff.generator()
    a = gen.sample(9, generator=torch.Generator().manual_seed(0))
    b = gen.sample(9, generator=torch.Generator().manual_seed(0))
    assert a.shape == (9, 2) and torch.equal(a, b)
    with pytest.warns(UserWarning, match="multi_step_fraction"):
        gen.sample(4, steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gen.sample(4, steps=1)
    with pytest.raises(ValueError, match="steps"):
        gen.sample(4, steps=0)
    with pytest.raises(ValueError, match="x0"):
        gen.sample(4, x0=torch.zeros(4, 3))


def test_clear_errors():
    teacher = MLP(dim=2, width=8, depth=1)
    with pytest.raises((TypeError, ValueError), match="two_times=True"):
        FreeFlow(MLP(dim=2, width=8, depth=1), teacher).loss(8)
    with pytest.raises(ValueError, match="event_shape"):
        FreeFlow(TwoTimeMLP(), lambda x, t: -x, corrector_fraction=0.0)
    with pytest.raises(ValueError, match="corrector"):
        FreeFlow(TwoTimeMLP(), lambda x, t: -x, event_shape=(2,))
    with pytest.raises(ValueError, match="corrector_fraction"):
        FreeFlow(TwoTimeMLP(), teacher, corrector_fraction=1.0)
    with pytest.raises(ValueError, match="start_path"):
        FreeFlow(TwoTimeMLP(), teacher, start_path="data")
    with pytest.raises(ValueError, match="derivative"):
        FreeFlow(TwoTimeMLP(), teacher, derivative="autograd")
    with pytest.raises(TypeError, match="batch size"):
        FreeFlow(TwoTimeMLP(), teacher).loss("moons")
    with pytest.raises(ValueError, match="larger batch"):
        FreeFlow(TwoTimeMLP(), teacher).loss(1)
