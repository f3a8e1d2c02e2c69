r"""Kernel and distance-based two-sample statistics: MMD and energy distance.

Pairwise distances are computed in float64 on row blocks of at most ``2**22`` pairs (32 MiB per block),
so a 10k x 10k comparison never holds the full distance matrix; distances use exact differences
(``torch.cdist`` without the matrix-product shortcut), so ``d(x, x) = 0`` exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["energy_distance", "mmd"]

_PAIR_BUDGET = 1 << 22  # pairs per block


def _prepare(x: Tensor, y: Tensor, name: str, min_rows: int = 1) -> tuple[Tensor, Tensor]:
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(
            f"{name} needs samples of shape (N, D) and (M, D), got {tuple(x.shape)} and {tuple(y.shape)}; "
            "flatten samples with x.reshape(len(x), -1)"
        )
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{name} needs the same dimension D for both samples, got {x.shape[1]} and {y.shape[1]}"
        )
    if x.shape[0] < min_rows or y.shape[0] < min_rows:
        raise ValueError(
            f"{name} needs at least {min_rows} samples on each side, got {x.shape[0]} and {y.shape[0]}"
        )
    x = x.detach().to(torch.float64)
    return x, y.detach().to(device=x.device, dtype=torch.float64)


def _distance_blocks(x: Tensor, y: Tensor) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(row_start, dist)``: Euclidean distances from a block of rows of ``x`` to all of ``y``."""
    rows = max(1, _PAIR_BUDGET // max(1, y.shape[0]))
    for start in range(0, x.shape[0], rows):
        yield start, torch.cdist(x[start : start + rows], y, compute_mode="donot_use_mm_for_euclid_dist")


def _kernel_sum(x: Tensor, y: Tensor, inv_two_sigma2: Tensor, exclude_diagonal: bool) -> float:
    """Sum of the kernel over all pairs of rows of ``x`` and ``y`` (minus the ``i = j`` terms if asked)."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start, dist in _distance_blocks(x, y):
        d2 = dist.pow(2)  # (rows, M)
        k = torch.zeros_like(d2)
        for c in inv_two_sigma2.tolist():  # one (rows, M) temporary per bandwidth, never (rows, M, B)
            k += torch.exp(-c * d2)
        total = total + k.sum()
        if exclude_diagonal:
            total = total - k.diagonal(offset=start).sum()
    return float(total)


def _median_distance(x: Tensor, y: Tensor, max_points: int = 1000) -> float:
    pooled = torch.cat([x, y])
    if pooled.shape[0] > max_points:  # deterministic, evenly spaced subset; no randomness
        idx = torch.linspace(0, pooled.shape[0] - 1, max_points, device=pooled.device).round().long()
        pooled = pooled[idx]
    dist = torch.cdist(pooled, pooled, compute_mode="donot_use_mm_for_euclid_dist")
    iu = torch.triu_indices(pooled.shape[0], pooled.shape[0], offset=1, device=pooled.device)
    med = float(dist[iu[0], iu[1]].median()) if iu.shape[1] > 0 else 0.0
    return med if med > 0 else 1.0


def mmd(
    x: Tensor,
    y: Tensor,
    *,
    bandwidths: Sequence[float] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
    median_heuristic: bool = False,
) -> float:
    r"""Squared maximum mean discrepancy, unbiased U-statistic, with a sum of RBF kernels.

    .. math::

        k(a, b) = \sum_{\sigma} \exp\!\Big(-\frac{\|a - b\|^2}{2\sigma^2}\Big),\qquad
        \widehat{\mathrm{MMD}}^2_u = \frac{1}{n(n-1)}\sum_{i\ne i'} k(x_i, x_{i'})
        + \frac{1}{m(m-1)}\sum_{j\ne j'} k(y_j, y_{j'}) - \frac{2}{nm}\sum_{i,j} k(x_i, y_j)

    (Gretton et al., "A Kernel Two-Sample Test", JMLR 2012, eq. 3). Being unbiased, it is close to 0 for
    two samples of one distribution and can then be slightly negative.

    Args:
        x: first sample, shape ``(N, D)``, ``N >= 2``.
        y: second sample, shape ``(M, D)``, ``M >= 2``.
        bandwidths: the kernel widths :math:`\sigma` (in data units unless ``median_heuristic``).
        median_heuristic: if True, every bandwidth is multiplied by the median pairwise Euclidean distance
            of the pooled sample (on an evenly spaced deterministic subset of at most 1000 points), which
            makes the statistic invariant to a global rescaling of the data.

    Returns:
        The estimate of :math:`\mathrm{MMD}^2`, a float.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g)
        >>> abs(mmd(x, y)) < 0.05, mmd(x, y + 2.0) > 0.5
        (True, True)
    """
    x, y = _prepare(x, y, "mmd", min_rows=2)
    sig = torch.as_tensor(list(bandwidths), dtype=torch.float64, device=x.device)
    if sig.ndim != 1 or sig.numel() == 0 or not bool((sig > 0).all()):
        raise ValueError(f"mmd needs a non-empty sequence of positive bandwidths, got {bandwidths!r}")
    if median_heuristic:
        sig = sig * _median_distance(x, y)
    inv = 1.0 / (2.0 * sig.pow(2))
    n, m = x.shape[0], y.shape[0]
    kxx = _kernel_sum(x, x, inv, exclude_diagonal=True) / (n * (n - 1))
    kyy = _kernel_sum(y, y, inv, exclude_diagonal=True) / (m * (m - 1))
    kxy = _kernel_sum(x, y, inv, exclude_diagonal=False) / (n * m)
    return kxx + kyy - 2.0 * kxy


def _mean_distance(x: Tensor, y: Tensor) -> float:
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for _, dist in _distance_blocks(x, y):
        total = total + dist.sum()
    return float(total) / (x.shape[0] * y.shape[0])


def energy_distance(x: Tensor, y: Tensor) -> float:
    r"""Energy distance (V-statistic).

    .. math:: \mathcal{E}(x, y) = 2\,\mathbb{E}\|X - Y\| - \mathbb{E}\|X - X'\| - \mathbb{E}\|Y - Y'\|

    All expectations are plain averages over all pairs, the diagonal (zero) pairs included, so this is the
    energy distance between the two empirical measures: it is ``>= 0``, exactly 0 for identical samples,
    and for point masses :math:`\delta_a, \delta_b` equals :math:`2\|a - b\|` (Székely & Rizzo, "Energy
    statistics", 2013). It is the squared-distance form (no square root).

    Args:
        x: first sample, shape ``(N, D)``.
        y: second sample, shape ``(M, D)``.

    Returns:
        The V-statistic, a float.

    Example:
        >>> energy_distance(torch.zeros(5, 1), torch.full((3, 1), 1.5))
        3.0
    """
    x, y = _prepare(x, y, "energy_distance")
    return 2.0 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y)
