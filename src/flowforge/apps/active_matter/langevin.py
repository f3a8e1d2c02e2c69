r"""Sampling the stationary density from a score by unadjusted Langevin dynamics.

.. math:: z_{k+1} = z_k + h\, s(z_k) + \sqrt{2h}\,\xi_k

(Roberts & Tweedie, 1996), started from :func:`~flowforge.apps.active_matter.simulator.initial_state`,
with positions wrapped in a periodic box. With the exact score its law tends to the stationary density up
to an :math:`O(h)` bias; with a learned score it shows what density the score describes (a score does not
give the *dynamics*: that needs the drift, see the simulator). This is the ``sample`` of the active-matter
recipes.

Example:
    >>> import torch
    >>> from flowforge.apps.active_matter import AOUP, exact_score, stationary_covariance
    >>> sys = AOUP(A=1.0, v0=1.0, eps=0.1)
    >>> sampler = LangevinSampler(lambda z: exact_score(sys, z), sys)
    >>> z = sampler.sample(4000, steps=400, step_size=0.02, generator=torch.Generator().manual_seed(0))
    >>> bool((torch.cov(z[:, 0, :, 0].T) - stationary_covariance(sys)).abs().max() < 0.1)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from flowforge.apps.active_matter.aoup import AOUP, join_state, split_state
from flowforge.apps.active_matter.periodic import wrap
from flowforge.apps.active_matter.simulator import initial_state

__all__ = ["LangevinSampler"]


class LangevinSampler:
    """A Generator (``sample(n, generator=...)``) that runs Langevin dynamics on a score.

    Args:
        score: ``s(z) -> (B, N, 2, d)``.
        system: the AOUP (its shape, box and starting law).
        dtype: the dtype of the samples.
    """

    def __init__(
        self, score: Callable[[Tensor], Tensor], system: AOUP, dtype: torch.dtype = torch.float64
    ) -> None:
        self.score, self.system, self.dtype = score, system, dtype

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, steps: int = 1000, step_size: float = 1e-2
    ) -> Tensor:
        """``(n, N, 2, d)`` states after ``steps`` Langevin steps of size ``step_size``."""
        if n < 1 or steps < 0 or not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(
                f"need n >= 1, steps >= 0 and step_size > 0; got n={n}, steps={steps}, step_size={step_size}"
            )
        z = initial_state(self.system, n, generator=generator, dtype=self.dtype)
        for _ in range(steps):
            noise = torch.randn(z.shape, generator=generator, dtype=self.dtype)
            z = z + step_size * self.score(z).to(self.dtype) + math.sqrt(2 * step_size) * noise
            x, g = split_state(z)
            z = join_state(wrap(x, self.system.box), g)
        return z
