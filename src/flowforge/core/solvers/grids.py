r"""Time grids for :func:`~flowforge.core.solvers.solve`: uniform, SD3-shifted and EDM's.

Every grid is a float64 tensor of shape ``(K + 1,)`` for ``K`` steps, with both ends included exactly.

Example:
    >>> uniform_grid(4).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    >>> uniform_grid(2, 1.0, 0.0).tolist()
    [1.0, 0.5, 0.0]
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowforge.core.time import resolution_shift

__all__ = ["edm_grid", "shifted_grid", "uniform_grid"]


def _check_steps(steps: int, name: str) -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"{name} needs an integer steps >= 1, got {steps!r}; write e.g. {name}(20)")
    return int(steps)


def uniform_grid(steps: int, t0: float = 0.0, t1: float = 1.0) -> Tensor:
    """Uniform grid of ``steps`` intervals from ``t0`` to ``t1`` (either direction).

    Args:
        steps: number of steps ``K >= 1``.
        t0: first time (0 to sample; 1 to go backwards).
        t1: last time, ``!= t0``.

    Returns:
        float64 tensor of shape ``(K + 1,)``, ``t0`` and ``t1`` included exactly.
    """
    steps = _check_steps(steps, "uniform_grid")
    if t0 == t1:
        raise ValueError(f"uniform_grid needs t0 != t1, got t0 = t1 = {t0}; e.g. uniform_grid(20, 0.0, 1.0)")
    g = torch.linspace(float(t0), float(t1), steps + 1, dtype=torch.float64)
    g[0], g[-1] = float(t0), float(t1)
    return g


def shifted_grid(steps: int, shift: float) -> Tensor:
    r"""Uniform grid on ``[0, 1]`` passed through SD3's resolution shift (Esser et al., 2024, eq. 23),
    :math:`t' = t / (a - (a - 1) t)`; ``shift = a > 1`` spends more steps near the noise (t=0).

    Args:
        steps: number of steps ``K >= 1``.
        shift: the factor ``a > 0`` (1.0 gives :func:`uniform_grid`).

    Returns:
        float64 tensor of shape ``(K + 1,)`` from 0 to 1.
    """
    return resolution_shift(uniform_grid(_check_steps(steps, "shifted_grid")), shift)


def edm_grid(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    r"""EDM's noise levels (Karras et al., NeurIPS 2022, eq. 5) as flowforge times on the linear path.

    Karras et al. take, for :math:`i = 0, \dots, N-1` with :math:`N` = ``steps``,

    .. math::
        \sigma_i = \big(\sigma_{\max}^{1/\rho} + \tfrac{i}{N-1}(\sigma_{\min}^{1/\rho}
        - \sigma_{\max}^{1/\rho})\big)^{\rho},\qquad \sigma_N = 0.

    On the linear path :math:`x_t = t x_1 + (1 - t) x_0`, :math:`x_t / t` is EDM's
    :math:`x_1 + \sigma x_0` with :math:`\sigma = (1 - t)/t`, i.e. :math:`t = 1/(1 + \sigma)`. The grid
    starts at :math:`t_0 = 1/(1+\sigma_{\max})` (about 0.0123, not 0: start from
    ``(1 - t0) * noise``, or plain noise, whose mismatch is ``O(t0)``) and ends at exactly ``1.0``
    (:math:`\sigma_N = 0`). With ``steps = 1`` it is ``[1/(1+sigma_max), 1]``.

    Args:
        steps: number of steps ``N >= 1``.
        sigma_min: smallest positive noise level, ``> 0``.
        sigma_max: largest noise level, ``> sigma_min``.
        rho: the warping exponent, ``> 0`` (7 in EDM).

    Returns:
        float64 tensor of shape ``(N + 1,)``, increasing, ending at 1.0.
    """
    steps = _check_steps(steps, "edm_grid")
    if not (0 < sigma_min < sigma_max) or not rho > 0:
        raise ValueError(
            f"edm_grid needs 0 < sigma_min < sigma_max and rho > 0, got sigma_min={sigma_min}, "
            f"sigma_max={sigma_max}, rho={rho}; EDM uses edm_grid(steps, 0.002, 80.0, 7.0)"
        )
    if steps == 1:
        sigma = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
        lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
        sigma = (hi + ramp * (lo - hi)) ** rho
    t = 1.0 / (1.0 + sigma)
    return torch.cat([t, torch.ones(1, dtype=torch.float64)])
