"""Time samplers for training and the resolution shift shared with sampling grids.

All samplers return ``t`` in ``[0, 1]`` in flowforge's direction (t=0 source/noise, t=1 data).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def resolution_shift(t: Tensor, shift: float) -> Tensor:
    r"""Resolution-dependent time shift of SD3 (Esser et al., 2024, eq. 23), in flowforge's direction.

    SD3 writes the noise level :math:`\tau = 1 - t` and shifts it as
    :math:`\tau' = a\tau / (1 + (a - 1)\tau)`. Converted with ``t = 1 - tau`` this is

    .. math:: t' = \frac{t}{a - (a - 1) t},

    so ``shift > 1`` moves time towards the noise end (t=0), ``shift = 1`` is the identity.

    Args:
        t: times in ``[0, 1]``, any shape.
        shift: the factor ``a > 0`` (SD3 uses ``sqrt(m / n)`` for ``m`` vs ``n`` pixels; 3.0 at 1024^2).

    Returns:
        The shifted times, same shape as ``t``; 0 and 1 are fixed points.
    """
    if not shift > 0:
        raise ValueError(f"resolution_shift needs shift > 0, got {shift}; use 1.0 for no shift")
    return t / (shift - (shift - 1.0) * t)


def _uniform(n: int, generator: torch.Generator | None, device, dtype) -> Tensor:
    return torch.rand(n, generator=generator, device=device, dtype=dtype)


class TimeSampler:
    """Base of the training-time samplers: ``sampler(n, generator=..., device=..., dtype=...) -> (n,)``.

    Subclasses implement :meth:`from_uniform`, the inverse-CDF map from ``u ~ U(0, 1)`` to ``t``, so one
    stream of uniforms drives every sampler and the CDF is known in closed form for testing.
    """

    def from_uniform(self, u: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Draw ``n`` times in ``[0, 1]``; returns ``(n,)``."""
        return self.from_uniform(_uniform(n, generator, device, dtype))


class Uniform(TimeSampler):
    """``t ~ U(0, 1)`` (Lipman et al., 2023)."""

    def from_uniform(self, u: Tensor) -> Tensor:
        return u

    def density(self, t: Tensor) -> Tensor:
        """Probability density at ``t``."""
        return torch.ones_like(t)


class LogitNormal(TimeSampler):
    r"""SD3's ``rf/lognorm(m, s)`` (Esser et al., 2024, eq. 19): ``t = sigmoid(n)``, ``n ~ N(loc, scale)``.

    Written in flowforge's direction: SD3's location ``m`` (towards noise for ``m > 0``) is ``loc = -m``.
    The density is :math:`\frac{1}{s\sqrt{2\pi}}\frac{1}{t(1-t)}\exp(-\frac{(\mathrm{logit}\,t - loc)^2}{2s^2})`.
    """

    def __init__(self, loc: float = 0.0, scale: float = 1.0) -> None:
        if not scale > 0:
            raise ValueError(f"LogitNormal needs scale > 0, got {scale}")
        self.loc, self.scale = float(loc), float(scale)

    def from_uniform(self, u: Tensor) -> Tensor:
        u = u.clamp(1e-7, 1 - 1e-7)
        return torch.sigmoid(self.loc + self.scale * math.sqrt(2.0) * torch.erfinv(2 * u - 1))

    def density(self, t: Tensor) -> Tensor:
        """Probability density at ``t``."""
        logit = torch.log(t) - torch.log1p(-t)
        z = (logit - self.loc) / self.scale
        return torch.exp(-0.5 * z**2) / (self.scale * math.sqrt(2 * math.pi) * t * (1 - t))


class ModeSampler(TimeSampler):
    r"""SD3's ``rf/mode(s)`` with heavy tails (Esser et al., 2024, eq. 20), in flowforge's direction.

    SD3: :math:`t_{SD3} = 1 - u - s(\cos^2(\pi u/2) - 1 + u)`; ours is :math:`t = 1 - t_{SD3}`. Valid for
    :math:`-1 \le s \le 2/(\pi - 2)`, where the map is monotone so that :math:`P(t \le f(u)) = u`.
    """

    def __init__(self, scale: float = 1.29) -> None:
        if not -1.0 <= scale <= 2.0 / (math.pi - 2.0):
            raise ValueError(f"ModeSampler needs -1 <= scale <= 2/(pi-2) = 1.752, got {scale}")
        self.scale = float(scale)

    def from_uniform(self, u: Tensor) -> Tensor:
        return u + self.scale * (torch.cos(0.5 * math.pi * u) ** 2 - 1 + u)


class CosMap(TimeSampler):
    r"""SD3's CosMap (Esser et al., 2024, eq. 21) in our direction: :math:`t = 1 / (\tan(\pi u / 2) + 1)`."""

    def from_uniform(self, u: Tensor) -> Tensor:
        return 1.0 / (torch.tan(0.5 * math.pi * u) + 1.0)


class UShaped(TimeSampler):
    r"""U-shaped density of rectified flow++ (Lee, Lin & Fanti, 2024): :math:`p(t) \propto e^{a t} + e^{a(1-t)}`.

    Half of the draws come from :math:`p(t) \propto e^{at}` by inverse CDF,
    :math:`t = \log(1 + u(e^a - 1))/a`, and half are mirrored to ``1 - t``.
    """

    def __init__(self, a: float = 4.0) -> None:
        if not a > 0:
            raise ValueError(f"UShaped needs a > 0, got {a}")
        self.a = float(a)

    def from_uniform(self, u: Tensor) -> Tensor:
        # u < 1/2 and u >= 1/2 each carry one half of the mixture, so one uniform gives one draw
        v = torch.where(u < 0.5, 2 * u, 2 * u - 1)
        t = torch.log1p(v * math.expm1(self.a)) / self.a
        return torch.where(u < 0.5, t, 1 - t)

    def density(self, t: Tensor) -> Tensor:
        """Probability density at ``t``."""
        return 0.5 * self.a * (torch.exp(self.a * t) + torch.exp(self.a * (1 - t))) / math.expm1(self.a)


class Shifted(TimeSampler):
    """Any sampler followed by :func:`resolution_shift` (SD3's high-resolution training)."""

    def __init__(self, base: TimeSampler, shift: float) -> None:
        resolution_shift(torch.zeros(1), shift)  # validates shift
        self.base, self.shift = base, float(shift)

    def from_uniform(self, u: Tensor) -> Tensor:
        return resolution_shift(self.base.from_uniform(u), self.shift)


class WithEndpoint(TimeSampler):
    r"""Any sampler with an atom: ``t = at`` with probability ``weight``, else a draw of ``base``.

    SymmFlow classifies from ``t = 1`` (clean image, pure-noise label code), where uniform ``t`` puts
    almost no mass: elsewhere the label input still carries the code, so the network can read the
    label instead of the image. An atom at 1 trains exactly the classification step.
    """

    def __init__(self, base: TimeSampler, at: float = 1.0, weight: float = 0.25) -> None:
        if not 0.0 <= at <= 1.0:
            raise ValueError(f"the atom must lie in [0, 1], got at={at}")
        if not 0.0 <= weight < 1.0:
            raise ValueError(f"weight is a probability in [0, 1), got {weight}; e.g. weight=0.25")
        self.base, self.at, self.weight = base, float(at), float(weight)

    def from_uniform(self, u: Tensor) -> Tensor:
        rest = self.base.from_uniform(((u - self.weight) / (1.0 - self.weight)).clamp(0.0, 1.0))
        return torch.where(u < self.weight, torch.full_like(u, self.at), rest)
