"""Blockwise flow matching: routing by t, gradients per segment, per-segment training, FLOPs, sampling.

Analytic truth (float64, sheet section 0, "G2G"): x0 ~ N(0, I), x1 ~ N(m, diag c^2); the marginal
velocity is v(x, t) = m + (sd'/sd)(x - t m) with sd = sqrt(t^2 c^2 + (1-t)^2). Segment networks that
return this v on their own interval make a blockwise model whose sampler must match one network with
the same v at equal total steps.
"""

import math

import pytest
import torch
from torch import nn

from flowforge.continuous import (
    BlockwiseFlowMatching,
    BlockwiseGenerator,
    BlockwiseVelocity,
    FlowMatching,
    SegmentTimes,
)
from flowforge.nn import MLP, flops_per_eval

D64 = torch.float64
M = torch.tensor([1.5, -0.7], dtype=D64)
C = torch.tensor([0.3, 2.0], dtype=D64)


class Tag(nn.Module):
    """Returns a constant tag k in every entry (and records the times it saw)."""

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k, self.seen = k, []
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x, t, **cond):
        self.seen.append(t.clone())
        return self.w * torch.full_like(x, float(self.k))


class G2G(nn.Module):
    """The closed-form G2G velocity, with a parameter so that it has something to train."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=D64))

    def forward(self, x, t, **cond):
        t = t.to(D64)[:, None]
        sd = torch.sqrt(t**2 * C**2 + (1 - t) ** 2)
        dsd = (t * C**2 - (1 - t)) / sd
        return M + dsd / sd * (x - t * M) + self.w


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# routing
# ------------------------------------------------------------------------------------------------


def test_routing_sends_each_t_to_its_segment_edges_included():
    edges = (0.0, 0.2, 0.5, 0.9, 1.0)
    nets = [Tag(k) for k in range(4)]
    v = BlockwiseVelocity([(edges[k], edges[k + 1], nets[k]) for k in range(4)])
    t = torch.tensor([0.0, 0.1, 0.2, 0.35, 0.5, 0.8999, 0.9, 0.95, 1.0, 0.19999])
    want = [0, 0, 1, 1, 2, 2, 3, 3, 3, 0]
    assert v.segment_of(t).tolist() == want
    out = v(torch.zeros(10, 3), t)
    assert out[:, 0].tolist() == [float(k) for k in want]
    assert out.shape == (10, 3)
    # each network saw only its own samples, in batch order
    for k, net in enumerate(nets):
        seen = torch.cat(net.seen)
        assert seen.tolist() == [float(x) for x, w in zip(t.tolist(), want) if w == k]
    # float64 and conditions are routed too
    t64 = torch.tensor([0.9, 0.2], dtype=D64)
    assert v.segment_of(t64).tolist() == [3, 1]


def test_routing_passes_conditions_with_their_samples():
    class Echo(nn.Module):
        def forward(self, x, t, y):
            return y[:, None].to(x.dtype).expand_as(x)

    v = BlockwiseVelocity([(0.0, 0.5, Echo()), (0.5, 1.0, Echo())])
    y = torch.tensor([3, 1, 4, 1])
    out = v(torch.zeros(4, 2), torch.tensor([0.9, 0.1, 0.6, 0.3]), y=y)
    assert out[:, 0].tolist() == [3.0, 1.0, 4.0, 1.0]


def test_uniform_segments_and_times_out_of_range():
    v = BlockwiseVelocity.uniform(3, lambda k: Tag(k))
    assert v.edges == (0.0, 1 / 3, 2 / 3, 1.0) and v.num_segments == 3
    assert v.segment_of(torch.tensor([1 / 3, 2 / 3, 1.0])).tolist() == [1, 2, 2]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        v(torch.zeros(2, 2), torch.tensor([0.5, 1.2]))


@pytest.mark.parametrize(
    "segments,match",
    [
        ([], "at least one segment"),
        ([(0.0, 0.5, "net"), (0.5, 1.0, "net")], "callable net"),
        ([(0.0, 0.4, nn.Identity()), (0.5, 1.0, nn.Identity())], "do not meet"),
        ([(0.1, 1.0, nn.Identity())], "cover \\[0, 1\\]"),
        ([(0.0, 0.9, nn.Identity())], "cover \\[0, 1\\]"),
        ([(0.0, 0.5, nn.Identity()), (0.5, 0.5, nn.Identity()), (0.5, 1.0, nn.Identity())], "increasing"),
        ([(0.0, 1.0)], "triple"),
    ],
)
def test_bad_segments_are_explained(segments, match):
    with pytest.raises(ValueError, match=match):
        BlockwiseVelocity(segments)


def test_bad_k_and_segment_index():
    with pytest.raises(ValueError, match="K >= 1"):
        BlockwiseVelocity.uniform(0, lambda k: Tag(k))
    with pytest.raises(ValueError, match="integer in 0..1"):
        BlockwiseFlowMatching.uniform(2, lambda k: Tag(k), segment=2)
    bfm = BlockwiseFlowMatching.uniform(2, lambda k: Tag(k))
    with pytest.raises(ValueError, match="integer in 0..1"):
        bfm.segment = -1
    with pytest.raises(ValueError, match="one per segment"):
        BlockwiseFlowMatching.uniform(2, lambda k: MLP(2, 8, 1)).generator().sample(4, steps=[1, 2, 3])


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------


def test_segment_times_stratified_and_single():
    sampler = SegmentTimes((0.0, 0.25, 0.5, 1.0))
    t = sampler(10, generator=_gen(0), dtype=D64)
    seg = BlockwiseVelocity([(0.0, 0.25, Tag(0)), (0.25, 0.5, Tag(1)), (0.5, 1.0, Tag(2))]).segment_of(t)
    assert seg.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]  # first 10 mod 3 = 1 segment gets the extra row
    one = SegmentTimes((0.0, 0.25, 0.5, 1.0), segment=1)(5000, generator=_gen(1))
    assert bool(((one >= 0.25) & (one < 0.5)).all())
    assert abs(float(one.mean()) - 0.375) < 0.01
    # float32 rounding never carries a time onto the next segment's edge
    edge = SegmentTimes((0.0, 0.1, 1.0), segment=0).from_uniform(torch.tensor([1 - 2**-30, 0.0]))
    assert float(edge[0]) < 0.1 and float(edge[1]) == 0.0


def test_joint_gradient_reaches_only_the_owning_net():
    torch.manual_seed(0)
    nets = [MLP(2, 8, 1) for _ in range(4)]
    bfm = BlockwiseFlowMatching.uniform(4, lambda k: nets[k])
    t_fixed = torch.tensor([0.1, 0.2, 0.6, 0.7, 0.74])  # segments 0, 0, 2, 2, 2

    class Fixed(SegmentTimes):
        def __call__(self, n, *, generator=None, device=None, dtype=torch.float32):
            return t_fixed.to(dtype)

    bfm.joint_time = Fixed((0.0, 1.0))
    bfm.segment = None
    x1 = torch.randn(5, 2)
    torch.manual_seed(1)
    bfm.loss(x1).backward()
    assert all(p.grad is None for k in (1, 3) for p in nets[k].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for k in (0, 2) for p in nets[k].parameters())
    # the gradient of net 0 is that of its own samples' share of the loss
    grads = [p.grad.clone() for p in nets[0].parameters()]
    for p in bfm.parameters():
        p.grad = None
    torch.manual_seed(1)
    x0 = torch.randn_like(x1)
    xt = t_fixed[:2, None] * x1[:2] + (1 - t_fixed[:2, None]) * x0[:2]
    own = (nets[0](xt, t_fixed[:2]) - (x1[:2] - x0[:2])).square().sum() / x1.numel()
    own.backward()
    for g, p in zip(grads, nets[0].parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6)


def test_per_segment_training_touches_only_segment_k():
    torch.manual_seed(0)
    bfm = BlockwiseFlowMatching.uniform(3, lambda k: MLP(2, 8, 1), segment=1)
    before = [p.detach().clone() for p in bfm.parameters()]
    opt = torch.optim.Adam(bfm.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        bfm.loss(torch.randn(32, 2)).backward()
        opt.step()
    changed = {}
    for (name, p), b in zip(bfm.named_parameters(), before):
        seg = int(name.split(".")[2])  # net.nets.<k>.
        changed.setdefault(seg, []).append(not torch.equal(p, b))
    assert all(changed[1]) and not any(changed[0]) and not any(changed[2])
    # switching back to joint training uses the stratified sampler again
    bfm.segment = None
    assert isinstance(bfm.time, SegmentTimes) and bfm.time.segment is None


def test_blocks_of_the_exact_velocity_match_one_network():
    """K = 4 blocks of the G2G velocity sample exactly like one network at equal total steps."""
    bfm = BlockwiseFlowMatching.uniform(4, lambda k: G2G(), event_shape=(2,))
    one = FlowMatching(G2G(), event_shape=(2,))
    x0 = torch.randn(256, 2, generator=_gen(2), dtype=D64)
    for solver in ("euler", "heun"):
        a = bfm.generator().sample(256, x0=x0, steps=4, solver=solver, dtype=D64)
        b = one.generator().sample(256, x0=x0, steps=16, solver=solver, dtype=D64)
        assert torch.allclose(a, b, atol=1e-12), solver
    # and the exact one-step map u(x, 0, 1) = m + (c - 1) x is approached with fine steps
    fine = bfm.generator().sample(256, x0=x0, steps=16, solver="rk4", dtype=D64)
    assert torch.allclose(fine, M + C * x0, atol=1e-6)


def test_joint_training_fits_g2g():
    """Joint blockwise training of two tiny MLPs on G2G samples learns the closed-form velocity."""
    torch.manual_seed(0)
    bfm = BlockwiseFlowMatching.uniform(2, lambda k: MLP(2, 32, 2))
    opt = torch.optim.Adam(bfm.parameters(), lr=1e-2)
    g = _gen(3)
    for _ in range(150):
        x1 = (M + C * torch.randn(256, 2, generator=g, dtype=D64)).float()
        opt.zero_grad()
        bfm.loss(x1).backward()
        opt.step()
    # on-distribution points x_t of the G2G path, t away from the ends
    t = torch.rand(512, generator=_gen(5), dtype=D64) * 0.9 + 0.05
    x1 = M + C * torch.randn(512, 2, generator=_gen(4), dtype=D64)
    x = t[:, None] * x1 + (1 - t[:, None]) * torch.randn(512, 2, generator=_gen(6), dtype=D64)
    with torch.no_grad():
        truth = G2G()(x, t)
        err = (bfm.net(x.float(), t.float()).double() - truth).square().mean()
    assert float(err) < 0.1 * float((truth - truth.mean(0)).square().mean())


# ------------------------------------------------------------------------------------------------
# cost
# ------------------------------------------------------------------------------------------------


def test_flops_exact_for_a_known_mlp():
    net = MLP(dim=3, width=20, depth=3, time_freqs=2)  # Linear(3 + 5, 20), 2 x Linear(20, 20), Linear(20, 3)
    macs = 8 * 20 + 2 * 20 * 20 + 20 * 3
    x, t = torch.zeros(7, 3), torch.zeros(7)
    assert flops_per_eval(net, x, t) == 2 * macs
    assert flops_per_eval(net, x, t, per_sample=False) == 7 * 2 * macs
    assert flops_per_eval(net, x, t, count="ops") == 2 * macs  # torch's counter agrees on pure Linear nets


def test_flops_convolutions_match_torch_counter():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, groups=2))
    x = torch.zeros(2, 3, 9, 9)
    macs = 9 * 9 * 8 * 3 * 9 + 4 * 4 * 4 * 4 * 9  # out elements x (C_in / groups) x k^2
    assert flops_per_eval(net, x) == 2 * macs
    assert flops_per_eval(net, x, count="ops") == 2 * macs
    up = nn.ConvTranspose2d(4, 2, 2, stride=2)
    assert flops_per_eval(up, torch.zeros(1, 4, 3, 3)) == flops_per_eval(
        up, torch.zeros(1, 4, 3, 3), count="ops"
    )
    with pytest.raises(ValueError, match="count"):
        flops_per_eval(net, x, count="macs")


def test_blockwise_sampling_reports_flops_per_sample():
    small, big = MLP(2, 16, 1), MLP(2, 64, 2)  # 2 (3*16 + 16*2) = 160 and 2 (3*64 + 64*64 + 64*2) = 8832
    bfm = BlockwiseFlowMatching([(0.0, 0.5, small), (0.5, 1.0, big)], event_shape=(2,))
    gen = bfm.generator()
    assert isinstance(gen, BlockwiseGenerator)
    x, cost = gen.sample(16, steps=[2, 3], solver="heun", return_cost=True, generator=_gen(6))
    assert x.shape == (16, 2)
    assert cost.nfe == (4, 6)  # Heun: two evaluations a step
    assert cost.flops_per_eval == (160.0, 8832.0)
    assert cost.flops_per_sample == 4 * 160 + 6 * 8832
    # the routed field (FlowGenerator API) is available for likelihoods
    lp = gen.log_prob(x[:4].double().float(), solver="rk4", steps=8)
    assert lp.shape == (4,) and torch.isfinite(lp).all()


def test_sde_sampler_runs_per_segment():
    bfm = BlockwiseFlowMatching.uniform(2, lambda k: G2G(), event_shape=(2,))
    x = bfm.generator().sample(512, steps=50, solver="sde", generator=_gen(7), dtype=D64)
    assert torch.allclose(x.mean(0), M, atol=0.2) and torch.allclose(x.std(0), C, rtol=0.2)
    assert math.isfinite(float(x.sum()))


def test_contracts_and_trainer(tmp_path):
    import flowforge as ff
    from flowforge.core.contracts import Generator, Objective

    model = ff.BlockwiseFlowMatching.uniform(2, lambda k: MLP(2, 8, 1))
    assert isinstance(model, Objective)
    run = ff.train(
        model, torch.randn(256, 2), steps=3, batch_size=32, out=str(tmp_path / "run"), progress=False
    )
    gen = run.generator()
    assert isinstance(gen, Generator) and isinstance(gen, BlockwiseGenerator)
    assert gen.sample(5, steps=2, generator=_gen(8)).shape == (5, 2)
