"""Reflow (2-rectified flow++), its pair files and the straightness metric, on Gaussian-to-Gaussian flows.

Source x0 ~ N(0, I), data x1 ~ N(m, diag c^2), linear path, float64 (verified-few-step.md, sections 0-1):

- teacher (independent coupling): v1(x, t) = m + (sigma'_t / sigma_t)(x - t m), sigma_t = sqrt(t^2 c^2 + (1-t)^2);
  its flow map is x1 = m + c x0 and its trajectories Z_t = t m + sigma_t x0 are curved;
- 2-rectified flow on the exact pairs: v2(x, t) = m + (c - 1)(x - t m) / (1 - t + t c), straight.
"""

import json

import pytest
import safetensors.torch
import torch
from torch import nn

import flowforge
from flowforge import FlowMatching
from flowforge.core.objectives import PseudoHuber, SquaredError
from flowforge.core.solvers import RK4
from flowforge.core.time import TimeSampler, Uniform, UShaped
from flowforge.distill import Reflow, generate_pairs, load_pairs, pairs_metadata
from flowforge.metrics import straightness
from flowforge.nn import MLP

D64 = torch.float64
M = torch.tensor([1.5, -0.7], dtype=D64)
C = torch.tensor([0.3, 2.0], dtype=D64)


def _t(t):
    return t.reshape(-1, 1)


def v1(x, t):
    t = _t(t)
    var = t**2 * C**2 + (1 - t) ** 2
    return M + (t * C**2 - (1 - t)) / var * (x - t * M)


def v2(x, t):
    t = _t(t)
    return M + (C - 1) * (x - t * M) / (1 - t + t * C)


def flow_map(x0):
    return M + C * x0


