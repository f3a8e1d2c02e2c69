r"""The equilibrium score of an AOUP: the exact stationary score at :math:`v_0 = 0`, a baseline for learned scores.

Without self-propulsion the positions follow a gradient flow, :math:`dx = -\nabla U\,dt + \sqrt{2\varepsilon}\,dW`
with :math:`-\nabla U = k\sum_j F_{ij} - A x` (the repulsion :math:`F_{ij}` is the gradient of a pair
potential), and the propulsions are independent OU processes, so the stationary density is
:math:`\rho_{eq} \propto e^{-U(x)/\varepsilon}\,N(g; 0, I)` and

.. math:: s_{eq}(z) = \Big(\frac{b_x(z) - v_0 g}{\varepsilon},\; -g\Big).

Writing the learned score as :math:`s = s_{eq} + \delta_\theta` leaves the network only the active part
:math:`\delta` (of order :math:`v_0` for small activity) and gives the probability-flow velocity a simple form,

.. math:: v = b - D s = (v_0 g, 0) - D\delta, \qquad \nabla\cdot v = -\nabla\cdot(D\delta),

because :math:`\nabla\cdot(D s_{eq})` is exactly :math:`\nabla\cdot b` (per particle:
:meth:`AOUP.drift_divergence`). The stiff repulsion, which dominates the score at low activity, is then
never learned, and its Jacobian never enters a Hutchinson estimate. (Ours: a control variate for the
estimators of Boffi & Vanden-Eijnden, arXiv:2309.12991, whose networks learn the whole score.)

Example:
    >>> import torch
    >>> from flowforge.apps.active_matter import AOUP, exact_score
    >>> sys = AOUP(A=1.0, v0=0.0, eps=0.1)  # no activity: the equilibrium score is the exact one
    >>> z = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    >>> bool(torch.allclose(equilibrium_score(sys, z), exact_score(sys, z)))
    True
"""

from __future__ import annotations

from torch import Tensor

from flowforge.apps.active_matter.aoup import AOUP, join_state, split_state

__all__ = ["equilibrium_score"]


def equilibrium_score(system: AOUP, z: Tensor) -> Tensor:
    r""":math:`s_{eq}(z) = ((b_x - v_0 g)/\varepsilon, -g)`, ``(B, N, 2, d)``; needs ``eps > 0``."""
    if system.eps <= 0:
        raise ValueError(
            "equilibrium_score needs translational noise (eps > 0): with eps = 0 the positions have no "
            "equilibrium density; use baseline='none'"
        )
    system.check_state(z)
    x, g = split_state(z)
    bx = split_state(system.drift(z))[0]
    return join_state((bx - system.v0 * g) / system.eps, -g)
