"""Energies against hand-computed values and quadrature; exact samplers; the user loader; the cache."""

import json
import math
import textwrap

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from flowforge.data import energies as energies_mod
from flowforge.data.energies import (
    GMM40,
    DoubleWell4,
    LennardJones13,
    ManyWell,
    default_cache_dir,
    remove_mean,
    user_energy,
)

# numpy < 2 calls it trapz
_trapezoid = getattr(np, "trapezoid", None) or np.trapz

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- GMM-40


def test_gmm40_means_reproduce_fab_torch_seeding():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        u = torch.rand((40, 2))
    e = GMM40()
    torch.testing.assert_close(e.means, (u - 0.5) * 2 * 40)
    torch.testing.assert_close(e.means[0], torch.tensor([-0.2995, 21.4577]), atol=1e-4, rtol=0)
    assert -38.3 < float(e.means.min()) and float(e.means.max()) < 39.8
    assert math.isclose(e.scale, math.log1p(math.e), rel_tol=1e-6)  # softplus(1) = 1.3133


def test_gmm40_energy_by_hand_and_normalised_on_a_grid():
    e = GMM40().double()
    mu = e.means.numpy()
    s2 = e.scale**2
    x = np.array([[0.0, 0.0], [-0.3, 21.0], [10.0, -5.0]])
    dens = np.exp(-((x[:, None, :] - mu[None]) ** 2).sum(-1) / (2 * s2)).sum(1) / (40 * 2 * math.pi * s2)
    torch.testing.assert_close(e(torch.tensor(x)), torch.tensor(-np.log(dens)), rtol=1e-10, atol=1e-10)
    # log Z = 0 by a Riemann sum over [-50, 50]^2 (means within +-40, sigma 1.31: spectrally accurate)
    h = 0.2  # Riemann-sum error of a Gaussian of sd 1.31 at this spacing: ~exp(-2 pi^2 sd^2 / h^2)
    g = torch.arange(-50, 50 + h / 2, h, dtype=F64)
    total = 0.0
    for row in g.split(100):
        pts = torch.cartesian_prod(row, g)
        total += float(torch.exp(-e(pts)).sum()) * h * h
    assert abs(math.log(total) - e.log_z) < 1e-6


def test_gmm40_exact_samples_match_the_mixture_moments():
    e = GMM40()
    x = e.sample(200_000, generator=gen(0)).double()
    mu = e.means.double()
    mean = mu.mean(0)
    cov = torch.cov(mu.T, correction=0) + e.scale**2 * torch.eye(2, dtype=F64)
    torch.testing.assert_close(x.mean(0), mean, atol=0.25, rtol=0)  # sd(mean) ~ 0.05
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0.02, atol=2.0)


# ---------------------------------------------------------------------------------------------- many-well


def test_many_well_energy_by_hand():
    e = ManyWell(4).double()
    x = torch.tensor([[1.0, 2.0, -1.0, 0.0], [0.0, 0.0, 2.0, -1.0]], dtype=F64)
    # pair (a, b): a^4 - 6a^2 - a/2 + b^2/2
    want = torch.tensor([(1 - 6 - 0.5) + 2 + (1 - 6 + 0.5), 0 + (16 - 24 - 1) + 0.5], dtype=F64)
    torch.testing.assert_close(e(x), want)
    torch.testing.assert_close(e.log_prob(x), -want)


@pytest.mark.parametrize("dim", [2, 8, 32])
def test_many_well_log_z_by_quadrature(dim):
    z1, _ = integrate.quad(
        lambda a: math.exp(-(a**4) + 6 * a**2 + 0.5 * a), -np.inf, np.inf, epsabs=0, epsrel=1e-12
    )
    assert abs(z1 - 11784.50927) < 1e-3
    want = dim / 2 * (math.log(z1) + 0.5 * math.log(2 * math.pi))
    assert abs(ManyWell(dim).log_z - want) < 1e-8
    if dim == 32:
        assert abs(ManyWell(32).log_z - 164.6957) < 1e-4
    if dim == 2:  # the 2-D case by a direct double integral of exp(-E)
        e = ManyWell(2).double()
        h = 0.005
        a = torch.arange(-4, 4, h, dtype=F64)
        b = torch.arange(-9, 9, h, dtype=F64)
        pts = torch.cartesian_prod(a, b)
        assert abs(math.log(float(torch.exp(-e(pts)).sum()) * h * h) - e.log_z) < 1e-6


