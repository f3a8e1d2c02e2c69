r"""CTMC Euler sampling of the mixture path from a learned posterior (Gat et al. 2024, arXiv:2407.15595).

One step ``t -> t + h`` updates every position in parallel, as Meta flow_matching's
``MixtureDiscreteEulerSolver`` does (so the number of steps does not depend on the sequence length):

1. draw :math:`\hat x_1^i \sim p_{1|t}^i(\cdot \mid x_t)` (posterior logits divided by ``temperature``);
2. rates :math:`u(y) = J_t\,\delta_{\hat x_1}(y) + A_t\,[(1-\kappa_t)\,p_0(y) + \kappa_t\,\delta_{\hat x_1}(y)]`
   for :math:`y \ne x_t^i`, with :math:`J_t = \dot\kappa_t/(1-\kappa_t)` and the divergence-free corrector
   :math:`A_t = c(t)\,\dot\kappa_t / (\kappa_t (1 - \kappa_t))` (Meta's ``div_free``; 0 by default and
   wherever :math:`\kappa_t = 0`, where it would be infinite);
3. jump with probability :math:`1 - e^{-h \lambda}`, :math:`\lambda = \sum_{y \ne x_t} u(y)` (``jump="exp"``,
   Meta's choice) or :math:`\min(1, h\lambda)` (``jump="linear"``, the clamped first-order Euler step of
   InVirtuoGen), to a token drawn :math:`\propto u`;
4. at the final step :math:`x_1 = \hat x_1`, a draw from the posterior (``final="sample"``, Meta's
   behaviour) or its ``argmax`` (``final="argmax"``), so no mask or source token survives.

Averaged over :math:`\hat x_1`, the expected move is :math:`h\,u_t(\cdot, x_t)` to first order, the
probability velocity of :func:`~flowforge.discrete.paths.posterior_to_velocity`; the corrector's
average flux is zero, so it only adds mixing. :meth:`MixtureEuler.transition_probs` gives the exact
one-step kernel of this two-stage draw, for testing and exact propagation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from flowforge.core.solvers.grids import uniform_grid
from flowforge.discrete.paths import MixturePath
from flowforge.discrete.sources import categorical

__all__ = ["MixtureEuler", "euler_sample"]

JUMPS = ("exp", "linear")
FINALS = ("sample", "argmax")


class MixtureEuler:
    r"""The CTMC Euler step of the mixture path (first order; see the module docstring).

    Args:
        path: the :class:`~flowforge.discrete.paths.MixturePath` the posterior was trained on.
        source_probs: :math:`p_0`, ``(S,)`` or ``(L, S)`` with ``S`` the number of states (needed only
            for the corrector).
        num_states: size of the state space (``vocab_size + 1`` with a mask id); defaults to
            ``source_probs.shape[-1]`` or the posterior's vocabulary.
        temperature: the posterior logits are divided by it (> 0).
        corrector: the divergence-free coefficient :math:`c(t)`: a float or a callable of the float ``t``.
        jump: ``"exp"`` (:math:`1 - e^{-h\lambda}`) or ``"linear"`` (:math:`\min(1, h\lambda)`).
        final: ``"sample"`` or ``"argmax"`` of the posterior at the last step.
        dtype: precision of the categorical draws (float64 by default: exact up to rounding).

    Example:
        >>> import torch
        >>> step = MixtureEuler(MixturePath(), num_states=3)
        >>> logits = torch.zeros(1, 4, 2)  # posterior uniform over 2 tokens; state 2 is the mask
        >>> k = step.transition_probs(logits, torch.full((1, 4), 2), 0.0, 0.5)
        >>> k[0, 0].tolist()  # leave the mask with probability 1 - exp(-0.5), to either token
        [0.1967..., 0.1967..., 0.6065...]
    """

    order = 1

    def __init__(
        self,
        path: MixturePath,
        source_probs: Tensor | None = None,
        *,
        num_states: int | None = None,
        temperature: float = 1.0,
        corrector: float | Callable[[float], float] = 0.0,
        jump: str = "exp",
        final: str = "sample",
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if not temperature > 0:
            raise ValueError(
                f"temperature must be > 0, got {temperature}; use final='argmax' for greedy decoding"
            )
        if jump not in JUMPS:
            raise ValueError(f"unknown jump={jump!r}; use one of {JUMPS}")
        if final not in FINALS:
            raise ValueError(f"unknown final={final!r}; use one of {FINALS}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype (torch.float64 for exact draws), got {dtype}")
        if (callable(corrector) or corrector != 0.0) and source_probs is None:
            raise ValueError("the corrector needs the source probabilities: pass source_probs=source.probs")
        if not callable(corrector) and corrector < 0:
            raise ValueError(f"corrector must be >= 0, got {corrector}")
        self.path, self.temperature, self.corrector = path, float(temperature), corrector
        self.jump, self.final, self.dtype = jump, final, dtype
        self.source_probs = source_probs
        if num_states is None and source_probs is not None:
            num_states = int(source_probs.shape[-1])
        self.num_states = num_states

    def posterior(self, logits: Tensor) -> Tensor:
        """Posterior probabilities ``(B, L, V)`` in ``dtype``, with the temperature applied."""
        z = logits.to(self.dtype) / self.temperature
        p = (z - z.amax(-1, keepdim=True)).exp_()  # as softmax; faster for the small vocabularies of tests
        return p / p.sum(-1, keepdim=True)

    def _states(self, logits: Tensor) -> int:
        s = self.num_states if self.num_states is not None else logits.shape[-1]
        if s < logits.shape[-1]:
            raise ValueError(f"the posterior has {logits.shape[-1]} tokens but the state space only {s}")
        return s

    def _coefficients(self, t: float) -> tuple[float, float, float]:
        """``(J_t, A_t, kappa_t)`` as floats."""
        k, dk = self.path.kappa(torch.tensor(float(t), dtype=torch.float64))
        k, dk = float(k), float(dk)
        jump = dk / (1.0 - k)
        c = float(self.corrector(t)) if callable(self.corrector) else float(self.corrector)
        if c < 0:
            raise ValueError(f"corrector(t) must be >= 0, got {c} at t={t}")
        a = c * dk / (k * (1.0 - k)) if c > 0 and k > 0 else 0.0
        return jump, a, k

    def _probability(self, rate: Tensor, h: float) -> Tensor:
        """Probability of a jump in a step of length ``h`` at total rate ``rate``."""
        if self.jump == "exp":
            return -torch.expm1(-h * rate)
        return (h * rate).clamp(max=1.0)

    def _p0(self, x_t: Tensor, s: int) -> Tensor:
        p0 = self.source_probs.to(device=x_t.device, dtype=self.dtype)
        if p0.shape[-1] != s:
            raise ValueError(f"source_probs has {p0.shape[-1]} states, the sampler {s}")
        if p0.dim() == 2 and p0.shape[0] != x_t.shape[1]:
            raise ValueError(
                f"source_probs is per position for L={p0.shape[0]}, the sequences have L={x_t.shape[1]}"
            )
        return p0.expand(*x_t.shape, s)

    def step(
        self, logits: Tensor, x_t: Tensor, t: float, h: float, generator: torch.Generator | None = None
    ) -> Tensor:
        """One Euler step (not the final one): ``logits: (B, L, V)``, ``x_t: (B, L)`` -> ``(B, L)``."""
        s = self._states(logits)
        q = self.posterior(logits)
        x_hat = categorical(q, generator)
        jump, a, k = self._coefficients(t)
        if a == 0:  # no corrector: u = J delta_{x_hat} off x_t, so a jump goes to x_hat
            rate = torch.full(x_t.shape, jump, dtype=self.dtype, device=x_t.device)
            moves = torch.rand(x_t.shape, generator=generator, device=x_t.device, dtype=self.dtype)
            moves = (moves < self._probability(rate, h)) & (x_hat != x_t)
            return torch.where(moves, x_hat, x_t)
        u = (jump + a * k) * F.one_hot(x_hat, s).to(self.dtype)
        if a > 0:
            u = u + a * (1.0 - k) * self._p0(x_t, s)
        u = u.masked_fill(F.one_hot(x_t, s).bool(), 0.0)
        moves = torch.rand(x_t.shape, generator=generator, device=x_t.device, dtype=self.dtype)
        moves = moves < self._probability(u.sum(-1), h)
        out = x_t.clone()
        if moves.any():
            out[moves] = categorical(u[moves], generator)
        return out

    def final_step(self, logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The last step: ``x_1`` drawn from (or the argmax of) the posterior; ``(B, L)``."""
        q = self.posterior(logits)
        return q.argmax(-1) if self.final == "argmax" else categorical(q, generator)

    def transition_probs(
        self, logits: Tensor, x_t: Tensor, t: float, h: float, final: bool = False
    ) -> Tensor:
        r"""The exact law of :meth:`step` (or :meth:`final_step`), per position: ``(B, L, S)``.

        With :math:`\pi(\lambda)` the jump probability, :math:`r_1 = \pi(\lambda_1)/\lambda_1` for
        :math:`\hat x_1 \ne x_t` (:math:`\lambda_1 = J + A\kappa + b`) and :math:`r_0 = \pi(b)/b` for
        :math:`\hat x_1 = x_t` (:math:`b = A(1-\kappa)(1 - p_0(x_t))`), for :math:`y \ne x_t`:

        .. math:: P(y) = r_1 (J + A\kappa)\, q(y) + A (1-\kappa)\, p_0(y)\,[r_1 (1 - q(x_t)) + r_0\, q(x_t)].
        """
        s = self._states(logits)
        q = self.posterior(logits)
        if final:
            q = F.one_hot(q.argmax(-1), q.shape[-1]).to(self.dtype) if self.final == "argmax" else q
            return F.pad(q, (0, s - q.shape[-1]))
        q = F.pad(q, (0, s - q.shape[-1]))
        here = F.one_hot(x_t, s).bool()
        q_here = (q * here).sum(-1, keepdim=True)
        jump, a, k = self._coefficients(t)

        def ratio(rate: Tensor) -> Tensor:
            p = self._probability(rate, h)
            return torch.where(rate > 0, p / rate.clamp(min=1e-300), torch.zeros_like(rate))

        if a > 0:
            p0 = self._p0(x_t, s)
            b = a * (1.0 - k) * (1.0 - (p0 * here).sum(-1, keepdim=True))
            r1, r0 = ratio(jump + a * k + b), ratio(b)
            out = r1 * (jump + a * k) * q + a * (1.0 - k) * p0 * (r1 * (1 - q_here) + r0 * q_here)
        else:
            out = ratio(torch.tensor(jump, dtype=self.dtype)) * jump * q
        out = out.masked_fill(here, 0.0)
        return out + here * (1.0 - out.sum(-1, keepdim=True))


