r"""Implicit (Hyvärinen) score matching with an exact or a Hutchinson divergence.

.. math:: \mathcal{L}(s) = E_\rho\big[\,|s(z)|^2 + 2\,\nabla\cdot s(z)\,\big]
          = E_\rho|s - \nabla\log\rho|^2 - \text{const}

(Hyvärinen, 2005). The divergence is exact (one backward pass per coordinate) or estimated with
Rademacher probes (Skilling-Hutchinson; the reference code's ``use_skilling_hutch``). A ``mask`` restricts
the loss to some coordinates (e.g. only the noisy ones, :meth:`AOUP.noisy_like`); the loss is divided by
the number of coordinates.

Example:
    >>> import torch
    >>> from flowforge.apps.active_matter import AOUP, exact_score, simulate_stationary
    >>> sys = AOUP(A=1.0, v0=1.0, eps=0.1)
    >>> z = simulate_stationary(sys, 4000, generator=torch.Generator().manual_seed(0))
    >>> exact = implicit_score_matching_loss(lambda z: exact_score(sys, z), z)
    >>> worse = implicit_score_matching_loss(lambda z: 0.8 * exact_score(sys, z), z)
    >>> bool(exact < worse)
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flowforge.apps.active_matter.jacobian import DiagonalMethod, jacobian_diagonal

__all__ = ["implicit_score_matching_loss"]


def implicit_score_matching_loss(
    score: Callable[[Tensor], Tensor],
    z: Tensor,
    *,
    divergence: DiagonalMethod = "exact",
    n_probes: int = 1,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The ISM loss (a scalar, with its graph) of ``score`` on samples ``z`` ``(B, *event)``.

    Args:
        score: ``s(z) -> (B, *event)``.
        z: samples of the target density.
        divergence: ``"exact"`` or ``"hutchinson"``.
        n_probes: Rademacher probes per sample for ``"hutchinson"``.
        mask: boolean or 0/1 tensor broadcastable to ``z``: the coordinates the loss covers (default all).
        generator: the source of the probes (None: torch's global RNG).
    """
    s, diag = jacobian_diagonal(
        score, z, divergence, n_probes=n_probes, generator=generator, create_graph=True
    )
    per = s * s + 2 * diag
    if mask is not None:
        per = per * mask.to(per.dtype)
    return per.reshape(z.shape[0], -1).sum(1).mean() / z[0].numel()