def test_many_well_exact_sampler_matches_quadrature():
    e = ManyWell(32)
    x = e.sample(10_000, generator=gen(0))
    assert x.shape == (10_000, 32) and x.dtype == torch.float32
    x = x.double()
    a, b = x[:, 0::2].flatten().numpy(), x[:, 1::2].flatten().numpy()  # 160 000 draws each

    def f(t):
        return math.exp(-(t**4) + 6 * t**2 + 0.5 * t)

    z = integrate.quad(f, -np.inf, np.inf)[0]
    m1 = integrate.quad(lambda t: t * f(t), -np.inf, np.inf)[0] / z
    m2 = integrate.quad(lambda t: t * t * f(t), -np.inf, np.inf)[0] / z
    p_pos = integrate.quad(f, 0, np.inf)[0] / z
    n = a.size
    assert abs(a.mean() - m1) < 4 * math.sqrt((m2 - m1**2) / n)
    assert abs((a**2).mean() - m2) < 0.02
    assert abs((a > 0).mean() - p_pos) < 4 * math.sqrt(p_pos * (1 - p_pos) / n)
    # Kolmogorov-Smirnov against the CDF by quadrature on a fine grid
    grid = np.linspace(-4, 4, 40_001)
    cdf = np.concatenate(
        [[0.0], integrate.cumulative_trapezoid(np.exp(-(grid**4) + 6 * grid**2 + 0.5 * grid), grid)]
    )
    cdf /= cdf[-1]
    assert stats.kstest(a[:20_000], lambda t: np.interp(t, grid, cdf)).pvalue > 1e-3
    assert stats.kstest(b[:20_000], "norm").pvalue > 1e-3
    # the energies are what the sampler's density says: mean energy by quadrature
    e_mean = 16 * (integrate.quad(lambda t: (t**4 - 6 * t**2 - 0.5 * t) * f(t), -np.inf, np.inf)[0] / z + 0.5)
    assert abs(float(e(x.float()).double().mean()) - e_mean) < 0.2


def test_many_well_needs_an_even_dim():
    with pytest.raises(ValueError, match="even dim"):
        ManyWell(3)


# ---------------------------------------------------------------------------------------------- DW-4 / LJ-13


def square(side: float) -> torch.Tensor:
    s = side / 2
    return torch.tensor([[-s, -s, s, -s, s, s, -s, s]], dtype=F64)


def test_dw4_energy_by_hand_and_its_invariances():
    e = DoubleWell4().double()

    def u(d):
        return 0.9 * (d - 4) ** 4 - 4 * (d - 4) ** 2

    for side in (2.0, 3.0, 4.5):
        want = 4 * u(side) + 2 * u(side * math.sqrt(2))  # 4 edges + 2 diagonals, each pair once
        torch.testing.assert_close(e(square(side)), torch.tensor([want], dtype=F64))
    x = torch.randn(6, 8, generator=gen(0), dtype=F64) * 2
    x = remove_mean(x, 4, 2)
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=F64)
    xr = (x.view(6, 4, 2) @ rot.T)[:, [2, 0, 3, 1]].reshape(6, 8)  # rotate and permute
    torch.testing.assert_close(e(xr), e(x))
    shift = torch.tensor([1.0, -2.0], dtype=F64).repeat(4)
    free = DoubleWell4(com="free").double()
    torch.testing.assert_close(free(x + shift), free(x))
    # com="gaussian" adds N/2 |mean|^2 = 2 * 5 = 10
    torch.testing.assert_close(e(x + shift), e(x) + 10.0)


