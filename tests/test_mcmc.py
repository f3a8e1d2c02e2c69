"""MALA / HMC / parallel tempering against analytic truth, in float64."""

import math

import numpy as np
import pytest
import torch

from flowforge.core.mcmc import (
    MALAState,
    adapt_step_size,
    hmc,
    init_state,
    mala,
    mala_step,
    parallel_tempering,
    value_and_grad,
)

# numpy < 2 calls it trapz
_trapezoid = getattr(np, "trapezoid", None) or np.trapz

F64 = torch.float64


def gauss_energy(mu, cov):
    prec = torch.linalg.inv(cov)

    def e(x):
        d = x - mu
        return 0.5 * torch.einsum("bi,ij,bj->b", d, prec, d)

    return e


def quartic(x):
    return (x.pow(4) - 3 * x.pow(2) + 0.7 * x).sum(-1)


@pytest.mark.parametrize(
    "energy", [quartic, gauss_energy(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64) * 2)]
)
@pytest.mark.parametrize("h", [0.3, torch.tensor([0.05, 0.2, 0.5, 1.0, 2.0], dtype=F64)])
def test_mala_step_matches_the_hand_formula(energy, h):
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    state = init_state(x, value_and_grad(energy))
    step = mala_step(state, value_and_grad(energy), h, torch.Generator().manual_seed(7))

    # replay the same noise: the proposal's standard normals come first from the generator
    g = torch.Generator().manual_seed(7)
    xi = torch.randn(x.shape, generator=g, dtype=F64)
    u = torch.rand(5, generator=g, dtype=F64)
    hh = torch.as_tensor(h, dtype=F64).reshape(-1, 1) * torch.ones(5, 1, dtype=F64)
    xr = x.clone().requires_grad_(True)
    gx = torch.autograd.grad(energy(xr).sum(), xr)[0]
    y = x - hh * gx + torch.sqrt(2 * hh) * xi
    yr = y.clone().requires_grad_(True)
    gy = torch.autograd.grad(energy(yr).sum(), yr)[0]
    alpha = []
    for i in range(5):
        cov = 2 * hh[i, 0] * torch.eye(3, dtype=F64)
        fwd = torch.distributions.MultivariateNormal(x[i] - hh[i, 0] * gx[i], cov).log_prob(y[i])
        bwd = torch.distributions.MultivariateNormal(y[i] - hh[i, 0] * gy[i], cov).log_prob(x[i])
        log_a = -energy(y[i : i + 1])[0] + energy(x[i : i + 1])[0] + bwd - fwd
        alpha.append(min(1.0, math.exp(float(log_a))))
    alpha = torch.tensor(alpha, dtype=F64)
    torch.testing.assert_close(step.accept_prob, alpha, rtol=1e-10, atol=1e-12)
    accepted = u < alpha
    assert torch.equal(step.accepted, accepted)
    torch.testing.assert_close(step.state.x, torch.where(accepted[:, None], y, x))
    torch.testing.assert_close(step.state.energy, energy(step.state.x))


