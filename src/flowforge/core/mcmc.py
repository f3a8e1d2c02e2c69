r"""Batched gradient-based MCMC for energies :math:`\pi(x) \propto e^{-E(x)}`: MALA, HMC and parallel tempering.

Every chain in a batch ``x: (B, *event)`` is an independent Markov chain; randomness comes only from the
``generator`` argument. Step sizes are a float or a tensor of shape ``(B,)`` (one per chain).

- :func:`mala_step` / :func:`mala`: the Metropolis-adjusted Langevin algorithm (Roberts & Tweedie, 1996),
  proposal :math:`y = x - h\nabla E(x) + \sqrt{2h}\,\xi` with :math:`\xi \sim N(0, I)`, accepted with
  probability

  .. math::

      \alpha(x, y) = \min\Big(1,\ \frac{e^{-E(y)}\, q(x \mid y)}{e^{-E(x)}\, q(y \mid x)}\Big), \qquad
      \log q(y \mid x) = -\frac{\lVert y - x + h\nabla E(x)\rVert^2}{4h} + \text{const}.

- :func:`hmc_step` / :func:`hmc`: Hamiltonian Monte Carlo with identity mass and ``n_leapfrog`` leapfrog
  steps (Duane et al., 1987; Neal, 2011).
- :func:`parallel_tempering`: replica exchange between inverse temperatures :math:`\beta_0 = 1 > \beta_1 >
  \dots` (Swendsen & Wang, 1986; Geyer, 1991) with MALA moves in each replica.

The drivers adapt the step size during ``burn_in`` only (Robbins-Monro on :math:`\log h` towards
``target_accept``: 0.574 for MALA, 0.65 for HMC, Roberts & Rosenthal 1998 / Beskos et al. 2013), so the kept
samples come from a fixed, exactly invariant kernel.

An energy is any callable ``E(x) -> (B,)``; a *potential* is ``U(x) -> (E, grad E)``, made from an energy
by :func:`value_and_grad` (autograd with respect to ``x`` only: parameters of the energy, e.g. a flow's
weights, get no ``.grad``). Proposals whose energy or gradient is not finite are rejected.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> energy = lambda x: 0.5 * x.square().sum(-1)  # N(0, I)
    >>> out = mala(energy, torch.zeros(2000, 2), 200, step_size=0.5, burn_in=100, generator=g)
    >>> out.x.shape, round(float(out.x.var()), 1)
    (torch.Size([2000, 2]), 1.0)
    >>> 0.5 < out.accept_rate < 0.65
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "MALAState",
    "MCMCResult",
    "MCMCStep",
    "PTResult",
    "Potential",
    "adapt_step_size",
    "hmc",
    "hmc_step",
    "init_state",
    "mala",
    "mala_step",
    "parallel_tempering",
    "value_and_grad",
]

Energy = Callable[[Tensor], Tensor]
"""``E(x) -> (B,)`` for ``x: (B, *event)``, in units of kT."""

Potential = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``U(x) -> (E, grad)`` with ``E: (B,)`` and ``grad = dE/dx`` shaped like ``x``; both detached."""


def _check_energy(e: Tensor, x: Tensor) -> None:
    if not isinstance(e, Tensor) or e.shape != (x.shape[0],):
        got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
        raise ValueError(
            f"the energy must return one value per point, shape ({x.shape[0]},) for x of shape "
            f"{tuple(x.shape)}; got {got}"
        )


