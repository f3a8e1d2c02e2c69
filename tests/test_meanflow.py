"""MeanFlow (arXiv:2505.13447), the dispersive loss (arXiv:2506.09027, DM1) and the two-time nets.

Analytic truth: x0 ~ N(0, I), x1 ~ N(m, diag c^2), linear path. Per coordinate
sigma_t = sqrt(t^2 c^2 + (1 - t)^2), v(x, t) = m + (sigma_t' / sigma_t)(x - t m) and the average velocity
from r to t is u(x, r, t) = [t m - (sigma_t / sigma_r) r m + (sigma_t / sigma_r - 1) x] / (t - r), so
u(x, 0, 1) = m + (c - 1) x (reference/verified-few-step.md, section 0).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

from flowforge import MeanFlow
from flowforge.continuous import MeanFlowGenerator, MeanFlowTimes
from flowforge.core import FeatureTap, dispersive_loss
from flowforge.nn import MLP, DiT, UNet

D64 = torch.float64
M = torch.tensor([1.5, -0.7], dtype=D64)
C = torch.tensor([0.3, 2.0], dtype=D64)


def _sigma(t: Tensor) -> Tensor:
    return torch.sqrt(t**2 * C**2 + (1 - t) ** 2)


def exact_v(x: Tensor, t: Tensor) -> Tensor:
    t = t[:, None]
    sig = _sigma(t)
    return M + ((t * C**2 - (1 - t)) / sig**2) * (x - t * M)


def exact_u(x: Tensor, r: Tensor, t: Tensor) -> Tensor:
    ratio = _sigma(t[:, None]) / _sigma(r[:, None])
    h = (t - r)[:, None]
    u = (t[:, None] * M - ratio * r[:, None] * M + (ratio - 1) * x) / torch.where(
        h == 0, torch.ones_like(h), h
    )
    return torch.where(h == 0, exact_v(x, r), u)


class ExactU(nn.Module):
    """The closed-form u(x, r, t) behind the network contract net(x, t, r=r)."""

    two_times = True
    event_shape = (2,)

    def forward(self, x: Tensor, t: Tensor, r: Tensor | None = None) -> Tensor:
        return exact_u(x, t if r is None else r, t)


def _pts(n: int = 16, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=D64) * 1.5
    a, b = torch.rand(n, generator=g, dtype=D64), torch.rand(n, generator=g, dtype=D64)
    r, t = torch.minimum(a, b), torch.maximum(a, b)
    return x, r, t + 0.05 * (t - r < 0.05)  # keep t - r away from 0 (cancellation in the closed form)


# -- the analytic reference ------------------------------------------------------------------------


def test_closed_form_matches_the_reference_values():
    x = torch.tensor([[0.4, -1.0]], dtype=D64)
    one = torch.ones(1, dtype=D64)
    assert torch.allclose(exact_v(x, 0.3 * one), torch.tensor([[1.567557, -1.164706]], dtype=D64), atol=1e-6)
    assert torch.allclose(
        exact_u(x, 0.3 * one, 0.8 * one), torch.tensor([[1.555734, -1.883340]], dtype=D64), atol=1e-6
    )
    assert torch.allclose(exact_u(x, 0 * one, one), torch.tensor([[1.22, -1.70]], dtype=D64), atol=1e-12)


# -- the MeanFlow target -----------------------------------------------------------------------------


def test_target_of_the_exact_u_is_the_exact_u():
    mf = MeanFlow(ExactU())
    x, r, t = _pts()
    u_tgt = mf.target(x, r, t, exact_v(x, r))
    assert torch.allclose(u_tgt, exact_u(x, r, t), atol=1e-10, rtol=0)


def test_wrong_sign_or_missing_term_breaks_the_identity():
    mf = MeanFlow(ExactU())
    x, r, t = _pts()
    v = exact_v(x, r)
    u = exact_u(x, r, t)
    gap = (t - r)[:, None]
    _, dudr = mf.total_derivative(x, r, t, v)
    assert torch.allclose(v + gap * dudr, u, atol=1e-10)
    assert (v - gap * dudr - u).abs().max() > 1e-2  # the paper's sign without the time conversion
    _, dx_only = torch.func.jvp(lambda x_: exact_u(x_, r, t), (x,), (v,))  # no partial_r term
    assert (v + gap * dx_only - u).abs().max() > 1e-2
    _, dr_only = mf.total_derivative(x, r, t, torch.zeros_like(v))  # no transport term
    assert (v + gap * dr_only - u).abs().max() > 1e-2


def test_diagonal_rows_reduce_to_flow_matching():
    mf = MeanFlow(ExactU())
    x, r, _ = _pts()
    v_cond = torch.randn(x.shape, dtype=D64, generator=torch.Generator().manual_seed(3))  # any x1 - x0
    assert torch.equal(mf.target(x, r, r, v_cond), v_cond)
    # and the network's diagonal is the instantaneous velocity
    assert torch.allclose(mf.velocity(x, r), exact_v(x, r), atol=1e-12)


def test_jvp_matches_central_differences():
    torch.manual_seed(0)
    net = MLP(2, 32, 3, two_times=True, time_freqs=4).double()
    mf = MeanFlow(net)
    x, r, t = _pts(8, seed=1)
    v = torch.randn(x.shape, dtype=D64, generator=torch.Generator().manual_seed(2))
    u, dudr = mf.total_derivative(x, r, t, v)
    eps = 1e-6
    fd = (net(x + eps * v, t, r=r + eps) - net(x - eps * v, t, r=r - eps)) / (2 * eps)
    assert torch.allclose(u, net(x, t, r=r), atol=1e-14)
    assert torch.allclose(dudr, fd, atol=1e-7, rtol=1e-6)
    assert dudr.abs().max() > 1e-2  # not a vacuous comparison


# -- the loss ----------------------------------------------------------------------------------------


class FixedTimes:
    def __init__(self, r: Tensor, t: Tensor) -> None:
        self.r, self.t = r, t

    def __call__(self, n, *, generator=None, device=None, dtype=torch.float32):
        return self.r.to(dtype), self.t.to(dtype)


@pytest.mark.parametrize("p", [0.0, 1.0, 0.75])
def test_loss_is_the_adaptively_weighted_sum_of_squares(p):
    torch.manual_seed(0)
    net = MLP(2, 16, 2, two_times=True).double()
    x1 = torch.randn(32, 2, dtype=D64) + M
    r = torch.rand(32, dtype=D64) * 0.5
    t = torch.where(torch.arange(32) % 2 == 0, r, r + 0.4)
    c = 1e-2
    mf = MeanFlow(net, times=FixedTimes(r, t), p=p, c=c)
    torch.manual_seed(5)
    loss = mf.loss(x1)
    torch.manual_seed(5)
    x0 = torch.randn_like(x1)
    x_r = r[:, None] * x1 + (1 - r[:, None]) * x0
    v = x1 - x0
    u_tgt = v + (t - r)[:, None] * mf.total_derivative(x_r, r, t, v)[1]
    ell = (net(x_r, t, r=r) - u_tgt).square().sum(1)
    assert torch.allclose(loss, (ell / (ell + c) ** p).mean(), atol=1e-12)
    loss.backward()
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in net.parameters())


def test_training_guidance_tangent():
    class PerClass(nn.Module):  # u = a_y, independent of (x, r, t): du/dr = 0 and the target is v_g
        two_times = True
        num_classes = 2

        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 5.0]], dtype=D64))

        def forward(self, x, t, r=None, y=None):
            return self.a[y] + 0 * x

    omega, kappa = 1.5, 0.25
    mf = MeanFlow(PerClass(), label_dropout=0.1, omega=omega, kappa=kappa, guidance_interval=(0.0, 0.5))
    n = 6
    x = torch.randn(n, 2, dtype=D64)
    r = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.6, 0.9], dtype=D64)
    v = torch.randn(n, 2, dtype=D64)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    keep = torch.tensor([True, True, False, True, True, True])
    vg = mf._guided_tangent(x, r, v, {"y": y}, keep)
    a = mf.net.a.detach()
    want = omega * v + (1 - omega - kappa) * a[2] + kappa * a[y]
    on = keep & (r <= 0.5)
    assert torch.allclose(vg[on], want[on])
    assert torch.equal(vg[~on], v[~on])  # dropped labels and r outside the interval keep v
    assert torch.allclose(mf.target(x, r, r + 0.3, vg, y=y), vg)  # constant u: the target is the tangent


def test_conditional_training_with_guidance_runs_and_reaches_every_weight():
    torch.manual_seed(0)
    mf = MeanFlow(MLP(2, 16, 2, two_times=True, num_classes=3), label_dropout=0.2, omega=1.0, kappa=0.5)
    loss = mf.loss((torch.randn(64, 2), torch.randint(0, 3, (64,))))
    loss.backward()
    assert all(q.grad is not None for q in mf.parameters())
    y = torch.tensor([0, 1, 2, 3])
    out = mf.generator().sample(4, cond={"y": y}, steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 2) and torch.isfinite(out).all()


def test_meanflow_times():
    g = torch.Generator().manual_seed(0)
    r, t = MeanFlowTimes()(20_000, generator=g)
    assert bool(((0 < r) & (r <= t) & (t < 1)).all())
    assert abs((r == t).double().mean().item() - 0.75) < 0.02
    r2, t2 = MeanFlowTimes()(20_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(r, r2) and torch.equal(t, t2)
    r, t = MeanFlowTimes(diagonal=0.0)(20_000, generator=g)
    assert (r == t).double().mean() < 1e-3
    # paper LN(-0.4, 1) in paper time is LN(+0.4, 1) in ours: the median of each draw is sigmoid(0.4)
    both = torch.cat([r, t])
    assert abs(both.median().item() - 1 / (1 + math.exp(-0.4))) < 0.01
    with pytest.raises(ValueError, match="diagonal"):
        MeanFlowTimes(diagonal=1.5)


# -- sampling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_jumps_with_the_exact_u_are_exact(steps):
    gen = MeanFlow(ExactU()).generator()
    assert isinstance(gen, MeanFlowGenerator)
    x0 = torch.randn(1000, 2, dtype=D64, generator=torch.Generator().manual_seed(0))
    x1 = gen.sample(1000, x0=x0, steps=steps)
    assert torch.allclose(x1, M + C * x0, atol=1e-12)  # the exact transport map psi_{0->1}


def test_one_step_sample_law_and_determinism():
    gen = MeanFlow(ExactU()).generator()
    x = gen.sample(20_000, generator=torch.Generator().manual_seed(1), dtype=D64)
    assert torch.allclose(x.mean(0), M, atol=0.05) and torch.allclose(x.std(0), C, rtol=0.03)
    again = gen.sample(20_000, generator=torch.Generator().manual_seed(1), dtype=D64)
    assert torch.equal(x, again)
    x, traj = gen.sample(5, steps=3, return_trajectory=True, dtype=D64)
    assert traj.shape == (4, 5, 2) and torch.equal(traj[-1], x)


def test_log_prob_of_the_diagonal_field():
    gen = MeanFlow(ExactU()).generator()
    x = torch.tensor([[1.4, -0.5], [1.7, 1.0], [1.2, -3.0]], dtype=D64)
    want = torch.distributions.Normal(M, C).log_prob(x).sum(1)
    assert torch.allclose(gen.log_prob(x, atol=1e-8, rtol=1e-8), want, atol=1e-4)


def test_short_training_learns_the_one_step_map():
    torch.manual_seed(0)
    mf = MeanFlow(MLP(2, 64, 2, two_times=True))
    m, c = M.float(), C.float()
    x0 = torch.randn(4000, 2, generator=torch.Generator().manual_seed(2))
    gen = mf.generator()
    err_before = (gen.sample(4000, x0=x0) - (m + c * x0)).norm(dim=1).mean()
    opt = torch.optim.Adam(mf.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 800)
    g = torch.Generator().manual_seed(1)
    for _ in range(800):
        opt.zero_grad()
        mf.loss(m + c * torch.randn(256, 2, generator=g)).backward()
        opt.step()
        sched.step()
    # one jump from the same noise against the exact transport map m + c x0 (about 0.3 after 800 steps)
    err_after = (gen.sample(4000, x0=x0) - (m + c * x0)).norm(dim=1).mean()
    assert err_after < 0.45 and err_after < err_before / 3


# -- the two-time nets -------------------------------------------------------------------------------


def test_mlp_with_two_times_off_is_the_old_mlp():
    torch.manual_seed(0)
    net = MLP(2, 16, 3, num_classes=3, time_freqs=2)
    x, t, y = torch.randn(5, 2), torch.rand(5), torch.tensor([0, 1, 2, 3, 1])
    # the one-time forward, written out: [x, fourier(t)] -> (linear + class, SiLU) x depth -> linear
    h = net.inp(torch.cat([x, net.time(t)], 1)) + net.label(y)
    h = torch.nn.functional.silu(h)
    for layer in net.hidden:
        h = torch.nn.functional.silu(layer(h) + net.label(y))
    assert torch.equal(net(x, t, y=y), net.out(h))
    keys = set(net.state_dict())
    on = MLP(2, 16, 3, num_classes=3, time_freqs=2, two_times=True)
    assert set(on.state_dict()) == keys  # same names; the input layer just gains the gap's columns
    with torch.no_grad():
        sd = dict(net.state_dict())
        w = torch.zeros_like(on.inp.weight)
        w[:, : net.inp.weight.shape[1]] = net.inp.weight
        sd["inp.weight"] = w
        on.load_state_dict(sd)
    for r in (None, torch.rand(5), torch.tensor(0.3)):  # zero gap weights: any r gives the one-time output
        assert torch.equal(on(x, t, y=y, r=r), net(x, t, y=y))


def _swap_symmetric(net: nn.Module, x: Tensor, **kw) -> None:
    """With the gap's embedding a copy of the time's, a net of (t, t - r) is symmetric in t and t - r."""
    t1, t2 = torch.rand(x.shape[0]), torch.rand(x.shape[0])
    a = net(x, t1, r=t1 - t2, **kw)
    assert torch.allclose(a, net(x, t2, r=t2 - t1, **kw), atol=1e-6)
    assert not torch.allclose(a, net(x, t2, r=t1 - t2, **kw), atol=1e-4)


def test_two_time_nets_embed_the_gap():
    torch.manual_seed(0)
    mlp = MLP(2, 16, 2, time_freqs=3, two_times=True)
    k = 2 + mlp.time.out_dim
    with torch.no_grad():
        mlp.inp.weight[:, k:] = mlp.inp.weight[:, 2:k]
    _swap_symmetric(mlp, torch.randn(5, 2))
    unet = UNet(channels=16, mults=(1, 2), blocks=1, attention=(1,), two_times=True)
    dit = DiT(image_size=8, patch=2, width=32, depth=1, heads=2, two_times=True)
    with torch.no_grad():
        for q in [*unet.parameters(), *dit.parameters()]:
            q.add_(0.05 * torch.randn_like(q))
        unet.gap_mlp.load_state_dict(unet.time_mlp.state_dict())
        dit.gap.load_state_dict(dit.time.state_dict())
    for net in (unet, dit):
        _swap_symmetric(net, torch.randn(3, 1, 8, 8))


def test_the_jvp_and_the_forward_share_dropout_masks():
    class Drop(nn.Module):
        two_times = True

        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.states: list[Tensor] = []

        def forward(self, x, t, r=None):
            self.states.append(torch.get_rng_state())
            return nn.functional.dropout(self.lin(x), 0.5, self.training) * (t - r)[:, None]

    net = Drop()
    MeanFlow(net).loss(torch.randn(8, 2))
    assert len(net.states) == 2 and torch.equal(net.states[0], net.states[1])


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_image_nets_two_times(kind):
    def build(two: bool):
        torch.manual_seed(0)
        if kind == "unet":
            return UNet(channels=16, mults=(1, 2), blocks=1, attention=(1,), num_classes=3, two_times=two)
        return DiT(image_size=8, patch=2, width=32, depth=2, heads=2, num_classes=3, two_times=two)

    off, on = build(False), build(True)
    gap_mod = on.gap_mlp if kind == "unet" else on.gap.mlp
    with torch.no_grad():
        for q in off.parameters():
            q.add_(0.05 * torch.randn_like(q))  # un-zero the zero-initialised outputs
        on.load_state_dict(off.state_dict(), strict=False)
        nn.init.zeros_(gap_mod[-1].weight)
        nn.init.zeros_(gap_mod[-1].bias)
    assert (
        {k for k in on.state_dict() if k not in off.state_dict()}
        == {"gap_mlp.0.weight", "gap_mlp.0.bias", "gap_mlp.2.weight", "gap_mlp.2.bias"}
        if kind == "unet"
        else {"gap.mlp.0.weight", "gap.mlp.0.bias", "gap.mlp.2.weight", "gap.mlp.2.bias"}
    )
    x, t, y = torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([0, 1, 3])
    ref = off(x, t, y=y)
    assert torch.equal(on(x, t, y=y, r=torch.rand(3)), ref)
    with torch.no_grad():
        nn.init.normal_(gap_mod[-1].weight, std=0.1)
    assert torch.equal(on(x, t, y=y), on(x, t, y=y, r=t))  # r=None is r = t
    assert not torch.allclose(on(x, t, y=y, r=t * 0), on(x, t, y=y, r=t))  # the gap reaches the output
    with pytest.raises(ValueError, match="two_times=True"):
        off(x, t, y=y, r=t)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        on(x, t, y=y, r=torch.rand(4))
    # one MeanFlow step through the net (the DiT's attention needs the math kernel for the JVP)
    mf = MeanFlow(on)
    loss = mf.loss((torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])))
    loss.backward()
    assert torch.isfinite(loss) and gap_mod[0].weight.grad.abs().sum() > 0


# -- the dispersive loss -----------------------------------------------------------------------------


def test_dispersive_loss_small_case_by_hand():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=D64)
    tau = 0.5
    total = 0.0
    for i in range(3):
        for j in range(3):
            d = sum((z[i, k] - z[j, k]).item() ** 2 for k in range(2)) / 2
            total += math.exp(-d / tau)
    assert math.isclose(dispersive_loss(z, tau).item(), math.log(total / 9), rel_tol=1e-12)
    # DM1: -mean_i log sum_j exp(min(|z_i - z_j| / tau, 10)), diagonal term e^10
    dm1 = 0.0
    for i in range(3):
        terms = [10.0 if i == j else min(torch.dist(z[i], z[j]).item() / tau, 10.0) for j in range(3)]
        dm1 -= math.log(sum(math.exp(a) for a in terms)) / 3
    assert math.isclose(dispersive_loss(z, tau, form="dm1").item(), dm1, rel_tol=1e-12)
    # the limits: 0 when collapsed, -log B when spread
    assert dispersive_loss(torch.ones(5, 3, dtype=D64)).item() == 0.0
    far = torch.arange(5, dtype=D64)[:, None] * 100.0
    assert math.isclose(dispersive_loss(far).item(), -math.log(5), rel_tol=1e-9)


def test_dispersive_gradient_pushes_points_apart():
    z = torch.randn(8, 4, dtype=D64, generator=torch.Generator().manual_seed(0)) * 0.3
    assert torch.autograd.gradcheck(lambda h: dispersive_loss(h, 0.7), (z.clone().requires_grad_(),))
    h = z.clone().requires_grad_()
    dispersive_loss(h, 0.5).backward()
    moved = z - 0.1 * h.grad
    assert torch.pdist(moved).min() > torch.pdist(z).min()
    assert torch.pdist(moved).mean() > torch.pdist(z).mean()
    assert dispersive_loss(moved, 0.5) < dispersive_loss(z, 0.5)
    with pytest.raises(ValueError, match="B >= 2"):
        dispersive_loss(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="tau"):
        dispersive_loss(z, 0.0)
    with pytest.raises(ValueError, match="infonce_l2"):
        dispersive_loss(z, form="l1")


def test_feature_tap_and_the_dispersive_term_in_meanflow():
    net = MLP(2, 16, 3, two_times=True)
    with FeatureTap(net, ["hidden.0", "hidden.1"]) as tap:
        net(torch.randn(5, 2), torch.rand(5), r=torch.rand(5))
    assert [f.shape for f in tap.all()] == [(5, 16), (5, 16)]
    assert not net.hidden[0]._forward_hooks  # hooks removed on exit
    with pytest.raises(ValueError, match="named_modules"):
        FeatureTap(net, ["blocks.0"])

    def loss_at(weight: float) -> Tensor:
        torch.manual_seed(0)
        mf = MeanFlow(net, dispersive_weight=weight, dispersive_layers=("hidden.1",), tau=0.5)
        torch.manual_seed(1)
        return mf.loss(torch.randn(64, 2))

    base, one, two = loss_at(0.0), loss_at(1.0), loss_at(2.0)
    disp = one - base
    assert -math.log(64) <= disp.item() < 0  # a dispersive loss lies in [-log B, 0]
    assert torch.allclose(two - base, 2 * disp, atol=1e-6)
    with pytest.raises(ValueError, match="dispersive_layers"):
        MeanFlow(net, dispersive_weight=0.5)
    with pytest.raises(ValueError, match="named_modules"):
        MeanFlow(net, dispersive_weight=0.5, dispersive_layers=("nope",))


# -- errors ------------------------------------------------------------------------------------------


def test_clear_errors():
    with pytest.raises(ValueError, match="two_times=True"):
        MeanFlow(MLP(2, 8, 1))

    class OneTime(nn.Module):
        def forward(self, x, t):
            return x

    with pytest.raises(TypeError, match="keyword r"):
        MeanFlow(OneTime()).loss(torch.randn(4, 2))
    mf = MeanFlow(MLP(2, 8, 1, two_times=True))
    with pytest.raises(ValueError, match="event shape"):
        mf.loss(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        mf.net(torch.randn(4, 2), torch.rand(4), r=torch.rand(3))
    with pytest.raises(ValueError, match="label_dropout > 0"):
        MeanFlow(MLP(2, 8, 1, two_times=True, num_classes=3), omega=2.0)
    with pytest.raises(ValueError, match="null"):
        MeanFlow(MLP(2, 8, 1, two_times=True), label_dropout=0.1)
    with pytest.raises(ValueError, match="kappa"):
        MeanFlow(MLP(2, 8, 1, two_times=True, num_classes=3), label_dropout=0.1, kappa=1.0)
    with pytest.raises(ValueError, match="p >= 0"):
        MeanFlow(MLP(2, 8, 1, two_times=True), p=-1.0)
    guided = MeanFlow(MLP(2, 8, 1, two_times=True, num_classes=3), label_dropout=0.1, omega=2.0)
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        guided.loss(torch.randn(4, 2))
    gen = mf.generator()
    with pytest.raises(ValueError, match="increasing"):
        gen.sample(3, grid=torch.tensor([0.0, 0.6, 0.5, 1.0]))
    with pytest.raises(ValueError, match="event shape"):
        gen.sample(3, x0=torch.randn(3, 5))
    with pytest.raises(RuntimeError, match="event_shape"):
        MeanFlow(UNet(channels=8, mults=(1,), blocks=1, attention=(), two_times=True)).generator()


# -- data parallel -----------------------------------------------------------------------------------


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_loss_does_not_depend_on_a_ddp_wrapper(tmp_path):
    from torch.nn.parallel import DistributedDataParallel

    from flowforge.train.distributed import LossModule

    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = MLP(2, 16, 2, two_times=True, num_classes=2)
        kw = dict(
            label_dropout=0.2, omega=1.0, kappa=0.5, dispersive_weight=0.3, dispersive_layers=("hidden.0",)
        )
        batch = (torch.randn(32, 2), torch.randint(0, 2, (32,)))

        def grads(run) -> list[Tensor]:
            net.zero_grad()
            torch.manual_seed(7)
            run().backward()
            return [q.grad.clone() for q in net.parameters()]

        plain = MeanFlow(net, **kw)
        want = grads(lambda: plain.loss(batch))
        wrapped = DistributedDataParallel(LossModule(plain))  # how the Trainer wraps a model
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(want, grads(lambda: wrapped(batch))))
        inner = MeanFlow(DistributedDataParallel(net), **kw)  # a DDP net: the JVP goes through .module
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(want, grads(lambda: inner.loss(batch))))
    finally:
        dist.destroy_process_group()
        os.environ.pop("MASTER_ADDR", None)
