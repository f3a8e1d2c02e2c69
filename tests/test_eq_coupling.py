"""The augmented E(n)-equivariant coupling flow (normalizing/equivariant_coupling.py), float64."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowforge.cli.main import main
from flowforge.normalizing import AugmentedEquivariantFlow, EquivariantCoupling
from flowforge.normalizing.coupling import soft_clip

N, D = 4, 3


def _perturb(module: torch.nn.Module, std: float = 0.1, seed: int = 0) -> None:
    """Move every weight away from the near-identity initialisation so the maps are far from trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _flow(blocks: int = 2, scale: float = 2.0) -> AugmentedEquivariantFlow:
    torch.manual_seed(0)
    f = AugmentedEquivariantFlow(N, D, blocks=blocks, width=8, depth=1, scale=scale, aug_scale=0.7).double()
    _perturb(f)
    return f


def _state(b: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, N, D, generator=g, dtype=torch.float64) * 2
    x = x - x.mean(1, keepdim=True)
    a = x + 0.5 * torch.randn(b, N, D, generator=g, dtype=torch.float64)
    return x.reshape(b, -1), a.reshape(b, -1)


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(
        torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) > 0:  # include a reflection: E(n), not only SE(n)
        q[:, 0] = -q[:, 0]
    return q


def test_exact_inverse_layers_and_flow():
    x, a = _state(6)
    xa = torch.cat([x, a], 1)
    for upd in ("x", "a"):
        layer = EquivariantCoupling(N, D, update=upd, width=8, depth=2).double()
        _perturb(layer, seed=3)
        y, ladj = layer(xa)
        back, ladj_inv = layer.inverse(y)
        assert torch.allclose(back, xa, atol=1e-12)
        assert torch.allclose(ladj, -ladj_inv, atol=1e-12)
        assert y[:, : N * D].view(6, N, D).sum(1).abs().max() < 1e-12  # particles stay mean-free
        assert (y - xa).abs().max() > 1e-2  # not the identity
    f = _flow()
    z, ladj = f(xa)
    back, ladj_inv = f.inverse(z)
    assert torch.allclose(back, xa, atol=1e-10) and torch.allclose(ladj, -ladj_inv, atol=1e-10)


def test_log_det_matches_autograd_jacobian_on_the_mean_free_subspace():
    # orthonormal basis of U = {sum_i x_i = 0}: the last (N-1)d columns of an orthogonal completion of the
    # CoM directions; coordinates (u, a) in R^{(N-1)d} x R^{Nd} of the state space
    com = torch.kron(torch.ones(N, 1, dtype=torch.float64) / math.sqrt(N), torch.eye(D, dtype=torch.float64))
    q, _ = torch.linalg.qr(torch.cat([com, torch.randn(N * D, N * D, dtype=torch.float64)], 1))
    basis = q[:, D : N * D]  # (Nd, (N-1)d), orthogonal to the CoM directions
    assert (basis.T @ com).abs().max() < 1e-12
    f = _flow(blocks=2)
    x, a = _state(3, seed=4)
    for i in range(3):
        u0 = basis.T @ x[i]
        v0 = torch.cat([u0, a[i]])

        def g(v: torch.Tensor) -> torch.Tensor:
            xx = (basis @ v[: (N - 1) * D])[None]
            z, _ = f(torch.cat([xx, v[None, (N - 1) * D :]], 1))
            return torch.cat([basis.T @ z[0, : N * D], z[0, N * D :]])

        jac = torch.autograd.functional.jacobian(g, v0)
        assert jac.shape == ((2 * N - 1) * D, (2 * N - 1) * D)
        _, ladj = f(torch.cat([x[i : i + 1], a[i : i + 1]], 1))
        assert torch.allclose(torch.linalg.slogdet(jac)[1], ladj[0], atol=1e-9)


def test_equivariant_under_rotation_reflection_permutation_and_translation():
    f = _flow()
    x, a = _state(5, seed=7)
    z, ladj = f(torch.cat([x, a], 1))
    q = _orthogonal(D, seed=2)
    perm = torch.tensor([2, 0, 3, 1])
    shift = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)

    def act(v: torch.Tensor, translate: bool) -> torch.Tensor:
        p = (v.view(-1, N, D) @ q.T)[:, perm]
        return (p + shift if translate else p).reshape(v.shape[0], -1)

    z2, ladj2 = f(torch.cat([act(x, True), act(a, True)], 1))
    assert torch.allclose(z2[:, : N * D], act(z[:, : N * D], False), atol=1e-10)
    assert torch.allclose(z2[:, N * D :], act(z[:, N * D :], False), atol=1e-10)
    assert torch.allclose(ladj2, ladj, atol=1e-10)
    lq = f.log_prob_joint(x, a)
    assert torch.allclose(f.log_prob_joint(act(x, False), act(a, False)), lq, atol=1e-10)


