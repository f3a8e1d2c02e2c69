r"""Couplings: how source and data samples are paired within a minibatch.

A coupling returns index tensors ``(i, j)`` so that ``x0[i]`` is paired with ``x1[j]``; conditions
(labels, masks) follow ``j``, so they stay attached to their data (unlike re-sampling ``x1`` alone).

- :class:`Independent`: the product coupling, :math:`\pi = p_0 \otimes p_1` (Lipman et al., 2023).
- :class:`MinibatchOT`: the optimal-transport plan for squared Euclidean cost within the batch,
  exact or entropic (Tong et al., 2024; Pooladian et al., 2023).
- :class:`SchrodingerBridge`: the entropic plan with :math:`\varepsilon = 2\sigma^2` plus the Brownian-bridge
  path :math:`x_t = t x_1 + (1-t) x_0 + \sigma\sqrt{t(1-t)}\, z` (Tong et al., 2024, SB-CFM).

POT is imported lazily (``pip install 'flowforge[ot]'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from flowforge.core.paths import BrownianGamma, StochasticInterpolant
from flowforge.core.schedules import Linear

__all__ = ["Coupling", "Independent", "MinibatchOT", "SchrodingerBridge", "ot_plan"]


class Coupling(Protocol):
    """``coupling(x0, x1, generator=None) -> (i, j)`` index tensors of shape ``(B,)``."""

    def __call__(
        self, x0: Tensor, x1: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]: ...


@dataclass(frozen=True)
class Independent:
    """Independent pairing: returns the identity indices (no work, no randomness)."""

    def __call__(
        self, x0: Tensor, x1: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        idx = torch.arange(x1.shape[0], device=x1.device)
        return idx, idx


def _pot():
    try:
        import ot
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "minibatch optimal-transport couplings need POT; install it with pip install 'flowforge[ot]'"
        ) from e
    return ot


def ot_plan(
    x0: Tensor,
    x1: Tensor,
    *,
    method: Literal["exact", "sinkhorn"] = "exact",
    reg: float = 0.05,
    normalize_cost: bool = True,
) -> Tensor:
    r"""Transport plan between the uniform empirical measures for the cost :math:`\|x_0 - x_1\|^2`.

    Args:
        x0: ``(B, *event)`` source samples.
        x1: ``(N, *event)`` data samples.
        method: ``"exact"`` (network simplex, ``ot.emd``) or ``"sinkhorn"`` (log-domain Sinkhorn).
        reg: entropic regularisation for ``"sinkhorn"``.
        normalize_cost: divide the cost by its mean first, so that ``reg`` is scale-free.

    Returns:
        ``(B, N)`` plan in float64 on the CPU; rows sum to ``1/B``.
    """
    ot = _pot()
    a = x0.detach().reshape(x0.shape[0], -1).double().cpu()
    b = x1.detach().reshape(x1.shape[0], -1).double().cpu()
    cost = torch.cdist(a, b) ** 2
    wa = np.full(a.shape[0], 1.0 / a.shape[0])
    wb = np.full(b.shape[0], 1.0 / b.shape[0])
    m = cost.numpy()
    if method == "exact":
        plan = ot.emd(wa, wb, m, numItermax=1_000_000)
    elif method == "sinkhorn":
        m = m / max(m.mean(), 1e-12) if normalize_cost else m
        plan = ot.sinkhorn(wa, wb, m, reg, method="sinkhorn_log", numItermax=2000)
    else:
        raise ValueError(f"unknown OT method {method!r}; use 'exact' or 'sinkhorn'")
    plan = torch.as_tensor(plan)
    if not torch.isfinite(plan).all() or plan.sum() <= 0:
        raise FloatingPointError(
            f"the {method} OT plan is not finite; increase reg (now {reg}) or use 'exact'"
        )
    return plan


def _sample_plan(
    plan: Tensor, generator: torch.Generator | None, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Draw one data index per source row from the conditional plan ``pi(j | i)``."""
    j = torch.multinomial(plan.float() / plan.sum(1, keepdim=True).float(), 1, generator=generator).squeeze(1)
    i = torch.arange(plan.shape[0])
    return i.to(device), j.to(device)


@dataclass(frozen=True)
class MinibatchOT:
    """Minibatch optimal-transport coupling (OT-CFM, Tong et al., 2024).

    With ``method="exact"`` and equal batch sizes the plan is a permutation, which is used as is: every
    data point appears exactly once (torchcfm re-samples with replacement and so duplicates points).
    With ``"sinkhorn"`` one data index is drawn per source row from the entropic plan.
    """

    method: Literal["exact", "sinkhorn"] = "exact"
    reg: float = 0.05

    def __call__(
        self, x0: Tensor, x1: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        plan = ot_plan(x0, x1, method=self.method, reg=self.reg)
        if self.method == "exact" and x0.shape[0] == x1.shape[0]:
            i = torch.arange(plan.shape[0], device=x1.device)
            return i, plan.argmax(1).to(x1.device)
        return _sample_plan(plan, generator, x1.device)


@dataclass(frozen=True)
class SchrodingerBridge:
    r"""Schrodinger-bridge coupling with noise level ``sigma`` (SB-CFM, Tong et al., 2024).

    Pairs come from the entropic OT plan with regularisation :math:`\varepsilon = 2\sigma^2` on the raw
    squared-distance cost; use :attr:`path` (the Brownian bridge
    :math:`x_t = t x_1 + (1-t)x_0 + \sigma\sqrt{t(1-t)} z`) with it.
    """

    sigma: float = 0.5
    path: StochasticInterpolant = field(init=False)

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(
                f"SchrodingerBridge needs sigma > 0, got {self.sigma}; use MinibatchOT for sigma=0"
            )
        object.__setattr__(self, "path", StochasticInterpolant(Linear(), BrownianGamma(self.sigma**2)))

    def __call__(
        self, x0: Tensor, x1: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        plan = ot_plan(x0, x1, method="sinkhorn", reg=2 * self.sigma**2, normalize_cost=False)
        return _sample_plan(plan, generator, x1.device)
