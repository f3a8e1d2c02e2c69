r"""Exact optimal-transport distance between empirical measures.

Needs POT: ``pip install 'flowforge[ot]'``.
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

__all__ = ["wasserstein2"]


def wasserstein2(x: Tensor, y: Tensor, *, max_pairs: int = 25_000_000) -> float:
    r"""Exact :math:`W_2` between the uniform empirical measures of two point clouds.

    Solves the discrete optimal-transport linear program with POT's network simplex (``ot.emd2``) on the
    squared Euclidean cost matrix, in float64:

    .. math:: W_2(\hat\mu, \hat\nu) = \Big(\min_{\pi \in \Pi(\frac1n \mathbf 1, \frac1m \mathbf 1)}
              \sum_{ij} \pi_{ij} \|x_i - y_j\|^2\Big)^{1/2}.

    Args:
        x: first cloud, shape ``(N, D)``.
        y: second cloud, shape ``(M, D)``.
        max_pairs: refuse when ``N * M`` exceeds this (the cost matrix alone takes ``8 N M`` bytes and the
            solver's time grows roughly cubically); subsample, or use :func:`sliced_wasserstein`.

    Returns:
        :math:`W_2`, a float ``>= 0``.

    Raises:
        ImportError: POT is not installed (``pip install 'flowforge[ot]'``).
        ValueError: bad shapes, or ``N * M > max_pairs``.

    Example:
        >>> import torch
        >>> x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
        >>> round(wasserstein2(x, x + torch.tensor([3.0, 0.0, 4.0])), 6)
        5.0
    """
    try:
        import ot
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "wasserstein2 needs the POT package; install it with pip install 'flowforge[ot]' "
            "(or use flowforge.metrics.sliced_wasserstein, which needs no extra package)"
        ) from exc

    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"wasserstein2 needs clouds of shape (N, D) and (M, D), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    n, m = x.shape[0], y.shape[0]
    if n == 0 or m == 0:
        raise ValueError(f"wasserstein2 got an empty cloud: shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if n * m > max_pairs:
        raise ValueError(
            f"wasserstein2 on {n} x {m} points needs a {n * m:,}-entry cost matrix "
            f"(limit max_pairs={max_pairs:,}); "
            "subsample both clouds, or use flowforge.metrics.sliced_wasserstein(x, y) for large clouds"
        )
    xs = x.detach().cpu().double().numpy()
    ys = y.detach().cpu().double().numpy()
    cost = ot.dist(xs, ys, metric="sqeuclidean")
    a = np.full(n, 1.0 / n)
    b = np.full(m, 1.0 / m)
    w2sq = float(ot.emd2(a, b, cost, numItermax=max(100_000, 50 * n * m)))
    return math.sqrt(max(w2sq, 0.0))
