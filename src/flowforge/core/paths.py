r"""Probability paths: ``path.sample(x0, x1, t) -> PathSample``, and prediction conversions.

:class:`AffinePath` builds :math:`x_t = \alpha_t x_1 + \sigma_t x_0` with the conditional velocity
:math:`\dot x_t = \dot\alpha_t x_1 + \dot\sigma_t x_0` (Lipman et al., 2023; Liu et al., 2023).
:class:`StochasticInterpolant` adds :math:`\gamma_t z` with :math:`z \sim N(0, I)`
(Albergo, Boffi & Vanden-Eijnden, 2023).

Conversions between the four parameterisations (velocity, ``x1``, ``x0`` and score) go through one
canonical form: the pair of estimates :math:`(\hat x_1, \hat x_0)` with
:math:`x_t = \alpha_t \hat x_1 + \sigma_t \hat x_0`. Any prediction determines the pair, and the pair
determines every prediction, so there are ``2n`` small formulas instead of ``n^2`` helpers.
The score assumes a standard normal source: :math:`s(x_t) = -\hat x_0 / \sigma_t`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from flowforge.core.schedules import Linear, Schedule, ScheduleOutput

__all__ = [
    "Prediction",
    "PathSample",
    "Path",
    "AffinePath",
    "Gamma",
    "BrownianGamma",
    "TrigonometricInterpolant",
    "StochasticInterpolant",
    "to_canonical",
    "from_canonical",
    "convert",
]

Prediction = Literal["velocity", "x1", "x0", "score"]
PREDICTIONS: tuple[str, ...] = ("velocity", "x1", "x0", "score")


def _bcast(c: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample coefficients ``(B,)`` to broadcast against ``x`` of shape ``(B, *event)``."""
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim()))


@dataclass(frozen=True)
class PathSample:
    """A point on the path and its regression target.

    Attributes:
        x_t: ``(B, *event)`` the interpolated point.
        t: ``(B,)`` times.
        target: ``(B, *event)`` the conditional velocity :math:`\\dot x_t`.
        x0: ``(B, *event)`` source sample.
        x1: ``(B, *event)`` data sample.
        z: ``(B, *event)`` the interpolant's extra noise, or ``None`` for an affine path.
        gamma: ``(B,)`` the interpolant's noise level :math:`\\gamma_t`, or ``None``.
    """

    x_t: Tensor
    t: Tensor
    target: Tensor
    x0: Tensor
    x1: Tensor
    z: Tensor | None = None
    gamma: Tensor | None = None


class Path(Protocol):
    """``sample(x0, x1, t) -> PathSample`` plus the affine schedule used for conversions."""

    def sample(
        self, x0: Tensor, x1: Tensor, t: Tensor, *, generator: torch.Generator | None = None
    ) -> PathSample: ...

    def effective_schedule(self, t: Tensor) -> ScheduleOutput: ...


def _check(x0: Tensor, x1: Tensor, t: Tensor) -> None:
    if x0.shape != x1.shape:
        raise ValueError(f"x0 has shape {tuple(x0.shape)} but x1 has {tuple(x1.shape)}; they must match")
    if t.dim() != 1 or t.shape[0] != x1.shape[0]:
        raise ValueError(
            f"t must have shape (B,) = ({x1.shape[0]},), got {tuple(t.shape)}; pass one time per sample"
        )