def value_and_grad(energy: Energy) -> Potential:
    """Wrap an energy ``E(x) -> (B,)`` as a potential ``x -> (E(x), dE/dx)`` (autograd, detached).

    Gradients are taken with respect to ``x`` only (``torch.autograd.grad``), also under ``torch.no_grad()``.

    Example:
        >>> U = value_and_grad(lambda x: x.pow(2).sum(-1))
        >>> U(torch.tensor([[1.0, -2.0]]))
        (tensor([5.]), tensor([[ 2., -4.]]))
    """

    def potential(x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            e = energy(xg)
            _check_energy(e, x)
            (g,) = torch.autograd.grad(e.sum(), xg, allow_unused=True)
        if g is None:  # the energy does not depend on x
            g = torch.zeros_like(x)
        return e.detach(), g.detach()

    return potential


class MALAState(NamedTuple):
    """A batch of chain states: positions ``x: (B, *event)``, their energies ``(B,)`` and gradients."""

    x: Tensor
    energy: Tensor
    grad: Tensor


class MCMCStep(NamedTuple):
    """One transition: the new ``state``, the Metropolis-Hastings ``accept_prob: (B,)`` and ``accepted: (B,)``."""

    state: MALAState
    accept_prob: Tensor
    accepted: Tensor


def init_state(x: Tensor, potential: Potential) -> MALAState:
    """The chain state at ``x`` (one potential evaluation)."""
    e, g = potential(x)
    return MALAState(x.detach(), e, g)


def _per_chain(h: float | Tensor, x: Tensor) -> Tensor:
    """Step size as a tensor broadcastable against ``x``: ``(B, 1, ..., 1)`` or a 0-dim tensor."""
    h = torch.as_tensor(h, dtype=x.dtype, device=x.device)
    if h.ndim == 0:
        return h
    if h.shape != (x.shape[0],):
        raise ValueError(
            f"step_size must be a float or a tensor of shape ({x.shape[0]},); got {tuple(h.shape)}"
        )
    return h.view(-1, *([1] * (x.ndim - 1)))


def _sqnorm(v: Tensor) -> Tensor:
    return v.flatten(1).square().sum(1)


def _accept(log_alpha: Tensor, new: MALAState, old: MALAState, generator: torch.Generator | None) -> MCMCStep:
    """Metropolis-Hastings accept/reject, rejecting non-finite proposals."""
    finite = torch.isfinite(new.energy) & torch.isfinite(new.grad.flatten(1)).all(1)
    log_alpha = torch.where(finite & ~torch.isnan(log_alpha), log_alpha, -math.inf)
    u = torch.rand(log_alpha.shape, generator=generator, device=log_alpha.device, dtype=log_alpha.dtype)
    accepted = torch.log(u) < log_alpha
    m = accepted.view(-1, *([1] * (old.x.ndim - 1)))
    state = MALAState(
        torch.where(m, new.x, old.x),
        torch.where(accepted, new.energy, old.energy),
        torch.where(m, new.grad, old.grad),
    )
    return MCMCStep(state, log_alpha.clamp(max=0.0).exp(), accepted)


def mala_step(
    state: MALAState,
    potential: Potential,
    step_size: float | Tensor,
    generator: torch.Generator | None = None,
) -> MCMCStep:
    r"""One MALA transition for every chain; calls ``potential`` exactly once (at the proposal).

    Args:
        state: current positions with their energies and gradients (see :func:`init_state`).
        potential: ``x -> (E, dE/dx)``, e.g. :func:`value_and_grad` of an energy.
        step_size: :math:`h`, a float or one per chain ``(B,)``.
        generator: source of the proposal noise and the uniforms.

    Returns:
        :class:`MCMCStep` with the new state, :math:`\alpha(x, y)` and the accepted mask.
    """
    x, e, g = state
    h = _per_chain(step_size, x)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    y = x - h * g + torch.sqrt(2 * h) * noise
    e_y, g_y = potential(y)
    # log q(y|x) - log q(x|y) with q(b|a) = N(b; a - h grad(a), 2h)
    hb = h.flatten() if h.ndim else h
    log_fwd = -_sqnorm(y - x + h * g) / (4 * hb)
    log_bwd = -_sqnorm(x - y + h * g_y) / (4 * hb)
    log_alpha = e - e_y + log_bwd - log_fwd
    return _accept(log_alpha, MALAState(y, e_y, g_y), state, generator)


def hmc_step(
    state: MALAState,
    potential: Potential,
    step_size: float | Tensor,
    n_leapfrog: int = 10,
    generator: torch.Generator | None = None,
) -> MCMCStep:
    r"""One HMC transition: momentum :math:`p \sim N(0, I)`, ``n_leapfrog`` leapfrog steps of size
    :math:`\epsilon` = ``step_size``, accepted with probability :math:`\min(1, e^{-\Delta H})`,
    :math:`H = E(x) + \tfrac12\lVert p\rVert^2`. Calls ``potential`` ``n_leapfrog`` times.
    """
    if n_leapfrog < 1:
        raise ValueError(f"n_leapfrog must be >= 1, got {n_leapfrog}")
    x, e, g = state
    eps = _per_chain(step_size, x)
    p0 = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    p = p0 - 0.5 * eps * g
    y, e_y, g_y = x, e, g
    for i in range(n_leapfrog):
        y = y + eps * p
        e_y, g_y = potential(y)
        p = p - (eps if i < n_leapfrog - 1 else 0.5 * eps) * g_y
    log_alpha = (e + 0.5 * _sqnorm(p0)) - (e_y + 0.5 * _sqnorm(p))
    return _accept(log_alpha, MALAState(y, e_y, g_y), state, generator)


def adapt_step_size(step_size: Tensor, accept_prob: Tensor, target: float, rate: float = 0.05) -> Tensor:
    r"""Robbins-Monro update :math:`\log h \leftarrow \log h + \text{rate}\,(\bar\alpha - \text{target})`.

    ``accept_prob`` is averaged to the shape of ``step_size`` (all chains for a 0-dim step size).

    Example:
        >>> adapt_step_size(torch.tensor(1.0), torch.tensor([1.0, 1.0]), target=0.5, rate=0.1)
        tensor(1.0513)
    """
    a = accept_prob.mean() if step_size.ndim == 0 else accept_prob
    return step_size * torch.exp(rate * (a.to(step_size.dtype) - target))


@dataclass(frozen=True)
class MCMCResult:
    """What :func:`mala` and :func:`hmc` return.

    Attributes:
        x: final positions ``(B, *event)``.
        energy: their energies ``(B,)``.
        samples: kept positions ``(S, B, *event)`` (every ``thin``-th step after burn-in), or ``None``.
        step_size: the step size used after burn-in (0-dim, or ``(B,)`` when adapted per chain).
        acceptance: mean acceptance probability of every transition ``(burn_in + steps,)``.
        n_burn_in: number of burn-in transitions at the start of ``acceptance``.
    """

    x: Tensor
    energy: Tensor
    samples: Tensor | None
    step_size: Tensor
    acceptance: Tensor
    n_burn_in: int

    @property
    def accept_rate(self) -> float:
        """Mean acceptance probability after burn-in (over all steps when there were none)."""
        a = self.acceptance[self.n_burn_in :]
        return float((a if a.numel() else self.acceptance).mean())


def _run(
    kernel: Callable[[MALAState, Tensor], MCMCStep],
    energy: Energy,
    x: Tensor,
    steps: int,
    step_size: float | Tensor,
    burn_in: int,
    adapt: bool,
    target_accept: float,
    adapt_rate: float,
    per_chain: bool,
    thin: int,
    keep_samples: bool,
) -> MCMCResult:
    if steps < 0 or burn_in < 0 or thin < 1:
        raise ValueError(f"need steps >= 0, burn_in >= 0 and thin >= 1; got {steps}, {burn_in}, {thin}")
    h = torch.as_tensor(step_size, dtype=x.dtype, device=x.device).clone()
    if per_chain and h.ndim == 0:
        h = h.expand(x.shape[0]).clone()
    if bool((h <= 0).any()):
        raise ValueError("step_size must be positive")
    state = init_state(x, value_and_grad(energy))
    acc, kept = [], []
    for i in range(burn_in + steps):
        step = kernel(state, h)
        state = step.state
        acc.append(step.accept_prob.mean())
        if i < burn_in and adapt:
            h = adapt_step_size(h, step.accept_prob, target_accept, adapt_rate)
        if keep_samples and i >= burn_in and (i - burn_in + 1) % thin == 0:
            kept.append(state.x)
    acceptance = torch.stack(acc) if acc else torch.zeros(0, dtype=x.dtype, device=x.device)
    samples = torch.stack(kept) if keep_samples and kept else None
    return MCMCResult(state.x, state.energy, samples, h, acceptance, burn_in)


def mala(
    energy: Energy,
    x: Tensor,
    steps: int,
    *,
    step_size: float | Tensor = 0.01,
    generator: torch.Generator | None = None,
    burn_in: int = 0,
    adapt: bool = True,
    target_accept: float = 0.574,
    adapt_rate: float = 0.05,
    per_chain: bool = False,
    thin: int = 1,
    keep_samples: bool = False,
) -> MCMCResult:
    """Run ``burn_in + steps`` MALA transitions from ``x: (B, *event)`` (one chain per row).

    Args:
        energy: ``E(x) -> (B,)`` in kT (differentiable in ``x``).
        x: initial positions.
        steps: transitions after burn-in.
        step_size: initial :math:`h` (float or ``(B,)``).
        generator: the only source of randomness.
        burn_in: leading transitions during which the step size adapts (when ``adapt``) and nothing is kept.
        adapt: adapt :math:`h` during burn-in towards ``target_accept``.
        target_accept: 0.574 is optimal for MALA in high dimension (Roberts & Rosenthal, 1998).
        adapt_rate: Robbins-Monro gain on :math:`\\log h`.
        per_chain: one step size per chain (chains in wells of different curvature).
        thin: keep every ``thin``-th state after burn-in (with ``keep_samples``).
        keep_samples: return the kept states in ``samples``.
    """
    potential = value_and_grad(energy)
    kernel = lambda s, h: mala_step(s, potential, h, generator)
    return _run(
        kernel, energy, x, steps, step_size, burn_in, adapt, target_accept, adapt_rate, per_chain, thin,
        keep_samples,
    )  # fmt: skip


def hmc(
    energy: Energy,
    x: Tensor,
    steps: int,
    *,
    step_size: float | Tensor = 0.1,
    n_leapfrog: int = 10,
    generator: torch.Generator | None = None,
    burn_in: int = 0,
    adapt: bool = True,
    target_accept: float = 0.65,
    adapt_rate: float = 0.05,
    per_chain: bool = False,
    thin: int = 1,
    keep_samples: bool = False,
) -> MCMCResult:
    """Run ``burn_in + steps`` HMC transitions from ``x``; arguments as in :func:`mala`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> out = hmc(lambda x: 0.5 * x.square().sum(-1), torch.zeros(1000, 3), 50, step_size=0.3,
        ...           n_leapfrog=5, burn_in=50, generator=g)
        >>> round(float(out.x.var()), 1)
        1.0
    """
    potential = value_and_grad(energy)
    kernel = lambda s, h: hmc_step(s, potential, h, n_leapfrog, generator)
    return _run(
        kernel, energy, x, steps, step_size, burn_in, adapt, target_accept, adapt_rate, per_chain, thin,
        keep_samples,
    )  # fmt: skip


@dataclass(frozen=True)
class PTResult:
    """What :func:`parallel_tempering` returns.

    Attributes:
        x: final positions of the :math:`\\beta = 1` replicas ``(B, *event)``.
        energy: their energies ``(B,)``.
        samples: kept :math:`\\beta = 1` positions ``(S, B, *event)``, or ``None``.
        replicas: final positions of every replica ``(K, B, *event)``.
        betas: the inverse temperatures ``(K,)``.
        step_size: final step size per temperature ``(K,)``.
        accept_rate: mean MALA acceptance per temperature after burn-in ``(K,)``.
        swap_rate: mean swap acceptance between neighbours ``(K - 1,)``.
    """

    x: Tensor
    energy: Tensor
    samples: Tensor | None
    replicas: Tensor
    betas: Tensor
    step_size: Tensor
    accept_rate: Tensor
    swap_rate: Tensor


def parallel_tempering(
    energy: Energy,
    x: Tensor,
    steps: int,
    *,
    betas: Sequence[float],
    step_size: float | Sequence[float] = 0.01,
    generator: torch.Generator | None = None,
    burn_in: int = 0,
    adapt: bool = True,
    target_accept: float = 0.574,
    adapt_rate: float = 0.05,
    mala_steps: int = 1,
    thin: int = 1,
    keep_samples: bool = False,
) -> PTResult:
    r"""Parallel tempering: ``B`` independent ladders of ``K`` replicas targeting :math:`e^{-\beta_k E}`.

    Each iteration makes ``mala_steps`` MALA transitions in every replica, then proposes swaps between
    neighbours :math:`(k, k+1)` (even pairs on even iterations, odd pairs on odd ones), accepted with
    probability :math:`\min(1, \exp((\beta_k - \beta_{k+1})(E(x_k) - E(x_{k+1}))))`. The step size adapts
    per temperature during burn-in.

    Args:
        energy: ``E(x) -> (B,)`` in kT.
        x: initial positions ``(B, *event)``, copied into every replica.
        steps: iterations after burn-in.
        betas: inverse temperatures, ``betas[0] == 1`` and strictly decreasing, all positive.
        step_size: initial MALA step, one float or one per temperature.
        generator: the only source of randomness.
        burn_in, adapt, target_accept, adapt_rate, thin, keep_samples: as in :func:`mala`.
        mala_steps: MALA transitions between swap attempts.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> E = lambda x: ((x.square() - 4) ** 2).sum(-1)  # wells at +-2, barrier 16 kT
        >>> out = parallel_tempering(E, torch.full((500, 1), 2.0), 300, betas=[1.0, 0.3, 0.1, 0.03],
        ...                          step_size=0.05, burn_in=100, generator=g)
        >>> abs(float((out.x > 0).double().mean()) - 0.5) < 0.1  # plain MALA would stay at +2
        True
    """
    b = torch.as_tensor(list(betas), dtype=x.dtype, device=x.device)
    if (
        b.ndim != 1
        or b.numel() < 1
        or float(b[0]) != 1.0
        or bool((b <= 0).any())
        or bool((b[1:] >= b[:-1]).any())
    ):
        raise ValueError(f"betas must start at 1.0 and decrease strictly, all positive; got {list(betas)}")
    if steps < 0 or burn_in < 0 or thin < 1 or mala_steps < 1:
        raise ValueError("need steps >= 0, burn_in >= 0, thin >= 1 and mala_steps >= 1")
    k, n = b.numel(), x.shape[0]
    ev = (1,) * (x.ndim - 1)
    h = torch.as_tensor(step_size, dtype=x.dtype, device=x.device)
    h = (h.expand(k) if h.ndim == 0 else h).clone()
    if h.shape != (k,) or bool((h <= 0).any()):
        raise ValueError(f"step_size must be positive: one float or {k} values (one per temperature)")
    raw = value_and_grad(energy)
    beta_rows = b.repeat_interleave(n)  # (K*B,), replica-major

    def tempered(y: Tensor) -> tuple[Tensor, Tensor]:
        e, g = raw(y)
        return beta_rows * e, beta_rows.view(-1, *ev) * g

    xs = x.detach().repeat(k, *ev)
    state = init_state(xs, tempered)
    acc_sum, acc_cnt = torch.zeros(k, dtype=x.dtype, device=x.device), 0
    swap_sum = torch.zeros(max(k - 1, 0), dtype=x.dtype, device=x.device)
    swap_cnt = torch.zeros_like(swap_sum)
    kept = []
    for it in range(burn_in + steps):
        for _ in range(mala_steps):
            step = mala_step(state, tempered, h.repeat_interleave(n), generator)
            state = step.state
            a = step.accept_prob.view(k, n).mean(1)
            if it < burn_in and adapt:
                h = adapt_step_size(h, a, target_accept, adapt_rate)
            elif it >= burn_in:
                acc_sum, acc_cnt = acc_sum + a, acc_cnt + 1
        if k > 1:  # swap neighbours (i, i + 1) for i of one parity
            lo = torch.arange(it % 2, k - 1, 2, device=x.device)
            if lo.numel():
                e_raw = (state.energy / beta_rows).view(k, n)
                log_a = (b[lo] - b[lo + 1]).unsqueeze(1) * (e_raw[lo] - e_raw[lo + 1])
                log_a = torch.nan_to_num(log_a, nan=-math.inf)
                u = torch.rand(log_a.shape, generator=generator, device=x.device, dtype=x.dtype)
                swap = torch.log(u) < log_a  # (len(lo), B)
                if it >= burn_in:
                    swap_sum[lo] += log_a.clamp(max=0).exp().mean(1)
                    swap_cnt[lo] += 1
                base = torch.arange(k * n, device=x.device).view(k, n)
                perm = base.clone()
                perm[lo] = torch.where(swap, base[lo + 1], base[lo])
                perm[lo + 1] = torch.where(swap, base[lo], base[lo + 1])
                idx = perm.flatten()
                xr, er = state.x[idx], (state.energy / beta_rows)[idx]
                gr = (state.grad / beta_rows.view(-1, *ev))[idx]
                state = MALAState(xr, beta_rows * er, beta_rows.view(-1, *ev) * gr)
        if keep_samples and it >= burn_in and (it - burn_in + 1) % thin == 0:
            kept.append(state.x[:n])
    accept_rate = acc_sum / max(acc_cnt, 1)
    swap_rate = swap_sum / swap_cnt.clamp(min=1)
    reps = state.x.view(k, n, *x.shape[1:])
    samples = torch.stack(kept) if keep_samples and kept else None
    return PTResult(reps[0], state.energy[:n], samples, reps, b, h, accept_rate, swap_rate)
