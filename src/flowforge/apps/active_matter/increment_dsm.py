r"""Denoising score matching on the SDE's own increments (Boffi & Vanden-Eijnden's "denoising" loss).

Take a stationary state :math:`z`, one step of the dynamics :math:`z' = m(z) + \Sigma_h^{1/2}\xi`
(:func:`~flowforge.apps.active_matter.step`), and regress the score at :math:`z'` on the kernel score
:math:`\kappa = \nabla_{z'}\log p(z' \mid z)`:

.. math:: \mathcal{L}(s) = E\big[\,|s(z')|^2 - 2\, s(z')\cdot\kappa\,\big] = E|s(z') - \kappa|^2 - \text{const}.

Its minimiser is the score of the law of :math:`z'`; as :math:`z` is stationary, that law is the
stationary :math:`\rho` exactly for the exact transition of a linear system, and up to the integrator's
bias otherwise (reference code ``denoising_sample_loss``: EM step, target :math:`-\xi/\sigma` with
:math:`\sigma = \sqrt{2\varepsilon h}` on :math:`x` and the OU step's scale on :math:`g`). With
antithetic pairs :math:`\pm\xi` (as in the reference) the :math:`O(h^{-1/2})` noise of the target cancels to
leading order. Coordinates without noise (:math:`\varepsilon = 0` under EM) are left out. The loss is
divided by the number of coordinates :math:`2Nd`.

Example:
    >>> import torch
    >>> from flowforge.apps.active_matter import AOUP, exact_score, simulate_stationary
    >>> sys = AOUP(A=1.0, v0=1.0, eps=0.1)
    >>> g = torch.Generator().manual_seed(0)
    >>> z = simulate_stationary(sys, 4000, generator=g)
    >>> exact = increment_dsm_loss(lambda z: exact_score(sys, z), sys, z, 0.1, generator=g)
    >>> worse = increment_dsm_loss(lambda z: 0.8 * exact_score(sys, z), sys, z, 0.1, generator=g)
    >>> bool(exact < worse)
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flowforge.apps.active_matter.aoup import AOUP
from flowforge.apps.active_matter.simulator import StepMethod, _resolve, step

__all__ = ["increment_dsm_loss"]


def increment_dsm_loss(
    score: Callable[[Tensor], Tensor],
    system: AOUP,
    z: Tensor,
    dt: float,
    *,
    method: StepMethod = "auto",
    antithetic: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The increment-DSM loss (a scalar) of ``score`` on stationary states ``z`` ``(B, N, 2, d)``.

    Args:
        score: ``s(z) -> (B, N, 2, d)``.
        system: the AOUP whose dynamics make the increments.
        z: stationary states.
        dt: the step :math:`h` (exact steps: any size; EM: small, e.g. ``1e-3`` to ``1e-2``).
        method: ``"auto"`` (exact for linear systems), ``"em"`` or ``"exact"``.
        antithetic: average over the pair :math:`\\pm\\xi`.
        generator: the source of :math:`\\xi` (None: torch's global RNG, which the trainer seeds).
    """
    system.check_state(z)
    m = _resolve(system, method)
    xi = torch.randn(z.shape, generator=generator, dtype=z.dtype, device="cpu").to(z.device)
    mask = system.noisy_like(z).to(z.dtype) if m == "em" else torch.ones_like(z)
    signs = (1.0, -1.0) if antithetic else (1.0,)
    total = z.new_zeros(())
    for sign in signs:
        nxt = step(system, z, dt, sign * xi, m)
        s = score(nxt.z)
        system.check_state(s, "score(z)")
        total = total + ((s * s - 2 * s * nxt.kernel_score) * mask).sum((1, 2, 3)).mean()
    return total / (len(signs) * z[0].numel())
