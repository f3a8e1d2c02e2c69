r"""Samples of Ising models :math:`p(\sigma) \propto \exp(\sigma^\top J \sigma + h^\top \sigma)`, as training data.

Configurations are ``(N, D)`` long tensors in :math:`\{0, 1\}` with spins :math:`\sigma = 2x - 1` (the
layout of :class:`~flowforge.gflownet.Ising` and :class:`~flowforge.gflownet.IsingEnergy`); :math:`J` is a
symmetric ``(D, D)`` matrix whose diagonal is ignored (``flowforge.gflownet.ising_coupling(env)`` gives it
for an environment).

- :func:`ising_gibbs`: sequential-scan Gibbs sampling of ``n`` independent chains (Grathwohl et al. 2021
  and Zhang et al. 2022 make their lattice-Ising data by long Gibbs runs). Site :math:`i` is resampled from
  :math:`p(\sigma_i = +1 \mid \sigma_{-i}) = \mathrm{sigmoid}\big(4\sum_{j\ne i} J_{ij}\sigma_j + 2h_i\big)`.
- :func:`ising_exact`: i.i.d. samples by enumerating the :math:`2^D` configurations (``D <= 22``).
- :func:`ising_log_probs`: the exact ``(2^D,)`` log-probabilities, for metrics.

Example:
    >>> import torch
    >>> J = 0.2 * torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    >>> x = ising_gibbs(J, 2000, sweeps=20, generator=torch.Generator().manual_seed(0))
    >>> x.shape, x.dtype, round(float(((2 * x - 1).prod(1)).double().mean()), 1)   # E[s1 s2] = tanh(0.4)
    (torch.Size([2000, 2]), torch.int64, 0.4)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["all_configurations", "ising_exact", "ising_gibbs", "ising_log_probs"]

MAX_EXACT_SITES = 22


def _check(J: Tensor, h: Tensor | None) -> tuple[Tensor, Tensor]:
    J = torch.as_tensor(J, dtype=torch.float64)
    if J.ndim != 2 or J.shape[0] != J.shape[1] or J.shape[0] < 1:
        raise ValueError(f"J must be a square (D, D) coupling matrix; got shape {tuple(J.shape)}")
    if not bool(torch.isfinite(J).all()) or not torch.allclose(J, J.T):
        raise ValueError("J must be finite and symmetric (the model is exp(s^T J s + h^T s))")
    J = J - torch.diag(torch.diagonal(J))
    d = J.shape[0]
    h = torch.zeros(d, dtype=torch.float64) if h is None else torch.as_tensor(h, dtype=torch.float64)
    if h.shape != (d,) or not bool(torch.isfinite(h).all()):
        raise ValueError(f"h must be a finite ({d},) field; got shape {tuple(h.shape)}")
    return J, h


def all_configurations(d: int) -> Tensor:
    """``(2^d, d)`` long: every configuration in :math:`\\{0,1\\}^d`, the last site varying fastest.

    Example:
        >>> all_configurations(2).tolist()
        [[0, 0], [0, 1], [1, 0], [1, 1]]
    """
    if not 1 <= d <= MAX_EXACT_SITES:
        raise ValueError(f"enumerating 2^D configurations needs 1 <= D <= {MAX_EXACT_SITES}; got D={d}")
    k = torch.arange(2**d)
    return (k[:, None] >> torch.arange(d - 1, -1, -1)[None]) & 1


def ising_log_probs(J: Tensor, h: Tensor | None = None) -> Tensor:
    """``(2^D,)`` float64 exact :math:`\\log p` of :func:`all_configurations` under :math:`(J, h)`."""
    J, h = _check(J, h)
    s = 2 * all_configurations(J.shape[0]).double() - 1
    logits = ((s @ J) * s).sum(1) + s @ h
    return torch.log_softmax(logits, dim=0)


def ising_exact(
    J: Tensor, n: int, *, h: Tensor | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """``(n, D)`` long i.i.d. exact samples, by enumeration of the :math:`2^D` configurations (``D <= 22``)."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    logp = ising_log_probs(J, h)
    idx = torch.multinomial(logp.exp(), n, replacement=True, generator=generator)
    return all_configurations(logp.numel().bit_length() - 1)[idx]


def ising_gibbs(
    J: Tensor,
    n: int,
    *,
    h: Tensor | None = None,
    sweeps: int = 1000,
    generator: torch.Generator | None = None,
    init: Tensor | None = None,
) -> Tensor:
    """``(n, D)`` long: the states of ``n`` independent Gibbs chains after ``sweeps`` sequential sweeps.

    Args:
        J: ``(D, D)`` symmetric couplings (diagonal ignored).
        n: number of chains (= samples).
        h: optional ``(D,)`` field.
        sweeps: full passes over the sites, in order ``0 .. D-1``.
        generator: source of the initial states (uniform) and the updates.
        init: optional ``(n, D)`` starting states in :math:`\\{0, 1\\}`.
    """
    J, h = _check(J, h)
    d = J.shape[0]
    if n < 1 or sweeps < 0:
        raise ValueError(f"need n >= 1 chains and sweeps >= 0; got n={n}, sweeps={sweeps}")
    if init is None:
        s = 2.0 * torch.randint(0, 2, (n, d), generator=generator).double() - 1.0
    else:
        if init.shape != (n, d) or not bool(((init == 0) | (init == 1)).all()):
            raise ValueError(
                f"init must be ({n}, {d}) configurations in {{0, 1}}; got shape {tuple(init.shape)}"
            )
        s = 2.0 * init.double() - 1.0
    for _ in range(sweeps):
        u = torch.rand(n, d, generator=generator, dtype=torch.float64)
        for i in range(d):
            p_up = torch.sigmoid(4.0 * (s @ J[:, i]) + 2.0 * h[i])
            s[:, i] = torch.where(u[:, i] < p_up, 1.0, -1.0)
    return ((s + 1) / 2).long()
