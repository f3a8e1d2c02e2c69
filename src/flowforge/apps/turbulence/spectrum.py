r"""Kinetic-energy spectrum per wavenumber shell and its relative error per shell.

For vorticity :math:`\omega` on an :math:`n\times n` periodic grid,
:math:`|\hat u(k)|^2 + |\hat v(k)|^2 = |\hat\omega(k)|^2/|k|^2`, and the shell spectrum is

.. math:: E(k) = \sum_{k - 1/2 \le |\mathbf k| < k + 1/2} \tfrac12 |\hat\omega(\mathbf k)|^2 / (|\mathbf k|^2 n^4),

(summed over the full ``fft2`` grid) so that :math:`\sum_k E(k)` is the mean kinetic energy (Parseval).
:func:`spectrum_error` compares batch-averaged spectra shell by shell: :math:`|E_\text{pred}(k)/E_\text{true}(k) - 1|`.

Example:
    >>> import torch
    >>> from flowforge.apps.turbulence.forcing import random_vorticity
    >>> from flowforge.apps.turbulence.spectral import energy
    >>> w = random_vorticity(3, 32, generator=torch.Generator().manual_seed(0))
    >>> e = energy_spectrum(w)
    >>> e.shape, bool(torch.allclose(e.sum(-1), energy(w)))
    (torch.Size([3, 24]), True)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["energy_spectrum", "spectrum_error"]


def energy_spectrum(w: Tensor) -> Tensor:
    """``E(k)`` for shells ``k = 0 .. round(n / sqrt(2))`` of vorticity ``(..., n, n)`` -> ``(..., K)``."""
    if w.dim() < 2 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"expected vorticity (..., n, n), got shape {tuple(w.shape)}")
    n = w.shape[-1]
    k1 = torch.fft.fftfreq(n, 1.0 / n, dtype=w.dtype, device=w.device)
    k2 = k1[None, :] ** 2 + k1[:, None] ** 2
    shell = k2.sqrt().round().long().flatten()
    dens = torch.fft.fft2(w).abs().square() / torch.where(k2 == 0, torch.inf, k2) / (2 * n**4)
    flat = dens.reshape(-1, n * n)
    out = torch.zeros(flat.shape[0], int(shell.max()) + 1, dtype=w.dtype, device=w.device)
    out.index_add_(1, shell, flat)
    return out.reshape(*w.shape[:-2], -1)


def spectrum_error(pred: Tensor, true: Tensor, *, kmax: int | None = None) -> Tensor:
    """Per-shell relative error ``|E_pred(k) / E_true(k) - 1|`` of batch-averaged spectra, shells ``1..kmax``.

    Args:
        pred, true: vorticity ``(B, n, n)`` or ``(B, 1, n, n)``.
        kmax: last shell (default ``n // 3``, the dealiased band of the solver).

    Returns:
        ``(kmax,)``: entry ``i`` is shell ``k = i + 1``.
    """
    if pred.shape != true.shape:
        raise ValueError(
            f"pred and true must have one shape, got {tuple(pred.shape)} and {tuple(true.shape)}"
        )
    n = true.shape[-1]
    kmax = n // 3 if kmax is None else int(kmax)
    ep, et = energy_spectrum(pred), energy_spectrum(true)
    ep, et = ep.reshape(-1, ep.shape[-1]).mean(0), et.reshape(-1, et.shape[-1]).mean(0)
    return (ep[1 : kmax + 1] / et[1 : kmax + 1] - 1).abs()
