r"""A score-free EPR: the mean heat dissipation :math:`E_\rho[b^\top D^{-1} b + \nabla\cdot b]`.

In a stationary state the total entropy production equals the medium's, the Stratonovich mean
:math:`E[b^\top D^{-1}\circ\dot z] = E_\rho[b^\top D^{-1} v]` (Sekimoto's heat over the temperature), and
:math:`E_\rho[b\cdot\nabla\log\rho] = -E_\rho[\nabla\cdot b]` by parts, so

.. math:: \dot S = E_\rho\big[b^\top D^{-1} b\big] + E_\rho\big[\nabla\cdot b\big],

which needs only stationary samples and the drift, no score. (It agrees with the two score estimators of
:func:`~flowforge.apps.active_matter.entropy_production` for the true score because
:math:`E_\rho[s\cdot v] = E_\rho[L\log\rho] = 0` at stationarity.) Its variance is larger than theirs (the two
terms cancel to leading order in equilibrium), so it wants more samples, which cost nothing but simulation;
on EM samples it carries the integrator's :math:`O(dt)` bias. It is the truth a learned score's EPR is checked
against where no closed form exists. Needs :math:`\varepsilon > 0`.

Example:
    >>> import torch
    >>> from flowforge.apps.active_matter import AOUP, epr_closed_form, simulate_stationary
    >>> sys = AOUP(A=1.0, v0=1.0, eps=0.1)
    >>> z = simulate_stationary(sys, 100_000, generator=torch.Generator().manual_seed(0))
    >>> mean, se = epr_heat(sys, z)
    >>> abs(mean - epr_closed_form(sys)) < 4 * se
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowforge.apps.active_matter.aoup import AOUP

__all__ = ["epr_heat"]


def epr_heat(system: AOUP, z: Tensor, *, batch_size: int = 8192) -> tuple[float, float]:
    """The score-free EPR and its standard error on stationary states ``z`` ``(B, N, 2, d)``."""
    if system.eps <= 0:
        raise ValueError("epr_heat needs eps > 0 (with eps = 0 the position noise is singular)")
    system.check_state(z)
    if z.shape[0] < 2:
        raise ValueError("epr_heat needs at least two samples (it reports a standard error)")
    parts = []
    for chunk in z.split(batch_size):
        b = system.drift(chunk)
        per = (b * b / system.diffusion_like(chunk)).sum((-2, -1)) + system.drift_divergence(chunk).sum(-1)
        parts.append(per.sum(1).double())
    tot = torch.cat(parts)
    return float(tot.mean()), float(tot.std()) / math.sqrt(len(tot))
