r"""Entropy production rate (EPR) from a stationary score, by two estimators, split by particle.

With the probability-flow velocity :math:`v = b - Ds` (:mod:`~flowforge.apps.active_matter.probability_flow`)
the EPR of the stationary state :math:`\rho` is (Boffi & Vanden-Eijnden, arXiv:2309.12991; reference code's
"Seifert entropy", verified reference §3.3)

.. math:: \dot S = E_\rho\big[v^\top D^{-1} v\big]
          = E_\rho\Big[\sum_i |v_{x,i}|^2/\varepsilon + |v_{g,i}|^2/\gamma\Big]. \qquad\text{(quadratic)}

Since :math:`v^\top D^{-1}v = v^\top D^{-1}b - v\cdot s` and :math:`E_\rho[v\cdot\nabla\log\rho] =
-E_\rho[\nabla\cdot v]` (integration by parts), also

.. math:: \dot S = E_\rho\big[v^\top D^{-1} b\big] + E_\rho\big[\nabla\cdot v\big]. \qquad\text{(divergence form)}

Both are equal for the true score; for a learned score :math:`s = s^* + \delta` they differ by
:math:`-E[v^*\cdot\delta] + E[\delta^\top D\delta]` (to second order), which makes their gap a check of the
score that needs no truth. The divergence form's error is :math:`-E[v^*\cdot\delta]`, half the first-order
error of the quadratic form.

**Which variables carry noise.** :math:`D = \operatorname{diag}(\varepsilon, \gamma)`. With
:math:`\varepsilon = 0` only :math:`g` is noisy and :math:`D` is singular; then :math:`D^{-1}` is read as
the pseudo-inverse (sums run over the noisy coordinates only, and :math:`\nabla\cdot v` becomes the
divergence over the noisy coordinates), i.e. the EPR is the :math:`g`-part, as in the reference code's
per-particle entropy for :math:`\varepsilon = 0` (verified reference §3.3).

**Decompositions.** ``per_particle`` holds each particle's summand of the quadratic form for every sample
(the local EPR density of the reference's entropy plots); ``per_particle_div`` the same for the divergence
form. :func:`~flowforge.apps.active_matter.spatial_decomposition` bins them by position.

Example:
    >>> import torch
    >>> from flowforge.apps.active_matter import AOUP, exact_score, epr_closed_form, simulate_stationary
    >>> sys = AOUP(A=1.0, v0=1.0, eps=0.1)
    >>> z = simulate_stationary(sys, 40_000, generator=torch.Generator().manual_seed(1))
    >>> ep = entropy_production(sys, z, lambda z: exact_score(sys, z))
    >>> abs(ep.quadratic / epr_closed_form(sys) - 1) < 4 * ep.quadratic_se / 10
    True
    >>> abs(ep.divergence_form - ep.quadratic) < 4 * ep.quadratic_se
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from flowforge.apps.active_matter.aoup import AOUP, split_state
from flowforge.apps.active_matter.equilibrium import equilibrium_score
from flowforge.apps.active_matter.jacobian import DiagonalMethod, jacobian_diagonal

__all__ = ["EntropyProduction", "entropy_production"]


@dataclass(frozen=True)
class EntropyProduction:
    """The two EPR estimates with their Monte-Carlo standard errors, and the per-particle densities.

    Attributes:
        quadratic: :math:`E[v^\\top D^{-1} v]`.
        quadratic_se: its standard error (samples treated as independent).
        divergence_form: :math:`E[v^\\top D^{-1} b] + E[\\nabla\\cdot v]`.
        divergence_form_se: its standard error.
        x_part: the positions' share of ``quadratic`` (:math:`E\\sum_i|v_{x,i}|^2/\\varepsilon`).
        g_part: the propulsions' share (:math:`E\\sum_i|v_{g,i}|^2/\\gamma`).
        per_particle: ``(B, N)`` each particle's summand of the quadratic form.
        per_particle_div: ``(B, N)`` each particle's summand of the divergence form.
        positions: ``(B, N, d)`` the positions the densities belong to.
    """

    quadratic: float
    quadratic_se: float
    divergence_form: float
    divergence_form_se: float
    x_part: float
    g_part: float
    per_particle: Tensor
    per_particle_div: Tensor
    positions: Tensor

    @property
    def relative_gap(self) -> float:
        """``|quadratic - divergence_form| / |quadratic|``: the estimators' disagreement."""
        return abs(self.quadratic - self.divergence_form) / max(abs(self.quadratic), 1e-300)

    def summary(self) -> dict[str, float]:
        """The scalar results as a JSON-friendly dict."""
        return {
            "epr_quadratic": self.quadratic,
            "epr_quadratic_se": self.quadratic_se,
            "epr_divergence": self.divergence_form,
            "epr_divergence_se": self.divergence_form_se,
            "epr_x_part": self.x_part,
            "epr_g_part": self.g_part,
            "estimator_gap": self.relative_gap,
        }