def test_lj_energy_by_hand_pair_conventions_and_soft_core():
    two = LennardJones13(n_particles=2, com="free").double()
    x = torch.tensor([[0.0, 0.0, -0.5, 0.0, 0.0, 0.5]], dtype=F64)  # r = rm = 1: u = -1
    torch.testing.assert_close(two(x), torch.tensor([-1.0 + 0.25], dtype=F64))  # + oscillator 0.5 * 2 * 0.25
    ordered = LennardJones13(n_particles=2, pairs="ordered", com="free").double()
    torch.testing.assert_close(ordered(x), torch.tensor([-2.0 + 0.25], dtype=F64))
    e_u, e_o = LennardJones13().double(), LennardJones13(pairs="ordered").double()
    x = remove_mean(torch.randn(5, 39, generator=gen(1), dtype=F64) * 1.5, 13, 3)
    osc = 0.5 * x.square().sum(1)
    torch.testing.assert_close(e_o(x) - osc, 2 * (e_u(x) - osc))
    # soft core: continuous value and slope at r_min, finite energy and gradient at r = 0
    lj = LennardJones13().double()
    r = torch.tensor([0.6 - 1e-7, 0.6, 0.6 + 1e-7, 0.8], dtype=F64, requires_grad=True)
    u = lj.pair_energy(r)
    (du,) = torch.autograd.grad(u.sum(), r)
    torch.testing.assert_close(u[0], u[2], atol=2e-3, rtol=0)
    torch.testing.assert_close(du[0], du[2], rtol=1e-4, atol=0)
    torch.testing.assert_close(u[3], torch.tensor(0.8**-12 - 2 * 0.8**-6, dtype=F64))
    x0 = torch.zeros(1, 39, dtype=F64, requires_grad=True)
    e0 = lj(x0)
    (g0,) = torch.autograd.grad(e0.sum(), x0)
    assert bool(torch.isfinite(e0).all()) and bool(torch.isfinite(g0).all())


def test_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        DoubleWell4()(torch.zeros(3, 9))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        GMM40()(torch.zeros(3))
    with pytest.raises(ValueError, match="pairs"):
        LennardJones13(pairs="both")
    with pytest.raises(NotImplementedError, match="reference_samples"):
        DoubleWell4().sample(3)


# ---------------------------------------------------------------------------------------------- reference samples


