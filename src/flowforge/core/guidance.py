r"""Classifier-free guidance (Ho & Salimans, 2022) and its schedules, for any ``net(x, t, **cond)``.

Training drops the condition with probability ``p`` (replacing it by a null label); sampling mixes
the conditional and unconditional outputs,

.. math:: v = v_\varnothing + w\,(v_c - v_\varnothing),

so ``w = 1`` is plain conditional sampling and ``w = 0`` unconditional. (Meta's flow_matching
example writes :math:`(1+w')v_c - w'v_\varnothing`, i.e. :math:`w = 1 + w'`.)

A :class:`GuidanceSchedule` chooses ``w`` per sample and per step from ``(t, v_c, v_u)``:

- :class:`ConstantGuidance`: the same ``w`` everywhere (plain CFG);
- :class:`IntervalGuidance`: ``w`` only inside a band of times, 1 outside (Kynkäänniemi et al., 2024);
- :class:`RAAG`: ``w`` damped where the ratio :math:`\|v_c - v_u\| / \|v_u\|` is large (Zhu et al., 2025).

:func:`guided` evaluates ``[cond; null]`` in ONE batched call of the field and mixes with a
schedule; :class:`ClassifierFreeGuidance` wraps a network with it. Guidance that reads the
outputs (RAAG) should see velocities: ``FlowMatching.generator(schedule=...)`` guides after the
conversion to velocity, whatever the network predicts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "drop_labels",
    "GuidanceSchedule",
    "ConstantGuidance",
    "IntervalGuidance",
    "RAAG",
    "guided",
    "ClassifierFreeGuidance",
]


def drop_labels(y: Tensor, p: float, null_label: int, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by ``null_label`` with probability ``p``; ``y: (B,)`` integer classes."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label dropout must be in [0, 1], got {p}")
    if p == 0.0:
        return y
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p
    return torch.where(drop, torch.full_like(y, null_label), y)


@runtime_checkable
class GuidanceSchedule(Protocol):
    r"""A guidance weight per sample: ``weight(t, v_cond, v_uncond) -> (B,)``.

    The guided output is :math:`v = v_u + w\,(v_c - v_u)` with ``w`` from :meth:`weight`
    (``w = 1``: plain conditional). ``t: (B,)``; ``v_cond``, ``v_uncond``: ``(B, *event)``.
    """

    def weight(self, t: Tensor, v_cond: Tensor, v_uncond: Tensor) -> Tensor: ...


class ConstantGuidance:
    """Plain classifier-free guidance: the same weight ``w`` at every time (Ho & Salimans, 2022).

    Args:
        w: guidance weight (1 = conditional, 0 = unconditional).

    Example:
        >>> import torch
        >>> ConstantGuidance(2.0).weight(torch.rand(3), torch.zeros(3, 2), torch.zeros(3, 2))
        tensor([2., 2., 2.])
    """

    def __init__(self, w: float) -> None:
        self.w = _finite("w", w)

    def weight(self, t: Tensor, v_cond: Tensor, v_uncond: Tensor) -> Tensor:
        """``(B,)`` filled with ``w``."""
        return torch.full(t.shape, self.w, dtype=v_cond.dtype, device=v_cond.device)

    def __repr__(self) -> str:
        return f"ConstantGuidance(w={self.w})"


class IntervalGuidance:
    r"""Guidance only in a limited interval of noise levels (Kynkäänniemi et al., 2024, arXiv 2404.07724).

    ``w`` for ``t_lo <= t <= t_hi`` and ``1`` (plain conditional) elsewhere. The paper guides for EDM
    noise levels :math:`\sigma \in (\sigma_{lo}, \sigma_{hi}]` (high noise = early = harmful). On
    flowforge's linear path :math:`x_t = t x_1 + (1-t) x_0` (t=0 noise) the EDM noise level of
    :math:`x_t / t` is :math:`\sigma = (1-t)/t`, so :math:`t = 1/(1+\sigma)` and the paper's interval
    becomes ``t_lo = 1 / (1 + sigma_hi)``, ``t_hi = 1 / (1 + sigma_lo)``: :meth:`from_sigma` does this
    (for other schedules use :math:`\sigma = \sigma(t)/\alpha(t)`). Early steps are SMALL ``t`` here.

    Args:
        w: guidance weight inside the interval.
        t_lo: first time (inclusive) with guidance, in ``[0, 1]``.
        t_hi: last time (inclusive) with guidance, ``t_lo <= t_hi <= 1``.

    Example:
        >>> import torch
        >>> g = IntervalGuidance(3.0, 0.2, 0.8)
        >>> g.weight(torch.tensor([0.1, 0.5, 0.9]), torch.zeros(3, 2), torch.zeros(3, 2))
        tensor([1., 3., 1.])
    """

    def __init__(self, w: float, t_lo: float, t_hi: float) -> None:
        self.w = _finite("w", w)
        if not 0.0 <= t_lo <= t_hi <= 1.0:
            raise ValueError(
                f"IntervalGuidance needs 0 <= t_lo <= t_hi <= 1 (t=0 is noise), got t_lo={t_lo}, t_hi={t_hi}; "
                "for an EDM sigma interval write IntervalGuidance.from_sigma(w, sigma_lo, sigma_hi)"
            )
        self.t_lo, self.t_hi = float(t_lo), float(t_hi)

    @classmethod
    def from_sigma(cls, w: float, sigma_lo: float, sigma_hi: float) -> IntervalGuidance:
        r"""The paper's interval :math:`(\sigma_{lo}, \sigma_{hi}]` on the linear path, :math:`t = 1/(1+\sigma)`.

        Example:
            >>> g = IntervalGuidance.from_sigma(2.0, sigma_lo=0.0, sigma_hi=1.0)
            >>> (g.t_lo, g.t_hi)
            (0.5, 1.0)
        """
        if not 0.0 <= sigma_lo <= sigma_hi:
            raise ValueError(f"need 0 <= sigma_lo <= sigma_hi, got sigma_lo={sigma_lo}, sigma_hi={sigma_hi}")
        t_lo = 0.0 if math.isinf(sigma_hi) else 1.0 / (1.0 + sigma_hi)
        return cls(w, t_lo, 1.0 / (1.0 + sigma_lo))

    def weight(self, t: Tensor, v_cond: Tensor, v_uncond: Tensor) -> Tensor:
        """``w`` where ``t_lo <= t <= t_hi``, else 1; ``(B,)``."""
        inside = (t >= self.t_lo) & (t <= self.t_hi)
        w = torch.full(t.shape, self.w, dtype=v_cond.dtype, device=v_cond.device)
        return torch.where(inside, w, torch.ones_like(w))

    def __repr__(self) -> str:
        return f"IntervalGuidance(w={self.w}, t_lo={self.t_lo}, t_hi={self.t_hi})"


class RAAG:
    r"""Ratio-aware adaptive guidance (Zhu et al., 2025, "RAAG: Ratio Aware Adaptive Guidance", arXiv 2508.03442).

    .. math::
        \rho = \frac{\|v_c - v_u\|_2}{\max(\|v_u\|_2, \epsilon)}, \qquad
        w = 1 + (w_{max} - 1)\, e^{-\alpha \rho},

    so ``w = w_max`` where the conditional and unconditional fields agree and ``w -> 1`` where the
    ratio spikes (the first, noisiest steps: small ``t`` in flowforge's direction). The time flip
    ``v -> -v`` of papers with t=1 as noise leaves ``rho`` and the mix unchanged. No extra network call.

    Verified against the official code (xiaomomy/RAAG-Ratio-Aware-Adaptive-Guidance, ``sd35_step.py``):
    the exponential rule, the UNSQUARED norm ratio of velocities, the defaults ``w_max = 18``
    (``max_guidance``) and ``alpha = 12`` (``lr_para``), and that it computes ONE ratio over the whole
    batch tensor (``per_sample=False`` here, without the ``eps`` clamp). Not verified: the paper's own
    equation (the HTML/PDF text was not readable here; secondary summaries write RATIO with SQUARED
    norms, for which ``alpha = 12`` is not calibrated), and the per-sample ratio with
    ``eps = 1e-8`` (the default here), which follows the third-party ComfyUI node (scg-utils
    ``RAAG_ModelPatch``) as summarised in our reference notes. Opt-in: reviewers report it degrades
    non-flow diffusion models.

    Args:
        w_max: the weight where ``rho = 0``.
        alpha: decay rate of the weight in ``rho``.
        per_sample: one ratio per batch element (True) or one for the whole batch (official code).
        eps: lower clamp on :math:`\|v_u\|`.

    Example:
        >>> import torch
        >>> v_u = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> v_c = torch.tensor([[1.0, 0.0], [1.0, 1.0]])       # rho = 0 and rho = 1
        >>> RAAG(w_max=5.0, alpha=2.0).weight(torch.rand(2), v_c, v_u)
        tensor([5.0000, 1.5413])
    """

    def __init__(
        self, w_max: float = 18.0, alpha: float = 12.0, per_sample: bool = True, eps: float = 1e-8
    ) -> None:
        self.w_max, self.alpha = _finite("w_max", w_max), _finite("alpha", alpha)
        if self.alpha < 0:
            raise ValueError(f"RAAG needs alpha >= 0 (a decay rate), got alpha={alpha}")
        if not eps > 0:
            raise ValueError(f"RAAG needs eps > 0 (a clamp on ||v_u||), got eps={eps}")
        self.per_sample, self.eps = bool(per_sample), float(eps)

    def ratio(self, v_cond: Tensor, v_uncond: Tensor) -> Tensor:
        r""":math:`\rho = \|v_c - v_u\| / \max(\|v_u\|, \epsilon)`, ``(B,)`` (the batch value repeated if not per sample)."""
        b = v_cond.shape[0]
        delta, v_u = (v_cond - v_uncond).reshape(b, -1), v_uncond.reshape(b, -1)
        if self.per_sample:
            return delta.norm(dim=1) / v_u.norm(dim=1).clamp_min(self.eps)
        return (delta.norm() / v_u.norm().clamp_min(self.eps)).expand(b)

    def weight_of_ratio(self, rho: Tensor) -> Tensor:
        r""":math:`w(\rho) = 1 + (w_{max} - 1)\,e^{-\alpha\rho}`, elementwise."""
        return 1.0 + (self.w_max - 1.0) * torch.exp(-self.alpha * rho)

    def weight(self, t: Tensor, v_cond: Tensor, v_uncond: Tensor) -> Tensor:
        """``w(rho(v_cond, v_uncond))``; ``(B,)``."""
        return self.weight_of_ratio(self.ratio(v_cond, v_uncond))

    def __repr__(self) -> str:
        return f"RAAG(w_max={self.w_max}, alpha={self.alpha}, per_sample={self.per_sample}, eps={self.eps})"


def guided(
    field: Callable[..., Tensor],
    x: Tensor,
    t: Tensor,
    cond: dict[str, Tensor],
    *,
    key: str = "y",
    null: int | float,
    schedule: GuidanceSchedule | float,
) -> Tensor:
    r"""Classifier-free guided output :math:`v_u + w\,(v_c - v_u)` from ONE batched call of ``field``.

    ``field`` is called once on ``[x; x]``, ``[t; t]`` with ``cond[key]`` followed by
    ``full_like(cond[key], null)`` (labels ``(B,)`` or semantic maps ``(B, h, w)`` alike) and every
    other condition (e.g. ``extra``) repeated; ``w = schedule.weight(t, v_c, v_u)``.

    Args:
        field: ``field(x, t, **cond) -> (B, *event)``, usually a velocity.
        x: ``(B, *event)``.
        t: ``(B,)``.
        cond: the conditions; must hold ``key``.
        key: the condition that guidance drops.
        null: the value the network was trained with for "no condition" (e.g. ``num_classes``).
        schedule: a :class:`GuidanceSchedule`, or a float for :class:`ConstantGuidance`.

    Returns:
        The guided output, ``(B, *event)``.

    Example:
        >>> import torch
        >>> field = lambda x, t, y: x + y[:, None].to(x.dtype)
        >>> guided(field, torch.zeros(2, 1), torch.rand(2), {"y": torch.tensor([1, 2])}, null=0, schedule=2.0)
        tensor([[2.],
                [4.]])
    """
    if key not in cond:
        raise ValueError(
            f"guidance needs the condition {key}=... in cond (got keys {sorted(cond)}); "
            f"sample with cond={{'{key}': labels}} or pass key=... to name the guided condition"
        )
    sched = ConstantGuidance(schedule) if isinstance(schedule, (int, float)) else schedule
    if not isinstance(sched, GuidanceSchedule):
        raise TypeError(
            f"schedule must be a float or have weight(t, v_cond, v_uncond), got {type(schedule).__name__}"
        )
    c = cond[key]
    both = {k: torch.cat([v, v]) for k, v in cond.items() if k != key}
    both[key] = torch.cat([c, torch.full_like(c, null)])
    out = field(torch.cat([x, x]), torch.cat([t, t]), **both)
    v_c, v_u = out.chunk(2)
    w = sched.weight(t, v_c, v_u).to(v_c.dtype).reshape(-1, *([1] * (v_c.dim() - 1)))
    return v_u + w * (v_c - v_u)


class ClassifierFreeGuidance(nn.Module):
    """Wrap a conditional network so that it returns the guided output in one batched call.

    The schedule sees the network's raw outputs; for networks that predict ``x1``/``x0`` guide in
    velocity space with ``FlowMatching.generator(schedule=...)`` instead.

    Args:
        net: the conditional network, ``net(x, t, **{key: y})``.
        scale: guidance weight ``w`` (1 = no guidance, a single call) or a :class:`GuidanceSchedule`.
        null_label: the label the network was trained with for "no condition".
        key: the keyword under which the label is passed.

    Example:
        >>> import torch
        >>> from flowforge.nn import MLP
        >>> net = MLP(2, 16, 1, num_classes=3)
        >>> guided_net = ClassifierFreeGuidance(net, scale=2.0, null_label=3)
        >>> guided_net(torch.randn(4, 2), torch.rand(4), y=torch.tensor([0, 1, 2, 0])).shape
        torch.Size([4, 2])
        >>> ClassifierFreeGuidance(net, RAAG(), null_label=3)(torch.randn(4, 2), torch.rand(4), y=torch.zeros(4, dtype=torch.long)).shape
        torch.Size([4, 2])
    """

    def __init__(
        self, net: nn.Module, scale: float | GuidanceSchedule, null_label: int, key: str = "y"
    ) -> None:
        super().__init__()
        self.net, self.null_label, self.key = net, int(null_label), key
        if isinstance(scale, (int, float)):
            self.scale: float | GuidanceSchedule = float(scale)
        elif isinstance(scale, GuidanceSchedule):
            self.scale = scale
        else:
            raise TypeError(
                f"scale must be a float or a GuidanceSchedule (e.g. RAAG()), got {type(scale).__name__}"
            )

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        """``x: (B, *event)``, ``t: (B,)``, ``cond[key]: (B,)`` -> guided output ``(B, *event)``."""
        if self.key not in cond:
            raise ValueError(f"classifier-free guidance needs the condition {self.key}=... (B,) labels")
        if isinstance(self.scale, float) and self.scale == 1.0:
            return self.net(x, t, **cond)
        return guided(self.net, x, t, cond, key=self.key, null=self.null_label, schedule=self.scale)


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value
