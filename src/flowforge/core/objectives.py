r"""Regression objectives for continuous flows: what to regress (the target) and how (the distance).

Targets, for a :class:`~flowforge.core.paths.PathSample` ``ps``:

===============  ===============================================  =========================================
prediction       target                                           source
===============  ===============================================  =========================================
``velocity``     :math:`\dot\alpha_t x_1 + \dot\sigma_t x_0 (+\dot\gamma_t z)`   flow matching; interpolant ``b``
``x1``           :math:`x_1`                                      data prediction
``x0``           :math:`x_0`                                      noise prediction (DDPM's :math:`\epsilon`)
``score``        :math:`-z/\gamma_t` (interpolant), :math:`-x_0/\sigma_t` (affine)   :math:`s = \nabla\log\rho_t`
``denoiser``     :math:`z`                                        interpolant :math:`\eta = E[z \mid x_t]`
===============  ===============================================  =========================================

Each interpolant loss of Albergo et al. (2023), e.g. :math:`L_b = \tfrac12\|b\|^2 - (\partial_t I + \dot\gamma z)\cdot b`,
equals :math:`\tfrac12\|b - \text{target}\|^2` up to a constant, so one regression form serves them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from flowforge.core.paths import PathSample

__all__ = ["Distance", "SquaredError", "PseudoHuber", "regression_target", "regression_loss", "TARGETS"]

Target = Literal["velocity", "x1", "x0", "score", "denoiser"]
TARGETS: tuple[str, ...] = ("velocity", "x1", "x0", "score", "denoiser")


class Distance(Protocol):
    """``distance(pred, target) -> (B,)`` per-sample distances for ``(B, *event)`` inputs."""

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class SquaredError:
    r"""Mean squared error over the event: :math:`\frac1d\|\hat u - u\|^2`."""

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).square().flatten(1).mean(1)


@dataclass(frozen=True)
class PseudoHuber:
    r"""Pseudo-Huber distance :math:`\sqrt{\|\hat u - u\|^2 + c^2} - c` (Song & Dhariwal, 2023; rectified flow++).

    ``c`` defaults to :math:`0.00054\sqrt{d}` for event size ``d`` (the iCT / rf++ choice); the result
    is divided by ``d`` to match :class:`SquaredError`'s scale per dimension.
    """

    c: float | None = None

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        d = pred[0].numel()
        c = self.c if self.c is not None else 0.00054 * math.sqrt(d)
        sq = (pred - target).square().flatten(1).sum(1)
        return (torch.sqrt(sq + c * c) - c) / d


def regression_target(ps: PathSample, prediction: Target, sigma: Tensor | None = None) -> Tensor:
    """The regression target of ``prediction`` for the path sample ``ps``; shape ``(B, *event)``.

    Args:
        ps: the path sample.
        prediction: one of ``TARGETS``.
        sigma: ``(B,)`` the affine path's :math:`\\sigma_t`, needed only for ``"score"`` without ``z``.
    """
    if prediction == "velocity":
        return ps.target
    if prediction == "x1":
        return ps.x1
    if prediction == "x0":
        return ps.x0
    if prediction in ("score", "denoiser"):
        if ps.z is None or ps.gamma is None:
            if prediction == "denoiser":
                raise ValueError("the 'denoiser' target needs a StochasticInterpolant path (it regresses z)")
            if sigma is None:
                raise ValueError("the 'score' target on an affine path needs sigma_t")
            return -ps.x0 / sigma.reshape(sigma.shape + (1,) * (ps.x0.dim() - 1))
        if prediction == "denoiser":
            return ps.z
        return -ps.z / ps.gamma.reshape(ps.gamma.shape + (1,) * (ps.z.dim() - 1))
    raise ValueError(f"unknown prediction {prediction!r}; use one of {TARGETS}")


def regression_loss(
    pred: Tensor,
    target: Tensor,
    t: Tensor,
    distance: Distance = SquaredError(),
    weighting: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""Weighted regression :math:`E_t[w(t)\, d(\hat u, u)]`; ``pred``/``target`` ``(B, *event)``, ``t`` ``(B,)``."""
    if weighting is None and isinstance(distance, SquaredError):  # hot path: one fused reduction
        return (pred - target).square().mean()
    per_sample = distance(pred, target)
    if weighting is not None:
        per_sample = per_sample * weighting(t)
    return per_sample.mean()
