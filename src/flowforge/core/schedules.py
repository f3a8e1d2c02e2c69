r"""Schedules: the coefficients of an affine probability path and their time derivatives.

A schedule maps times ``t`` (any shape) to :class:`ScheduleOutput` with
:math:`\alpha_t, \sigma_t, \dot\alpha_t, \dot\sigma_t` such that

.. math:: x_t = \alpha_t\, x_1 + \sigma_t\, x_0,

with ``x0`` the source (noise) at ``t = 0`` and ``x1`` the data at ``t = 1``.
Every analytic derivative is tested against autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["ScheduleOutput", "Schedule", "Linear", "Cosine", "VariancePreserving", "Polynomial"]


@dataclass(frozen=True)
class ScheduleOutput:
    """Coefficients at ``t``; every field has the shape of ``t``."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor


class Schedule(Protocol):
    """``schedule(t) -> ScheduleOutput``; ``alpha(1) = 1``, ``sigma(1) = 0`` (data at t=1)."""

    def __call__(self, t: Tensor) -> ScheduleOutput: ...


@dataclass(frozen=True)
class Linear:
    r"""Rectified flow / CondOT (Liu et al., 2023; Lipman et al., 2023): :math:`\alpha_t = t,\ \sigma_t = 1 - t`."""

    def __call__(self, t: Tensor) -> ScheduleOutput:
        one = torch.ones_like(t)
        return ScheduleOutput(alpha=t, sigma=1 - t, d_alpha=one, d_sigma=-one)


@dataclass(frozen=True)
class Cosine:
    r"""Trigonometric / GVP path (Albergo & Vanden-Eijnden, 2023; Ma et al., SiT 2024).

    :math:`\alpha_t = \sin(\pi t / 2),\ \sigma_t = \cos(\pi t / 2)`, so :math:`\alpha_t^2 + \sigma_t^2 = 1`.
    """

    def __call__(self, t: Tensor) -> ScheduleOutput:
        h = 0.5 * math.pi
        s, c = torch.sin(h * t), torch.cos(h * t)
        return ScheduleOutput(alpha=s, sigma=c, d_alpha=h * c, d_sigma=-h * s)


@dataclass(frozen=True)
class VariancePreserving:
    r"""Variance-preserving diffusion path (Song et al., 2021), written with t=0 at noise.

    With diffusion time :math:`\tau = 1 - t` and :math:`\beta(\tau) = \beta_{min} + \tau(\beta_{max}-\beta_{min})`:
    :math:`\alpha_t = \exp(-\tfrac12 \int_0^{\tau}\beta)`, :math:`\sigma_t = \sqrt{1 - \alpha_t^2}`.
    Note :math:`\alpha_0 = e^{-(\beta_{min}+\beta_{max})/4} > 0`: the source end is only nearly pure noise,
    and :math:`\dot\sigma_t` diverges at ``t = 1``; train on ``t < 1``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __call__(self, t: Tensor) -> ScheduleOutput:
        tau = 1 - t
        integral = self.beta_min * tau + 0.5 * (self.beta_max - self.beta_min) * tau**2
        beta = self.beta_min + (self.beta_max - self.beta_min) * tau
        alpha = torch.exp(-0.5 * integral)
        sigma = torch.sqrt(-torch.expm1(-integral))
        d_alpha = 0.5 * beta * alpha
        return ScheduleOutput(alpha=alpha, sigma=sigma, d_alpha=d_alpha, d_sigma=-alpha * d_alpha / sigma)


@dataclass(frozen=True)
class Polynomial:
    r"""Polynomial convex schedule (Meta flow_matching's ``PolynomialConvexScheduler``).

    :math:`\alpha_t = t^n,\ \sigma_t = 1 - t^n`; ``n = 1`` is :class:`Linear`.
    """

    n: float = 2.0

    def __post_init__(self) -> None:
        if not self.n > 0:
            raise ValueError(
                f"Polynomial needs n > 0, got n={self.n}; Polynomial(n=1.0) is the linear schedule"
            )

    def __call__(self, t: Tensor) -> ScheduleOutput:
        a = t**self.n
        da = self.n * t ** (self.n - 1)
        return ScheduleOutput(alpha=a, sigma=1 - a, d_alpha=da, d_sigma=-da)
