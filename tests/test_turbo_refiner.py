"""FlowTurbo's velocity refiner and its H/P/R sampler against the closed-form Gaussian-to-Gaussian teacher (float64).

Teacher: V(x, t) = m + (sigma'_t / sigma_t)(x - t m), the marginal velocity from N(0, I) to N(m, diag c^2) on
the linear path; its flow map is x1 = m + c x0 (verified-few-step.md, sections 0 and 3).
"""

import pytest
import torch
from torch import nn

from flowforge import FlowMatching
from flowforge.core.solvers import Heun, PseudoCorrector, solve, uniform_grid
from flowforge.distill import TurboGenerator, VelocityRefiner, default_schedule
from flowforge.nn import MLP

D64 = torch.float64
M = torch.tensor([1.5, -0.7], dtype=D64)
C = torch.tensor([0.3, 2.0], dtype=D64)


def V(x, t):
    t = t.reshape(-1, 1)
    var = t**2 * C**2 + (1 - t) ** 2
    return M + (t * C**2 - (1 - t)) / var * (x - t * M)


def exact_offset(x, t, v):
    return V(x, t) - v


def zero_offset(x, t, v):
    return torch.zeros_like(x)


def _x0(n=256, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=D64)


def _teacher_only(x, n_h, n_p, total):
    """Hand-written H/P loop (Heun; pseudo-corrector reusing the last predicted velocity): (x, cache)."""
    h = 1.0 / total
    cache = None
    for i in range(n_h + n_p):
        t = torch.full((x.shape[0],), i * h, dtype=D64)
        d = V(x, t) if (i < n_h or cache is None) else cache
        cache = V(x + h * d, t + h)
        x = x + 0.5 * h * (d + cache)
    return x, cache


class Packed(nn.Module):
    """A refiner net with the VelocityRefiner contract, net(cat([x, v], 1), t), from an offset function."""

    def __init__(self, offset):
        super().__init__()
        self.offset = offset
        self.w = nn.Parameter(torch.zeros((), dtype=D64))
        self.ts = []

    def forward(self, xv, t):
        self.ts.append(t.clone())
        x, v = xv.chunk(2, dim=1)
        return self.offset(x, t, v) + 0.0 * self.w


def test_teacher_only_schedules_are_heun_and_the_pseudo_corrector():
    x0 = _x0()
    gen = TurboGenerator(V, None, (2,))
    heun = solve(V, x0, Heun(), uniform_grid(4))
    out, nfe = gen.sample(256, x0=x0, schedule=(4, 0, 0), return_nfe=True)
    assert torch.allclose(out, heun.x, rtol=0, atol=1e-14) and nfe == {"teacher": 8, "refiner": 0}
    pc = solve(V, x0, PseudoCorrector(), uniform_grid(5))
    out, nfe = gen.sample(256, x0=x0, schedule=(0, 5, 0), return_nfe=True)
    assert torch.allclose(out, pc.x, rtol=0, atol=1e-14) and nfe == {"teacher": 6, "refiner": 0}
    out, nfe = gen.sample(256, x0=x0, schedule=(2, 3, 0), return_nfe=True)
    assert torch.allclose(out, _teacher_only(x0, 2, 3, 5)[0], rtol=0, atol=1e-14)
    assert nfe == {
        "teacher": 2 * 2 + 3,
        "refiner": 0,
    }  # the first P step reuses the last Heun step's velocity
    assert gen.last_nfe == nfe


def test_a_zero_refiner_reproduces_the_teacher_only_schedule_with_its_last_velocity_frozen():
    x0 = _x0()
    gen = TurboGenerator(V, zero_offset, (2,))
    out, nfe = gen.sample(256, x0=x0, schedule=(1, 2, 3), return_nfe=True)
    x, cache = _teacher_only(x0, 1, 2, 6)
    assert torch.allclose(out, x + 3 * (1 / 6) * cache, rtol=0, atol=1e-13)
    assert nfe == {"teacher": 2 + 2, "refiner": 2 * 3}
    # with no teacher step before, the refiner starts from V(x0, 0): a zero refiner is then Euler, one step
    one, nfe = gen.sample(256, x0=x0, schedule=(0, 0, 1), return_nfe=True)
    assert torch.allclose(one, x0 + V(x0, torch.zeros(256, dtype=D64)), rtol=0, atol=1e-14)
    assert nfe == {"teacher": 1, "refiner": 2}


def test_the_exact_refiner_turns_refiner_steps_into_heun_steps():
    x0 = _x0()
    out, nfe = TurboGenerator(V, exact_offset, (2,)).sample(256, x0=x0, schedule=(1, 2, 3), return_nfe=True)
    x, _ = _teacher_only(x0, 1, 2, 6)
    heun = solve(V, x, Heun(), uniform_grid(6)[3:])
    assert torch.allclose(out, heun.x, rtol=0, atol=1e-12)
    assert nfe == {"teacher": 4, "refiner": 6}


