r"""A trained discrete flow as a :class:`DiscreteGenerator`: ``sample``, the ELBO ``log_prob`` and bits per token.

The ELBO is the path-space bound of the generalised KL (:func:`~flowforge.discrete.losses.generalized_kl`;
Gat et al. 2024, arXiv:2407.15595; Meta flow_matching's text ``evaluate``):

.. math:: \log p_1^\theta(x_1) \ge -\int_0^1 E_{x_t \sim p_t(\cdot \mid x_1)} \sum_i \ell_i(x_1, x_t, t)\, dt,

a bound on the continuous-time model chain (not on the Euler sampler). It holds for every factorised
source; it is tight for the masked source with an exact posterior and loose for the uniform source.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from flowforge.discrete.losses import generalized_kl
from flowforge.discrete.paths import MixturePath
from flowforge.discrete.samplers import MixtureEuler, euler_sample
from flowforge.discrete.sources import Source

__all__ = ["DiscreteGenerator", "bits_per_token"]


def bits_per_token(log_prob: Tensor, length: int) -> Tensor:
    r"""Bits per token :math:`-\log p / (L \ln 2)` from (a bound on) the log-likelihood in nats.

    Example:
        >>> bits_per_token(torch.tensor([-8 * math.log(2.0)]), 4)
        tensor([2.])
    """
    return -log_prob / (length * math.log(2.0))


class DiscreteGenerator:
    """Samples token sequences by CTMC Euler steps from the source at t=0 to data at t=1.

    Args:
        posterior: ``posterior(x_t, t, **cond) -> logits (B, L, V)`` over the data vocabulary.
        path: the mixture path the posterior was trained on.
        source: the source distribution (its ``num_states`` is ``V`` or ``V + 1`` with a mask id).
        vocab_size: ``V``.
        length: default sequence length ``L``.
        device: where sequences are created.

    Example:
        >>> import torch
        >>> from flowforge.discrete.sources import MaskedSource
        >>> gen = DiscreteGenerator(lambda x, t: torch.zeros(*x.shape, 3), MixturePath(), MaskedSource(3), 3, 6)
        >>> gen.sample(4, steps=8, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 6])
        >>> gen.log_prob(torch.zeros(2, 6, dtype=torch.long), steps=16).shape  # the ELBO, nats
        torch.Size([2])
    """

    def __init__(
        self,
        posterior: Callable[..., Tensor],
        path: MixturePath,
        source: Source,
        vocab_size: int,
        length: int | None,
        device: torch.device | str | None = None,
    ) -> None:
        self.posterior, self.path, self.source = posterior, path, source
        self.vocab_size, self.length, self.device = int(vocab_size), length, device

    def _length(self, length: int | None) -> int:
        length = length if length is not None else self.length
        if length is None:
            raise ValueError("sequence length unknown: pass length=... (or train on a batch first)")
        return int(length)

    def stepper(self, **opts) -> MixtureEuler:
        """The :class:`~flowforge.discrete.samplers.MixtureEuler` step with this model's path and source."""
        return MixtureEuler(self.path, self.source.probs, num_states=self.source.num_states, **opts)

    def sample(
        self,
        n: int,
        *,
        cond: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        steps: int = 64,
        temperature: float = 1.0,
        corrector: float | Callable[[float], float] = 0.0,
        length: int | None = None,
        grid: Tensor | None = None,
        jump: str = "exp",
        final: str = "sample",
        dtype: torch.dtype = torch.float64,
        x0: Tensor | None = None,
    ) -> Tensor:
        """Draw ``n`` sequences; returns ``(n, L)`` int64 tokens in ``0..vocab_size-1``.

        Args:
            n: number of sequences.
            cond: conditions passed to the posterior, each ``(n, ...)`` (e.g. ``{"y": labels}``).
            generator: the source of all randomness (source draw, posterior draws, jumps).
            steps: number of network calls on a uniform grid (independent of ``L``).
            temperature: divides the posterior logits.
            corrector: divergence-free coefficient ``c`` (float or ``c(t)``); dropped where kappa = 0.
            length: sequence length (default: the model's).
            grid: explicit increasing time grid from 0 to 1 (instead of ``steps``).
            jump: ``"exp"`` (Meta) or ``"linear"`` (clamped Euler) jump probability.
            final: ``"sample"`` (Meta) or ``"argmax"`` of the posterior at the last step.
            dtype: precision of the categorical draws.
            x0: start from these source tokens ``(n, L)`` instead of drawing them.
        """
        if x0 is None:
            x0 = self.source.sample((n, self._length(length)), generator, device=self.device)
        stepper = self.stepper(
            temperature=temperature, corrector=corrector, jump=jump, final=final, dtype=dtype
        )
        return euler_sample(
            self.posterior, x0, stepper, grid if grid is not None else steps, cond=cond, generator=generator
        )

    def log_prob(
        self,
        x: Tensor,
        *,
        cond: dict[str, Tensor] | None = None,
        steps: int = 128,
        generator: torch.Generator | None = None,
        t_max: float = 1.0 - 1e-3,
    ) -> Tensor:
        r"""The ELBO (a lower bound on :math:`\log p(x)`, nats), per sequence ``(B,)``.

        Stratified Monte Carlo over time: ``steps`` times :math:`t_k = t_{max}(k + u_k)/K` with
        independent :math:`u_k \sim U(0, 1)` per sequence and stratum, one :math:`x_t \sim p_t(\cdot|x)`
        each, so the estimate is unbiased for the bound truncated at ``t_max`` (the integrand is finite
        at ``t = 1`` but the rate :math:`J_t` is not, so the last ``1 - t_max`` is left out, as Meta's
        evaluation does with ``1e-3``). Its variance falls like ``1 / steps``.
        """
        if x.dim() != 2 or x.dtype.is_floating_point or x.dtype == torch.bool:
            raise ValueError(
                f"x must be integer tokens (B, L), got {tuple(x.shape)} {x.dtype}; pass x.long()"
            )
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise ValueError(
                f"tokens must lie in 0..{self.vocab_size - 1}, got {int(x.min())}..{int(x.max())}"
            )
        if not 0.0 < t_max <= 1.0:
            raise ValueError(f"t_max must be in (0, 1], got {t_max}")
        cond = dict(cond or {})
        b = x.shape[0]
        total = torch.zeros(b, dtype=torch.float64, device=x.device)
        with torch.no_grad():
            for k in range(steps):
                u = torch.rand(b, generator=generator, dtype=torch.float64, device=x.device)
                t = t_max * (k + u) / steps
                x0 = self.source.sample(tuple(x.shape), generator, device=x.device)
                x_t = self.path.sample(x0, x, t, generator).x_t
                tt = t.to(torch.get_default_dtype())
                logits = self.posterior(x_t, tt, **cond)
                ell = generalized_kl(logits.double(), x, x_t, self.path.jump_coefficient(t))
                total += ell.sum(-1)
        return -(t_max / steps) * total

    def bits_per_token(self, x: Tensor, **opts) -> Tensor:
        """The ELBO of :meth:`log_prob` as bits per token ``-ELBO / (L ln 2)``, ``(B,)`` (an upper bound)."""
        return bits_per_token(self.log_prob(x, **opts), x.shape[1])
