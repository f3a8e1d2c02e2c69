"""PFGM++: the kernel against its analytic radial law, r = sigma sqrt(D), exact denoisers, the EDM limit.

Analytic truths used (float64):
- Radial law of p_r(n) ∝ (|n|^2 + r^2)^(-(N+D)/2): with |n| = r tan(theta), theta has density
  ∝ sin^(N-1) cos^(D-1) on [0, pi/2] (integrated numerically here, independently of the Beta trick).
- As D -> inf the kernel is N(0, sigma^2 I): in 2-D |n| is Rayleigh, P(|n| <= rho) = 1 - exp(-rho^2 / 2 sigma^2).
- Exact denoiser of points ±a (sheet section 7): at x = (0.3, 0.2), a = (1, 0), sigma = 1 its first
  coordinate is 0.4089 (D=1), 0.3053 (D=16), 0.29131 (D=1e6), a tanh(x.a / sigma^2) for D = inf.
- D = inf, Gaussian data N(m, c^2 I): D(x, s) = m + c^2/(c^2 + s^2)(x - m); the flow keeps
  (x - m)/sqrt(c^2 + s^2) fixed, so the sampler's output is m + c (x_max - m)/sqrt(c^2 + sigma_max^2).
"""

import math

import pytest
import torch

from flowforge.continuous import PFGMPP, PFGMGenerator
from flowforge.continuous.pfgm import (
    empirical_denoiser,
    kernel_log_prob,
    r_from_sigma,
    sample_kernel,
    sigma_from_r,
    sigma_from_t,
    t_from_sigma,
)
from flowforge.core.solvers import edm_grid
from flowforge.nn import MLP

D64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _radial_cdf(n_dim: int, d: float, r: float):
    """P(|n| <= rho) from the kernel's radial density, by the trapezoid rule in theta = atan(rho / r)."""
    theta = torch.linspace(0, math.pi / 2, 200_001, dtype=D64)
    dens = torch.sin(theta) ** (n_dim - 1) * torch.cos(theta) ** (d - 1)
    cdf = torch.cat([torch.zeros(1, dtype=D64), torch.cumsum(0.5 * (dens[1:] + dens[:-1]) * theta.diff(), 0)])
    cdf = cdf / cdf[-1]

    def f(rho: torch.Tensor) -> torch.Tensor:
        th = torch.atan(rho / r)
        i = torch.searchsorted(theta, th).clamp(1, theta.numel() - 1)
        w = (th - theta[i - 1]) / (theta[i] - theta[i - 1])
        return cdf[i - 1] + w * (cdf[i] - cdf[i - 1])

    return f


def _ks(samples: torch.Tensor, cdf) -> float:
    """Kolmogorov-Smirnov distance between a 1-D sample and a CDF."""
    x, _ = samples.sort()
    n = x.numel()
    f = cdf(x)
    hi = torch.arange(1, n + 1, dtype=D64) / n
    lo = torch.arange(0, n, dtype=D64) / n
    return float(torch.maximum(hi - f, f - lo).max())


# ------------------------------------------------------------------------------------------------
# noise levels and the kernel
# ------------------------------------------------------------------------------------------------


def test_alignment_and_time_map():
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=D64)
    for d in (1, 16, 2048):
        r = r_from_sigma(sigma, d)
        assert torch.allclose(r, sigma * math.sqrt(d))
        assert torch.allclose(sigma_from_r(r, d), sigma)
    assert torch.isinf(r_from_sigma(sigma, None)).all() and torch.isinf(r_from_sigma(sigma, math.inf)).all()
    with pytest.raises(ValueError, match="finite D"):
        sigma_from_r(1.0, None)
    t = t_from_sigma(sigma)
    assert torch.allclose(sigma_from_t(t), sigma)
    # EDM's grid is this map of EDM's sigma levels: it starts at 1/(1 + sigma_max)
    assert math.isclose(float(edm_grid(18)[0]), 1 / 81)