def test_refiner_loss_is_zero_for_the_exact_offset_and_never_queries_past_t_1():
    torch.manual_seed(0)
    x1 = M + C * _x0(512, seed=1)
    net = Packed(exact_offset)
    for _ in range(20):
        assert VelocityRefiner(net, V, dt_max=0.5).loss(x1).item() < 1e-26
    assert float(torch.cat(net.ts).max()) <= 1.0
    # a wrong offset (the zero net) has the loss E|V(x', t + dt) - V(x_t, t)|^2 > 0, as computed by hand
    torch.manual_seed(3)
    got = VelocityRefiner(Packed(zero_offset), V, dt_max=0.5).loss(x1)
    torch.manual_seed(3)
    x0 = torch.randn_like(x1)
    dt = 0.5 * torch.rand((), dtype=D64)
    t = (1 - dt) * torch.rand(512, dtype=D64)
    x_t = t[:, None] * x1 + (1 - t[:, None]) * x0
    v_t = V(x_t, t)
    want = (V(x_t + dt * v_t, t + dt) - v_t).square().mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-12) and want > 1e-4


def test_the_teacher_is_frozen_and_not_part_of_the_refiner_state():
    teacher = FlowMatching(MLP(dim=2, width=16, depth=1), event_shape=(2,))
    refiner = VelocityRefiner(MLP(dim=4, width=16, depth=1, out_dim=2), teacher)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(k.startswith("net.") for k in refiner.state_dict())
    assert {id(p) for p in refiner.parameters()}.isdisjoint(id(p) for p in teacher.parameters())
    refiner.train()
    loss = refiner.loss(torch.randn(32, 2))
    assert not teacher.training
    loss.backward()
    assert all(p.grad is not None for p in refiner.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    refiner.double()  # moving the refiner moves the teacher
    assert next(teacher.parameters()).dtype == D64
    assert refiner.generator().sample(3, schedule=(1, 5, 3), dtype=D64).dtype == D64


def test_a_trained_refiner_beats_the_zero_refiner_and_approaches_heun():
    torch.manual_seed(0)
    refiner = VelocityRefiner(
        MLP(dim=4, width=64, depth=2, out_dim=2).double(), V, dt_max=0.5, event_shape=(2,)
    )
    opt = torch.optim.Adam(refiner.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for step in range(600):
        for group in opt.param_groups:
            group["lr"] = 3e-3 * (1 - step / 600) + 1e-4
        loss = refiner.loss(M + C * torch.randn(256, 2, generator=g, dtype=D64))
        opt.zero_grad()
        loss.backward()
        opt.step()
    z = _x0(4096, seed=5)

    def error(offset):  # H1 R1: one teacher Heun step to t = 1/2, one refiner step to t = 1
        out = TurboGenerator(V, offset, (2,), dt_max=0.5).sample(4096, x0=z, schedule=(1, 0, 1))
        return float((out - (M + C * z)).square().sum(1).mean())

    trained, zero, heun = error(refiner.offset), error(zero_offset), error(exact_offset)
    assert zero > 0.5 and heun < 0.3
    assert trained < 0.5 * zero and trained < 2 * heun


def test_bad_inputs_raise_clear_errors():
    gen = TurboGenerator(V, zero_offset, (2,), dt_max=0.12)
    with pytest.raises(ValueError, match="dt_max"):
        gen.sample(4, schedule=(1, 0, 2))
    with pytest.raises(ValueError, match=r"\(n_H, n_P, n_R\)"):
        gen.sample(4, schedule=(1, -1, 3))
    with pytest.raises(ValueError, match="no step"):
        gen.sample(4, schedule=(0, 0, 0))
    with pytest.raises(ValueError, match="disagrees"):
        gen.sample(4, schedule=(1, 5, 3), steps=8)
    with pytest.raises(ValueError, match="no refiner"):
        TurboGenerator(V, None, (2,)).sample(4, schedule=(1, 5, 3))
    with pytest.raises(ValueError, match="event shape"):
        gen.sample(4, x0=torch.zeros(4, 3), schedule=(9, 0, 0))
    with pytest.raises(ValueError, match="dt_max"):
        VelocityRefiner(Packed(zero_offset), V, dt_max=0.0)
    with pytest.raises(ValueError, match="shaped like x"):
        VelocityRefiner(MLP(dim=4, width=8, depth=1), V).offset(
            torch.zeros(3, 2), torch.zeros(3), torch.zeros(3, 2)
        )
    with pytest.raises(ValueError, match="null_label"):
        VelocityRefiner(Packed(zero_offset), V, label_dropout=0.1)
    with pytest.raises(TypeError, match="teacher"):
        VelocityRefiner(Packed(zero_offset), 3)
    assert default_schedule(9) == (1, 5, 3) and sum(default_schedule(20)) == 20