def euler_sample(
    posterior: Callable[..., Tensor],
    x0: Tensor,
    stepper: MixtureEuler,
    grid: Tensor | int = 64,
    *,
    cond: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[float, Tensor], None] | None = None,
) -> Tensor:
    """Run the CTMC Euler sampler from ``x0`` along ``grid``; returns the final tokens ``(B, L)``.

    Args:
        posterior: ``posterior(x_t, t, **cond) -> logits (B, L, V)`` with ``t: (B,)``.
        x0: source tokens ``(B, L)``.
        stepper: the :class:`MixtureEuler` step.
        grid: an increasing time grid from 0 to 1 ``(K + 1,)`` or a number of uniform steps ``K``; the
            last interval is the final step, so the network is called ``K`` times, whatever ``L`` is.
        cond: conditions passed to ``posterior``.
        generator: the source of all randomness.
        callback: called as ``callback(t, x)`` after every step.

    Example:
        >>> import torch
        >>> net = lambda x, t: torch.zeros(*x.shape, 3)  # a uniform posterior over 3 tokens
        >>> x0 = torch.full((2, 5), 3)  # all masked
        >>> x = euler_sample(net, x0, MixtureEuler(MixturePath(), num_states=4), 8,
        ...                  generator=torch.Generator().manual_seed(0))
        >>> bool((x < 3).all())
        True
    """
    if isinstance(grid, int):
        grid = uniform_grid(grid)
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.dim() != 1 or grid.numel() < 2 or not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError(f"grid must be an increasing 1-D time grid from 0 to 1, got {grid.tolist()}")
    if grid[0] < 0 or grid[-1] > 1:
        raise ValueError(f"grid must lie in [0, 1], got [{float(grid[0])}, {float(grid[-1])}]")
    cond = dict(cond or {})
    x = x0.clone()
    times = grid.tolist()
    n = len(times) - 1
    with torch.no_grad():
        for i in range(n):
            t, h = times[i], times[i + 1] - times[i]
            tt = torch.full((x.shape[0],), t, device=x.device)
            logits = posterior(x, tt, **cond)
            if logits.shape[:2] != x.shape:
                raise ValueError(
                    f"the posterior must return logits (B, L, V) = ({x.shape[0]}, {x.shape[1]}, V), "
                    f"got {tuple(logits.shape)}"
                )
            x = (
                stepper.final_step(logits, generator)
                if i == n - 1
                else stepper.step(logits, x, t, h, generator)
            )
            if callback is not None:
                callback(times[i + 1], x)
    return x
