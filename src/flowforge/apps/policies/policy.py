r"""Policies :math:`a \sim \pi(a \mid o)`: a flow policy, a MeanFlow policy (DM1) and a regression policy.

* **Flow policy**: :class:`~flowforge.continuous.FlowMatching` on action chunks with the observation as
  the condition ``obs`` (``net(x, t, obs=o)``), sampled by Euler in ``K`` steps from
  :math:`a_0 \sim N(0, I)`.
* **MeanFlow policy** (DM1: Zou et al., 2025, arXiv:2510.07865): :class:`~flowforge.continuous.MeanFlow`
  with the same condition, sampled in one jump :math:`a = a_0 + u_\theta(a_0, 0, 1 \mid o)`, optionally
  with the dispersive regulariser on the observation embedding (``dispersive_weight``,
  ``dispersive_layers=("obs_embed",)``).
* **Regression policy** (:class:`RegressionPolicy`): the same network called at
  :math:`x = 0, t = 0`, trained by mean squared error; it predicts :math:`E[a \mid o]`, the average of the
  demonstrated modes.

:class:`ActionSampler` turns any of the three into ``policy(obs, generator=g) -> actions``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.continuous import FlowMatching, MeanFlow
from flowforge.core.batch import split_batch
from flowforge.core.dispersive import FeatureTap, dispersive_loss

__all__ = ["RegressionPolicy", "ActionSampler", "embedding_stats", "observation_embeddings"]


class RegressionPolicy(nn.Module):
    r"""A deterministic policy :math:`\hat a(o) = f_\theta(0, 0 \mid o)` trained by :math:`\|\hat a(o) - a\|^2`.

    ``net`` is the flow policies' network (``net(x, t, obs=o)``, e.g. :class:`~flowforge.nn.ObsMLP`), so the
    baseline has exactly the same size; it is called with ``x = 0`` and ``t = 0``.

    Args:
        net: the network.

    Example:
        >>> import torch
        >>> from flowforge.nn import ObsMLP
        >>> pol = RegressionPolicy(ObsMLP(2, obs_dim=4, width=16, depth=2))
        >>> loss = pol.loss({"x": torch.randn(8, 2), "obs": torch.randn(8, 4)})
        >>> pol.act(torch.randn(3, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.event_shape = tuple(net.event_shape)

    def act(self, obs: Tensor) -> Tensor:
        """The predicted action (chunk) ``(B, *event)`` for ``obs: (B, obs_dim)``."""
        b = obs.shape[0]
        x = obs.new_zeros(b, *self.event_shape)
        return self.net(x, obs.new_zeros(b), obs=obs)

    def loss(self, batch: Any) -> Tensor:
        """Mean squared error (summed over the action, averaged over the batch) on ``{"x": a, "obs": o}``."""
        a, cond = split_batch(batch)
        if "obs" not in cond:
            raise ValueError('a policy batch is {"x": actions (B, A), "obs": observations (B, obs_dim)}')
        return (self.act(cond["obs"]) - a).flatten(1).square().sum(1).mean()


class ActionSampler:
    """A trained policy model as ``policy(obs, generator=g) -> (B, *event)`` actions, clamped to ``[-1, 1]``.

    Args:
        model: a :class:`~flowforge.continuous.FlowMatching` (sampled by ``solver`` in ``steps`` steps), a
            :class:`~flowforge.continuous.MeanFlow` (``steps`` mean-flow jumps, 1 by default) or a
            :class:`RegressionPolicy`.
        steps: sampling steps ``K >= 1`` (ignored by the regression policy).
        solver: the flow policy's ODE solver (default ``"euler"``).
        clamp: clamp actions to ``[-clamp, clamp]`` (DM1 clamps to 1); ``None``: no clamp.

    Example:
        >>> import torch
        >>> from flowforge import MeanFlow
        >>> from flowforge.nn import ObsMLP
        >>> mf = MeanFlow(ObsMLP(2, obs_dim=4, width=16, depth=2, two_times=True))
        >>> pi = ActionSampler(mf, steps=1)
        >>> pi(torch.zeros(5, 4), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self, model: nn.Module, *, steps: int = 1, solver: str = "euler", clamp: float | None = 1.0
    ) -> None:
        if not isinstance(model, (FlowMatching, MeanFlow, RegressionPolicy)):
            raise TypeError(
                f"ActionSampler takes a FlowMatching, MeanFlow or RegressionPolicy model, got {type(model).__name__}"
            )
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.model, self.steps, self.solver, self.clamp = model, int(steps), solver, clamp
        self.event_shape = tuple(model.event_shape)

    @torch.no_grad()
    def __call__(self, obs: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        was = self.model.training
        self.model.eval()
        try:
            n = obs.shape[0]
            like = {"device": obs.device, "dtype": obs.dtype}
            if isinstance(self.model, RegressionPolicy):
                a = self.model.act(obs)
            elif isinstance(self.model, MeanFlow):
                a = self.model.generator().sample(
                    n, cond={"obs": obs}, steps=self.steps, generator=generator, **like
                )
            else:
                gen = self.model.generator()
                a = gen.sample(
                    n, cond={"obs": obs}, solver=self.solver, steps=self.steps, generator=generator, **like
                )
        finally:
            self.model.train(was)
        return a.clamp(-self.clamp, self.clamp) if self.clamp is not None else a


def observation_embeddings(net: nn.Module, obs: Tensor, layer: str = "obs_embed") -> Tensor:
    """The output of ``net``'s submodule ``layer`` for observations ``obs: (B, obs_dim)``: ``(B, C)``.

    The net is called once at ``x = 0``, ``t = 1`` (and ``r = 0`` for a two-time net); for ``obs_embed``
    of :class:`~flowforge.nn.ObsMLP` the result depends on ``obs`` only.
    """
    b = obs.shape[0]
    x = obs.new_zeros(b, *net.event_shape)
    kw = {"r": obs.new_zeros(b)} if getattr(net, "two_times", False) else {}
    with torch.no_grad(), FeatureTap(net, [layer]) as tap:
        net(x, obs.new_ones(b), obs=obs, **kw)
    return tap.features[layer][0].flatten(1)


def embedding_stats(h: Tensor, tau: float = 1.0) -> dict[str, float]:
    r"""Spread of a batch of embeddings ``h: (B, C)``: effective rank, mean pairwise distance, dispersive loss.

    * ``effective_rank``: :math:`\exp(-\sum_i p_i \log p_i)`, :math:`p_i = \sigma_i / \sum_j \sigma_j` over the
      singular values of the centred ``h`` (Roy & Vetterli, 2007); between 1 (collapsed to a line) and ``C``.
    * ``mean_distance``: :math:`\frac{1}{B(B-1)}\sum_{i \ne j}\|h_i - h_j\| / \sqrt{C}`.
    * ``dispersive``: :func:`~flowforge.core.dispersive.dispersive_loss` (InfoNCE-L2 form) at ``tau``.

    Example:
        >>> import torch
        >>> s = embedding_stats(torch.eye(4))
        >>> round(s["effective_rank"], 4)
        3.0
    """
    if h.dim() != 2 or h.shape[0] < 2:
        raise ValueError(f"embedding_stats needs (B, C) with B >= 2, got {tuple(h.shape)}")
    h = h.double()
    s = torch.linalg.svdvals(h - h.mean(0))
    p = s / s.sum().clamp(min=1e-300)
    ent = -(p * p.clamp(min=1e-300).log()).sum()
    b, c = h.shape
    d = torch.cdist(h, h)
    return {
        "effective_rank": float(ent.exp()),
        "mean_distance": float(d.sum() / (b * (b - 1)) / math.sqrt(c)),
        "dispersive": float(dispersive_loss(h, tau)),
    }
