r"""FM-MLE: fine-tune a flow by the likelihood of its N-step solver's reconstructions (and a contractive residual).

"Fine-tuning Flow Matching by Maximum Likelihood of Reconstructions" (arXiv:2510.02081; v1: FT-FM and the
residual ResFT-FM with a contraction guarantee; v2: the residual as "generalised artificial viscosity").
Verified: the model is fine-tuned by maximising the likelihood of reconstructions *produced by the
deployed ODE solver*, back-propagating through the solver. **Not verified** (no code; equations derived
here, ``verified-guidance-finetune-inverse.md`` §10): the pairing and the residual's parameterisation.

**Objective** (:class:`FMMLE`). With :math:`\Phi^{(N)}_\theta` the deployed :math:`N`-step Euler map of
:math:`v_\theta` from :math:`t = 0` to 1 and pairs :math:`(x_0, x_1^*)`, a Gaussian likelihood of the
reconstruction gives

.. math:: L(\theta) = \mathbb E\,\frac{\lVert \Phi^{(N)}_\theta(x_0) - x_1^*\rVert^2}{2\sigma^2 D}

(averaged over the :math:`D` dimensions). Pairs: :func:`ode_pairs` gives :math:`x_1^* = \Phi^*(x_0)`, an
accurate (RK4, many steps) solve of the pre-trained or exact field: fine-tuning then teaches the few-step
map the converged map (option (ii) of the sheet in the forward direction); a user may pass data pairs
(observation-conditioned demonstrations) instead. Gradients go through every solver step;
``checkpoint=True`` recomputes each step in the backward pass (memory :math:`O(1)` in :math:`N`).

**Residual variant** (:class:`ContractiveResidual`, derived). :math:`v = v_{pre} + r_\theta` with the
pre-trained :math:`v_{pre}` frozen and

.. math:: r_\theta(x, t) = -k_\theta(t)\,\big(x - g_\theta(x, t)\big),\qquad
   k_\theta(t) = k_{min} + \mathrm{softplus}(a_\theta(t)),\quad \mathrm{Lip}_x(g_\theta) \le \gamma < 1,

(:math:`g_\theta` a spectrally normalised ReLU network scaled by :math:`\gamma`). The symmetric part of
:math:`\partial_x r_\theta` is :math:`\preceq -k_\theta(t)(1 - \gamma) I`, so the one-sided Lipschitz
constant of :math:`v` is at most :math:`L_{pre} - k_\theta(t)(1-\gamma)`: the residual can only shrink
the sensitivity to the initial noise, never grow it, and :math:`k_{min}(1-\gamma) \ge L_{pre} + \lambda`
makes the whole field :math:`\lambda`-contracting. (Spectral norms are estimated by power iteration, so
the bound holds up to that estimate.)

Example:
    >>> import torch
    >>> from flowforge import FlowMatching
    >>> from flowforge.nn import MLP
    >>> fm = FlowMatching(MLP(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    >>> pairs = (x0, ode_pairs(fm.velocity, x0, steps=20))
    >>> mle = FMMLE(fm, steps=2)
    >>> mle.loss(pairs).backward()
    >>> res = ContractiveResidual(fm)
    >>> FMMLE(res, steps=2).loss(pairs).item() >= 0
    True
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from flowforge.core.solvers import RK4, solve, uniform_grid

__all__ = ["FMMLE", "ContractiveResidual", "euler_map", "ode_pairs"]


def euler_map(
    velocity: Callable[..., Tensor],
    x0: Tensor,
    steps: int,
    *,
    cond: dict[str, Tensor] | None = None,
    checkpoint: bool = False,
) -> Tensor:
    r"""The deployed map :math:`\Phi^{(N)}(x_0)`: ``steps`` uniform Euler steps from 0 to 1, differentiable.

    Args:
        velocity: ``v(x, t, **cond)``.
        x0: ``(B, *event)``.
        steps: :math:`N \ge 1`.
        cond: conditions passed to ``velocity``.
        checkpoint: recompute each step in the backward pass (gradient checkpointing).

    Example:
        >>> import torch
        >>> euler_map(lambda x, t: -x, torch.ones(1, 2), 2)  # (1 - 1/2)^2
        tensor([[0.2500, 0.2500]])
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}; the deployed step count, e.g. 2")
    cond = cond or {}
    x, h = x0, 1.0 / steps

    def step(x: Tensor, t: Tensor) -> Tensor:
        return x + h * velocity(x, t, **cond)

    for i in range(steps):
        t = torch.full((x.shape[0],), i * h, dtype=x.dtype, device=x.device)
        if checkpoint and torch.is_grad_enabled():
            x = grad_checkpoint(step, x, t, use_reentrant=False)
        else:
            x = step(x, t)
    return x


def ode_pairs(
    velocity: Callable[..., Tensor], x0: Tensor, *, steps: int = 200, cond: dict[str, Tensor] | None = None
) -> Tensor:
    r"""Accurate end points :math:`\Phi^*(x_0)`: ``steps`` RK4 steps of ``velocity``, without gradients."""
    cond = cond or {}
    with torch.no_grad():
        return solve(lambda x, t: velocity(x, t, **cond), x0, RK4(), uniform_grid(steps).to(x0.dtype)).x