def test_one_layer_analytic_maps_and_density():
    x, a = _state(4, seed=9)
    b = 0.4
    s = float(soft_clip(torch.tensor(b, dtype=torch.float64), 3.0))
    layers = {}
    for upd in ("x", "a"):
        layer = EquivariantCoupling(N, D, update=upd, width=8, depth=1).double()
        with torch.no_grad():
            layer.edge[-1].weight.zero_()  # V = 0: origin = the other set's own particle, axis 0
            layer.scales[-1].weight.zero_()
            layer.scales[-1].bias.fill_(b)  # s1 = s2 = soft_clip(b)
        layers[upd] = layer
    # a given x: a' = x + e^s (a - x)
    y, ladj = layers["a"](torch.cat([x, a], 1))
    assert torch.allclose(y[:, N * D :], x + math.exp(s) * (a - x), atol=1e-12)
    assert torch.allclose(ladj, torch.full((4,), N * D * s, dtype=torch.float64), atol=1e-12)
    # x given a (frame of abar = 0, back to xbar = 0): x' = a - abar + e^s (x - a + abar), a' = a - abar + e^s abar
    y, ladj = layers["x"](torch.cat([x, a], 1))
    abar = a.view(4, N, D).mean(1, keepdim=True)
    xp = (a.view(4, N, D) - abar + math.exp(s) * (x.view(4, N, D) - a.view(4, N, D) + abar)).reshape(4, -1)
    ap = (a.view(4, N, D) - abar + math.exp(s) * abar).reshape(4, -1)
    assert torch.allclose(y[:, : N * D], xp, atol=1e-12) and torch.allclose(y[:, N * D :], ap, atol=1e-12)
    assert torch.allclose(ladj, torch.full((4,), N * D * s, dtype=torch.float64), atol=1e-12)
    # a whole flow whose only non-identity layer is the a-layer: q(x, a) = N_U(x; 0, I) N(a; x, eta0^2 e^{-2s})
    f = AugmentedEquivariantFlow(N, D, blocks=1, width=8, depth=1, scale=1.0, aug_scale=0.7).double()
    with torch.no_grad():
        for upd, layer in zip(("x", "a"), f.layers[1:]):
            layer.edge[-1].weight.zero_()
            layer.scales[-1].weight.zero_()
            layer.scales[-1].bias.fill_(b if upd == "a" else 0.0)
    log_nu = -0.5 * x.square().sum(1) - 0.5 * (N - 1) * D * math.log(2 * math.pi)
    std = 0.7 * math.exp(-s)
    log_cond = -0.5 * ((a - x) / std).square().sum(1) - N * D * (math.log(std) + 0.5 * math.log(2 * math.pi))
    assert torch.allclose(f.log_prob_joint(x, a), log_nu + log_cond, atol=1e-10)
    # the marginal of x is N_U exactly; its IS estimate converges to it (exact when q(a|x) = pi(a|x))
    est = f.generator(n_aug=4000).log_prob(x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(est, log_nu, atol=0.05)
    with torch.no_grad():
        f.layers[2].scales[-1].bias.zero_()
    assert torch.allclose(f.generator(n_aug=3).log_prob(x), log_nu, atol=1e-10)


def test_joint_weights_are_unbiased_for_the_normaliser():
    # target exp(-E) with E(x) = |x|^2 / 2 on U extended by the Gaussian CoM: Z = (2 pi)^{Nd/2}
    f = _flow(blocks=1, scale=1.0)
    with torch.no_grad():
        for p in f.parameters():
            p.mul_(0.3)
    gen = f.generator(com="gaussian")
    with torch.no_grad():
        x, lq = gen.sample_and_log_prob(20_000, generator=torch.Generator().manual_seed(0))
    log_w = -0.5 * x.square().sum(1) - lq
    log_z = torch.logsumexp(log_w, 0) - math.log(len(log_w))
    assert abs(float(log_z) - 0.5 * N * D * math.log(2 * math.pi)) < 0.1


def test_training_reduces_the_loss_and_reaches_every_parameter():
    torch.manual_seed(0)
    f = AugmentedEquivariantFlow(N, D, blocks=1, width=8, depth=1, scale=2.0)
    data = torch.randn(64, N * D) * torch.linspace(0.5, 2.0, N * D)
    loss = f.loss(data)
    loss.backward()
    # the EGNNs' time embedding sees the constant t = 0, so its first weight is unused (its bias is used)
    used = [p for name, p in f.named_parameters() if not name.endswith("egnn.embed.0.weight")]
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in used)
    opt = torch.optim.Adam(f.parameters(), lr=1e-2)
    first = float(loss.detach())
    for _ in range(30):
        opt.zero_grad()
        loss = f.loss(data)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first - 0.5


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="update must be"):
        EquivariantCoupling(N, D, update="y")
    with pytest.raises(ValueError, match="n_particles >= 2"):
        AugmentedEquivariantFlow(1, 3)
    with pytest.raises(ValueError, match="blocks must be"):
        AugmentedEquivariantFlow(N, D, blocks=0)
    f = AugmentedEquivariantFlow(N, D, blocks=1, width=8, depth=1)
    with pytest.raises(ValueError, match=r"torch.cat\(\[x, a\], 1\)"):
        f(torch.randn(2, N * D))
    with pytest.raises(ValueError, match="x must have shape"):
        f.loss(torch.randn(2, N * D + 1))
    with pytest.raises(ValueError, match="com must be"):
        f.generator(com="none")
    with pytest.raises(ValueError, match="n_aug must be"):
        f.generator(n_aug=0)
    with pytest.raises(ValueError, match="not centre-of-mass free"):
        f.generator().log_prob(torch.randn(2, N * D) + 5.0)


def test_dw4_eqcoupling_recipe_trains_and_evaluates(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOWFORGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    sets = "n_train=256 n_test=128 width=8 depth=1 blocks=1 nll_points=16 n_aug=4"
    assert main(["train", "dw4-eqcoupling", "--steps", "3", "--out", str(out), "--quiet", "--set", sets]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--n", "64"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(res) == {"ess", "logz", "nll"}
    assert 0 < res["ess"] <= 1 and math.isfinite(res["logz"]) and math.isfinite(res["nll"])
    bad = ["train", "dw4-eqcoupling", "--out", str(tmp_path / "x"), "--quiet", "--set", "energy=gmm40"]
    assert main(bad) != 0