@pytest.mark.parametrize("d", [1, 4, 16])
def test_kernel_density_is_the_pfgm_kernel(d):
    """log p is the normalised (|n|^2 + r^2)^(-(N+D)/2), r = sigma sqrt(D): shape and mass 1 (2-D)."""
    sigma, n_dim = 0.7, 2
    r2 = sigma**2 * d
    a = torch.tensor([[0.3, -0.1], [2.0, 1.0], [10.0, 0.0]], dtype=D64)
    lp = kernel_log_prob(a, sigma, d)
    sq = a.square().sum(1)
    expected = -(n_dim + d) / 2 * torch.log(sq + r2)
    assert torch.allclose(lp - lp[0], expected - expected[0], atol=1e-12)
    # mass: int_0^inf 2 pi rho p(rho) d rho with rho = r tan(theta) (finite interval)
    theta = torch.linspace(0, math.pi / 2 - 1e-9, 400_001, dtype=D64)
    rho = math.sqrt(r2) * torch.tan(theta)
    p = kernel_log_prob(torch.stack([rho, torch.zeros_like(rho)], 1), sigma, d).exp()
    integrand = 2 * math.pi * rho * p * math.sqrt(r2) / torch.cos(theta) ** 2
    assert abs(float(torch.trapezoid(integrand, theta)) - 1.0) < 2e-3


@pytest.mark.parametrize("n_dim,d", [(2, 1), (3, 4), (1, 3), (5, 2.5)])
def test_kernel_radial_distribution(n_dim, d):
    sigma = 0.7
    n = sample_kernel((40_000, n_dim), sigma, d, generator=_gen(1), dtype=D64)
    cdf = _radial_cdf(n_dim, d, sigma * math.sqrt(d))
    assert _ks(n.norm(dim=1), cdf) < 0.01
    # a wrong D is detected by the same statistic
    assert _ks(n.norm(dim=1), _radial_cdf(n_dim, d + 3, sigma * math.sqrt(d + 3))) > 0.02


def test_kernel_directions_uniform_and_per_sample_sigma():
    n = sample_kernel((40_000, 3), 1.0, 2, generator=_gen(2), dtype=D64)
    u = n / n.norm(dim=1, keepdim=True)
    assert u.mean(0).abs().max() < 0.02
    assert torch.allclose(u.T @ u / u.shape[0], torch.eye(3, dtype=D64) / 3, atol=0.01)
    sig = torch.tensor([0.1, 10.0], dtype=D64).repeat(20_000)
    m = sample_kernel((40_000, 2), sig, 16, generator=_gen(3), dtype=D64).norm(dim=1)
    ratio = m[1::2].median() / m[0::2].median()
    assert 90 < float(ratio) < 110  # the kernel scales linearly in sigma


def test_kernel_tends_to_gaussian_as_d_grows():
    sigma = 0.7

    def rayleigh(rho: torch.Tensor) -> torch.Tensor:
        return 1 - torch.exp(-(rho**2) / (2 * sigma**2))

    big = sample_kernel((40_000, 2), sigma, 1e5, generator=_gen(4), dtype=D64).norm(dim=1)
    inf = sample_kernel((40_000, 2), sigma, None, generator=_gen(4), dtype=D64).norm(dim=1)
    small = sample_kernel((40_000, 2), sigma, 4, generator=_gen(4), dtype=D64).norm(dim=1)
    assert _ks(big, rayleigh) < 0.01
    assert _ks(inf, rayleigh) < 0.01
    assert _ks(small, rayleigh) > 0.05
    # E|n|^2 = sigma^2 N D / (D - 2) for finite D (heavier than Gaussian)
    e2 = sample_kernel((200_000, 2), sigma, 16, generator=_gen(5), dtype=D64).square().sum(1).mean()
    assert abs(float(e2) / (sigma**2 * 2 * 16 / 14) - 1) < 0.02


def test_beta_clip_reproduces_official_truncation():
    sigma, d = 1.0, 1
    exact = sample_kernel((20_000, 2), sigma, d, generator=_gen(6), dtype=D64)
    clip = sample_kernel((20_000, 2), sigma, d, generator=_gen(6), dtype=D64, beta_clip=1e-3)
    bound = sigma * math.sqrt(d) * math.sqrt((1 - 1e-3) / 1e-3)
    assert float(clip.norm(dim=1).max()) <= bound * (1 + 1e-9) < float(exact.norm(dim=1).max())
    inside = (exact.norm(dim=1) < 0.9 * bound) & (exact.norm(dim=1) > 0.1)
    assert torch.allclose(clip[inside], exact[inside], atol=1e-12)


