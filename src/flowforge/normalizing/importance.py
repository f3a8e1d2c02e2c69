r"""Importance sampling with a normalizing flow :math:`q` as the proposal for :math:`\pi(x) = e^{-E(x)}/Z`.

A flow gives exact samples *and* exact :math:`\log q(x)`, so its samples can be reweighted to the target
(Noé, Olsson, Köhler & Wu, "Boltzmann generators", Science 2019):

.. math::

    \log w(x) = -E(x) - \log q(x), \qquad \hat Z = \frac1N \sum_i w(x_i), \qquad
    \mathrm{ESS} = \frac{(\sum_i w_i)^2}{N \sum_i w_i^2} \in [\tfrac1N, 1].

:func:`importance_sample` is self-normalised importance sampling (SNIS) with Kish ESS, the :math:`\log Z`
estimate and resampling; it optionally drops the largest weights (Prose's ``logw_quantile_filter``; Tan et
al., NeurIPS 2025). The helpers here are shared by :mod:`~flowforge.normalizing.smc`,
:mod:`~flowforge.normalizing.reverse_kl` and :mod:`~flowforge.normalizing.self_improvement`.

Energies are plain callables ``E(x: (B, D)) -> (B,)`` in kT (e.g. :mod:`flowforge.data.energies`); a flow
is anything with ``sample_and_log_prob(n, generator=...)`` and ``log_prob(x)`` (a
:class:`~flowforge.normalizing.flow.Flow`).

Example:
    >>> from flowforge.normalizing.flow import Flow
    >>> from flowforge.normalizing.linear import ActNorm
    >>> flow = Flow([ActNorm(2)], event_shape=(2,))  # the identity: q = N(0, I)
    >>> energy = lambda x: 0.5 * x.square().sum(-1)  # pi = N(0, I), log Z = log(2 pi)
    >>> out = importance_sample(flow, energy, 1000, generator=torch.Generator().manual_seed(0))
    >>> round(out.ess, 6), abs(out.log_z - math.log(2 * math.pi)) < 1e-6
    (1.0, True)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from flowforge.core.choices import unknown_choice

__all__ = [
    "EnergyFn",
    "ImportanceSamples",
    "SamplingFlow",
    "effective_sample_size",
    "importance_sample",
    "resample_indices",
]

EnergyFn = Callable[[Tensor], Tensor]


class SamplingFlow(Protocol):
    def sample_and_log_prob(
        self, n: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]: ...

    def log_prob(self, x: Tensor) -> Tensor: ...


@contextlib.contextmanager
def _eval_mode(module: Any) -> Iterator[None]:
    """Put an ``nn.Module`` in eval mode for the block (no dropout, no data-dependent init), then restore."""
    if not isinstance(module, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t


def _energy_values(energy: EnergyFn, x: Tensor) -> Tensor:
    e = energy(x)
    if not isinstance(e, Tensor) or e.shape != (x.shape[0],):
        got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
        raise ValueError(
            f"the energy must map x of shape {tuple(x.shape)} to one value per sample, shape ({x.shape[0]},); "
            f"got {got}. Return e.g. energies.sum(-1) or .squeeze(-1)"
        )
    return e


def _check_log_q(log_q: Tensor, x: Tensor) -> None:
    if log_q.shape != (x.shape[0],):
        raise ValueError(f"the flow's log_prob must have shape ({x.shape[0]},), got {tuple(log_q.shape)}")


def _clean(log_w: Tensor) -> Tensor:
    """NaN log-weights (undefined energies) count as zero weight."""
    return torch.nan_to_num(log_w, nan=-math.inf, posinf=math.inf, neginf=-math.inf)


def effective_sample_size(log_w: Tensor) -> float:
    r"""Kish's effective sample size over :math:`N`: :math:`\exp(2\,\mathrm{LSE}(\log w) - \mathrm{LSE}(2\log w))/N`.

    In :math:`[1/N, 1]`; 1 when all weights are equal. NaN weights count as zero; all zero gives 0.

    Example:
        >>> effective_sample_size(torch.zeros(10)), effective_sample_size(torch.tensor([0.0, -math.inf]))
        (1.0, 0.5)
    """
    if log_w.ndim != 1 or log_w.numel() == 0:
        raise ValueError(
            f"log_w must be a non-empty 1-D tensor of log-weights, got shape {tuple(log_w.shape)}"
        )
    lw = _clean(log_w.detach().double())
    if not bool(torch.isfinite(lw).any()):
        return 0.0
    if bool((lw == math.inf).any()):
        return 1.0 / lw.numel() * int((lw == math.inf).sum())
    return min(1.0, float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))) / lw.numel())


def resample_indices(
    log_w: Tensor,
    n: int,
    generator: torch.Generator | None = None,
    method: Literal["multinomial", "systematic"] = "multinomial",
) -> Tensor:
    r"""``n`` indices drawn with probabilities :math:`\propto w`: multinomial (i.i.d.) or systematic
    (one uniform, strata :math:`(u + i)/n`; lower variance, Kitagawa 1996).

    Example:
        >>> resample_indices(torch.log(torch.tensor([0.0, 1.0, 3.0])), 4, method="systematic",
        ...                  generator=torch.Generator().manual_seed(0))
        tensor([1, 2, 2, 2])
    """
    lw = _clean(log_w.detach().double())
    if not bool(torch.isfinite(lw).any()):
        raise ValueError("cannot resample: every weight is zero (all log-weights are -inf or NaN)")
    p = torch.softmax(lw, 0)
    if method == "multinomial":
        return torch.multinomial(p, n, replacement=True, generator=generator)
    if method == "systematic":
        u = (
            torch.rand((), generator=generator, device=p.device, dtype=p.dtype)
            + torch.arange(n, device=p.device)
        ) / n
        cdf = torch.cumsum(p, 0)
        return torch.searchsorted(cdf, u).clamp(max=p.numel() - 1)
    raise unknown_choice("resampling method", method, ["multinomial", "systematic"])


@dataclass(frozen=True)
class ImportanceSamples:
    r"""What :func:`importance_sample` returns.

    Attributes:
        samples: proposals :math:`x_i \sim q` ``(N', *event)`` (``N' = N`` minus the filtered ones).
        log_weights: :math:`\log w_i = -E(x_i) - \log q(x_i)` ``(N',)``, float64.
        log_q: :math:`\log q(x_i)` ``(N',)``.
        energy: :math:`E(x_i)` ``(N',)``.
        log_z: :math:`\log \hat Z = \mathrm{LSE}(\log w) - \log N` over **all** :math:`N` proposals (unbiased
            for :math:`Z`; the quantile filter is not applied to it).
        n_filtered: proposals dropped by the quantile filter.
        n_nonfinite: proposals with a non-finite energy or log-density (zero weight).
    """

    samples: Tensor
    log_weights: Tensor
    log_q: Tensor
    energy: Tensor
    log_z: float
    n_filtered: int = 0
    n_nonfinite: int = 0

    @property
    def ess(self) -> float:
        """Kish ESS over ``N'`` of the (filtered) weights, in ``[0, 1]``."""
        return effective_sample_size(self.log_weights)

    def weights(self) -> Tensor:
        """Self-normalised weights ``(N',)`` summing to one."""
        return torch.softmax(_clean(self.log_weights), 0)

    def resample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        method: Literal["multinomial", "systematic"] = "multinomial",
    ) -> Tensor:
        """``n`` samples ``(n, *event)`` drawn from the proposals with probabilities :math:`\\propto w`."""
        return self.samples[resample_indices(self.log_weights, n, generator, method).to(self.samples.device)]


@torch.no_grad()
def importance_sample(
    flow: SamplingFlow,
    energy: EnergyFn,
    n: int,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 4096,
    quantile_filter: float = 0.0,
) -> ImportanceSamples:
    """Draw ``n`` proposals from ``flow`` and weight them towards :math:`e^{-E}` (no gradients).

    Args:
        flow: proposal with ``sample_and_log_prob(n, generator=...)`` (put in eval mode meanwhile).
        energy: ``E(x) -> (B,)`` in kT.
        n: number of proposals.
        generator: source of the flow's noise.
        batch_size: proposals per flow / energy call.
        quantile_filter: fraction of the largest log-weights to drop before ESS and resampling (Prose
            uses 0.002): trades a small bias for robustness against a few huge weights.

    Returns:
        :class:`ImportanceSamples`; ``n`` energy evaluations.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    if not 0.0 <= quantile_filter < 1.0:
        raise ValueError(f"quantile_filter is a fraction in [0, 1), got {quantile_filter}")
    _check_generator(generator, flow)
    xs, lqs, es = [], [], []
    with _eval_mode(flow):
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            x, lq = flow.sample_and_log_prob(m, generator=generator)
            _check_log_q(lq, x)
            xs.append(x)
            lqs.append(lq)
            es.append(_energy_values(energy, x))
    x, lq, e = torch.cat(xs), torch.cat(lqs), torch.cat(es)
    log_w = _clean(-e.double() - lq.double())
    nonfinite = int((~torch.isfinite(log_w)).sum())
    if bool((log_w == math.inf).any()):
        raise ValueError(
            "some importance weights are +inf (energy -inf or log q = -inf at a sample); check the energy"
        )
    log_z = float(torch.logsumexp(log_w, 0) - math.log(n))
    k = int(quantile_filter * n)
    if k > 0:
        keep = torch.argsort(log_w)[: n - k].sort().values
        x, lq, e, log_w = x[keep], lq[keep], e[keep], log_w[keep]
    return ImportanceSamples(x, log_w, lq, e, log_z, k, nonfinite)


def _request(batch: Any) -> tuple[int, torch.Generator | None, torch.device | None]:
    """``(size, generator, device)`` from a trainer ``BatchRequest``, an int, or ``(size, generator)``."""
    if isinstance(batch, int):
        return batch, None, None
    size = getattr(batch, "size", None)
    if isinstance(size, int):
        return size, getattr(batch, "generator", None), getattr(batch, "device", None)
    raise ValueError(
        f"this objective draws its own samples: train it with data=None (the trainer then passes a "
        f"BatchRequest(size, generator, device)) or call loss(batch_size); got a {type(batch).__name__}"
    )


def _check_generator(gen: torch.Generator | None, flow: Any) -> None:
    """A clear error instead of torch's when the caller's generator lives on another device than the flow."""
    p = next(iter(flow.parameters()), None) if isinstance(flow, nn.Module) else None
    if gen is not None and p is not None and gen.device.type != p.device.type:
        raise ValueError(
            f"the generator is on {gen.device.type} but the flow is on {p.device.type}; pass "
            f"torch.Generator(device='{p.device}').manual_seed(...)"
        )


def _usable_generator(gen: torch.Generator | None, flow: nn.Module) -> torch.Generator | None:
    """The request's generator when it lives on the flow's device (else the device's global RNG)."""
    if gen is None:
        return None
    p = next(iter(flow.parameters()), None) if isinstance(flow, nn.Module) else None
    dev = p.device if p is not None else torch.device("cpu")
    return gen if gen.device.type == dev.type else None
