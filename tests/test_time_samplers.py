"""Training-time samplers: empirical distributions against their closed forms."""

import math

import pytest
import torch

from flowforge.core.time import (
    CosMap,
    LogitNormal,
    ModeSampler,
    Shifted,
    Uniform,
    UShaped,
    WithEndpoint,
    resolution_shift,
)

N = 200_000


def _draw(sampler):
    return sampler(N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _ks(sample: torch.Tensor, cdf) -> float:
    s, _ = sample.sort()
    emp = torch.arange(1, len(s) + 1, dtype=torch.float64) / len(s)
    return float((emp - cdf(s)).abs().max())


@pytest.mark.parametrize(
    "sampler",
    [Uniform(), LogitNormal(0.0, 1.0), LogitNormal(-0.5, 0.7), UShaped(4.0)],
    ids=["uniform", "lognorm", "lognorm-shifted", "u-shaped"],
)
def test_density_matches_histogram(sampler):
    t = _draw(sampler)
    hist = torch.histc(t, bins=20, min=0.0, max=1.0) / (len(t) * 0.05)
    centres = torch.linspace(0.025, 0.975, 20, dtype=torch.float64)
    # average the density over each bin with a fine Riemann sum
    fine = torch.linspace(0, 1, 20 * 200 + 1, dtype=torch.float64)[1:-1]
    avg = torch.stack(
        [sampler.density(fine[(fine > c - 0.025) & (fine < c + 0.025)]).mean() for c in centres]
    )
    torch.testing.assert_close(hist, avg, rtol=0.04, atol=0.02)


def test_logit_normal_direction_matches_sd3_convention():
    # SD3's m > 0 puts mass near noise, i.e. near t = 0 in our direction, which is loc = -m.
    assert _draw(LogitNormal(-1.0, 1.0)).median() < 0.3


def test_mode_sampler_cdf_is_inverse_of_its_map():
    s = ModeSampler(1.29)
    t = _draw(s)
    grid = torch.linspace(0, 1, 2001, dtype=torch.float64)
    mapped = s.from_uniform(grid)
    assert bool((mapped.diff() > 0).all()), "the mode map must be monotone in the valid range"
    # P(t <= f(u)) = u
    cdf = lambda x: torch.from_numpy(__import__("numpy").interp(x.numpy(), mapped.numpy(), grid.numpy()))  # noqa: E731
    assert _ks(t, cdf) < 0.006
    with pytest.raises(ValueError, match="scale"):
        ModeSampler(2.0)


def test_cosmap_cdf():
    # t = 1 / (tan(pi u / 2) + 1)  <=>  u = (2/pi) atan(1/t - 1); P(T <= t) = 1 - u(t)
    cdf = lambda t: 1 - (2 / math.pi) * torch.atan(1 / t - 1)  # noqa: E731
    assert _ks(_draw(CosMap()), cdf) < 0.006


def test_resolution_shift_matches_sd3_formula_in_its_direction():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    a = 3.0
    tau = 1 - t
    sd3 = a * tau / (1 + (a - 1) * tau)
    torch.testing.assert_close(resolution_shift(t, a), 1 - sd3)
    torch.testing.assert_close(resolution_shift(t, 1.0), t)
    shifted = _draw(Shifted(Uniform(), 3.0))
    assert (
        abs(float(shifted.mean()) - float(resolution_shift(torch.rand(N, dtype=torch.float64), 3.0).mean()))
        < 0.01
    )
    with pytest.raises(ValueError, match="shift > 0"):
        resolution_shift(t, 0.0)


def test_samplers_are_reproducible_and_in_range():
    for s in [Uniform(), LogitNormal(), ModeSampler(), CosMap(), UShaped(), Shifted(LogitNormal(), 2.0)]:
        a = s(1000, generator=torch.Generator().manual_seed(1))
        b = s(1000, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b)
        assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_endpoint_atom_has_its_weight_and_leaves_the_rest_to_the_base():
    t = _draw(WithEndpoint(LogitNormal(0.0, 1.0), at=1.0, weight=0.25))
    atom = t == 1.0
    assert abs(float(atom.double().mean()) - 0.25) < 4 * math.sqrt(0.25 * 0.75 / N)
    rest = t[~atom]
    assert _ks(rest, lambda s: torch.special.ndtr(torch.logit(s))) < 0.01  # the logit-normal CDF
    # no atom: the base's draws bit for bit
    g = torch.Generator().manual_seed(3)
    assert torch.equal(
        WithEndpoint(Uniform(), weight=0.0)(64, generator=g), Uniform()(64, generator=g.manual_seed(3))
    )
    for bad in ({"weight": 1.0}, {"weight": -0.1}, {"at": 1.5}):
        with pytest.raises(ValueError):
            WithEndpoint(Uniform(), **bad)