def test_kernel_draws_follow_the_generator():
    a = sample_kernel((8, 2), 1.0, 3, generator=_gen(7))
    b = sample_kernel((8, 2), 1.0, 3, generator=_gen(7))
    c = sample_kernel((8, 2), 1.0, 3, generator=_gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------------------------------------
# exact denoisers and the sampler
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d,value", [(1, 0.4089), (16, 0.3053), (1e6, 0.29131)])
def test_exact_denoiser_reference_values(d, value):
    pts = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=D64)
    x = torch.tensor([[0.3, 0.2]], dtype=D64)
    out = empirical_denoiser(pts, d)(x, 1.0)
    assert abs(float(out[0, 0]) - value) < 5e-5 and abs(float(out[0, 1])) < 1e-15
    gauss = empirical_denoiser(pts, None)(x, 1.0)
    assert math.isclose(float(gauss[0, 0]), math.tanh(0.3), rel_tol=1e-12)


@pytest.mark.parametrize("d", [1, 4, 64, None])
@pytest.mark.parametrize("ode", ["sigma", "t"])
def test_exact_denoiser_sampler_recovers_the_points(d, ode):
    """Weighted points ±a: samples land on them in proportion (0.25 / 0.75) for every D."""
    a = torch.tensor([1.0, 0.5], dtype=D64)
    pts = torch.stack([a, -a])
    gen = PFGMGenerator(empirical_denoiser(pts, d, torch.tensor([0.25, 0.75], dtype=D64)), (2,), d)
    n = 4000
    x = gen.sample(n, steps=32, ode=ode, generator=_gen(9), dtype=D64)
    err = torch.minimum((x - a).norm(dim=1), (x + a).norm(dim=1))
    # heavy tails (D = 1) leave a few prior draws so far out that sigma_min |n| is not small
    assert float((err < 1e-3).double().mean()) > (0.97 if d == 1 else 0.999)
    frac = float(((x - a).norm(dim=1) < 1e-3).double().mean())
    assert abs(frac - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)


def test_d_infinity_is_edm_heun():
    """D = inf with ode='sigma' and Heun is EDM's deterministic sampler (Karras et al., Alg. 1), exactly."""
    pts = torch.tensor([[1.0, 0.0], [-0.5, 0.8], [0.2, -1.2]], dtype=D64)
    den = empirical_denoiser(pts, None)
    gen = PFGMGenerator(den, (2,), None)
    x0 = gen.prior(256, generator=_gen(10), dtype=D64)
    steps = 12
    ours = gen.sample(256, x0=x0, steps=steps, dtype=D64)
    ramp = torch.linspace(0, 1, steps, dtype=D64)
    sig = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    sig = torch.cat([sig, torch.zeros(1, dtype=D64)])
    x = sig[0] * x0
    for i in range(steps):
        s, s2 = sig[i], sig[i + 1]
        dx = (x - den(x, s)) / s
        x_next = x + (s2 - s) * dx
        if s2 > 0:
            x_next = x + (s2 - s) * 0.5 * (dx + (x_next - den(x_next, s2)) / s2)
        x = x_next
    assert torch.allclose(ours, x, atol=1e-12)
    # and a huge finite D approaches it (same seed: the same Gaussian directions, W/D -> 1)
    big = PFGMGenerator(empirical_denoiser(pts, 1e8), (2,), 1e8)
    near = big.sample(256, steps=steps, generator=_gen(10), dtype=D64)
    assert (near - ours).abs().max() < 1e-3


