r"""The mixture probability path of discrete flow matching and its probability velocity.

Gat et al. 2024, "Discrete Flow Matching" (arXiv:2407.15595), mixture path in flowforge's direction
(source at ``t = 0``, data at ``t = 1``): per position, independently,

.. math:: p_t(x^i \mid x_0, x_1) = (1 - \kappa_t)\, \delta_{x_0^i}(x^i) + \kappa_t\, \delta_{x_1^i}(x^i),

with :math:`\kappa_t` the ``alpha`` of a :mod:`flowforge.core.schedules` schedule (:math:`\kappa_0 = 0`,
:math:`\kappa_1 = 1`; :class:`~flowforge.core.schedules.Linear` gives :math:`\kappa_t = t`,
:class:`~flowforge.core.schedules.Polynomial` gives :math:`t^n`). From a factorised posterior
:math:`p_{1|t}(\cdot \mid x_t)` the marginal probability velocity (rates) per position is

.. math:: u_t^i(y, x_t) = \frac{\dot\kappa_t}{1 - \kappa_t}\,\big[p_{1|t}^i(y \mid x_t) - \delta_{x_t^i}(y)\big].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from flowforge.core.schedules import Linear, Schedule

__all__ = ["MixturePath", "MixturePathSample", "posterior_to_velocity"]


@dataclass(frozen=True)
class MixturePathSample:
    """A draw from the mixture path: ``x_t, x0, x1: (B, L)`` int64, ``t: (B,)``."""

    x_t: Tensor
    x0: Tensor
    x1: Tensor
    t: Tensor


def _check_tokens(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        what = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be integer token ids (B, L), got {what}; pass {name}.long()")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (B, L), got {tuple(x.shape)}")


def posterior_to_velocity(
    posterior: Tensor, x_t: Tensor, jump: Tensor, num_states: int | None = None
) -> Tensor:
    r"""Rates :math:`u_t^i(y, x_t) = J_t\,[p_{1|t}^i(y \mid x_t) - \delta_{x_t^i}(y)]`, :math:`J_t = \dot\kappa_t/(1-\kappa_t)`.

    Args:
        posterior: probabilities :math:`p_{1|t}` ``(B, L, V)`` (rows summing to 1).
        x_t: current tokens ``(B, L)`` in ``0..num_states-1``.
        jump: :math:`J_t` ``(B,)`` (see :meth:`MixturePath.jump_coefficient`).
        num_states: size of the state space (``V + 1`` for a masked source: the posterior gives the
            mask id probability 0). Defaults to ``V``.

    Returns:
        ``(B, L, num_states)``; each row sums to 0 and is ``>= 0`` off the diagonal ``y = x_t^i``.

    Example:
        >>> import torch
        >>> q = torch.tensor([[[0.5, 0.5]]])
        >>> posterior_to_velocity(q, torch.tensor([[2]]), torch.tensor([1.0]), num_states=3)
        tensor([[[ 0.5000,  0.5000, -1.0000]]])
    """
    s = posterior.shape[-1] if num_states is None else int(num_states)
    if s < posterior.shape[-1]:
        raise ValueError(f"num_states={s} is smaller than the posterior's vocabulary {posterior.shape[-1]}")
    if s > posterior.shape[-1]:
        posterior = F.pad(posterior, (0, s - posterior.shape[-1]))
    delta = F.one_hot(x_t, s).to(posterior.dtype)
    return jump.to(posterior.dtype)[:, None, None] * (posterior - delta)


class MixturePath:
    r"""Mixture path :math:`x_t^i = x_1^i` with probability :math:`\kappa_t`, else :math:`x_0^i` (Gat et al. 2024).

    Args:
        schedule: a :mod:`flowforge.core.schedules` schedule whose ``alpha`` is :math:`\kappa_t` (and
            ``d_alpha`` is :math:`\dot\kappa_t`); it must satisfy :math:`\kappa_0 = 0`, :math:`\kappa_1 = 1`.
            Default :class:`~flowforge.core.schedules.Linear`.

    Example:
        >>> import torch
        >>> from flowforge.core.schedules import Polynomial
        >>> path = MixturePath(Polynomial(2.0))
        >>> x0, x1 = torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)
        >>> path.sample(x0, x1, torch.tensor([0.0, 1.0])).x_t
        tensor([[0, 0, 0, 0, 0],
                [1, 1, 1, 1, 1]])
    """

    def __init__(self, schedule: Schedule | None = None) -> None:
        self.schedule = schedule if schedule is not None else Linear()
        ends = self.schedule(torch.tensor([0.0, 1.0], dtype=torch.float64)).alpha
        if abs(float(ends[0])) > 1e-6 or abs(float(ends[1]) - 1.0) > 1e-6:
            raise ValueError(
                f"a mixture path needs kappa(0) = 0 and kappa(1) = 1, but {self.schedule!r} has alpha(0) = "
                f"{float(ends[0]):.4g}, alpha(1) = {float(ends[1]):.4g}; use Linear(), Polynomial(n) or Cosine()"
            )

    def __repr__(self) -> str:
        return f"MixturePath({self.schedule!r})"

    def kappa(self, t: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`(\kappa_t, \dot\kappa_t)`, each of the shape of ``t``."""
        out = self.schedule(t)
        return out.alpha, out.d_alpha

    def jump_coefficient(self, t: Tensor) -> Tensor:
        r""":math:`J_t = \dot\kappa_t / (1 - \kappa_t)`, the rate of leaving the source; infinite at ``t = 1``."""
        k, dk = self.kappa(t)
        return dk / (1 - k)

    def sample(
        self, x0: Tensor, x1: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> MixturePathSample:
        """Draw ``x_t ~ p_t(. | x0, x1)``: each position independently takes ``x1`` with probability kappa(t).

        Args:
            x0: source tokens ``(B, L)``.
            x1: data tokens ``(B, L)``.
            t: times ``(B,)`` in ``[0, 1]``.
            generator: source of the per-position uniforms.
        """
        _check_tokens("x0", x0)
        _check_tokens("x1", x1)
        if x0.shape != x1.shape:
            raise ValueError(
                f"x0 and x1 must have the same shape (B, L), got {tuple(x0.shape)} and {tuple(x1.shape)}"
            )
        if t.shape != (x1.shape[0],):
            raise ValueError(f"t must have shape (B,) = ({x1.shape[0]},), got {tuple(t.shape)}")
        k = self.kappa(t)[0]
        u = torch.rand(x1.shape, generator=generator, device=x1.device, dtype=k.dtype)
        x_t = torch.where(u < k[:, None], x1, x0)
        return MixturePathSample(x_t=x_t, x0=x0, x1=x1, t=t)

    def conditional_probs(self, x1: Tensor, t: Tensor, source_probs: Tensor) -> Tensor:
        r"""The per-position law :math:`p_t(\cdot \mid x_1) = \kappa_t \delta_{x_1} + (1 - \kappa_t) p_0`.

        Args:
            x1: data tokens ``(B, L)``.
            t: times ``(B,)``.
            source_probs: :math:`p_0`, ``(S,)`` or ``(L, S)``.

        Returns:
            ``(B, L, S)`` probabilities in ``source_probs.dtype``.
        """
        k = self.kappa(t.to(source_probs.dtype))[0][:, None, None]
        delta = F.one_hot(x1, source_probs.shape[-1]).to(source_probs.dtype)
        return k * delta + (1 - k) * source_probs

    def velocity(self, posterior: Tensor, x_t: Tensor, t: Tensor, num_states: int | None = None) -> Tensor:
        """The probability velocity of a posterior at ``(x_t, t)``; see :func:`posterior_to_velocity`."""
        return posterior_to_velocity(posterior, x_t, self.jump_coefficient(t.to(posterior.dtype)), num_states)
