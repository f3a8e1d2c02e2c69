r"""Frechet distance between Gaussians fitted to features, and k-NN precision/recall.

The Frechet (2-Wasserstein) distance between :math:`N(\mu_1, C_1)` and :math:`N(\mu_2, C_2)` is

.. math::

    d^2 = \|\mu_1 - \mu_2\|^2 + \mathrm{tr}\,C_1 + \mathrm{tr}\,C_2 - 2\,\mathrm{tr}\,(C_1 C_2)^{1/2},

and FID is this distance between InceptionV3 pool3 features of two image sets (Heusel et al., "GANs
Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017). The trace
term is computed in float64 from symmetric eigendecompositions:
:math:`\mathrm{tr}(C_1 C_2)^{1/2} = \sum_i \lambda_i(C_1^{1/2} C_2 C_1^{1/2})^{1/2}`, the eigenvalues
of a positive semi-definite matrix, so no complex parts and no ``sqrtm`` iterations appear.

Precision and recall follow Kynkaanniemi et al., "Improved Precision and Recall Metric for Assessing
Generative Models", NeurIPS 2019: each point of a set gets a ball reaching its k-th nearest neighbour
in the same set; precision is the fraction of generated points inside some real ball, recall the
fraction of real points inside some generated ball. Distances are computed on row blocks, so
10k x 10k comparisons never hold the full distance matrix.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["gaussian_stats", "frechet_distance", "trace_sqrt_product", "precision_recall"]

_PAIR_BUDGET = 1 << 23  # float64 squared distances held at once (64 MiB)

Stats = tuple[Tensor, Tensor]


def _as_features(feats: Tensor | np.ndarray, name: str, min_rows: int) -> Tensor:
    f = torch.as_tensor(feats).detach()
    if f.ndim != 2:
        raise ValueError(
            f"{name} must be features of shape (N, F), got {tuple(f.shape)}; "
            "flatten with feats.reshape(len(feats), -1)"
        )
    if f.shape[0] < min_rows or f.shape[1] == 0:
        raise ValueError(f"{name} needs at least {min_rows} rows of features, got shape {tuple(f.shape)}")
    f = f.to(torch.float64)
    if not torch.isfinite(f).all():
        raise ValueError(f"{name} contains NaN or inf; check the samples that produced these features")
    return f


def gaussian_stats(feats: Tensor | np.ndarray) -> Stats:
    """Mean and unbiased covariance (``1/(N-1)``, as ``numpy.cov``) of features, in float64.

    Args:
        feats: features ``(N, F)`` with ``N >= 2``.

    Returns:
        ``(mu: (F,), cov: (F, F))`` float64.

    Example:
        >>> mu, cov = gaussian_stats(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
        >>> mu.tolist(), cov.tolist()
        ([1.0, 2.0], [[2.0, 2.0], [2.0, 2.0]])
    """
    f = _as_features(feats, "gaussian_stats", 2)
    mu = f.mean(0)
    d = f - mu
    return mu, d.T @ d / (f.shape[0] - 1)


def _psd_sqrt(c: Tensor) -> Tensor:
    """Symmetric square root of a positive semi-definite matrix (negative round-off eigenvalues -> 0)."""
    evals, evecs = torch.linalg.eigh((c + c.T) / 2)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def trace_sqrt_product(c1: Tensor, c2: Tensor) -> float:
    r""":math:`\mathrm{tr}\,(C_1 C_2)^{1/2}` of two positive semi-definite ``(F, F)`` matrices, in float64.

    Equals :math:`\sum_i \sqrt{\lambda_i}` with :math:`\lambda_i` the eigenvalues of the PSD matrix
    :math:`C_1^{1/2} C_2 C_1^{1/2}`, which has the same spectrum as :math:`C_1 C_2`.

    Example:
        >>> trace_sqrt_product(torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([9.0, 1.0])))
        5.0
    """
    c1 = torch.as_tensor(c1, dtype=torch.float64)
    c2 = torch.as_tensor(c2, dtype=torch.float64, device=c1.device)
    s1 = _psd_sqrt(c1)
    m = s1 @ c2 @ s1
    return float(torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum())


def _as_stats(a: Tensor | np.ndarray | Stats, name: str) -> Stats:
    if isinstance(a, (tuple, list)):
        if len(a) != 2:
            raise ValueError(
                f"{name} must be features (N, F) or a (mu, cov) pair, got a sequence of {len(a)}"
            )
        mu = torch.as_tensor(a[0]).detach().to(torch.float64)
        cov = torch.as_tensor(a[1]).detach().to(torch.float64)
        f = mu.shape[0] if mu.ndim == 1 else -1
        if mu.ndim != 1 or tuple(cov.shape) != (f, f):
            raise ValueError(
                f"{name} as (mu, cov) needs mu (F,) and cov (F, F), got {tuple(mu.shape)} and {tuple(cov.shape)}"
            )
        if not (torch.isfinite(mu).all() and torch.isfinite(cov).all()):
            raise ValueError(f"{name} (mu, cov) contains NaN or inf")
        return mu, cov
    return gaussian_stats(_as_features(a, name, 2))


def frechet_distance(a: Tensor | np.ndarray | Stats, b: Tensor | np.ndarray | Stats) -> float:
    r"""Squared Frechet distance :math:`d^2` between Gaussians fitted to two feature sets.

    FID is this function applied to InceptionV3 pool3 features (Heusel et al., 2017); the result is
    clamped at 0 (round-off can make identical sets come out at about ``-1e-12``).

    Args:
        a: features ``(N, F)`` or a ``(mu, cov)`` pair from :func:`gaussian_stats`.
        b: the same for the second set (same ``F``).

    Returns:
        :math:`\|\mu_a - \mu_b\|^2 + \mathrm{tr}\,C_a + \mathrm{tr}\,C_b - 2\,\mathrm{tr}\,(C_a C_b)^{1/2}`.

    Example:
        >>> a = torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
        >>> round(frechet_distance(a, a + torch.tensor([3.0, 0.0, 4.0])), 6)
        25.0
    """
    mu1, c1 = _as_stats(a, "frechet_distance's first argument")
    mu2, c2 = _as_stats(b, "frechet_distance's second argument")
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"frechet_distance needs the same feature size on both sides, got {mu1.shape[0]} and {mu2.shape[0]}"
        )
    mu2, c2 = mu2.to(mu1.device), c2.to(mu1.device)
    d2 = (mu1 - mu2).pow(2).sum() + torch.trace(c1) + torch.trace(c2)
    return max(0.0, float(d2) - 2.0 * trace_sqrt_product(c1, c2))


def _sq_dist(a: Tensor, b: Tensor, b_sq: Tensor) -> Tensor:
    return ((a * a).sum(1, keepdim=True) + b_sq[None] - 2.0 * a @ b.T).clamp_min_(0)


def _knn_radii2(x: Tensor, k: int) -> Tensor:
    """Squared distance of each row of ``x`` to its k-th nearest other row ``(N,)``."""
    x_sq = (x * x).sum(1)
    rows = max(1, _PAIR_BUDGET // x.shape[0])
    out = []
    for s in range(0, x.shape[0], rows):
        d2 = _sq_dist(x[s : s + rows], x, x_sq)
        idx = torch.arange(s, min(s + rows, x.shape[0]), device=x.device)
        d2[idx - s, idx] = 0.0  # the point itself is the 0-th neighbour
        out.append(d2.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _covered(points: Tensor, centers: Tensor, radii2: Tensor) -> float:
    """Fraction of ``points`` inside at least one ball ``|p - c_j|^2 <= r_j^2``."""
    c_sq = (centers * centers).sum(1)
    rows = max(1, _PAIR_BUDGET // centers.shape[0])
    inside = 0
    for s in range(0, points.shape[0], rows):
        inside += int((_sq_dist(points[s : s + rows], centers, c_sq) <= radii2[None]).any(1).sum())
    return inside / points.shape[0]


def precision_recall(
    real_feats: Tensor | np.ndarray, fake_feats: Tensor | np.ndarray, k: int = 3
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., NeurIPS 2019) with k-NN radius manifolds.

    Args:
        real_feats: reference features ``(N, F)``, ``N > k``.
        fake_feats: generated features ``(M, F)``, ``M > k``.
        k: neighbour whose distance sets each ball's radius (the paper uses 3).

    Returns:
        ``(precision, recall)``: fraction of fake points inside the real manifold, and of real points
        inside the fake manifold.

    Example:
        >>> real = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
        >>> precision_recall(real, real + 100.0)
        (0.0, 0.0)
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"precision_recall needs an integer k >= 1, got {k!r}; the paper's value is k=3")
    real = _as_features(real_feats, "precision_recall's real_feats", k + 1)
    fake = _as_features(fake_feats, "precision_recall's fake_feats", k + 1).to(real.device)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"precision_recall needs the same feature size on both sides, got {real.shape[1]} and {fake.shape[1]}"
        )
    precision = _covered(fake, real, _knn_radii2(real, k))
    recall = _covered(real, fake, _knn_radii2(fake, k))
    return precision, recall