def test_d_infinity_gaussian_data_closed_form():
    m, c = torch.tensor([1.5, -0.7], dtype=D64), torch.tensor([0.3, 2.0], dtype=D64)

    def den(x, s, **_):
        s = s.reshape(-1, 1)
        return m + c**2 / (c**2 + s**2) * (x - m)

    gen = PFGMGenerator(den, (2,), None)
    x0 = gen.prior(512, generator=_gen(11), dtype=D64)
    truth = m + c * (80.0 * x0 - m) / torch.sqrt(c**2 + 80.0**2)
    for ode in ("sigma", "t"):
        err = [
            float((gen.sample(512, x0=x0, steps=k, ode=ode, dtype=D64) - truth).abs().max())
            for k in (64, 128)
        ]
        assert err[1] < 5e-3, ode
        assert 3.0 < err[0] / err[1] < 5.0, ode  # Heun's second order (about 4x per halving)


def test_euler_is_the_same_in_sigma_and_t():
    """Euler steps of dx/dsigma = (x - D)/sigma and of v = (D - x_t)/(1 - t) agree (x_t = t x_sigma)."""
    torch.manual_seed(0)
    model = PFGMPP(MLP(2, 16, 2), D=3, event_shape=(2,)).double()
    gen = model.generator()
    x0 = gen.prior(64, generator=_gen(12), dtype=D64)
    a = gen.sample(64, x0=x0, steps=7, solver="euler", ode="sigma", dtype=D64)
    b = gen.sample(64, x0=x0, steps=7, solver="euler", ode="t", dtype=D64)
    assert torch.allclose(a, b, atol=1e-10)
    c = gen.sample(64, x0=x0, steps=7, solver="heun", ode="t", dtype=D64)
    assert not torch.allclose(a, c, atol=1e-6)


def test_perturb_adds_a_fixed_error_to_the_denoiser():
    pts = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=D64)
    gen = PFGMGenerator(empirical_denoiser(pts, 4), (2,), 4)
    x0 = gen.prior(32, generator=_gen(13), dtype=D64)
    delta = torch.tensor([0.1, -0.2], dtype=D64)
    # one step: x = D(sigma_max x0, sigma_max) (+ delta), in either ODE form
    for ode in ("sigma", "t"):
        base = gen.sample(32, x0=x0, steps=1, ode=ode, dtype=D64)
        pert = gen.sample(32, x0=x0, steps=1, ode=ode, dtype=D64, perturb=lambda x, s: delta.expand_as(x))
        assert torch.allclose(pert - base, delta.expand_as(base), atol=1e-12)
    t = torch.full((32,), 0.3, dtype=D64)
    x = 0.7 * x0
    v0 = gen.velocity(x, t)
    v1 = gen.velocity(x, t, perturb=lambda y, s: delta.expand_as(y))
    assert torch.allclose(v1 - v0, (delta / 0.7).expand_as(v0), atol=1e-12)
    zero = gen.sample(32, x0=x0, steps=8, dtype=D64, perturb=lambda y, s: torch.zeros_like(y))
    assert torch.equal(zero, gen.sample(32, x0=x0, steps=8, dtype=D64))


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------


def test_loss_is_edm_weighted_denoising():
    torch.manual_seed(0)
    model = PFGMPP(MLP(2, 16, 2), D=8, sigma_data=0.7).double()
    y = torch.randn(32, 2, dtype=D64)
    sigma = torch.exp(torch.randn(32, dtype=D64))
    noise = sample_kernel((32, 2), sigma, 8, generator=_gen(14), dtype=D64)
    got = model.loss_at(y, sigma, noise)
    lam = (sigma**2 + 0.49) / (sigma * 0.7) ** 2
    want = (lam * (model.denoise(y + noise, sigma) - y).square().mean(1)).mean()
    assert torch.allclose(got, want, rtol=1e-10)
    # preconditioning: D = x exactly at sigma -> 0 (c_skip -> 1, c_out -> 0)
    x = torch.randn(4, 2, dtype=D64)
    assert torch.allclose(model.denoise(x, torch.full((4,), 1e-12, dtype=D64)), x, atol=1e-10)


def test_default_time_sampler_is_edm_lognormal_sigma():
    model = PFGMPP(MLP(2, 8, 1), D=None)
    t = model.time(200_000, generator=_gen(15), dtype=D64)
    log_sigma = torch.log(sigma_from_t(t))
    assert abs(float(log_sigma.mean()) + 1.2) < 0.01 and abs(float(log_sigma.std()) - 1.2) < 0.01


