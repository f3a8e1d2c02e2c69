"""Equivariant CNF Boltzmann generators: EGNN symmetries, mean-free source, CNF likelihood, equivariant OT, recipes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowforge.cli.main import main
from flowforge.continuous import EquivariantFlowGenerator, EquivariantFlowMatching
from flowforge.core.equivariant_ot import EquivariantOT, align_particles, kabsch
from flowforge.core.mean_free import MeanFreeNormal, remove_com
from flowforge.nn import EGNN

D64 = torch.float64


def _orthogonal(d: int, g: torch.Generator, proper: bool) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=D64))
    if (torch.linalg.det(q) > 0) != proper:
        q = q.clone()
        q[:, 0] = -q[:, 0]
    return q


@pytest.mark.parametrize("n,d", [(4, 2), (5, 3)])
def test_egnn_is_rotation_translation_permutation_equivariant_and_mean_free(n, d):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = EGNN(n, d, width=16, depth=3, scale=2.0).double()
    for layer in net.layers:  # a visibly non-zero field (the coordinate head starts near zero)
        torch.nn.init.normal_(layer.coord[-1].weight, std=0.5)
    b = 6
    x = 2 * torch.randn(b, n * d, generator=g, dtype=D64)
    t = torch.rand(b, generator=g, dtype=D64)
    v = net(x, t).view(b, n, d)
    assert v.abs().max() > 1e-2
    assert v.sum(1).abs().max() < 1e-12  # mean-free output
    p = x.view(b, n, d)
    for proper in (True, False):  # rotations and reflections
        q = _orthogonal(d, g, proper)
        c = torch.randn(1, 1, d, generator=g, dtype=D64)
        vr = net((p @ q.T + c).reshape(b, -1), t).view(b, n, d)
        torch.testing.assert_close(vr, v @ q.T, rtol=0, atol=1e-11)
    perm = torch.randperm(n, generator=g)
    vp = net(p[:, perm].reshape(b, -1), t).view(b, n, d)
    torch.testing.assert_close(vp, v[:, perm], rtol=0, atol=1e-11)
    torch.testing.assert_close(net(p, t), v)  # (B, N, d) layout gives the same field
    # time enters: a different t changes the field
    assert (net(x, 1 - t).view(b, n, d) - v).abs().max() > 1e-6


def test_mean_free_normal_is_the_standard_normal_on_the_subspace():
    n, d = 4, 3
    src = MeanFreeNormal(n, d)
    # an orthonormal basis U of {x: sum_i x_i = 0}: (N d, (N-1) d)
    proj = torch.eye(n * d, dtype=D64) - torch.kron(
        torch.full((n, n), 1.0 / n, dtype=D64), torch.eye(d, dtype=D64)
    )
    evals, evecs = torch.linalg.eigh(proj)
    basis = evecs[:, evals > 0.5]
    assert basis.shape == (n * d, (n - 1) * d) == (n * d, src.subspace_dim)
    y = torch.randn(7, src.subspace_dim, generator=torch.Generator().manual_seed(1), dtype=D64)
    x = y @ basis.T
    truth = -0.5 * y.square().sum(1) - 0.5 * src.subspace_dim * math.log(2 * math.pi)
    torch.testing.assert_close(src.log_prob(x), truth, rtol=0, atol=1e-12)
    s = src.sample(20_000, generator=torch.Generator().manual_seed(2), dtype=D64)
    assert s.view(-1, n, d).sum(1).abs().max() < 1e-12
    cov = s.T @ s / len(s)  # the covariance of P eps is P
    assert (cov - proj).abs().max() < 0.05


def test_cnf_log_prob_of_zero_field_is_the_source_density_and_com_extension_adds_a_gaussian():
    n, d = 4, 2
    src = MeanFreeNormal(n, d)
    x = src.sample(5, generator=torch.Generator().manual_seed(0), dtype=D64)
    zero = EquivariantFlowGenerator(lambda y, t: torch.zeros_like(y), src)
    torch.testing.assert_close(zero.log_prob(x, steps=3), src.log_prob(x), rtol=0, atol=1e-12)
    full = EquivariantFlowGenerator(lambda y, t: torch.zeros_like(y), src, com="gaussian")
    shift = torch.tensor([0.3, -1.2], dtype=D64)
    xs = (x.view(5, n, d) + shift).reshape(5, -1)
    com = -0.5 * n * shift.square().sum() - 0.5 * d * math.log(2 * math.pi)  # N(sqrt(N) xbar; 0, I_d)
    torch.testing.assert_close(full.log_prob(xs, steps=3), src.log_prob(x) + com, rtol=0, atol=1e-12)


def test_cnf_divergence_counts_only_the_subspace_dimensions():
    """v = a x on the CoM-free subspace: x1 = e^a x0, log q(x1) = log p0(e^-a x1) - a (N-1) d (not a N d)."""
    n, d, a = 3, 2, 0.7
    src = MeanFreeNormal(n, d)
    gen = EquivariantFlowGenerator(src.project_field(lambda y, t: a * y), src)
    x, log_q = gen.sample_and_log_prob(
        6, generator=torch.Generator().manual_seed(0), solver="rk4", steps=40, dtype=D64
    )
    x0 = src.sample(6, generator=torch.Generator().manual_seed(0), dtype=D64)
    torch.testing.assert_close(x, math.exp(a) * x0, rtol=0, atol=1e-7)
    truth = src.log_prob(math.exp(-a) * x) - a * (n - 1) * d
    torch.testing.assert_close(log_q, truth, rtol=0, atol=1e-7)
    torch.testing.assert_close(gen.log_prob(x, solver="rk4", steps=40), truth, rtol=0, atol=1e-7)


def test_egnn_cnf_forward_and_backward_log_densities_agree():
    torch.manual_seed(0)
    net = EGNN(4, 2, width=16, depth=2, coord_range=2.0).double()  # unbounded, this field blows up (NaN)
    for layer in net.layers:
        torch.nn.init.normal_(layer.coord[-1].weight, std=0.3)
    gen = EquivariantFlowMatching(net, 4, 2).generator(com="gaussian")
    x, log_q = gen.sample_and_log_prob(
        8, generator=torch.Generator().manual_seed(0), steps=30, solver="rk4", dtype=D64
    )
    torch.testing.assert_close(gen.log_prob(x, steps=30, solver="rk4"), log_q, rtol=0, atol=1e-6)
    # invariance of the model density under rotations and permutations of the particles
    q = _orthogonal(2, torch.Generator().manual_seed(3), proper=True)
    xr = (x.view(8, 4, 2)[:, [2, 0, 3, 1]] @ q.T).reshape(8, -1)
    torch.testing.assert_close(gen.log_prob(xr, steps=30, solver="rk4"), log_q, rtol=0, atol=1e-6)


def test_kabsch_and_alignment_recover_a_rotated_permuted_copy():
    g = torch.Generator().manual_seed(0)
    n, d, b = 6, 3, 5
    x1 = remove_com(torch.randn(b, n * d, generator=g, dtype=D64), n, d)
    q = _orthogonal(d, g, proper=True)
    perm = torch.randperm(n, generator=g)
    x0 = (x1.view(b, n, d)[:, perm] @ q.T).reshape(b, -1)
    r = kabsch(x1.view(b, n, d), (x1.view(b, n, d) @ q.T))
    torch.testing.assert_close(r, q.expand(b, d, d), rtol=0, atol=1e-10)
    assert torch.allclose(
        torch.linalg.det(kabsch(x0.view(b, n, d), x1.view(b, n, d))), torch.ones(b, dtype=D64)
    )
    # a large rotation can trap the permutation/rotation alternation: random restarts find the copy
    one, many = align_particles(x0, x1, n, d), align_particles(x0, x1, n, d, restarts=32, generator=g)
    assert bool(((many - x1).square().sum(1) <= (one - x1).square().sum(1) + 1e-12).all())
    torch.testing.assert_close(many, x1, rtol=0, atol=1e-10)
    # a small rotation is found from the identity start
    c, s = math.cos(0.3), math.sin(0.3)
    small = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=D64)
    x0s = (x1.view(b, n, d)[:, perm] @ small.T).reshape(b, -1)
    torch.testing.assert_close(align_particles(x0s, x1, n, d), x1, rtol=0, atol=1e-10)


def test_equivariant_ot_lowers_pair_cost_and_returns_a_permuted_rotated_copy():
    g = torch.Generator().manual_seed(1)
    n, d, b = 5, 3, 64
    src = MeanFreeNormal(n, d)
    x0 = src.sample(b, generator=g, dtype=D64)
    x1 = remove_com(1.5 * torch.randn(b, n * d, generator=g, dtype=D64), n, d)
    y = align_particles(x0, x1, n, d)
    before, after = (x1 - x0).square().sum(1), (x1 - y).square().sum(1)
    assert bool((after <= before + 1e-12).all()) and after.mean() < 0.8 * before.mean()

    def sorted_pair_distances(z):
        p = z.view(len(z), n, d)
        return torch.cdist(p, p).flatten(1).sort(1).values

    torch.testing.assert_close(sorted_pair_distances(y), sorted_pair_distances(x0))  # same shapes: only moved
    assert y.view(b, n, d).sum(1).abs().max() < 1e-12
    x0b, x1b = EquivariantOT(n, d)(x0, x1)
    assert x1b is x1
    assert (x1 - x0b).square().sum(1).mean() < after.mean() + 1e-9  # batch OT + alignment: lower still
    # the rows of x0b are the rows of x0, each moved rigidly
    assert torch.allclose(sorted_pair_distances(x0b).sort(0).values, sorted_pair_distances(x0).sort(0).values)


def test_bad_inputs_raise_clear_errors():
    net = EGNN(4, 2, width=8, depth=1)
    with pytest.raises(ValueError, match=r"\(B, 8\) or \(B, 4, 2\)"):
        net(torch.randn(3, 9), torch.rand(3))
    with pytest.raises(ValueError, match="t must be"):
        net(torch.randn(3, 8), torch.rand(2))
    with pytest.raises(ValueError, match="n_particles >= 2"):
        EGNN(1, 3)
    with pytest.raises(ValueError, match="coord_range must be > 0"):
        EGNN(4, 2, coord_range=0.0)
    with pytest.raises(ValueError, match="restarts must be >= 1"):
        align_particles(torch.zeros(2, 8), torch.zeros(2, 8), 4, 2, restarts=0)
    src = MeanFreeNormal(4, 2)
    with pytest.raises(ValueError, match="remove_com"):
        src.log_prob(torch.ones(2, 8))
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        align_particles(torch.randn(2, 8), torch.randn(3, 8), 4, 2)
    with pytest.raises(ValueError, match="EquivariantOT\\(n_particles, spatial_dim\\)"):
        EquivariantFlowMatching(net, 4, 2, coupling=EquivariantOT(13, 3))
    with pytest.raises(ValueError, match=r"\(B, N\*d\) = \(B, 8\)"):
        EquivariantFlowMatching(net, 4, 2).loss(torch.randn(5, 39))
    with pytest.raises(ValueError, match="'free' or 'gaussian'"):
        EquivariantFlowMatching(net, 4, 2).generator(com="none")


def test_flow_matching_loss_trains_toward_a_rigid_target():
    """A few Adam steps on a fixed configuration (randomly rotated/permuted) lower the loss."""
    torch.manual_seed(0)
    base = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]]).reshape(1, 8)
    g = torch.Generator().manual_seed(0)
    qs = [_orthogonal(2, g, True).float() for _ in range(64)]
    data = torch.cat([(base.view(4, 2) @ q.T).reshape(1, 8) for q in qs])
    model = EquivariantFlowMatching(
        EGNN(4, 2, width=16, depth=2, scale=4.0), 4, 2, coupling=EquivariantOT(4, 2)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = model.loss(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10


def test_dw4_ecnf_recipe_trains_and_evaluates(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOWFORGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    sets = "n_train=256 n_test=128 width=8 depth=1 nll_points=16"
    assert main(["train", "dw4-ecnf", "--steps", "5", "--out", str(out), "--quiet", "--set", sets]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--n", "64", "--steps", "2"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(res) == {"ess", "logz", "nll"}
    assert 0 < res["ess"] <= 1 and math.isfinite(res["logz"]) and math.isfinite(res["nll"])
    assert main(["train", "dw4-ecnf", "--out", str(tmp_path / "x"), "--quiet", "--set", "energy=gmm40"]) != 0