def test_reference_samples_cache_hit_and_miss(tmp_path, monkeypatch):
    e = DoubleWell4()
    kw = dict(chains=8, burn_in=10, thin=2)
    x = e.reference_samples(20, seed=3, cache_dir=tmp_path, **kw)
    assert x.shape == (20, 8) and x.dtype == torch.float32
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")
    info = json.loads((tmp_path / files[0]).read_text())
    assert info["energy"] == "DoubleWell4" and info["settings"]["thin"] == 2 and len(info["accept_rate"]) == 3

    def boom(*a, **k):
        raise AssertionError("cache miss")

    monkeypatch.setattr(DoubleWell4, "_run_reference", boom)
    torch.testing.assert_close(e.reference_samples(20, seed=3, cache_dir=tmp_path, **kw), x)  # hit
    with pytest.raises(AssertionError, match="cache miss"):  # other seed / settings / params: miss
        e.reference_samples(20, seed=4, cache_dir=tmp_path, **kw)
    with pytest.raises(AssertionError, match="cache miss"):
        DoubleWell4(offset=3.0).reference_samples(20, seed=3, cache_dir=tmp_path, **kw)
    with pytest.raises(ValueError, match="unknown reference settings"):
        e.reference_samples(20, cache_dir=tmp_path, chain=3)
    monkeypatch.setenv("FLOWFORGE_CACHE", str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root" / "reference"
    # exact samplers need no cache
    y = ManyWell(4).reference_samples(5, seed=1, cache_dir=tmp_path / "none")
    assert y.shape == (5, 4) and not (tmp_path / "none").exists()
    torch.testing.assert_close(y, ManyWell(4).sample(5, generator=gen(1)))


def test_reference_sampler_matches_quadrature_on_a_two_particle_double_well(tmp_path):
    # two particles in 1-D: r = x1 - x2 has density prop. to exp(-u(r)) (the CoM term factorises)
    e = DoubleWell4(n_particles=2, spatial_dim=1)
    x = e.reference_samples(2000, seed=0, cache_dir=tmp_path, chains=200, burn_in=300, thin=5).double()
    r = (x[:, 0] - x[:, 1]).abs().numpy()
    grid = np.linspace(0, 10, 100_001)
    dens = np.exp(-(0.9 * (grid - 4) ** 4 - 4 * (grid - 4) ** 2))
    p_inner = _trapezoid(dens * (grid < 4), grid) / _trapezoid(dens, grid)
    assert abs((r < 4).mean() - p_inner) < 0.05, ((r < 4).mean(), p_inner)
    com = x.mean(1).numpy()  # N(0, 1/N) = N(0, 1/2)
    assert abs(com.var() - 0.5) < 0.08


# ---------------------------------------------------------------------------------------------- user energies


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    src = textwrap.dedent(
        """
        import torch
        from flowforge.data.energies import GMM40

        def good(x):
            return 0.5 * x.square().sum(-1)

        def column(x):
            return 0.5 * x.square().sum(-1, keepdim=True)

        def double(x):
            return 0.5 * x.double().square().sum(-1)

        def numpy_out(x):
            return (x ** 2).sum(-1).numpy()

        def infinite(x):
            return torch.full((x.shape[0],), float("inf"))

        def raises(x):
            raise RuntimeError("boom")

        class NotAnEnergy:
            pass

        gmm = GMM40()
        CONSTANT = 3
        """
    )
    (tmp_path / "my_energies.py").write_text(src)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "my_energies.py"


def test_user_energy_loads_and_validates(user_module):
    e = user_energy("my_energies:good", dim=3, log_z=1.5)
    assert e.dim == 3 and e.log_z == 1.5
    torch.testing.assert_close(e(torch.ones(2, 3)), torch.tensor([1.5, 1.5]))
    g = user_energy("my_energies:gmm")  # an Energy instance brings its own dim and log_z
    assert g.dim == 2 and g.log_z == 0.0
    f = user_energy(f"{user_module}:good", dim=2)  # a file path works too
    assert f(torch.zeros(4, 2)).shape == (4,)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:f", r"could not import module 'no_such_module_xyz'.*PYTHONPATH"),
        ("my_energies:missing", r"has no attribute 'missing'.*'good'"),
        ("my_energies:CONSTANT", r"int, not callable"),
        ("my_energies:NotAnEnergy", r"is a class"),
        ("my_energies:column", r"returned shape \(8, 1\).*squeeze"),
        ("my_energies:double", r"dtype torch.float64.*x.dtype"),
        ("my_energies:numpy_out", r"returned a ndarray.*torch.Tensor"),
        ("my_energies:infinite", r"non-finite"),
        ("my_energies:raises", r"raised RuntimeError: boom"),
        ("my_energies", r"'module:function'"),
        ("missing_file.py:f", r"does not exist"),
    ],
)
def test_user_energy_error_messages(user_module, spec, message):
    with pytest.raises(ValueError, match=message):
        user_energy(spec, dim=2)


def test_user_energy_needs_a_dim(user_module):
    with pytest.raises(ValueError, match="dim=2"):
        user_energy("my_energies:good")


def test_module_has_all():
    assert set(energies_mod.__all__) >= {"GMM40", "ManyWell", "DoubleWell4", "LennardJones13", "user_energy"}