def test_net_time_inputs():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x, tau):
            seen.append(tau.clone())
            return torch.zeros_like(x)

    sigma = torch.tensor([0.5, 2.0], dtype=D64)
    PFGMPP(Probe(), D=4, net_time="t").denoise(torch.zeros(2, 2, dtype=D64), sigma)
    PFGMPP(Probe(), D=4).denoise(torch.zeros(2, 2, dtype=D64), sigma)
    assert torch.allclose(seen[0], 1 / (1 + sigma)) and torch.allclose(seen[1], torch.log(sigma) / 4)


def test_training_approaches_the_exact_denoiser_loss():
    """A small MLP closes most of the gap between its initial loss and the exact denoiser's (the minimum)."""
    torch.manual_seed(0)
    a = torch.tensor([[1.0, 0.5], [-1.0, -0.5]])
    data = a.repeat(128, 1)
    model = PFGMPP(MLP(2, 64, 2), D=4, sigma_max=10.0)
    exact = empirical_denoiser(a.double(), 4)
    draws = []
    for i in range(8):
        g = _gen(100 + i)
        sigma = sigma_from_t(model.time(256, generator=g).clamp(1e-6, 1 - 1e-6))
        draws.append((sigma, sample_kernel((256, 2), sigma, 4, generator=g)))

    def eval_loss() -> float:
        with torch.no_grad():
            return sum(float(model.loss_at(data, s, n)) for s, n in draws) / len(draws)

    lam = lambda s: (s**2 + 0.25) / (0.5 * s) ** 2  # noqa: E731
    optimum = sum(
        float((lam(s.double()) * (exact((data + n).double(), s.double()) - data).square().mean(1)).mean())
        for s, n in draws
    ) / len(draws)
    before = eval_loss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = _gen(16)
    for _ in range(150):
        opt.zero_grad()
        model.loss(data, generator=g).backward()
        opt.step()
    after = eval_loss()
    assert optimum < after < optimum + 0.25 * (before - optimum)
    x = model.generator().sample(64, steps=8, generator=_gen(17))
    assert x.shape == (64, 2) and torch.isfinite(x).all()


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def test_errors_say_what_to_write():
    for bad in (0, -1.0, "128", True):
        with pytest.raises(ValueError, match="D .*must be a number > 0"):
            PFGMPP(MLP(2, 8, 1), D=bad)
    with pytest.raises(ValueError, match="net_time"):
        PFGMPP(MLP(2, 8, 1), net_time="sigma")
    with pytest.raises(RuntimeError, match="event_shape"):
        PFGMPP(torch.nn.Linear(2, 2)).generator()
    gen = PFGMGenerator(empirical_denoiser(torch.zeros(1, 2), 2), (2,), 2)
    with pytest.raises(ValueError, match="0 < grid"):
        gen.sample(4, grid=torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="increasing"):
        gen.sample(4, grid=torch.tensor([0.5, 0.2]))
    with pytest.raises(ValueError, match="ODE solver"):
        gen.sample(4, solver="sde")
    with pytest.raises(ValueError, match="ode"):
        gen.sample(4, ode="r")
    with pytest.raises(ValueError, match="event shape"):
        gen.sample(4, x0=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="beta_clip"):
        sample_kernel((4, 2), 1.0, 2, beta_clip=0.7)


def test_contracts_and_trainer(tmp_path):
    import flowforge as ff
    from flowforge.core.contracts import Generator, Objective

    model = ff.PFGMPP(MLP(2, 16, 2), D=8)
    assert isinstance(model, Objective)
    x = torch.randn(256, 2, generator=_gen(20))
    run = ff.train(model, x, steps=3, batch_size=32, out=str(tmp_path / "run"), progress=False)
    gen = run.generator()
    assert isinstance(gen, Generator) and isinstance(gen, PFGMGenerator)
    assert gen.sample(5, steps=3, generator=_gen(21)).shape == (5, 2)
