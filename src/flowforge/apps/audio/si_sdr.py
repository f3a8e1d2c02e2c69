r"""Scale-invariant signal-to-distortion ratio (Le Roux et al. 2019, "SDR - half-baked or well done?").

With zero-mean signals, the target is projected onto the reference :math:`s`,

.. math:: s_T = \frac{\langle \hat s, s\rangle}{\lVert s \rVert^2} s,\qquad e = \hat s - s_T,\qquad
          \mathrm{SI\text{-}SDR}(\hat s, s) = 10 \log_{10} \frac{\lVert s_T \rVert^2}{\lVert e \rVert^2},

and the improvement over the mixture :math:`y` is :math:`\mathrm{SI\text{-}SDR}(\hat s, s) -
\mathrm{SI\text{-}SDR}(y, s)`.

Example:
    >>> import torch
    >>> s = torch.randn(1, 1000, dtype=torch.float64)
    >>> round(float(si_sdr(3.0 * s + 0.0, s)), 1) > 100
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["si_sdr", "si_sdr_improvement"]


def si_sdr(estimate: Tensor, reference: Tensor, *, eps: float = 1e-12) -> Tensor:
    """SI-SDR in dB, ``(B,)``, of estimates against references, both ``(B, L)``."""
    if estimate.shape != reference.shape or estimate.dim() != 2:
        raise ValueError(
            f"estimate {tuple(estimate.shape)} and reference {tuple(reference.shape)} must both be (B, L)"
        )
    s = reference - reference.mean(1, keepdim=True)
    x = estimate - estimate.mean(1, keepdim=True)
    alpha = (x * s).sum(1, keepdim=True) / s.square().sum(1, keepdim=True).clamp_min(eps)
    target = alpha * s
    noise = x - target
    return 10 * torch.log10(target.square().sum(1).clamp_min(eps) / noise.square().sum(1).clamp_min(eps))


def si_sdr_improvement(estimate: Tensor, reference: Tensor, mixture: Tensor) -> Tensor:
    """SI-SDRi in dB, ``(B,)``: :func:`si_sdr` of the estimate minus that of the mixture."""
    return si_sdr(estimate, reference) - si_sdr(mixture, reference)
