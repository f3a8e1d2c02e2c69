r"""Boltzmann generators: a normalizing flow :math:`q` as a proposal for :math:`\pi(x) = e^{-E(x)}/Z`.

A flow gives exact samples *and* exact :math:`\log q(x)`, so its samples can be reweighted to the target
(Noé et al., "Boltzmann generators", Science 2019):

.. math::

    \log w(x) = -E(x) - \log q(x), \qquad \hat Z = \frac1N \sum_i w(x_i), \qquad
    \mathrm{ESS} = \frac{(\sum_i w_i)^2}{N \sum_i w_i^2} \in [\tfrac1N, 1].

- :func:`importance_sample`: self-normalised importance sampling (SNIS) with Kish ESS, the
  :math:`\log Z` estimate and resampling; optionally drops the largest weights (Prose's
  ``logw_quantile_filter``).
- :func:`smc`: sequential Monte Carlo (Del Moral, Doucet & Jasra, "Sequential Monte Carlo samplers",
  JRSS-B 2006) from the flow to the target along :math:`E_t = (1-t)E_0 + tE_1`, :math:`E_0 = -\log q`,
  with MALA moves and ESS-triggered resampling, as in Prose's SMC sampler (Tan et al., 2025) and FAB's
  AIS (Midgley et al., "Flow annealed importance sampling bootstrap", ICLR 2023).
- Objectives for :func:`flowforge.train.train` (``loss(batch)``; with ``data=None`` the trainer passes a
  ``BatchRequest(size, generator, device)``): :class:`ReverseKL` (energy-based training) and
  :class:`SelfImprovement` (Prose's importance-weighted self-improvement: MLE on SNIS-resampled buffers
  with a frozen-teacher regulariser). Maximum likelihood on samples is the flow's own ``flow.loss``.

References: Noé, Olsson, Köhler & Wu, Science 2019; Midgley, Stimper, Simm, Schölkopf & Hernández-Lobato,
ICLR 2023; Tan et al., "Amortized sampling with transferable normalizing flows" (Prose), NeurIPS 2025;
Del Moral, Doucet & Jasra, JRSS-B 2006.

Energies are plain callables ``E(x: (B, D)) -> (B,)`` in kT (e.g. :mod:`flowforge.data.energies`); a flow
is anything with ``sample_and_log_prob(n, generator=...)`` and ``log_prob(x)`` (a
:class:`~flowforge.normalizing.flow.Flow`).

Example:
    >>> from flowforge.normalizing.bijections import ActNorm
    >>> flow = Flow([ActNorm(2)], event_shape=(2,))  # the identity: q = N(0, I)
    >>> energy = lambda x: 0.5 * x.square().sum(-1)  # pi = N(0, I), log Z = log(2 pi)
    >>> out = importance_sample(flow, energy, 1000, generator=torch.Generator().manual_seed(0))
    >>> round(out.ess, 6), abs(out.log_z - math.log(2 * math.pi)) < 1e-6
    (1.0, True)
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from flowforge.core.mcmc import MALAState, adapt_step_size, mala_step
from flowforge.normalizing.flow import Flow

__all__ = [
    "ImportanceSamples",
    "ReverseKL",
    "SMCResult",
    "SelfImprovement",
    "effective_sample_size",
    "importance_sample",
    "resample_indices",
    "smc",
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
    raise ValueError(f"method must be 'multinomial' or 'systematic', got {method!r}")


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


# ----------------------------------------------------------------------------------------------------
# SMC


@dataclass(frozen=True)
class SMCResult:
    """What :func:`smc` returns.

    Attributes:
        samples: final particles ``(N, *event)``.
        log_weights: their log-weights ``(N,)`` (zero right after a resampling).
        log_z: the SMC estimate of :math:`\\log Z` (product of the incremental means over resampling epochs).
        ess: Kish ESS of the final weights, in ``[0, 1]``.
        energy_evals: target-energy evaluations (with gradient), ``N (1 + steps * mala_steps)``.
        flow_evals: evaluations of ``log q`` (with gradient), same count.
        acceptance: mean MALA acceptance per annealing step ``(steps,)``.
        ess_trace: ESS after reweighting, before resampling, per annealing step ``(steps,)``.
        n_resample: number of resampling events.
        step_size: final MALA step size.
    """

    samples: Tensor
    log_weights: Tensor
    log_z: float
    ess: float
    energy_evals: int
    flow_evals: int
    acceptance: Tensor
    ess_trace: Tensor
    n_resample: int
    step_size: float

    def resample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        method: Literal["multinomial", "systematic"] = "multinomial",
    ) -> Tensor:
        """``n`` particles ``(n, *event)`` drawn with probabilities :math:`\\propto w`."""
        return self.samples[resample_indices(self.log_weights, n, generator, method).to(self.samples.device)]


def smc(
    flow: SamplingFlow,
    energy: EnergyFn,
    n: int,
    *,
    steps: int = 100,
    mala_steps: int = 1,
    step_size: float = 0.01,
    generator: torch.Generator | None = None,
    resample_threshold: float = 0.5,
    resampling: Literal["multinomial", "systematic"] = "systematic",
    adapt: bool = True,
    target_accept: float = 0.574,
    adapt_rate: float = 0.5,
    schedule: Tensor | None = None,
) -> SMCResult:
    r"""Sequential Monte Carlo from the flow to the target (Del Moral et al., 2006; as in Prose and FAB).

    Intermediate targets :math:`\pi_t \propto e^{-E_t}`, :math:`E_t = (1-t)E_0 + tE_1` with
    :math:`E_0 = -\log q` (so :math:`Z_0 = 1`) and :math:`E_1 = E`, on the grid
    :math:`0 = t_0 < \dots < t_K = 1`. Particles start as exact flow samples with :math:`\log w = 0`; at
    each step

    1. reweight: :math:`\log w \mathrel{+}= -(t_k - t_{k-1})\,(E_1(x) - E_0(x))`;
    2. if :math:`\mathrm{ESS} <` ``resample_threshold``, resample (``resampling``), fold
       :math:`\mathrm{LSE}(\log w) - \log N` into :math:`\log\hat Z` and reset the weights;
    3. move: ``mala_steps`` MALA transitions that leave :math:`\pi_{t_k}` invariant (step size adapted
       between transitions towards ``target_accept`` when ``adapt``; the Metropolis correction keeps
       every move exact).

    With a fixed step size :math:`\hat Z` is unbiased for :math:`Z` (Del Moral et al., 2006); adapting
    :math:`h` from the particles keeps it consistent. Runs without gradients for the flow's parameters;
    the flow is put in eval mode meanwhile. Each MALA transition costs one target-energy and one
    :math:`\log q` evaluation (both with gradients) per particle.

    Args:
        flow: the proposal / :math:`\pi_0` (``sample_and_log_prob`` and a differentiable ``log_prob``).
        energy: :math:`E_1(x) \to (B,)` in kT, differentiable in ``x``.
        n: number of particles.
        steps: annealing steps :math:`K` (ignored when ``schedule`` is given).
        mala_steps: MALA transitions per annealing step.
        step_size: initial MALA step :math:`h`.
        generator: the only source of randomness.
        resample_threshold: resample when the normalised ESS falls below it (0: never, 1: always).
        resampling: ``"systematic"`` or ``"multinomial"``.
        adapt: adapt :math:`h` towards ``target_accept``.
        target_accept: MALA's target acceptance.
        adapt_rate: gain of the update :math:`\log h \mathrel{+}= \text{rate}\,(\bar\alpha - \text{target})`
            after every transition (the mean acceptance over ``n`` particles is a low-noise signal, so the
            step size can track the changing :math:`\pi_t` quickly).
        schedule: increasing times ``(K + 1,)`` from 0 to 1 (default linear).

    Returns:
        :class:`SMCResult` with the energy-evaluation count, to compare with plain IS at equal cost.
    """
    if schedule is None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        ts = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    else:
        ts = torch.as_tensor(schedule, dtype=torch.float64).flatten()
        if ts.numel() < 2 or float(ts[0]) != 0.0 or float(ts[-1]) != 1.0 or bool((ts[1:] <= ts[:-1]).any()):
            raise ValueError("schedule must increase strictly from 0.0 to 1.0")
        steps = ts.numel() - 1
    if mala_steps < 0 or n < 1 or step_size <= 0:
        raise ValueError(
            f"need n >= 1, mala_steps >= 0 and step_size > 0; got {n}, {mala_steps}, {step_size}"
        )

    def components(y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``E_0, E_1`` and their gradients at ``y`` (detached)."""
        with torch.enable_grad():
            yg = y.detach().requires_grad_(True)
            lq = flow.log_prob(yg)
            _check_log_q(lq, yg)
            (g0,) = torch.autograd.grad(lq.sum(), yg)
            yg2 = y.detach().requires_grad_(True)
            e1 = _energy_values(energy, yg2)
            (g1,) = torch.autograd.grad(e1.sum(), yg2, allow_unused=True)
        g1 = torch.zeros_like(y) if g1 is None else g1
        return -lq.detach(), e1.detach(), -g0.detach(), g1.detach()

    with _eval_mode(flow):
        with torch.no_grad():
            _check_generator(generator, flow)
            x, _ = flow.sample_and_log_prob(n, generator=generator)
        x = x.detach()
        e0, e1, g0, g1 = components(x)
        evals = n
        log_w = torch.zeros(n, dtype=torch.float64, device=x.device)
        log_z = 0.0
        h = torch.tensor(float(step_size), dtype=x.dtype, device=x.device)
        acc_trace, ess_trace, n_res = [], [], 0
        for k in range(1, steps + 1):
            t0, t1 = float(ts[k - 1]), float(ts[k])
            log_w = _clean(log_w - (t1 - t0) * (e1.double() - e0.double()))
            ess = effective_sample_size(log_w)
            ess_trace.append(ess)
            if ess < resample_threshold:
                log_z += float(torch.logsumexp(log_w, 0) - math.log(n))
                idx = resample_indices(log_w, n, generator, resampling).to(x.device)
                x, e0, e1, g0, g1 = x[idx], e0[idx], e1[idx], g0[idx], g1[idx]
                log_w = torch.zeros_like(log_w)
                n_res += 1
            accs = []
            for _ in range(mala_steps):
                stash: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

                def potential(y: Tensor, t: float = t1, stash: list = stash) -> tuple[Tensor, Tensor]:
                    c = components(y)
                    stash.append(c)
                    return (1 - t) * c[0] + t * c[1], (1 - t) * c[2] + t * c[3]

                state = MALAState(x, (1 - t1) * e0 + t1 * e1, (1 - t1) * g0 + t1 * g1)
                step = mala_step(state, potential, h, generator)
                a = step.accepted
                m = a.view(-1, *([1] * (x.ndim - 1)))
                ne0, ne1, ng0, ng1 = stash[0]
                x = step.state.x
                e0, e1 = torch.where(a, ne0, e0), torch.where(a, ne1, e1)
                g0, g1 = torch.where(m, ng0, g0), torch.where(m, ng1, g1)
                evals += n
                accs.append(float(step.accept_prob.mean()))
                if adapt:
                    h = adapt_step_size(h, step.accept_prob, target_accept, rate=adapt_rate)
            acc_trace.append(sum(accs) / len(accs) if accs else float("nan"))
        log_z += float(torch.logsumexp(log_w, 0) - math.log(n))
    return SMCResult(
        samples=x,
        log_weights=log_w,
        log_z=log_z,
        ess=effective_sample_size(log_w),
        energy_evals=evals,
        flow_evals=evals,
        acceptance=torch.tensor(acc_trace),
        ess_trace=torch.tensor(ess_trace),
        n_resample=n_res,
        step_size=float(h),
    )