class Exact(nn.Module):
    """A closed-form field as a network (with one unused parameter, so it is a module with weights)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.dummy = nn.Parameter(torch.zeros((), dtype=D64))

    def forward(self, x, t):
        return self.fn(x, t)


def _x0(n, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=D64)


# ---------------------------------------------------------------------------------------------- straightness


def test_reference_values_of_the_closed_forms():
    x = torch.tensor([[0.4, -1.0]], dtype=D64)
    assert torch.allclose(
        v1(x, torch.tensor([0.3], dtype=D64)), torch.tensor([[1.567557, -1.164706]], dtype=D64), atol=1e-6
    )
    x0 = _x0(64)
    assert torch.allclose(
        v2(x0, torch.zeros(64, dtype=D64)), flow_map(x0) - x0, atol=1e-14
    )  # 1 Euler step exact


def test_straightness_is_zero_for_a_straight_field_and_matches_the_closed_form_for_a_curved_one():
    x0 = _x0(256)
    assert straightness(v2, x0, steps=4) < 1e-20  # straight for any number of steps
    # curved teacher: Z_t = t m + sigma_t x0, so (Z1 - Z0) - dZ/dt = (c - 1 - sigma'_t) x0 and, with per-dim
    # E[x0_i^2] = 1 exactly (the four sign patterns below), S = sum_i int_0^1 (c_i - 1 - sigma'_{t,i})^2 dt
    signs = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]], dtype=D64)
    t = torch.linspace(0, 1, 200_001, dtype=D64)[:, None]
    sigma = torch.sqrt(t**2 * C**2 + (1 - t) ** 2)
    integrand = (C - 1 - (t * C**2 - (1 - t)) / sigma).square().sum(1)
    exact = float(torch.trapezoid(integrand, t[:, 0]))
    got = straightness(v1, signs, steps=256, solver=RK4())
    assert exact > 0.5
    assert got == pytest.approx(exact, rel=1e-4)
    assert straightness(v1, signs, steps=256, solver=RK4(), per_dim=True) == pytest.approx(
        exact / 2, rel=1e-4
    )


def test_straightness_rejects_bad_inputs():
    with pytest.raises(ValueError, match="steps >= 1"):
        straightness(v1, _x0(4), steps=0)
    with pytest.raises(ValueError, match=r"\(B, \*event\)"):
        straightness(v1, torch.zeros(0, 2), steps=4)


# ---------------------------------------------------------------------------------------------- pair files


def test_pairs_from_the_exact_teacher_are_the_flow_map_pairs(tmp_path):
    p = generate_pairs(
        v1,
        200,
        tmp_path / "pairs.safetensors",
        event_shape=(2,),
        solver="rk4",
        steps=64,
        batch_size=64,
        generator=torch.Generator().manual_seed(1),
        dtype=D64,
    )
    x0, x1 = load_pairs(p)
    assert x0.shape == x1.shape == (200, 2) and x0.dtype == D64
    assert (x1 - flow_map(x0)).abs().max() < 1e-7
    meta = pairs_metadata(p)
    assert meta["n"] == 200 and meta["solver"] == "rk4" and meta["steps"] == 64
    assert json.loads(p.with_suffix(".json").read_text()) == meta
    assert not p.with_name(p.name + ".parts").exists()  # chunks removed once the file is whole
    # x0 are standard normals (a loose check that noise really is N(0, I))
    assert abs(float(x0.mean())) < 0.15 and abs(float(x0.std()) - 1) < 0.15


class Killed(RuntimeError):
    pass


def _dying(after):
    calls = {"n": 0}

    def v(x, t):
        calls["n"] += 1
        if calls["n"] > after:
            raise Killed("simulated kill")
        return v1(x, t)

    return v, calls


def _pairs_args(**kw):
    args = dict(event_shape=(2,), solver="heun", steps=2, batch_size=16, dtype=D64)
    return {**args, **kw}


def test_a_killed_run_resumes_to_the_same_bits(tmp_path):
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    full = generate_pairs(v1, 70, tmp_path / "full.safetensors", generator=g(), **_pairs_args())
    # 5 chunks of 16, 4 teacher calls each (Heun, 2 steps): dies inside the third chunk
    dying, _ = _dying(after=9)
    part = tmp_path / "resumed.safetensors"
    with pytest.raises(Killed):
        generate_pairs(dying, 70, part, generator=g(), **_pairs_args())
    parts_dir = tmp_path / "resumed.safetensors.parts"
    assert sorted(f.name for f in parts_dir.glob("chunk-*")) == [
        "chunk-000000.safetensors",
        "chunk-000001.safetensors",
    ]
    (parts_dir / "chunk-000002.safetensors.tmp").write_bytes(b"half a write")  # a write killed half-way
    with pytest.raises(FileNotFoundError, match="resume"):
        load_pairs(part)
    counting, calls = _dying(after=10**9)
    generate_pairs(counting, 70, part, generator=g(), **_pairs_args())
    assert calls["n"] == 3 * 4  # only the three missing chunks were computed
    assert part.read_bytes() == full.read_bytes()
    assert part.with_suffix(".json").read_text() == full.with_suffix(".json").read_text()
    # calling again on a finished file with the same request does nothing
    idle, calls = _dying(after=0)
    generate_pairs(idle, 70, part, generator=g(), **_pairs_args())
    assert calls["n"] == 0


def test_resume_refuses_other_settings(tmp_path):
    dying, _ = _dying(after=5)
    p = tmp_path / "p.safetensors"
    with pytest.raises(Killed):
        generate_pairs(dying, 70, p, generator=torch.Generator().manual_seed(0), **_pairs_args())
    with pytest.raises(ValueError, match="other settings"):
        generate_pairs(v1, 70, p, generator=torch.Generator().manual_seed(0), **_pairs_args(steps=3))
    with pytest.raises(ValueError, match="other settings"):
        generate_pairs(v1, 70, p, generator=torch.Generator().manual_seed(1), **_pairs_args())
    # generator=None resumes with the stored seed
    generate_pairs(v1, 70, p, **_pairs_args())
    ref = generate_pairs(
        v1, 70, tmp_path / "ref.safetensors", generator=torch.Generator().manual_seed(0), **_pairs_args()
    )
    assert p.read_bytes() == ref.read_bytes()


def test_labels_are_passed_to_the_teacher_and_stored(tmp_path):
    seen = []

    def v(x, t, y):
        seen.append(y.clone())
        return v1(x, t) + y[:, None].to(x.dtype)

    y = torch.arange(20) % 3
    p = generate_pairs(
        v, 20, tmp_path / "y.safetensors", y=y, generator=torch.Generator().manual_seed(0), **_pairs_args()
    )
    x0, x1, y_back = load_pairs(p)
    assert torch.equal(y_back, y) and torch.equal(torch.cat(seen[::4]), y)


def test_generate_pairs_rejects_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"\.safetensors"):
        generate_pairs(v1, 4, tmp_path / "p.pt", event_shape=(2,))
    with pytest.raises(ValueError, match="positive integer"):
        generate_pairs(v1, 0, tmp_path / "p.safetensors", event_shape=(2,))
    with pytest.raises(ValueError, match="event_shape"):
        generate_pairs(v1, 4, tmp_path / "p.safetensors")
    with pytest.raises(ValueError, match="labels"):
        generate_pairs(v1, 4, tmp_path / "p.safetensors", event_shape=(2,), y=torch.zeros(3))
    with pytest.raises(ValueError, match="unknown solver|solver"):
        generate_pairs(v1, 4, tmp_path / "p.safetensors", event_shape=(2,), solver="eulr")
    with pytest.raises(TypeError, match="teacher"):
        generate_pairs(42, 4, tmp_path / "p.safetensors", event_shape=(2,))
    (tmp_path / "mine.safetensors").write_bytes(b"someone else's file")
    with pytest.raises(FileExistsError, match="another path"):
        generate_pairs(v1, 4, tmp_path / "mine.safetensors", event_shape=(2,))
    assert (tmp_path / "mine.safetensors").read_bytes() == b"someone else's file"


def test_load_pairs_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="generate_pairs"):
        load_pairs(tmp_path / "missing.safetensors")
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_pairs(bad)
    meta = {"flowforge": json.dumps({"n": 4, "event_shape": [2]})}
    keys = tmp_path / "keys.safetensors"
    safetensors.torch.save_file({"a": torch.zeros(4, 2), "b": torch.zeros(4, 2)}, str(keys), metadata=meta)
    with pytest.raises(ValueError, match="x0 and x1"):
        load_pairs(keys)
    shapes = tmp_path / "shapes.safetensors"
    safetensors.torch.save_file(
        {"x0": torch.zeros(4, 2), "x1": torch.zeros(4, 3)}, str(shapes), metadata=meta
    )
    with pytest.raises(ValueError, match="share one shape"):
        load_pairs(shapes)
    labels = tmp_path / "labels.safetensors"
    safetensors.torch.save_file(
        {"x0": torch.zeros(4, 2), "x1": torch.zeros(4, 2), "y": torch.zeros(3)}, str(labels), metadata=meta
    )
    with pytest.raises(ValueError, match="one label per pair"):
        load_pairs(labels)
    altered = tmp_path / "altered.safetensors"
    safetensors.torch.save_file(
        {"x0": torch.zeros(5, 2), "x1": torch.zeros(5, 2)}, str(altered), metadata=meta
    )
    with pytest.raises(ValueError, match="altered"):
        load_pairs(altered)


# ---------------------------------------------------------------------------------------------- the objective


class Fixed(TimeSampler):
    def __init__(self, value):
        self.value = value

    def from_uniform(self, u):
        return torch.full_like(u, self.value)


class Recorder(nn.Module):
    def __init__(self, out=0.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(out, dtype=D64))
        self.ts = []

    def forward(self, x, t):
        self.ts.append(t.clone())
        return self.w * torch.ones_like(x)


def test_exact_pairs_have_zero_reflow_loss_and_the_coupling_is_the_pairs():
    x0 = _x0(512)
    pairs = (x0, flow_map(x0))
    for opts in ({}, {"time": Uniform(), "distance": SquaredError()}):
        assert float(Reflow(Exact(v2), **opts).loss(pairs)) < 1e-24  # 2-RF regression has no floor
        assert float(Reflow(Exact(v1), **opts).loss(pairs)) > 1e-3  # the teacher's field is not straight
    shuffled = (x0, flow_map(x0)[torch.randperm(512, generator=torch.Generator().manual_seed(0))])
    assert float(Reflow(Exact(v2)).loss(shuffled)) > 1e-2  # independent pairs: positive floor


def test_rfpp_defaults_u_shaped_time_rescaled_and_pseudo_huber_with_c_0_00054_d():
    rf = Reflow(Recorder())
    assert isinstance(rf.time, UShaped) and rf.time.a == 4.0
    d = 3
    assert rf.distance(d) == PseudoHuber(c=0.00054 * d)  # the rf++ code's C (d, not sqrt(d))
    for value, expected in ((0.0, 1e-5), (1.0, 1 - 1e-5)):  # affine rescale, not a clamp
        net = Recorder()
        Reflow(net, time=Fixed(value)).loss((torch.zeros(4, d, dtype=D64), torch.ones(4, d, dtype=D64)))
        assert torch.allclose(net.ts[-1], torch.full((4,), expected, dtype=D64), rtol=0, atol=1e-15)
    # the value: net outputs 0.5 everywhere, target x1 - x0 = 2 in every coordinate
    x0 = torch.zeros(5, d, dtype=D64)
    x1 = torch.full((5, d), 2.0, dtype=D64)
    c = 0.00054 * d
    expected = (torch.sqrt(torch.tensor(d * 1.5**2 + c * c, dtype=D64)) - c) / d
    assert Reflow(Recorder(0.5)).loss((x0, x1)).item() == pytest.approx(float(expected), rel=1e-12)
    mse = Reflow(Recorder(0.5), time=Uniform(), distance=SquaredError()).loss((x0, x1))
    assert mse.item() == pytest.approx(1.5**2, rel=1e-12)


def test_loss_rejects_data_batches_and_mismatched_pairs():
    rf = Reflow(Recorder())
    with pytest.raises(ValueError, match="generate_pairs"):
        rf.loss(torch.zeros(4, 2, dtype=D64))
    with pytest.raises(ValueError, match="same shape"):
        rf.loss((torch.zeros(4, 2, dtype=D64), torch.zeros(4, 3, dtype=D64)))
    with pytest.raises(TypeError, match="affine path"):
        Reflow(Recorder(), path=flowforge.StochasticInterpolant())


def test_student_starts_from_the_teacher_weights():
    teacher = FlowMatching(MLP(dim=2, width=16, depth=1), event_shape=(2,))
    rf = Reflow.from_teacher(teacher)
    for (k, a), (k2, b) in zip(teacher.net.state_dict().items(), rf.net.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    with torch.no_grad():
        next(rf.net.parameters()).add_(1.0)  # a copy, not a shared module
    assert not torch.equal(next(rf.net.parameters()), next(teacher.net.parameters()))
    rf2 = Reflow(MLP(dim=2, width=16, depth=1), init_from=teacher)
    assert torch.equal(next(rf2.net.parameters()), next(teacher.net.parameters()))
    with pytest.raises(ValueError, match="architecture"):
        Reflow(MLP(dim=2, width=8, depth=1), init_from=teacher)
    assert isinstance(Reflow.from_teacher(rf).net, MLP)  # a further round starts from the round-1 student
    teacher.requires_grad_(False)  # e.g. frozen by a refiner or FreeFlow built on the same teacher
    assert all(p.requires_grad for p in Reflow.from_teacher(teacher).parameters())


def test_reflow_on_exact_pairs_gives_a_straight_field_whose_one_euler_step_lands_on_the_target(tmp_path):
    torch.manual_seed(0)
    path = generate_pairs(
        v1,
        4096,
        tmp_path / "pairs.safetensors",
        event_shape=(2,),
        solver="rk4",
        steps=32,
        batch_size=4096,
        generator=torch.Generator().manual_seed(0),
        dtype=D64,
    )
    x0, x1 = load_pairs(path)
    rf = Reflow(MLP(dim=2, width=64, depth=2).double())
    opt = torch.optim.Adam(rf.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for step in range(600):
        for group in opt.param_groups:
            group["lr"] = 3e-3 * (1 - step / 600) + 1e-4
        i = torch.randint(0, 4096, (256,), generator=g)
        loss = rf.loss((x0[i], x1[i]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    z = _x0(4096, seed=5)
    one_step = rf.generator().sample(4096, x0=z, solver="euler", steps=1, dtype=D64)
    teacher_step = z + v1(z, torch.zeros(4096, dtype=D64))  # the teacher's 1-step Euler maps everything to m

    def gaussian_w2(x):  # W2^2 to N(m, diag c^2) of the diagonal Gaussian fit
        return float((x.mean(0) - M).square().sum() + (x.std(0) - C).square().sum())

    assert gaussian_w2(teacher_step) > 3.5
    assert gaussian_w2(one_step) < 0.05
    assert (one_step - flow_map(z)).square().sum(1).mean() < 0.05  # it learned the teacher's coupling
    s_teacher = straightness(v1, z[:512], steps=32)
    s_student = straightness(rf.velocity, z[:512], steps=32)
    assert s_teacher > 0.5 and s_student < 0.02 * s_teacher


def test_trainer_contract_and_a_second_round(tmp_path):
    teacher = FlowMatching(MLP(dim=2, width=16, depth=1), event_shape=(2,))
    p1 = generate_pairs(
        teacher,
        64,
        tmp_path / "r1.safetensors",
        solver="euler",
        steps=2,
        batch_size=32,
        generator=torch.Generator().manual_seed(0),
    )
    assert pairs_metadata(p1)["teacher"] == "FlowMatching(MLP)"
    rf = Reflow.from_teacher(teacher)
    run = flowforge.train(rf, load_pairs(p1), steps=2, batch_size=16)
    assert run.generator().sample(
        3, solver="euler", steps=1, generator=torch.Generator().manual_seed(0)
    ).shape == (3, 2)
    p2 = generate_pairs(
        rf,
        64,
        tmp_path / "r2.safetensors",
        solver="euler",
        steps=2,
        batch_size=32,
        generator=torch.Generator().manual_seed(0),
    )
    assert pairs_metadata(p2)["teacher"] == "Reflow(MLP)"
    rf2 = Reflow.from_teacher(rf)
    assert rf2.loss(load_pairs(p2)).ndim == 0