@dataclass(frozen=True)
class AffinePath:
    r"""Affine path :math:`x_t = \alpha_t x_1 + \sigma_t x_0`, target :math:`\dot\alpha_t x_1 + \dot\sigma_t x_0`.

    Example:
        >>> import torch
        >>> from flowforge.core.paths import AffinePath
        >>> from flowforge.core.schedules import Linear
        >>> ps = AffinePath(Linear()).sample(torch.zeros(4, 2), torch.ones(4, 2), torch.full((4,), 0.25))
        >>> ps.x_t[0].tolist(), ps.target[0].tolist()
        ([0.25, 0.25], [1.0, 1.0])
    """

    schedule: Schedule = Linear()

    def sample(
        self, x0: Tensor, x1: Tensor, t: Tensor, *, generator: torch.Generator | None = None
    ) -> PathSample:
        """Sample ``x_t`` and the conditional velocity; shapes ``(B, *event)``, ``t: (B,)``."""
        _check(x0, x1, t)
        if isinstance(self.schedule, Linear):  # the common case, without the constant derivatives
            tb = _bcast(t, x1)
            return PathSample(x_t=tb * x1 + (1 - tb) * x0, t=t, target=x1 - x0, x0=x0, x1=x1)
        s = self.schedule(t)
        a, sg, da, dsg = (_bcast(c, x1) for c in (s.alpha, s.sigma, s.d_alpha, s.d_sigma))
        return PathSample(x_t=a * x1 + sg * x0, t=t, target=da * x1 + dsg * x0, x0=x0, x1=x1)

    def effective_schedule(self, t: Tensor) -> ScheduleOutput:
        """The schedule itself (the path is affine)."""
        return self.schedule(t)


class Gamma(Protocol):
    """Noise level of a stochastic interpolant: ``gamma(t) -> (gamma_t, d_gamma_t)``, zero at both ends."""

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor]: ...


@dataclass(frozen=True)
class BrownianGamma:
    r""":math:`\gamma_t = \sqrt{a\, t (1 - t)}` (Albergo et al., 2023, "a-brownian"; ``a = 1`` is "brownian").

    The derivative :math:`a(1 - 2t) / (2\gamma_t)` diverges at the ends; train on ``0 < t < 1``.
    """

    a: float = 1.0

    def __post_init__(self) -> None:
        if not self.a > 0:
            raise ValueError(f"BrownianGamma needs a > 0, got a={self.a}")

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor]:
        g = torch.sqrt(self.a * t * (1 - t))
        return g, self.a * (1 - 2 * t) / (2 * g)


@dataclass(frozen=True)
class TrigonometricInterpolant:
    r"""The trigonometric interpolant's schedule (Albergo et al., 2023, "trig"):

    :math:`\alpha_t = \sqrt{1-\gamma_t^2}\sin(\pi t/2)`, :math:`\sigma_t = \sqrt{1-\gamma_t^2}\cos(\pi t/2)`,
    so that :math:`\alpha_t^2 + \sigma_t^2 + \gamma_t^2 = 1`. Needs :math:`\gamma_t < 1` on ``(0, 1)``.
    """

    gamma: Gamma = BrownianGamma(1.0)

    def __call__(self, t: Tensor) -> ScheduleOutput:
        h = 0.5 * math.pi
        g, dg = self.gamma(t)
        r = torch.sqrt(1 - g**2)
        dr = -g * dg / r
        s, c = torch.sin(h * t), torch.cos(h * t)
        return ScheduleOutput(
            alpha=r * s, sigma=r * c, d_alpha=dr * s + r * h * c, d_sigma=dr * c - r * h * s
        )


@dataclass(frozen=True)
class StochasticInterpolant:
    r"""Stochastic interpolant :math:`x_t = \alpha_t x_1 + \sigma_t x_0 + \gamma_t z` (Albergo et al., 2023).

    The target is the velocity :math:`b` regressed on :math:`\dot\alpha_t x_1 + \dot\sigma_t x_0 + \dot\gamma_t z`.
    With a standard normal source the total noise :math:`\sigma_t x_0 + \gamma_t z` is Gaussian with
    standard deviation :math:`\bar\sigma_t = \sqrt{\sigma_t^2 + \gamma_t^2}`, and
    :math:`E[\dot\sigma_t x_0 + \dot\gamma_t z \mid x_t] = (\dot{\bar\sigma}_t / \bar\sigma_t) E[\bar\sigma_t\varepsilon\mid x_t]`,
    so every conversion uses the affine :meth:`effective_schedule` :math:`(\alpha_t, \bar\sigma_t)`.
    """

    schedule: Schedule = Linear()
    gamma: Gamma = BrownianGamma(1.0)

    def sample(
        self, x0: Tensor, x1: Tensor, t: Tensor, *, generator: torch.Generator | None = None
    ) -> PathSample:
        """Sample ``x_t``, the velocity target and the noise ``z``; shapes ``(B, *event)``, ``t: (B,)``."""
        _check(x0, x1, t)
        s = self.schedule(t)
        g, dg = self.gamma(t)
        z = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=x1.device)
        a, sg, da, dsg, gb, dgb = (_bcast(c, x1) for c in (s.alpha, s.sigma, s.d_alpha, s.d_sigma, g, dg))
        return PathSample(
            x_t=a * x1 + sg * x0 + gb * z,
            t=t,
            target=da * x1 + dsg * x0 + dgb * z,
            x0=x0,
            x1=x1,
            z=z,
            gamma=g,
        )

    def effective_schedule(self, t: Tensor) -> ScheduleOutput:
        r"""Affine schedule :math:`(\alpha_t, \bar\sigma_t)` with :math:`\bar\sigma_t^2 = \sigma_t^2 + \gamma_t^2`."""
        s = self.schedule(t)
        g, dg = self.gamma(t)
        sbar = torch.sqrt(s.sigma**2 + g**2)
        return ScheduleOutput(
            alpha=s.alpha, sigma=sbar, d_alpha=s.d_alpha, d_sigma=(s.sigma * s.d_sigma + g * dg) / sbar
        )


