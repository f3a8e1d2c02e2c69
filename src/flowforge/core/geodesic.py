r"""The geodesic conditional path of Riemannian flow matching (Chen & Lipman, ICLR 2024, §3.2).

.. math::
    x_t = \exp_{x_0}\!\big(\kappa(t)\, \log_{x_0} x_1\big),\qquad
    u_t(x_t \mid x_0, x_1) = \dot x_t = \dot\kappa(t)\, \frac{d}{ds}\exp_{x_0}(s\, \log_{x_0} x_1)\Big|_{s=\kappa(t)},

with :math:`\kappa(0) = 0`, :math:`\kappa(1) = 1`: the point moves along the minimising geodesic from
the source sample :math:`x_0` to the data point :math:`x_1`. Chen & Lipman write it from the data end,
:math:`\exp_{x_1}(\kappa'(t) \log_{x_1} x_0)` with :math:`\kappa'(t) = 1 - \kappa(t)`; where the minimising
geodesic is unique the two are the same curve. :math:`\kappa` is the ``alpha`` of any schedule of
:mod:`flowforge.core.schedules` whose ``alpha`` runs from 0 to 1 (``Linear``: constant speed, the
paper's choice; ``Cosine``, ``Polynomial``). The geodesic's velocity is the manifold's closed form
(``geodesic_velocity``: slerp's derivative on the sphere, constant on the torus, :math:`R e^{s\hat\omega}
\hat\omega` on SO(3)), or a forward-mode JVP for a manifold without one.

Example:
    >>> import torch
    >>> from flowforge.core.manifolds import Sphere
    >>> path = GeodesicPath(Sphere(2))
    >>> x0, x1 = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    >>> ps = path.sample(x0, x1, torch.tensor([0.5]))
    >>> ps.x_t, ps.target  # halfway along the quarter circle, speed pi/2
    (tensor([[0.7071, 0.0000, 0.7071]]), tensor([[ 1.1107,  0.0000, -1.1107]]))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from flowforge.core.manifolds import Manifold, jvp_geodesic_velocity
from flowforge.core.paths import PathSample
from flowforge.core.schedules import Linear, Schedule, ScheduleOutput

__all__ = ["GeodesicPath"]


@dataclass(frozen=True)
class GeodesicPath:
    r"""Geodesic interpolation :math:`x_t = \exp_{x_0}(\kappa(t)\log_{x_0}x_1)` and its velocity.

    Args:
        manifold: the manifold (:class:`~flowforge.core.manifolds.Sphere`, ``FlatTorus``, ``SO3``, ...).
        schedule: gives :math:`\kappa = \alpha` and :math:`\dot\kappa = \dot\alpha` (default ``Linear``).
        use_jvp: compute the velocity by a JVP through ``expmap`` even where a closed form exists
            (for testing; slower).
    """

    manifold: Manifold
    schedule: Schedule = field(default_factory=Linear)
    use_jvp: bool = False

    def sample(
        self, x0: Tensor, x1: Tensor, t: Tensor, *, generator: torch.Generator | None = None
    ) -> PathSample:
        """``x_t`` and the conditional velocity; ``x0``, ``x1``: ``(B, *event)`` on the manifold, ``t``: ``(B,)``."""
        if x0.shape != x1.shape:
            raise ValueError(f"x0 has shape {tuple(x0.shape)} but x1 has {tuple(x1.shape)}; they must match")
        if t.dim() != 1 or t.shape[0] != x1.shape[0]:
            raise ValueError(
                f"t must have shape (B,) = ({x1.shape[0]},), got {tuple(t.shape)}; pass one time per sample"
            )
        m = self.manifold
        u = m.logmap(x0, x1)
        if isinstance(self.schedule, Linear):  # kappa = t, kappa' = 1
            kappa, d_kappa = t, None
        else:
            s = self.schedule(t)
            kappa, d_kappa = s.alpha, s.d_alpha
        kb = kappa.reshape(kappa.shape + (1,) * (x1.dim() - 1))
        x_t = m.expmap(x0, kb * u)
        if self.use_jvp:
            vel = jvp_geodesic_velocity(m, x0, u, kappa)
        else:
            vel = m.geodesic_velocity(x0, u, kappa)
        if d_kappa is not None:
            vel = d_kappa.reshape(kb.shape) * vel
        return PathSample(x_t=x_t, t=t, target=vel, x0=x0, x1=x1)

    def effective_schedule(self, t: Tensor) -> ScheduleOutput:
        """The schedule of :math:`\\kappa` (``alpha``; ``sigma = 1 - alpha`` for the convex schedules)."""
        return self.schedule(t)
