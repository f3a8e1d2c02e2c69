"""Frechet distance against closed forms and scipy's sqrtm; k-NN precision/recall on constructed cases."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import torch

from flowforge.metrics import frechet_distance, gaussian_stats, precision_recall, trace_sqrt_product

frechet_mod = importlib.import_module("flowforge.metrics.frechet")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_spd(f: int, seed: int, rank: int | None = None) -> torch.Tensor:
    a = torch.randn(f, rank or f, generator=gen(seed), dtype=torch.float64)
    return a @ a.T / f + (0 if rank else 0.1) * torch.eye(f, dtype=torch.float64)


def test_docstring_examples_run() -> None:
    result = doctest.testmod(frechet_mod)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------------------ Frechet


def test_gaussian_stats_match_numpy() -> None:
    x = torch.randn(50, 4, generator=gen(0))
    mu, cov = gaussian_stats(x)
    assert mu.dtype == cov.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), x.double().numpy().mean(0), atol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(x.double().numpy(), rowvar=False), atol=1e-12)


def test_identical_sets_give_zero() -> None:
    x = torch.randn(400, 16, generator=gen(1))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(x, x[torch.randperm(400, generator=gen(2))]) == pytest.approx(0.0, abs=1e-9)


def test_shift_gives_squared_mean_difference() -> None:
    x = torch.randn(300, 8, generator=gen(3), dtype=torch.float64)
    delta = torch.randn(8, generator=gen(4), dtype=torch.float64)
    assert frechet_distance(x, x + delta) == pytest.approx(float(delta @ delta), rel=1e-9)


def test_diagonal_gaussians_closed_form() -> None:
    mu1 = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    mu2 = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    d1 = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)
    d2 = torch.tensor([9.0, 1.0, 0.25], dtype=torch.float64)
    want = float((mu1 - mu2).pow(2).sum() + (d1.sqrt() - d2.sqrt()).pow(2).sum())  # 5 + (4 + 1 + 0)
    assert want == pytest.approx(10.0)
    assert frechet_distance((mu1, torch.diag(d1)), (mu2, torch.diag(d2))) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("f", [2, 7, 40])
def test_trace_sqrt_matches_scipy_sqrtm(f: int) -> None:
    linalg = pytest.importorskip("scipy.linalg")
    c1, c2 = random_spd(f, 10 + f), random_spd(f, 20 + f)
    want = np.trace(linalg.sqrtm(c1.numpy() @ c2.numpy())).real
    assert trace_sqrt_product(c1, c2) == pytest.approx(want, rel=1e-9)
    # and the whole distance against pytorch-fid's formula with scipy
    mu1, mu2 = torch.randn(f, generator=gen(1), dtype=torch.float64), torch.zeros(f, dtype=torch.float64)
    ref = float((mu1 - mu2) @ (mu1 - mu2)) + np.trace(c1.numpy()) + np.trace(c2.numpy()) - 2 * want
    assert frechet_distance((mu1, c1), (mu2, c2)) == pytest.approx(ref, rel=1e-9)


def test_rank_deficient_covariances_are_handled() -> None:
    """Fewer samples than features (singular covariances) still give the symmetric, exact answer."""
    linalg = pytest.importorskip("scipy.linalg")
    c1, c2 = random_spd(12, 0, rank=3), random_spd(12, 1, rank=5)
    want = np.trace(linalg.sqrtm(c1.numpy() @ c2.numpy())).real
    assert trace_sqrt_product(c1, c2) == pytest.approx(want, rel=1e-6)
    x, y = torch.randn(6, 30, generator=gen(5)), torch.randn(9, 30, generator=gen(6))
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-9)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_stats_and_features_give_the_same_answer() -> None:
    x, y = torch.randn(100, 5, generator=gen(7)), torch.randn(80, 5, generator=gen(8)) * 2
    assert frechet_distance(gaussian_stats(x), y) == pytest.approx(frechet_distance(x, y), rel=1e-12)
    assert frechet_distance(x.numpy(), y.numpy()) == pytest.approx(frechet_distance(x, y), rel=1e-12)


def test_frechet_bad_inputs() -> None:
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        frechet_distance(torch.randn(10), x)
    with pytest.raises(ValueError, match="same feature size"):
        frechet_distance(x, torch.randn(10, 4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(x, torch.full((10, 3), float("nan")))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(x[:1], x)
    with pytest.raises(ValueError, match="mu \\(F,\\) and cov \\(F, F\\)"):
        frechet_distance((torch.zeros(3), torch.eye(4)), x)


# ------------------------------------------------------------------------------------ precision/recall


def brute_force_pr(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def covered(p, c, r):
        return float((np.linalg.norm(p[:, None] - c[None], axis=-1) <= r[None]).any(1).mean())

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def test_identical_sets_have_precision_and_recall_one() -> None:
    x = torch.randn(300, 10, generator=gen(0))
    assert precision_recall(x, x) == (1.0, 1.0)


def test_disjoint_sets_have_precision_and_recall_zero() -> None:
    x = torch.randn(300, 10, generator=gen(0))
    assert precision_recall(x, torch.randn(200, 10, generator=gen(1)) + 50.0) == (0.0, 0.0)


def test_fake_from_one_mode_has_full_precision_and_partial_recall() -> None:
    a = torch.randn(200, 4, generator=gen(2))
    b = torch.randn(200, 4, generator=gen(3)) + 20.0
    real = torch.cat([a, b])
    precision, recall = precision_recall(real, a[:150])  # the fakes are real points of mode a
    assert precision == 1.0
    assert 0.2 < recall <= 0.5  # mode b is missed entirely


def test_hand_computed_case() -> None:
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # k=1 radii: all 1
    fake = torch.tensor([[0.5], [3.9], [10.0], [2.2]])  # radii: 1.7, 1.7, 6.1, 1.7
    # precision: 0.5, 3.9 and 2.2 lie within 1 of a real point; 10 does not. recall: 0 (0.5 from 0.5),
    # 1, 2, 3 lie in the balls of 0.5 / 2.2 / 3.9.
    assert precision_recall(real, fake, k=1) == (0.75, 1.0)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_brute_force_and_chunking(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    real = torch.randn(120, 3, generator=gen(10 + k), dtype=torch.float64)
    fake = 1.3 * torch.randn(90, 3, generator=gen(20 + k), dtype=torch.float64) + 0.4
    want = brute_force_pr(real.numpy(), fake.numpy(), k)
    assert precision_recall(real, fake, k=k) == pytest.approx(want, abs=1e-12)
    monkeypatch.setattr(frechet_mod, "_PAIR_BUDGET", 500)  # blocks of 4-5 rows
    assert precision_recall(real, fake, k=k) == pytest.approx(want, abs=1e-12)


def test_precision_recall_bad_inputs() -> None:
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="k >= 1"):
        precision_recall(x, x, k=0)
    with pytest.raises(ValueError, match="at least 4 rows"):
        precision_recall(x[:3], x, k=3)
    with pytest.raises(ValueError, match="same feature size"):
        precision_recall(x, torch.randn(10, 2))