# ----------------------------------------------------------------------------------------------------
# training objectives


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


class _LogProb(nn.Module):
    """``forward = flow.log_prob`` (so that ``torch.func.functional_call`` can swap the parameters)."""

    def __init__(self, flow: Any) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor) -> Tensor:
        return self.flow.log_prob(x)


class ReverseKL(nn.Module):
    r"""Energy-based training by the reverse KL (Noé et al., 2019), reparameterised through the flow:

    .. math::

        \mathcal L(\theta) = \mathbb E_{x \sim q_\theta}\big[\log q_\theta(x) + E(x)\big]
        = \mathrm{KL}(q_\theta \,\|\, \pi) - \log Z \ \ge -\log Z.

    Mode-seeking: it needs no samples of the target but can miss modes. Samples with a non-finite
    :math:`\log q + E` are left out of the mean. ``loss(batch)`` takes the trainer's ``BatchRequest``
    (``data=None``) or a batch size. The energy is not a sub-module (not trained, not checkpointed).

    With ``stick_the_landing=True`` (Roeder, Wu & Duvenaud, 2017) :math:`\log q_\theta(x)` is evaluated
    at the sample with the parameters detached, dropping the score term
    :math:`\partial_\theta \log q_\theta(x)` whose expectation is zero: same expected gradient, and
    every per-sample gradient vanishes when :math:`q = \pi` (costs one more forward pass of the flow).

    Args:
        flow: a :class:`~flowforge.normalizing.flow.Flow` (``sample_and_log_prob`` with gradients).
        energy: ``E(x) -> (B,)`` in kT, differentiable in ``x``.
        stick_the_landing: use the path-derivative gradient estimator.

    Example:
        >>> from flowforge.normalizing.bijections import ActNorm
        >>> obj = ReverseKL(Flow([ActNorm(2)], event_shape=(2,)), lambda x: 0.5 * x.square().sum(-1))
        >>> loss = obj.loss(256)  # q = pi = N(0, I): the loss is -log Z = -log(2 pi) exactly
        >>> abs(loss.item() + math.log(2 * math.pi)) < 1e-5
        True
    """

    def __init__(self, flow: Flow, energy: EnergyFn, *, stick_the_landing: bool = False) -> None:
        super().__init__()
        self.flow = flow
        self.__dict__["energy"] = energy  # outside the module tree on purpose
        self.stick_the_landing = bool(stick_the_landing)

    def loss(self, batch: Any) -> Tensor:
        n, gen, _ = _request(batch)
        x, log_q = self.flow.sample_and_log_prob(n, generator=_usable_generator(gen, self.flow))
        _check_log_q(log_q, x)
        if self.stick_the_landing:
            frozen = {k: v.detach() for k, v in self.flow.named_parameters()}
            log_q = torch.func.functional_call(
                _LogProb(self.flow), {f"flow.{k}": v for k, v in frozen.items()}, (x,)
            )
        v = log_q + _energy_values(self.energy, x)
        ok = torch.isfinite(v)
        if not bool(ok.any()):
            raise ValueError(
                "every sample of the batch has a non-finite log q + E; check the energy and the flow"
            )
        return v[ok].mean() if not bool(ok.all()) else v.mean()

    def generator(self) -> Flow:
        return self.flow

    def sample(self, n: int, **kw: Any) -> Tensor:
        return self.flow.sample(n, **kw)

    def log_prob(self, x: Tensor, **kw: Any) -> Tensor:
        return self.flow.log_prob(x, **kw)