def to_canonical(pred: Tensor, kind: Prediction, x_t: Tensor, s: ScheduleOutput) -> tuple[Tensor, Tensor]:
    r"""Turn a prediction into the canonical pair :math:`(\hat x_1, \hat x_0)`.

    Args:
        pred: ``(B, *event)`` the network's output.
        kind: what ``pred`` is: ``"velocity"``, ``"x1"`` (data), ``"x0"`` (noise) or ``"score"``.
        x_t: ``(B, *event)`` the point where it was predicted.
        s: the (effective) schedule at the batch's times, each field ``(B,)``.

    Returns:
        ``(x1_hat, x0_hat)``, each ``(B, *event)``.
    """
    a, sg = _bcast(s.alpha, x_t), _bcast(s.sigma, x_t)
    if kind == "x1":
        return pred, (x_t - a * pred) / sg
    if kind == "x0":
        return (x_t - sg * pred) / a, pred
    if kind == "score":
        x0 = -sg * pred
        return (x_t - sg * x0) / a, x0
    if kind == "velocity":
        da, dsg = _bcast(s.d_alpha, x_t), _bcast(s.d_sigma, x_t)
        det = a * dsg - sg * da  # solves [a sg; da dsg] [x1; x0] = [x_t; v]
        return (dsg * x_t - sg * pred) / det, (a * pred - da * x_t) / det
    raise ValueError(f"unknown prediction {kind!r}; use one of {PREDICTIONS}")


def from_canonical(x1: Tensor, x0: Tensor, kind: Prediction, s: ScheduleOutput) -> Tensor:
    """Express the canonical pair ``(x1_hat, x0_hat)`` as a prediction of ``kind``; shapes ``(B, *event)``."""
    if kind == "x1":
        return x1
    if kind == "x0":
        return x0
    if kind == "score":
        return -x0 / _bcast(s.sigma, x0)
    if kind == "velocity":
        return _bcast(s.d_alpha, x1) * x1 + _bcast(s.d_sigma, x0) * x0
    raise ValueError(f"unknown prediction {kind!r}; use one of {PREDICTIONS}")


def convert(pred: Tensor, x_t: Tensor, t: Tensor, path: Path, *, src: Prediction, dst: Prediction) -> Tensor:
    """Convert a prediction made at ``(x_t, t)`` on ``path`` from ``src`` to ``dst`` parameterisation.

    Example:
        >>> import torch
        >>> from flowforge.core.paths import AffinePath, convert
        >>> x_t, t = torch.randn(3, 2), torch.rand(3)
        >>> v = torch.randn(3, 2)
        >>> back = convert(convert(v, x_t, t, AffinePath(), src="velocity", dst="score"),
        ...                x_t, t, AffinePath(), src="score", dst="velocity")
        >>> torch.allclose(back, v, atol=1e-4)
        True
    """
    if src == dst:
        return pred
    s = path.effective_schedule(t)
    return from_canonical(*to_canonical(pred, src, x_t, s), dst, s)
