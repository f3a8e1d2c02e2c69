"""Tests for flowforge.metrics: sliced Wasserstein (with control variates), exact W2, MMD, energy distance."""

from __future__ import annotations

import doctest
import importlib
import math

import numpy as np
import pytest
import torch

from flowforge.metrics import energy_distance, mmd, sliced_wasserstein, sliced_wasserstein_loss, wasserstein2

kernels_mod = importlib.import_module("flowforge.metrics.kernels")
sliced_mod = importlib.import_module("flowforge.metrics.sliced")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "module", ["flowforge.metrics.sliced", "flowforge.metrics.kernels", "flowforge.metrics.ot"]
)
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------------- sliced Wasserstein


def test_swd_identical_clouds_is_zero() -> None:
    x = torch.randn(300, 5, generator=gen(0))
    assert sliced_wasserstein(x, x, generator=gen(1)) == 0.0
    assert sliced_wasserstein(x, x[torch.randperm(300, generator=gen(2))], generator=gen(1)) == 0.0


def test_swd_translation_equals_norm_over_dim() -> None:
    d = 6
    x = torch.randn(200, d, generator=gen(0), dtype=torch.float64)
    a = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0], dtype=torch.float64)
    truth = float(a @ a) / d
    # plain MC: each projection gives (theta^T a)^2 exactly; E over the sphere is |a|^2 / d
    sw2 = sliced_wasserstein(x, x + a, n_projections=20_000, generator=gen(1)) ** 2
    assert sw2 == pytest.approx(truth, rel=0.04)
    # the lower control variate equals W_l here, so the estimate is exact with few projections
    est = sliced_wasserstein(x, x + a, n_projections=5, control_variate="lower", generator=gen(2)) ** 2
    assert est == pytest.approx(truth, rel=1e-9)
    # the upper one adds theta^T (S_x + S_y) theta: a constant when the (1/n) covariance is isotropic, so
    # it is exact too on a whitened cloud (Cov(W, G_up) = Var(G_up), and E G_up is known)
    xw = x - x.mean(0)
    xw = xw @ torch.linalg.inv(torch.linalg.cholesky(xw.T @ xw / len(xw))).T
    est = sliced_wasserstein(xw, xw + a, n_projections=5, control_variate="upper", generator=gen(2)) ** 2
    assert est == pytest.approx(truth, rel=1e-9)
    # the 1/p root is applied: SW_1 of a translation is E|theta^T a|, positive and below |a|
    sw1 = sliced_wasserstein(x, x + a, n_projections=20_000, p=1, generator=gen(3))
    assert 0 < sw1 < math.sqrt(float(a @ a))


def test_swd_one_dimensional_matches_exact_w() -> None:
    stats = pytest.importorskip("scipy.stats")
    ot = pytest.importorskip("ot")
    g = gen(0)
    x = torch.randn(37, 1, generator=g, dtype=torch.float64)
    y = torch.rand(53, 1, generator=g, dtype=torch.float64) * 3
    # in d = 1 every direction is +-1, so SW_p = W_p exactly, here with n != m
    w1 = stats.wasserstein_distance(x[:, 0].numpy(), y[:, 0].numpy())
    assert sliced_wasserstein(x, y, n_projections=3, p=1, generator=g) == pytest.approx(w1, rel=1e-10)
    cost = ot.dist(x.numpy(), y.numpy())
    w2 = math.sqrt(ot.emd2(np.full(37, 1 / 37), np.full(53, 1 / 53), cost))
    assert sliced_wasserstein(x, y, n_projections=3, p=2, generator=g) == pytest.approx(w2, rel=1e-10)


def test_swd_unequal_sizes_via_duplication() -> None:
    x = torch.randn(40, 3, generator=gen(0), dtype=torch.float64)
    y = torch.randn(30, 3, generator=gen(1), dtype=torch.float64) + 1
    base = sliced_wasserstein(x, y, n_projections=64, generator=gen(5))
    # the empirical measure of y is unchanged by repeating every point
    assert sliced_wasserstein(x, torch.cat([y, y]), n_projections=64, generator=gen(5)) == pytest.approx(base)
    assert sliced_wasserstein(torch.cat([x, x, x]), y, n_projections=64, generator=gen(5)) == pytest.approx(
        base
    )
    assert sliced_wasserstein(x, torch.cat([x, x]), generator=gen(5)) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein(y, x, n_projections=64, generator=gen(5)) == pytest.approx(base)