class SelfImprovement(nn.Module):
    r"""Prose's importance-weighted self-improvement (Tan et al., 2025): MLE on SNIS-resampled samples.

    At the first call of :meth:`loss` and then every ``refresh_every`` calls (or on :meth:`refresh`), draw ``proposals`` samples from
    the current flow, weight them by :math:`\log w = -E - \log q`, drop the top ``quantile_filter``
    fraction of weights and resample ``buffer_size`` of them into a buffer. Each call then takes a
    minibatch :math:`x_{1:B}` from the buffer and returns

    .. math::

        -\frac1B\sum_b \log q_\theta(x_b)
        + \lambda \cdot \frac12\,\frac1B\sum_b \big(\log q_\theta(x_b) - \log q_\text{teacher}(x_b)\big)^2,

    with :math:`\lambda` = ``teacher_weight`` and the teacher a frozen copy of the flow's initial
    weights (Prose uses 200 k proposals per epoch, lr 5e-6, no EMA). The last refresh's diagnostics are
    in ``last_ess`` and ``last_log_z``. The buffer is not checkpointed (refilled after a resume); the step
    counter and the teacher are.

    Args:
        flow: the flow to fine-tune.
        energy: ``E(x) -> (B,)`` in kT.
        teacher_weight: :math:`\lambda` (0 disables the regulariser).
        buffer_size: resampled samples per refresh.
        proposals: flow samples per refresh (default ``buffer_size``).
        refresh_every: calls between refreshes.
        quantile_filter: fraction of the largest weights dropped (Prose: 0.002).
        batch_size: proposals per flow call when refreshing.
        teacher: the reference model (default: a frozen deep copy of ``flow`` now).

    Example:
        >>> from flowforge.normalizing.bijections import ActNorm
        >>> si = SelfImprovement(Flow([ActNorm(2)], event_shape=(2,)), lambda x: 0.5 * x.square().sum(-1),
        ...                      buffer_size=64)
        >>> loss = si.loss(16)
        >>> round(si.last_ess, 6)
        1.0
    """

    def __init__(
        self,
        flow: Flow,
        energy: EnergyFn,
        *,
        teacher_weight: float = 1.0,
        buffer_size: int = 10_000,
        proposals: int | None = None,
        refresh_every: int = 100,
        quantile_filter: float = 0.002,
        batch_size: int = 4096,
        teacher: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if buffer_size < 1 or refresh_every < 1 or teacher_weight < 0:
            raise ValueError("need buffer_size >= 1, refresh_every >= 1 and teacher_weight >= 0")
        self.flow = flow
        self.__dict__["energy"] = energy
        self.teacher = (copy.deepcopy(flow) if teacher is None else teacher).requires_grad_(False).eval()
        self.teacher_weight = float(teacher_weight)
        self.buffer_size, self.refresh_every = int(buffer_size), int(refresh_every)
        self.proposals = int(proposals) if proposals is not None else self.buffer_size
        self.quantile_filter, self.batch_size = float(quantile_filter), int(batch_size)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.buffer: Tensor | None = None
        self._refreshed_at = 0
        self.last_ess: float | None = None
        self.last_log_z: float | None = None

    def train(self, mode: bool = True) -> SelfImprovement:
        super().train(mode)
        self.teacher.eval()  # the teacher never trains (no data-dependent init, no dropout)
        return self

    @torch.no_grad()
    def refresh(self, generator: torch.Generator | None = None) -> None:
        """Refill the buffer with SNIS-resampled samples of the current flow."""
        out = importance_sample(
            self.flow,
            self.energy,
            self.proposals,
            generator=generator,
            batch_size=self.batch_size,
            quantile_filter=self.quantile_filter,
        )
        self.buffer = out.resample(self.buffer_size, generator).detach()
        self.last_ess, self.last_log_z = out.ess, out.log_z
        self._refreshed_at = int(self.calls)

    def loss(self, batch: Any) -> Tensor:
        n, gen, _ = _request(batch)
        gen = _usable_generator(gen, self.flow)
        if self.buffer is None or int(self.calls) - self._refreshed_at >= self.refresh_every:
            self.refresh(gen)
        assert self.buffer is not None
        self.calls += 1
        idx = torch.randint(self.buffer.shape[0], (n,), generator=gen, device=gen.device if gen else None)
        x = self.buffer[idx.to(self.buffer.device)]
        log_q = self.flow.log_prob(x)
        loss = -log_q.mean()
        if self.teacher_weight > 0:
            with torch.no_grad():
                log_t = self.teacher.log_prob(x)
            loss = loss + self.teacher_weight * 0.5 * (log_q - log_t).square().mean()
        return loss

    def generator(self) -> Flow:
        return self.flow

    def sample(self, n: int, **kw: Any) -> Tensor:
        return self.flow.sample(n, **kw)

    def log_prob(self, x: Tensor, **kw: Any) -> Tensor:
        return self.flow.log_prob(x, **kw)