class _Lipschitz(nn.Module):
    """``gamma * f(x, t)`` with ``f`` a ReLU MLP of spectrally normalised layers (``Lip_x <= gamma``)."""

    def __init__(self, dim: int, width: int, depth: int, gamma: float) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        dims = [dim + 1, *([width] * depth)]
        self.layers = nn.ModuleList(sn(nn.Linear(a, b)) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.out = sn(nn.Linear(width, dim))
        self.gamma = float(gamma)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = torch.cat([x.flatten(1), t.to(x.dtype)[:, None]], 1)
        for layer in self.layers:
            h = F.relu(layer(h))
        return (self.gamma * self.out(h)).reshape(x.shape)


class ContractiveResidual(nn.Module):
    r"""A frozen pre-trained flow plus a contracting residual, :math:`v = v_{pre} + r_\theta` (see the module docstring).

    Args:
        base: the pre-trained flow with ``velocity(x, t, **cond)`` and ``event_shape`` (copied and frozen).
        k_min: :math:`k_{min} \ge 0`, the guaranteed contraction rate of the residual (0: no minimum).
        gamma: :math:`\gamma \in [0, 1)`, the Lipschitz bound of :math:`g_\theta`.
        width, depth: the sizes of :math:`g_\theta`.
        k_init: :math:`k_\theta(t)` at initialisation (small: the model starts near the pre-trained one).

    Example:
        >>> import torch
        >>> from flowforge import FlowMatching
        >>> from flowforge.nn import MLP
        >>> res = ContractiveResidual(FlowMatching(MLP(dim=2, width=8, depth=1), event_shape=(2,)))
        >>> res.velocity(torch.randn(3, 2), torch.rand(3)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        base: nn.Module,
        *,
        k_min: float = 0.0,
        gamma: float = 0.9,
        width: int = 64,
        depth: int = 2,
        k_init: float = 0.05,
    ) -> None:
        super().__init__()
        if not callable(getattr(base, "velocity", None)):
            raise TypeError(f"base must have velocity(x, t, **cond), got {type(base).__name__}")
        if not 0 <= gamma < 1:
            raise ValueError(f"gamma must be in [0, 1) for the contraction bound, got {gamma}; e.g. 0.9")
        if not k_min >= 0 or not k_init > 0:
            raise ValueError(f"need k_min >= 0 and k_init > 0, got {k_min}, {k_init}")
        self.base = copy.deepcopy(base).requires_grad_(False).eval()
        self.event_shape = tuple(base.event_shape)
        dim = 1
        for s in self.event_shape:
            dim *= int(s)
        self.g = _Lipschitz(dim, width, depth, gamma)
        self.a = nn.Sequential(nn.Linear(1, 16), nn.SiLU(), nn.Linear(16, 1))
        nn.init.zeros_(self.a[2].weight)
        with torch.no_grad():  # softplus(b) = k_init
            self.a[2].bias.fill_(float(torch.log(torch.expm1(torch.tensor(float(k_init))))))
        self.k_min = float(k_min)

    def rate(self, t: Tensor) -> Tensor:
        r""":math:`k_\theta(t)`, ``(B,)``."""
        return self.k_min + F.softplus(self.a(t.reshape(-1, 1).to(self.a[0].weight.dtype))).reshape(-1)

    def residual(self, x: Tensor, t: Tensor) -> Tensor:
        r""":math:`r_\theta(x, t) = -k_\theta(t)(x - g_\theta(x, t))`, ``(B, *event)``."""
        k = self.rate(t).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return -k * (x - self.g(x, t))

    def velocity(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        """:math:`v_{pre}(x, t) + r_\\theta(x, t)`."""
        return self.base.velocity(x, t, **cond) + self.residual(x, t)


class FMMLE(nn.Module):
    r"""FM-MLE fine-tuning: ``loss((x0, x1_star))`` is the reconstruction NLL through the ``steps``-step Euler map.

    Args:
        flow: the model with ``velocity(x, t, **cond)``: a :class:`~flowforge.FlowMatching` (plain
            fine-tuning, FT-FM) or a :class:`ContractiveResidual` (the residual variant).
        steps: the deployed step count :math:`N`.
        sigma: :math:`\sigma` of the Gaussian reconstruction likelihood.
        checkpoint: gradient checkpointing of the solver steps.
    """

    def __init__(
        self, flow: nn.Module, *, steps: int = 2, sigma: float = 1.0, checkpoint: bool = False
    ) -> None:
        super().__init__()
        if not callable(getattr(flow, "velocity", None)):
            raise TypeError(f"flow must have velocity(x, t, **cond), got {type(flow).__name__}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}; the deployed step count, e.g. 2")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.flow, self.steps, self.sigma, self.checkpoint = flow, int(steps), float(sigma), bool(checkpoint)

    def loss(self, batch: Any) -> Tensor:
        """``batch = (x0, x1_star)`` (plus a dict of conditions as a third item), each ``(B, *event)``."""
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(
                "FM-MLE trains on pairs: pass batch=(x0, x1_star) of shape (B, *event) each, e.g. "
                "(x0, ode_pairs(model.velocity, x0))"
            )
        x0, x1 = batch[0], batch[1]
        cond = batch[2] if len(batch) > 2 else {}
        if x0.shape != x1.shape:
            raise ValueError(
                f"x0 and x1_star must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}"
            )
        out = euler_map(self.flow.velocity, x0, self.steps, cond=cond, checkpoint=self.checkpoint)
        return ((out - x1) ** 2).flatten(1).mean(1).mean() / (2 * self.sigma**2)
