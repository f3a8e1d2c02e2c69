r"""The probability-flow velocity of a stationary diffusion: :math:`v = b - D s`.

For :math:`dz = b(z)\,dt + \sqrt{2D}\,dW` with stationary density :math:`\rho` and score
:math:`s = \nabla\log\rho`, the Fokker-Planck equation reads :math:`\nabla\cdot(\rho v) = 0` with
:math:`v = b - Ds`: :math:`v` is the mean local velocity (the probability current over the density),
zero in equilibrium and non-zero for active matter (Boffi & Vanden-Eijnden, arXiv:2309.12991; reference code
``calc_vs``: :math:`v_x = b_x - \varepsilon s_x`, :math:`v_g = -\gamma(g + s_g)`).

Example:
    >>> import torch
    >>> from flowforge.apps.active_matter import AOUP, exact_score
    >>> sys = AOUP(n_particles=2, v0=1.0, eps=0.1, box=4.0)  # free particles: s = (0, -g)
    >>> z = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    >>> v = probability_flow_velocity(sys, z, exact_score(sys, z))
    >>> bool(torch.allclose(v[:, :, 0], z[:, :, 1])), bool((v[:, :, 1] == 0).all())  # v_x = v0 g, v_g = 0
    (True, True)
"""

from __future__ import annotations

from torch import Tensor

from flowforge.apps.active_matter.aoup import AOUP

__all__ = ["probability_flow_velocity"]


def probability_flow_velocity(system: AOUP, z: Tensor, score: Tensor) -> Tensor:
    """:math:`v = b(z) - D\\,s(z)`, ``(B, N, 2, d)`` from states and scores of that shape."""
    system.check_state(z)
    system.check_state(score, "score")
    return system.drift(z) - system.diffusion_like(z) * score