def test_swd_chunking_matches(monkeypatch) -> None:
    x = torch.randn(50, 4, generator=gen(0))
    y = torch.randn(70, 4, generator=gen(1))
    full = sliced_wasserstein(x, y, n_projections=37, control_variate="upper", generator=gen(2))
    monkeypatch.setattr(sliced_mod, "_PROJECTION_BUDGET", 500)  # 4 projections per chunk
    assert sliced_wasserstein(
        x, y, n_projections=37, control_variate="upper", generator=gen(2)
    ) == pytest.approx(full, rel=1e-12)


def test_swd_errors() -> None:
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="p=2"):
        sliced_wasserstein(x, x, p=1, control_variate="lower")
    with pytest.raises(ValueError, match="'lower'"):
        sliced_wasserstein(x, x, control_variate="middle")
    with pytest.raises(ValueError, match="same dimension"):
        sliced_wasserstein(x, torch.randn(10, 2))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        sliced_wasserstein(x[:, 0], x[:, 0])


def test_swd_loss_is_differentiable_and_consistent() -> None:
    x = torch.randn(64, 3, generator=gen(0), dtype=torch.float64, requires_grad=True)
    y = torch.randn(80, 3, generator=gen(1), dtype=torch.float64) + 2
    for cv in (None, "lower", "upper"):
        loss = sliced_wasserstein_loss(x, y, n_projections=32, control_variate=cv, generator=gen(2))
        (grad,) = torch.autograd.grad(loss, x)
        assert loss.ndim == 0 and torch.isfinite(grad).all() and grad.abs().sum() > 0
        value = sliced_wasserstein(x, y, n_projections=32, control_variate=cv, generator=gen(2))
        assert value**2 == pytest.approx(loss.item(), rel=1e-10)
    # a few gradient steps on the plain loss move x towards y
    z = x.detach().clone().requires_grad_(True)
    start = sliced_wasserstein(z, y, generator=gen(9))
    for step in range(30):
        (g,) = torch.autograd.grad(sliced_wasserstein_loss(z, y, n_projections=64, generator=gen(step)), z)
        z = (z - 5.0 * g).detach().requires_grad_(True)
    assert sliced_wasserstein(z, y, generator=gen(9)) < 0.5 * start


def _repeated(x: torch.Tensor, y: torch.Tensor, L: int, cv: str | None, reps: int = 200) -> torch.Tensor:
    return torch.tensor(
        [
            sliced_wasserstein(x, y, n_projections=L, control_variate=cv, generator=gen(1000 + r)) ** 2
            for r in range(reps)
        ],
        dtype=torch.float64,
    )


@pytest.mark.parametrize(("d", "L"), [(10, 10), (64, 100)])
@pytest.mark.parametrize("cv", ["lower", "upper"])
def test_control_variates_reduce_variance(d: int, L: int, cv: str) -> None:
    # Gaussian vs Gaussian; the lower bound captures the mean shift, the upper one anisotropic scales.
    g = gen(123)
    x = torch.randn(150, d, generator=g, dtype=torch.float64)
    if cv == "lower":
        scales = 0.5 + torch.rand(d, generator=g, dtype=torch.float64)
        shift = 0.5
    else:
        scales = torch.exp(torch.linspace(math.log(0.5), math.log(5.0), d, dtype=torch.float64))
        shift = 0.5
    y = torch.randn(150, d, generator=g, dtype=torch.float64) * scales + shift
    reference = sliced_wasserstein(x, y, n_projections=10_000, generator=gen(7)) ** 2
    plain = _repeated(x, y, L, None)
    with_cv = _repeated(x, y, L, cv)
    assert with_cv.var() * 3 <= plain.var()
    # both means agree with a high-L reference (the CV estimate has a small finite-L bias from gamma-hat)
    assert abs(plain.mean() - reference) < 4 * plain.std() / math.sqrt(len(plain)) + 1e-3 * reference
    assert with_cv.mean().item() == pytest.approx(reference, rel=0.05)
    assert with_cv.mean().item() == pytest.approx(plain.mean().item(), rel=0.05)


# ------------------------------------------------------------------------------------------------- W2


def test_w2_translation_and_permutation() -> None:
    pytest.importorskip("ot")
    x = torch.randn(120, 3, generator=gen(0), dtype=torch.float64)
    a = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    assert wasserstein2(x, x + a) == pytest.approx(float(a.norm()), rel=1e-9)
    # W2 = sqrt(W2^2): round-off of order 1e-16 in W2^2 shows up as 1e-8
    assert wasserstein2(x, x[torch.randperm(120, generator=gen(1))]) == pytest.approx(0.0, abs=1e-6)
    assert wasserstein2(x, torch.cat([x, x])) == pytest.approx(0.0, abs=1e-6)  # n != m


