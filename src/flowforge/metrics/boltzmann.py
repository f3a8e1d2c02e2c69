r"""Metrics of Boltzmann generators: ESS, :math:`\log Z` error, energy-:math:`W_2`, and one summary call.

- :func:`ess`: Kish's effective sample size of importance weights, normalised to ``[0, 1]``.
- :func:`log_z_error`: :math:`|\log\hat Z - \log Z|`.
- :func:`wasserstein_1d` / :func:`energy_w2`: the exact 1-D Wasserstein distance between two empirical
  distributions from their sorted quantile functions; energy-:math:`W_2` is that distance between the
  energies of reference samples and generated ones (Prose's ``sqrt(ot.emd2_1d(E_true, E_pred))``).
- :func:`boltzmann_metrics`: the dictionary the CLI's ``eval`` prints for a flow and an energy.

Example:
    >>> energy_w2(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0]))
    2.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowforge.normalizing.importance import effective_sample_size, importance_sample

__all__ = ["boltzmann_metrics", "energy_w2", "ess", "log_z_error", "wasserstein_1d"]


def ess(log_w: Tensor) -> float:
    r"""Kish ESS :math:`(\sum w)^2 / (N \sum w^2)` of log-weights ``(N,)``, in ``[0, 1]``.

    Example:
        >>> ess(torch.log(torch.tensor([1.0, 1.0, 0.0, 0.0])))
        0.5
    """
    return effective_sample_size(log_w)


def log_z_error(estimate: float, true: float) -> float:
    r"""Absolute error :math:`|\log\hat Z - \log Z|` (the ratio error of :math:`\hat Z` on a log scale).

    Example:
        >>> round(log_z_error(164.5, 164.6957), 4)
        0.1957
    """
    if not math.isfinite(true):
        raise ValueError(f"the true log Z must be finite, got {true}")
    return abs(float(estimate) - float(true))


def _as_1d(v: Tensor | np.ndarray, name: str) -> np.ndarray:
    a = v.detach().cpu().double().numpy() if isinstance(v, Tensor) else np.asarray(v, dtype=np.float64)
    a = a.reshape(-1)
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise ValueError(
            f"{name} has {int((~np.isfinite(a)).sum())} non-finite values; drop them first "
            f"(e.g. v[torch.isfinite(v)]) and report how many were dropped"
        )
    return np.sort(a)


def wasserstein_1d(a: Tensor | np.ndarray, b: Tensor | np.ndarray, p: float = 2.0) -> float:
    r"""Exact :math:`W_p` between the empirical distributions of ``a: (N,)`` and ``b: (M,)``.

    .. math:: W_p^p = \int_0^1 |F_a^{-1}(u) - F_b^{-1}(u)|^p\,du,

    computed on the merged breakpoints :math:`\{i/N\} \cup \{j/M\}` of the two step quantile functions
    (float64; :math:`N \ne M` allowed).

    Example:
        >>> wasserstein_1d(torch.tensor([0.0, 1.0]), torch.tensor([0.0]), p=1)
        0.5
    """
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    sa, sb = _as_1d(a, "a"), _as_1d(b, "b")
    n, m = sa.size, sb.size
    u = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    du = np.diff(np.concatenate([[0.0], u]))
    mid = u - du / 2
    ia = np.minimum((mid * n).astype(np.int64), n - 1)
    ib = np.minimum((mid * m).astype(np.int64), m - 1)
    return float(np.sum(du * np.abs(sa[ia] - sb[ib]) ** p) ** (1.0 / p))


def energy_w2(e_ref: Tensor | np.ndarray, e_gen: Tensor | np.ndarray) -> float:
    """Energy-:math:`W_2`: :func:`wasserstein_1d` with ``p=2`` between reference and generated energies."""
    return wasserstein_1d(e_ref, e_gen, p=2.0)


@torch.no_grad()
def boltzmann_metrics(
    flow: Any,
    energy: Callable[[Tensor], Tensor],
    n: int,
    generator: torch.Generator | None = None,
    *,
    batch_size: int = 4096,
    quantile_filter: float = 0.0,
    reference: Tensor | None = None,
) -> dict[str, float]:
    r"""Importance-sampling diagnostics of ``flow`` as a proposal for ``energy`` from ``n`` samples.

    Returns a dict with

    - ``ess``: Kish ESS in ``[0, 1]``; ``logz``: :math:`\log\hat Z`; ``n``; ``n_nonfinite``
      (samples with a non-finite energy or density, weight zero); ``mean_energy`` of the flow's samples;
    - ``logz_error``: :math:`|\log\hat Z - \log Z|` when ``energy.log_z`` is known;
    - with ``reference`` samples ``(M, D)`` of the target: ``energy_w2`` (flow samples vs reference) and
      ``energy_w2_reweighted`` (``n`` SNIS-resampled samples vs reference).

    Example:
        >>> from flowforge.normalizing.linear import ActNorm
        >>> from flowforge.normalizing.flow import Flow
        >>> class Gauss:  # pi = N(0, I) in 2-D
        ...     log_z = math.log(2 * math.pi)
        ...     def __call__(self, x): return 0.5 * x.square().sum(-1)
        >>> m = boltzmann_metrics(Flow([ActNorm(2)], event_shape=(2,)), Gauss(), 500,
        ...                       torch.Generator().manual_seed(0))
        >>> round(m["ess"], 6), m["logz_error"] < 1e-6
        (1.0, True)
    """
    out = importance_sample(
        flow, energy, n, generator=generator, batch_size=batch_size, quantile_filter=quantile_filter
    )
    finite = torch.isfinite(out.energy)
    res: dict[str, float] = {
        "n": float(n),
        "ess": out.ess,
        "logz": out.log_z,
        "n_nonfinite": float(out.n_nonfinite),
        "mean_energy": float(out.energy[finite].double().mean()) if bool(finite.any()) else math.nan,
    }
    true = getattr(energy, "log_z", None)
    if true is not None:
        res["logz_error"] = log_z_error(out.log_z, float(true))
    if reference is not None:
        e_ref = energy(reference.to(out.samples))
        res["energy_w2"] = energy_w2(e_ref, out.energy[finite])
        res["energy_w2_reweighted"] = energy_w2(e_ref, energy(out.resample(n, generator)))
    return res