def test_mala_keeps_a_correlated_gaussian_where_unadjusted_langevin_drifts():
    mu = torch.tensor([1.0, -2.0], dtype=F64)
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=F64)
    g = torch.Generator().manual_seed(0)
    n = 20_000
    x0 = mu + torch.randn(n, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(cov).T
    out = mala(gauss_energy(mu, cov), x0, 30, step_size=0.5, generator=g, adapt=False)
    assert 0.3 < out.accept_rate < 0.9
    se = 4 / math.sqrt(n)
    torch.testing.assert_close(out.x.mean(0), mu, atol=4 * se, rtol=0)
    torch.testing.assert_close(torch.cov(out.x.T), cov, atol=8 * se, rtol=0)
    # the same step without the Metropolis correction is visibly biased (variance inflated)
    x = x0.clone()
    prec = torch.linalg.inv(cov)
    for _ in range(30):
        x = x - 0.5 * (x - mu) @ prec + math.sqrt(1.0) * torch.randn(n, 2, generator=g, dtype=F64)
    assert float(torch.cov(x.T)[0, 0]) > 1.3


def test_hmc_keeps_a_gaussian():
    mu, cov = torch.zeros(3, dtype=F64), torch.diag(torch.tensor([0.5, 1.0, 2.0], dtype=F64))
    g = torch.Generator().manual_seed(1)
    n = 10_000
    x0 = torch.randn(n, 3, generator=g, dtype=F64) * cov.diagonal().sqrt()
    out = hmc(gauss_energy(mu, cov), x0, 10, step_size=0.6, n_leapfrog=4, generator=g, adapt=False)
    assert 0.3 < out.accept_rate < 1.0
    torch.testing.assert_close(out.x.var(0), cov.diagonal(), atol=0.1, rtol=0)
    torch.testing.assert_close(out.x.mean(0), mu, atol=0.06, rtol=0)


@pytest.mark.parametrize("per_chain", [False, True])
def test_step_size_adapts_to_the_target_acceptance(per_chain):
    e = gauss_energy(torch.zeros(10, dtype=F64), torch.eye(10, dtype=F64))
    g = torch.Generator().manual_seed(0)
    out = mala(
        e, torch.zeros(500, 10, dtype=F64), 100, step_size=1e-3, burn_in=400, per_chain=per_chain, generator=g
    )
    assert abs(out.accept_rate - 0.574) < 0.06
    assert out.step_size.shape == ((500,) if per_chain else ())
    # adapt only during burn-in: the kept steps use a fixed kernel
    assert (
        float(adapt_step_size(torch.tensor(1.0, dtype=F64), torch.tensor([0.574], dtype=F64), 0.574)) == 1.0
    )


def test_mala_keeps_thinned_samples_and_rejects_non_finite_proposals():
    def wall(x):  # finite only for x < 1: the chain must never cross
        e = 0.5 * x.square().sum(-1)
        return torch.where(x[:, 0] < 1.0, e, torch.full_like(e, math.inf))

    g = torch.Generator().manual_seed(0)
    out = mala(
        wall, torch.zeros(200, 1, dtype=F64), 40, step_size=0.5, generator=g, thin=4, keep_samples=True
    )
    assert out.samples.shape == (10, 200, 1)
    assert bool((out.samples < 1.0).all()) and bool(torch.isfinite(out.energy).all())


def test_parallel_tempering_finds_both_wells_with_the_right_weights():
    def e(x):  # asymmetric double well, barrier about 16 kT
        return ((x.square() - 4) ** 2 + 0.5 * x).sum(-1)

    grid = np.linspace(-5, 5, 200_001)
    dens = np.exp(-(((grid**2 - 4) ** 2) + 0.5 * grid))
    p_neg = float(_trapezoid(dens * (grid < 0), grid) / _trapezoid(dens, grid))
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((400, 1), 2.0, dtype=F64)
    pt = parallel_tempering(e, x0, 300, betas=[1.0, 0.3, 0.1, 0.03], step_size=0.05, burn_in=100, thin=10,
                            keep_samples=True, generator=g)  # fmt: skip
    frac = float((pt.samples < 0).double().mean())
    assert abs(frac - p_neg) < 0.05, (frac, p_neg)
    assert pt.samples.shape == (30, 400, 1) and pt.replicas.shape == (4, 400, 1)
    assert bool((pt.swap_rate > 0.05).all()) and bool((pt.accept_rate > 0.3).all())
    torch.testing.assert_close(pt.energy, e(pt.x))
    plain = mala(e, x0, 400, step_size=0.05, burn_in=100, generator=g)
    assert float((plain.x < 0).double().mean()) < 0.01  # stuck in the starting well


def test_errors_are_clear():
    with pytest.raises(ValueError, match=r"one value per point"):
        mala(lambda x: x.sum(-1, keepdim=True), torch.zeros(3, 2), 1)
    with pytest.raises(ValueError, match="betas"):
        parallel_tempering(quartic, torch.zeros(3, 1), 1, betas=[0.5, 1.0])
    with pytest.raises(ValueError, match="step_size"):
        mala_step(MALAState(torch.zeros(3, 1), torch.zeros(3), torch.zeros(3, 1)), value_and_grad(quartic),
                  torch.ones(4))  # fmt: skip
