"""Importance sampling, SMC, reverse KL, self-improvement and the Boltzmann metrics on Gaussians with known Z."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from flowforge.metrics.boltzmann import boltzmann_metrics, energy_w2, ess, log_z_error, wasserstein_1d
from flowforge.normalizing import (
    ActNorm,
    Flow,
    ReverseKL,
    SelfImprovement,
    effective_sample_size,
    importance_sample,
    resample_indices,
    smc,
)
from flowforge.train import BatchRequest, train

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gauss_flow(mu, sigma) -> Flow:
    """The affine flow x = mu + sigma * z: exactly q = N(mu, diag(sigma^2)), float64."""
    mu, sigma = torch.as_tensor(mu, dtype=F64), torch.as_tensor(sigma, dtype=F64)
    layer = ActNorm(mu.numel()).double()
    with torch.no_grad():
        layer.loc.copy_(mu)
        layer.log_scale.copy_(sigma.log())
        layer.initialized.fill_(True)
    return Flow([layer], event_shape=(mu.numel(),)).double()


class GaussEnergy:
    """E(x) = |x - mu|^2 / (2 s^2) + c, so log Z = D log(s sqrt(2 pi)) - c."""

    def __init__(self, mu, s, c=0.0):
        self.mu, self.s, self.c = torch.as_tensor(mu, dtype=F64), float(s), float(c)
        self.log_z = self.mu.numel() * math.log(self.s * math.sqrt(2 * math.pi)) - self.c

    def __call__(self, x):
        return 0.5 * ((x - self.mu.to(x)) / self.s).square().sum(-1) + self.c


# ---------------------------------------------------------------------------------------------- ESS


def test_effective_sample_size_by_hand():
    assert effective_sample_size(torch.zeros(7)) == pytest.approx(1.0)
    w = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    assert effective_sample_size(w.log()) == pytest.approx(36 / (3 * 14))
    assert effective_sample_size(torch.tensor([0.0, -math.inf, math.nan, -math.inf])) == pytest.approx(0.25)
    assert effective_sample_size(torch.full((3,), -math.inf)) == 0.0
    assert ess(w.log() + 100.0) == pytest.approx(36 / 42)  # invariant to a constant shift
    with pytest.raises(ValueError, match="1-D"):
        effective_sample_size(torch.zeros(2, 2))


# ---------------------------------------------------------------------------------------------- IS


def test_is_with_the_exact_target_has_ess_one_and_exact_log_z():
    mu, s = [0.5, -1.0, 2.0], 0.7
    flow = gauss_flow(mu, [s] * 3)
    energy = GaussEnergy(mu, s, c=3.25)
    out = importance_sample(flow, energy, 3000, generator=gen(0), batch_size=1000)
    assert out.ess == pytest.approx(1.0, abs=1e-10)
    assert out.log_z == pytest.approx(energy.log_z, abs=1e-10)
    assert out.samples.shape == (3000, 3) and out.log_weights.shape == (3000,)
    torch.testing.assert_close(out.log_weights, -out.energy - out.log_q)


def test_is_log_z_unbiased_and_consistent_with_the_analytic_ess():
    # q = N(0, 1.5^2), pi = N(0.5, 1) (x2 dims), Z known; E_q[Z_hat] = Z, and ESS -> 1 / E_q[(pi/q)^2]
    flow = gauss_flow([0.0, 0.0], [1.5, 1.5])
    energy = GaussEnergy([0.5, 0.5], 1.0, c=-2.0)
    z_ratio = [
        math.exp(importance_sample(flow, energy, 500, generator=gen(s)).log_z - energy.log_z)
        for s in range(60)
    ]
    mean, se = np.mean(z_ratio), np.std(z_ratio, ddof=1) / math.sqrt(len(z_ratio))
    assert abs(mean - 1.0) < 4 * se + 1e-3, (mean, se)

    def ratio2(x):  # pi(x)^2 / q(x)
        return math.exp(2 * stats.norm.logpdf(x, 0.5, 1.0) - stats.norm.logpdf(x, 0.0, 1.5))

    second = integrate.quad(ratio2, -30, 30, points=[0.5])[0] ** 2  # two independent dims
    big = importance_sample(flow, energy, 200_000, generator=gen(123))
    assert big.ess == pytest.approx(1 / second, rel=0.02)
    assert abs(big.log_z - energy.log_z) < 0.01


def test_resampling_and_quantile_filter():
    flow = gauss_flow([0.0], [2.0])
    energy = GaussEnergy([1.0], 0.5)
    out = importance_sample(flow, energy, 50_000, generator=gen(0))
    for method in ("multinomial", "systematic"):
        r = out.resample(20_000, gen(1), method=method)
        assert r.shape == (20_000, 1)
        assert float(r.mean()) == pytest.approx(1.0, abs=0.02) and float(r.std()) == pytest.approx(
            0.5, abs=0.02
        )
    filt = importance_sample(flow, energy, 50_000, generator=gen(0), quantile_filter=0.01)
    assert filt.n_filtered == 500 and filt.samples.shape == (49_500, 1)
    assert filt.log_z == out.log_z  # the estimate uses all proposals
    assert float(filt.log_weights.max()) <= float(torch.sort(out.log_weights).values[-501])
    idx = resample_indices(torch.log(torch.tensor([0.0, 0.25, 0.75])), 8, gen(0), "systematic")
    assert int((idx == 0).sum()) == 0 and int((idx == 2).sum()) == 6
    with pytest.raises(ValueError, match="unknown resampling method 'systemic' \\(did you mean 'systematic'"):
        resample_indices(torch.zeros(3), 2, gen(0), "systemic")


def test_wrong_energy_shapes_are_refused():
    flow = gauss_flow([0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"one value per sample, shape \(4,\).*squeeze"):
        importance_sample(flow, lambda x: x, 4)
    with pytest.raises(ValueError, match="quantile_filter"):
        importance_sample(flow, GaussEnergy([0, 0], 1), 4, quantile_filter=1.5)
    with pytest.raises(ValueError, match="data=None"):
        ReverseKL(flow, GaussEnergy([0, 0], 1)).loss(torch.zeros(3, 2))


# ---------------------------------------------------------------------------------------------- SMC


def test_smc_with_the_exact_target_is_exact():
    mu, s = [1.0, -1.0], 0.8
    out = smc(gauss_flow(mu, [s, s]), GaussEnergy(mu, s, c=1.0), 200, steps=5, mala_steps=1, step_size=0.3,
              generator=gen(0))  # fmt: skip
    assert out.log_z == pytest.approx(GaussEnergy(mu, s, c=1.0).log_z, abs=1e-9)
    assert out.ess == pytest.approx(1.0, abs=1e-9) and out.n_resample == 0
    assert out.energy_evals == 200 * (1 + 5)


def test_smc_beats_is_at_equal_energy_evaluations():
    d = 10
    flow = gauss_flow([0.0] * d, [1.0] * d)
    energy = GaussEnergy([1.0] * d, 0.6, c=3.0)
    err_smc, err_is = [], []
    for seed in range(4):
        out = smc(flow, energy, 300, steps=20, mala_steps=2, step_size=0.1, generator=gen(seed))
        assert out.energy_evals == 300 * (1 + 20 * 2)
        ref = importance_sample(flow, energy, out.energy_evals, generator=gen(100 + seed))
        err_smc.append(abs(out.log_z - energy.log_z))
        err_is.append(abs(ref.log_z - energy.log_z))
        assert 0.3 < float(out.acceptance.mean()) < 0.95
    assert np.mean(err_smc) < 0.5 * np.mean(err_is), (err_smc, err_is)
    assert np.mean(err_smc) < 0.2


def test_smc_recovers_mixture_weights_that_is_cannot():
    # pi = 0.25 N(-3, 0.5^2) + 0.75 N(3, 0.5^2) in 1-D; q = N(0, 2^2) covers both modes
    def energy(x):
        comps = torch.stack(
            [math.log(0.25) + stats_logpdf(x[:, 0], -3.0), math.log(0.75) + stats_logpdf(x[:, 0], 3.0)]
        )
        return -torch.logsumexp(comps, 0)

    out = smc(
        gauss_flow([0.0], [2.0]), energy, 2000, steps=30, mala_steps=2, step_size=0.05, generator=gen(0)
    )
    assert abs(out.log_z) < 0.1  # normalised target
    x = out.resample(4000, gen(1))
    assert float((x > 0).double().mean()) == pytest.approx(0.75, abs=0.05)


def stats_logpdf(x, m, s=0.5):
    return -0.5 * ((x - m) / s) ** 2 - math.log(s * math.sqrt(2 * math.pi))


def test_smc_leaves_the_flow_untouched_and_checks_the_schedule():
    flow = gauss_flow([0.0], [1.0]).train()
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    smc(flow, GaussEnergy([1.0], 1.0), 50, steps=3, generator=gen(0))
    assert flow.training and all(torch.equal(before[k], v) for k, v in flow.state_dict().items())
    assert all(p.grad is None for p in flow.parameters())
    with pytest.raises(ValueError, match="schedule"):
        smc(flow, GaussEnergy([1.0], 1.0), 10, schedule=torch.tensor([0.0, 0.7, 0.5, 1.0]))
    out = smc(
        flow, GaussEnergy([1.0], 1.0), 50, schedule=torch.tensor([0.0, 0.1, 0.5, 1.0]), generator=gen(0)
    )
    assert out.ess_trace.shape == (3,) and out.energy_evals == 50 * 4


# ---------------------------------------------------------------------------------------------- objectives


@pytest.mark.parametrize("stl", [False, True])
def test_reverse_kl_gradient_vanishes_when_q_is_the_target(stl):
    mu, s = [0.3, -0.7], 1.3
    energy = GaussEnergy(mu, s, c=0.5)
    obj = ReverseKL(gauss_flow(mu, [s, s]), energy, stick_the_landing=stl)
    loss = obj.loss(20_000)
    assert loss.item() == pytest.approx(-energy.log_z, abs=1e-9)  # log q + E = -log Z for every sample
    grads = torch.autograd.grad(loss, list(obj.flow.parameters()))
    g = torch.cat([t.flatten() for t in grads])
    if stl:  # every per-sample gradient is zero
        assert float(g.abs().max()) < 1e-10
    else:  # zero in expectation: the score term averages out at rate 1/sqrt(n)
        assert float(g.abs().max()) < 5 / math.sqrt(20_000) * 1.5
    # away from the target it is not zero, and both estimators agree in expectation
    off = ReverseKL(gauss_flow([0.0, 0.0], [1.0, 1.0]), energy, stick_the_landing=stl)
    g_off = torch.autograd.grad(off.loss(20_000), list(off.flow.parameters()))
    want_loc = -(torch.tensor(mu, dtype=F64)) / s**2  # d/dm E_q[E] at m = 0
    torch.testing.assert_close(g_off[0], want_loc, atol=0.03, rtol=0)


def test_reverse_kl_trains_with_the_trainer():
    energy = GaussEnergy([2.0, -1.0], 0.5)
    obj = ReverseKL(gauss_flow([0.0, 0.0], [1.0, 1.0]).float(), energy)
    run = train(obj, None, steps=300, batch_size=256, lr=0.05, seed=0, progress=False, ema_decay=0.0)
    flow = run.generator(obj)
    loc = dict(flow.named_parameters())["transform.bijections.0.loc"]
    torch.testing.assert_close(loc.detach().double(), torch.tensor([2.0, -1.0], dtype=F64), atol=0.1, rtol=0)


def test_self_improvement_moves_the_flow_towards_the_target_and_keeps_a_frozen_teacher():
    energy = GaussEnergy([1.0, 1.0], 0.7)
    flow = gauss_flow([0.0, 0.0], [1.5, 1.5])
    si = SelfImprovement(flow, energy, teacher_weight=0.0, buffer_size=4000, proposals=20_000, refresh_every=25,
                         quantile_filter=0.0)  # fmt: skip
    assert not any(p.requires_grad for p in si.teacher.parameters())
    opt = torch.optim.Adam([p for p in si.parameters() if p.requires_grad], lr=0.05)
    g = gen(0)
    ess0 = None
    for _ in range(150):
        loss = si.loss(BatchRequest(256, g, torch.device("cpu")))
        ess0 = si.last_ess if ess0 is None else ess0
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert int(si.calls) == 150
    si.refresh(g)
    assert si.last_ess > 0.9 > ess0
    assert abs(si.last_log_z - energy.log_z) < 0.02
    torch.testing.assert_close(si.teacher.transform.bijections[0].loc, torch.zeros(2, dtype=F64))


def test_self_improvement_teacher_term_is_half_the_mean_squared_log_ratio():
    energy = GaussEnergy([0.0], 1.0)
    si = SelfImprovement(gauss_flow([0.0], [1.0]), energy, teacher_weight=2.0, buffer_size=100)
    si.refresh(gen(0))
    with torch.no_grad():
        si.flow.transform.bijections[0].loc.fill_(0.5)
    x = si.buffer
    si.buffer = x[:50]
    g = gen(1)
    idx = torch.randint(50, (32,), generator=gen(1))
    xb = x[:50][idx]
    lq, lt = si.flow.log_prob(xb), si.teacher.log_prob(xb)
    want = -lq.mean() + 2.0 * 0.5 * (lq - lt).square().mean()
    got = si.loss(BatchRequest(32, g, torch.device("cpu")))
    torch.testing.assert_close(got, want)
    assert si.teacher.training is False and si.train().teacher.training is False


# ---------------------------------------------------------------------------------------------- metrics


def test_wasserstein_1d_against_scipy_and_the_sorted_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(1.0, 2.0, size=170)
    assert wasserstein_1d(torch.tensor(a), torch.tensor(b), p=1) == pytest.approx(
        stats.wasserstein_distance(a, b)
    )
    c = rng.normal(size=300)
    want = math.sqrt(np.mean((np.sort(a) - np.sort(c)) ** 2))
    assert energy_w2(torch.tensor(a), torch.tensor(c)) == pytest.approx(want)
    # unequal sizes by replication: W2 between a and (a repeated twice) is 0
    assert energy_w2(a, np.concatenate([a, a])) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="non-finite"):
        energy_w2(torch.tensor([0.0, math.inf]), torch.tensor([0.0]))


def test_boltzmann_metrics_keys():
    energy = GaussEnergy([0.0, 0.0], 1.0, c=1.0)
    m = boltzmann_metrics(gauss_flow([0.0, 0.0], [1.2, 1.2]), energy, 4000, gen(0))
    assert {"ess", "logz", "logz_error", "n", "n_nonfinite", "mean_energy"} <= set(m)
    assert m["logz_error"] == pytest.approx(log_z_error(m["logz"], energy.log_z)) and m["logz_error"] < 0.05
    assert 0.5 < m["ess"] < 1.0
    ref = torch.randn(4000, 2, generator=gen(5), dtype=F64)
    m2 = boltzmann_metrics(
        gauss_flow([0.0, 0.0], [1.2, 1.2]), lambda x: energy(x), 4000, gen(0), reference=ref
    )
    assert "logz_error" not in m2 and m2["energy_w2_reweighted"] < m2["energy_w2"]