def test_w2_one_dimensional_sorted_matching() -> None:
    pytest.importorskip("ot")
    x = torch.randn(90, 1, generator=gen(0), dtype=torch.float64)
    y = torch.randn(90, 1, generator=gen(1), dtype=torch.float64) * 2 + 1
    truth = ((x.sort(0).values - y.sort(0).values) ** 2).mean().sqrt().item()
    assert wasserstein2(x, y) == pytest.approx(truth, rel=1e-9)
    # sliced W2 never exceeds W2 (projections are 1-Lipschitz)
    x3 = torch.randn(80, 3, generator=gen(2), dtype=torch.float64)
    y3 = torch.randn(80, 3, generator=gen(3), dtype=torch.float64) + 1
    assert sliced_wasserstein(x3, y3, n_projections=512, generator=gen(4)) <= wasserstein2(x3, y3)


def test_w2_size_guard() -> None:
    pytest.importorskip("ot")
    x = torch.zeros(101, 2)
    with pytest.raises(ValueError, match="sliced_wasserstein"):
        wasserstein2(x, x, max_pairs=10_000)


# ------------------------------------------------------------------------------------------- MMD, energy


def _naive_mmd(x: torch.Tensor, y: torch.Tensor, bandwidths) -> float:
    def k(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return sum(torch.exp(-d2 / (2 * s * s)) for s in bandwidths)

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float(
        (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        - 2 * kxy.mean()
    )


def test_mmd_matches_naive_u_statistic_and_chunks(monkeypatch) -> None:
    x = torch.randn(40, 3, generator=gen(0), dtype=torch.float64)
    y = torch.randn(30, 3, generator=gen(1), dtype=torch.float64) + 0.4
    bw = (0.1, 0.5, 2.0)
    truth = _naive_mmd(x, y, bw)
    assert mmd(x, y, bandwidths=bw) == pytest.approx(truth, rel=1e-10)
    monkeypatch.setattr(kernels_mod, "_PAIR_BUDGET", 64)  # blocks of 2 rows
    assert mmd(x, y, bandwidths=bw) == pytest.approx(truth, rel=1e-10)


def test_mmd_same_vs_shifted() -> None:
    g = gen(0)
    x = torch.randn(1000, 2, generator=g)
    y = torch.randn(1000, 2, generator=g)
    same = mmd(x, y)
    assert abs(same) < 0.01
    values = [mmd(x, y + torch.tensor([s, 0.0])) for s in (0.5, 1.0, 2.0, 4.0)]
    assert values[0] > 5 * abs(same) and values[0] > 0.05
    assert all(a < b for a, b in zip(values, values[1:]))
    # median heuristic makes it invariant to a global rescaling
    assert mmd(10 * x, 10 * (y + 0.5), median_heuristic=True) == pytest.approx(
        mmd(x, y + 0.5, median_heuristic=True),
        rel=1e-6,  # float32 inputs
    )
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(x, y, bandwidths=(1.0, -1.0))


def test_energy_distance() -> None:
    stats = pytest.importorskip("scipy.stats")
    # point masses: 2|a - b|
    assert energy_distance(torch.full((4, 1), -1.0), torch.full((7, 1), 2.5)) == pytest.approx(7.0)
    a, b = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([-1.0, 0.0, 4.0])
    assert energy_distance(a.expand(5, 3), b.expand(2, 3)) == pytest.approx(2 * float((a - b).norm()))
    # scipy's 1-D energy_distance is the square root of the same V-statistic
    x = torch.randn(50, 1, generator=gen(0), dtype=torch.float64)
    y = torch.randn(70, 1, generator=gen(1), dtype=torch.float64) * 2
    assert energy_distance(x, y) == pytest.approx(stats.energy_distance(x[:, 0], y[:, 0]) ** 2, rel=1e-10)
    # identical samples: exactly 0 (V-statistic); same law ~0; grows with the shift
    z = torch.randn(300, 2, generator=gen(2))
    assert energy_distance(z, z) == 0.0
    w = torch.randn(300, 2, generator=gen(3))
    same = energy_distance(z, w)
    vals = [energy_distance(z, w + s) for s in (0.25, 0.5, 1.0, 2.0)]
    assert 0 <= same < 0.03 and vals[0] > 3 * same
    assert all(p < q for p, q in zip(vals, vals[1:]))
