r"""Sequential Monte Carlo from a flow to a Boltzmann target (Del Moral, Doucet & Jasra, JRSS-B 2006).

Anneals along :math:`E_t = (1-t)E_0 + tE_1`, :math:`E_0 = -\log q`, with MALA moves and ESS-triggered
resampling, as in Prose's SMC sampler (Tan et al., 2025) and FAB's AIS (Midgley, Stimper, Simm, Schölkopf &
Hernández-Lobato, "Flow annealed importance sampling bootstrap", ICLR 2023).

Example:
    >>> from flowforge.normalizing.flow import Flow
    >>> from flowforge.normalizing.linear import ActNorm
    >>> flow = Flow([ActNorm(2)], event_shape=(2,))  # q = N(0, I) = pi: every weight stays equal
    >>> out = smc(flow, lambda x: 0.5 * x.square().sum(-1), 200, steps=4,
    ...           generator=torch.Generator().manual_seed(0))
    >>> out.samples.shape, round(out.ess, 6), abs(out.log_z - math.log(2 * math.pi)) < 1e-5
    (torch.Size([200, 2]), 1.0, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from flowforge.core.mcmc import MALAState, adapt_step_size, mala_step
from flowforge.normalizing.importance import (
    EnergyFn,
    SamplingFlow,
    _check_generator,
    _check_log_q,
    _clean,
    _energy_values,
    _eval_mode,
    effective_sample_size,
    resample_indices,
)

__all__ = ["SMCResult", "smc"]


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
