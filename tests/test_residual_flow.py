"""Residual flows (i-ResNet / Residual Flows): Lipschitz bound, fixed-point inverse, exact and roulette
log-determinants, density, fitting, errors. The shared battery in tests/test_bijections.py also runs over
``ResidualBlock`` and ``ResidualFlow`` in exact mode."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from flowforge.data import Standardizer, toy2d
from flowforge.normalizing import Flow, ResidualBlock, ResidualFlow

torch.set_num_threads(1)

F64 = torch.float64


def _block(dim=3, hidden=(32, 32), scale=1.0, seed=0, aligned=False, **kw) -> ResidualBlock:
    """A float64 block with weights large enough that every layer sits at the Lipschitz bound.

    ``aligned``: one hidden layer whose weights also carry a signed identity, so that ``J_g`` has
    eigenvalues near ``+-0.4`` and log-determinants far from zero (random weights give ``|ladj| < 0.1``).
    """
    torch.manual_seed(seed)
    b = ResidualBlock(dim, hidden, **kw).double()
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        if aligned:
            signs = torch.tensor([(-1.0) ** i for i in range(dim)], dtype=F64)
            b.linears[0].weight[:dim].add_(6 * torch.eye(dim, dtype=F64))
            b.linears[-1].weight[:, :dim].add_(6 * torch.diag(signs))
    return b


def _exact_logdet(b: ResidualBlock, x: torch.Tensor) -> torch.Tensor:
    out = []
    for xi in x:
        jac = jacobian(lambda v: b(v[None])[0][0], xi)
        sign, logdet = torch.linalg.slogdet(jac)
        assert sign > 0  # x + g(x) with Lip(g) < 1 preserves orientation
        out.append(logdet)
    return torch.stack(out)


# ----------------------------------------------------------------------------------------- Lipschitz


@pytest.mark.parametrize("lip", [0.5, 0.97])
def test_lipschitz_constant_below_one(lip):
    b = _block(lipschitz=lip, scale=2.0)
    norms = b.spectral_norms()
    assert all(n <= lip + 1e-12 for n in norms), norms
    assert any(n > lip - 1e-9 for n in norms), "large weights should be scaled down to the bound"
    g = torch.Generator().manual_seed(0)
    a = 2 * torch.randn(20000, 3, generator=g, dtype=F64)
    c = a + 0.3 * torch.randn(20000, 3, generator=g, dtype=F64)
    with torch.no_grad():
        ratio = (b.g(a) - b.g(c)).norm(dim=1) / (a - c).norm(dim=1)
    assert ratio.max() < lip, ratio.max()
    # the bound holds for the Jacobian too: its largest singular value at random points
    jac = torch.stack([jacobian(b.g, xi[None])[0, :, 0] for xi in a[:20]])
    assert torch.linalg.matrix_norm(jac, ord=2).max() < lip


def test_power_iteration_converges_to_the_exact_norm():
    b = _block(hidden=(16,), scale=2.0, n_power_iterations=2)
    b.train()
    x = torch.randn(8, 3, dtype=F64)
    for _ in range(50):
        b(x)  # each training forward moves u
    norms = torch.stack(b.spectral_norms())
    torch.testing.assert_close(norms, torch.full_like(norms, 0.97), atol=1e-6, rtol=0)
    b.eval()
    z, ladj = b(x)
    x2, ladj_inv = b.inverse(z)
    torch.testing.assert_close(x2, x, atol=1e-8, rtol=0)
    assert "u0" in b.state_dict()


# ----------------------------------------------------------------------------------------- inverse


@pytest.mark.parametrize("lip", [0.5, 0.97])
def test_inverse_round_trip_float64(lip):
    b = _block(lipschitz=lip, scale=2.0)
    x = 3 * torch.randn(256, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    z, ladj = b(x)
    assert (z - x).abs().max() > 0.1, "the block should not be close to the identity"
    x2, ladj_inv = b.inverse(z)
    torch.testing.assert_close(x2, x, atol=1e-8, rtol=0)
    torch.testing.assert_close(ladj + ladj_inv, torch.zeros_like(ladj), atol=1e-10, rtol=0)
    z2 = torch.randn(256, 3, dtype=F64)
    torch.testing.assert_close(b(b.inverse(z2)[0])[0], z2, atol=1e-8, rtol=0)


def test_inverse_gradient_is_the_implicit_one():
    # sample_and_log_prob differentiates through the inverse: compare with an unrolled fixed point
    b = _block(dim=2, hidden=(16,), scale=1.0)
    z = torch.randn(16, 2, dtype=F64)
    x, _ = b.inverse(z)
    x.pow(2).sum().backward()
    implicit = [p.grad.clone() for p in b.parameters()]
    b.zero_grad()
    xu = z.clone()
    for _ in range(300):
        xu = z - b.g(xu)
    xu.pow(2).sum().backward()
    for p, gi in zip(b.parameters(), implicit):
        torch.testing.assert_close(gi, p.grad, atol=1e-8, rtol=1e-6)


# ----------------------------------------------------------------------------------------- log-det


def test_exact_logdet_matches_autograd_jacobian():
    b = _block(hidden=(32,), scale=1.0, aligned=True)
    x = 2 * torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    _, ladj = b(x)
    ref = _exact_logdet(b, x)
    torch.testing.assert_close(ladj, ref, atol=1e-10, rtol=1e-10)
    assert ref.abs().max() > 0.1, "log-dets should be far from zero for a meaningful check"
    z, _ = b(x)
    _, ladj_inv = b.inverse(z)
    torch.testing.assert_close(ladj_inv, -ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("n_exact_terms, geom_p", [(0, 0.5), (2, 0.5), (1, 0.3)])
def test_roulette_estimator_is_unbiased(n_exact_terms, geom_p):
    gen = torch.Generator().manual_seed(5)
    b = _block(
        hidden=(32,),
        aligned=True,
        logdet="roulette",
        n_exact_terms=n_exact_terms,
        geom_p=geom_p,
        generator=gen,
    )
    x = 2 * torch.randn(4, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    b.logdet = "exact"
    exact = b(x)[1]
    b.logdet = "roulette"
    draws = 4000
    with torch.no_grad():
        z, est = b(x.repeat_interleave(draws, 0))
    assert not est.requires_grad and not z.requires_grad
    est = est.view(4, draws)
    mean, se = est.mean(1), est.std(1) / draws**0.5
    assert exact.abs().max() > 0.3, exact  # large enough that a missing reweighting shows
    assert ((mean - exact).abs() < 4 * se + 1e-12).all(), (mean, exact, se)
    assert (est.std(1) > 0).all()  # it really is random


def test_roulette_is_reproducible_with_a_generator_and_differentiable():
    def run(seed):
        b = _block(hidden=(8,), logdet="roulette", generator=torch.Generator().manual_seed(seed))
        x = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        z, ladj = b(x)
        ladj.sum().backward()
        # the last bias shifts g and leaves J_g (so the log-det) alone
        return ladj.detach(), x.grad, [p.grad for n, p in b.named_parameters() if n != "linears.1.bias"]

    a, b_ = run(1), run(1)
    assert torch.equal(a[0], b_[0]) and torch.equal(a[1], b_[1])
    assert not torch.equal(a[0], run(2)[0])
    assert all(g is not None and torch.isfinite(g).all() for g in a[2])


# ----------------------------------------------------------------------------------------- density


def test_density_integrates_to_one_in_2d():
    torch.manual_seed(0)
    flow = ResidualFlow(2, blocks=2, hidden=(16,), logdet="exact").double().eval()  # eval: no ActNorm init
    with torch.no_grad():
        for name, p in flow.named_parameters():
            p.add_((0.3 if "log_scale" in name or "loc" in name else 1.0) * torch.randn_like(p))
    n, lim = 300, 12.0
    h = 2 * lim / n
    u = -lim + h * (torch.arange(n, dtype=F64) + 0.5)
    grid = torch.cartesian_prod(u, u)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum().item() * h * h
    assert abs(mass - 1) < 5e-3, mass
    assert isinstance(flow, Flow) and flow.sample(7).shape == (7, 2)


def test_training_on_moons_lowers_the_nll():
    train, test = toy2d("moons", 2000, seed=0), toy2d("moons", 1000, seed=1)
    sc = Standardizer.fit(train)
    xtr, xte = sc.forward(train), sc.forward(test)
    torch.manual_seed(0)
    flow = ResidualFlow(
        2, blocks=3, hidden=(32, 32), logdet="roulette", generator=torch.Generator().manual_seed(0)
    )

    def exact_nll() -> float:
        for m in flow.modules():
            if isinstance(m, ResidualBlock):
                m.logdet = "exact"
        with torch.no_grad():
            out = -flow.log_prob(xte).mean().item()
        for m in flow.modules():
            if isinstance(m, ResidualBlock):
                m.logdet = "roulette"
        return out

    flow.loss(xtr[:256])  # ActNorm's data-dependent initialisation
    before = exact_nll()
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss = flow.loss(xtr[torch.randint(0, 2000, (128,), generator=g)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = exact_nll()
    # a Gaussian fit of standardised data scores log(2 pi e) = 2.84
    assert after < before - 0.2 and after < 2.65, (before, after)  # 150 steps reach 2.56


# ----------------------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
    for lip in (1.0, 1.5, 0.0, -0.1):
        with pytest.raises(ValueError, match=r"lipschitz must be in \(0, 1\)"):
            ResidualBlock(2, 8, lipschitz=lip)
    with pytest.raises(ValueError, match=r"lipschitz must be in \(0, 1\)"):
        ResidualFlow(2, blocks=1, lipschitz=1.0)
    with pytest.raises(ValueError, match="logdet must be one of"):
        ResidualBlock(2, 8, logdet="neumann")
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        ResidualBlock(0, 8)
    with pytest.raises(ValueError, match="hidden must be positive"):
        ResidualBlock(2, ())
    with pytest.raises(ValueError, match="geom_p must be in"):
        ResidualBlock(2, 8, geom_p=1.0)
    with pytest.raises(ValueError, match="n_power_iterations"):
        ResidualBlock(2, 8, n_power_iterations=0)
    with pytest.raises(ValueError, match="blocks must be an integer >= 1"):
        ResidualFlow(2, blocks=0)
    b = ResidualBlock(2, 8)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        b(torch.randn(4, 2, 1))
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        b(torch.randn(4))
    with pytest.raises(ValueError, match=r"shape \(B, 2\).*dim=3"):
        b.inverse(torch.randn(4, 3))