def _mean_se(v: Tensor) -> tuple[float, float]:
    n = v.numel()
    sd = float(v.std()) if n > 1 else float("nan")
    return float(v.mean()), sd / math.sqrt(n)


def entropy_production(
    system: AOUP,
    z: Tensor,
    score: Callable[[Tensor], Tensor],
    *,
    divergence: DiagonalMethod = "exact",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    batch_size: int = 2048,
    residual: bool = False,
) -> EntropyProduction:
    r"""Both EPR estimators on stationary samples ``z`` ``(B, N, 2, d)`` for a score function.

    Args:
        system: the AOUP.
        z: stationary states, e.g. from :func:`~flowforge.apps.active_matter.simulate_stationary`.
        score: ``s(z) -> (B, N, 2, d)`` (a learned model, or the exact score of a linear system).
        divergence: how the divergence of :math:`Ds` is computed: ``"exact"`` (one backward pass per
            coordinate) or ``"hutchinson"`` (``n_probes`` Rademacher probes, drawn from ``generator``).
        n_probes: probes per state for ``"hutchinson"``.
        generator: the source of Hutchinson probes.
        batch_size: states per chunk (bounds the memory of the divergence).
        residual: ``score`` is the residual :math:`\delta` about the equilibrium score
            (:func:`~flowforge.apps.active_matter.equilibrium_score`): the score is :math:`s_{eq} + \delta`,
            and the divergence of :math:`D s_{eq}` is taken in closed form (only :math:`\delta` is probed).
    """
    system.check_state(z)
    if z.shape[0] < 1:
        raise ValueError("entropy_production needs at least one sample")
    quad_parts, div_parts, xg_parts = [], [], []
    for chunk in z.split(batch_size):
        D = system.diffusion_like(chunk)
        noisy = D > 0
        D_inv = torch.where(noisy, 1.0 / torch.where(noisy, D, torch.ones_like(D)), torch.zeros_like(D))
        s, diag_s = jacobian_diagonal(score, chunk, divergence, n_probes=n_probes, generator=generator)
        system.check_state(s, "score(z)")
        b = system.drift(chunk)
        # per-particle divergence of v over the noisy coordinates: div b - sum D d s_k / d z_k
        div_b = system.drift_divergence(chunk) * noisy.any(-1)
        div_ds = (D * diag_s).sum((-2, -1))
        if residual:  # s = s_eq + delta, and div(D s_eq) = div b exactly
            s = s + equilibrium_score(system, chunk)
            div_ds = div_ds + div_b.sum(-1)
        v = b - D * s
        quad = (v * v * D_inv).sum(-1)  # (B, N, 2): x and g parts per particle
        div_v = div_b.sum(-1) - div_ds
        work = (v * b * D_inv).sum((-2, -1))
        quad_parts.append(quad.sum(-1))
        div_parts.append(work + div_v)
        xg_parts.append(quad.sum(1))
    per_particle = torch.cat(quad_parts)
    per_particle_div = torch.cat(div_parts)
    xg = torch.cat(xg_parts).mean(0)
    q, q_se = _mean_se(per_particle.sum(1))
    w, w_se = _mean_se(per_particle_div.sum(1))
    return EntropyProduction(
        quadratic=q,
        quadratic_se=q_se,
        divergence_form=w,
        divergence_form_se=w_se,
        x_part=float(xg[0]),
        g_part=float(xg[1]),
        per_particle=per_particle,
        per_particle_div=per_particle_div,
        positions=split_state(z)[0].detach(),
    )
