r"""``ObsMLP``: an MLP velocity network conditioned on an observation vector, ``net(x, t, obs=o)``.

Policies :math:`a \sim \pi(a \mid o)` learned as conditional flows (a flow or diffusion policy; DM1,
Zou et al., 2025, arXiv:2510.07865) need a network of the action ``x``, the time ``t`` and a real-valued
observation ``o``. :class:`~flowforge.nn.MLP` takes only class labels, so this network embeds ``o`` with
its own two-layer encoder ``obs_embed`` (the "observation embedding" that DM1's dispersive loss spreads)
and feeds ``[x, embed(t), (embed(t - r)), obs_embed(o)]`` to an MLP trunk.
"""

from __future__ import annotations

from math import prod

import torch
from torch import Tensor, nn

from flowforge.nn.embeddings import FourierTime

__all__ = ["ObsMLP"]


class ObsMLP(nn.Module):
    r"""MLP of an event ``x: (B, *event)``, a time ``t: (B,)`` and an observation ``obs: (B, obs_dim)``.

    .. math::

        e = \mathrm{obs\_embed}(o), \qquad h_0 = \sigma(W_0 [x, \phi(t), \phi(t - r), e] + b_0),
        \qquad h_{k} = \sigma(W_k h_{k-1} + b_k), \qquad \mathrm{out} = W h_{depth-1} + b

    with :math:`\sigma` = SiLU, :math:`\phi` the Fourier time features and ``obs_embed`` =
    Linear-SiLU-Linear to ``embed_dim`` units. ``two_times=True`` adds the gap ``t - r`` (the start time
    ``r`` of a MeanFlow average velocity :math:`u(x, r, t)`, as in :class:`~flowforge.nn.MLP`).
    The submodules ``obs_embed`` (the observation embedding), ``inp`` and ``hidden.k`` are the natural
    layers for :class:`~flowforge.core.dispersive.FeatureTap`.

    Args:
        dim: event size (or shape), e.g. the action (chunk) size.
        obs_dim: observation size.
        width: hidden units per layer.
        depth: number of hidden layers of the trunk (``>= 1``).
        embed_dim: observation-embedding size (default ``width``).
        time_freqs: Fourier time frequencies (0 feeds raw ``t``).
        two_times: accept a second time ``r`` (keyword) and embed the gap ``t - r``.

    Example:
        >>> import torch
        >>> net = ObsMLP(2, obs_dim=4, width=16, depth=2)
        >>> net(torch.randn(5, 2), torch.rand(5), obs=torch.randn(5, 4)).shape
        torch.Size([5, 2])
        >>> u = ObsMLP(2, obs_dim=4, width=16, depth=2, two_times=True)
        >>> u(torch.randn(5, 2), torch.ones(5), obs=torch.randn(5, 4), r=torch.zeros(5)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        dim: int | tuple[int, ...],
        obs_dim: int,
        width: int = 256,
        depth: int = 3,
        *,
        embed_dim: int | None = None,
        time_freqs: int = 0,
        two_times: bool = False,
    ) -> None:
        super().__init__()
        self.event_shape = (dim,) if isinstance(dim, int) else tuple(dim)
        d = prod(self.event_shape)
        if d < 1 or obs_dim < 1 or width < 1 or depth < 1:
            raise ValueError(
                f"ObsMLP needs dim, obs_dim, width, depth >= 1; got dim={dim}, obs_dim={obs_dim}, "
                f"width={width}, depth={depth}"
            )
        self.obs_dim = int(obs_dim)
        e = int(embed_dim or width)
        self.time = FourierTime(time_freqs)
        self.two_times = bool(two_times)
        self.obs_embed = nn.Sequential(nn.Linear(obs_dim, width), nn.SiLU(), nn.Linear(width, e))
        self.inp = nn.Linear(d + self.time.out_dim * (2 if self.two_times else 1) + e, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.out = nn.Linear(width, d)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, t: Tensor, obs: Tensor | None = None, *, r: Tensor | None = None) -> Tensor:
        """``x: (B, *event)``, ``t: (B,)``, ``obs: (B, obs_dim)``, ``r: (B,)`` -> ``(B, *event)``."""
        b = x.shape[0]
        if obs is None:
            raise ValueError("ObsMLP is observation-conditioned: call net(x, t, obs=(B, obs_dim))")
        if obs.dim() != 2 or obs.shape != (b, self.obs_dim):
            raise ValueError(
                f"obs must have shape (B, obs_dim) = ({b}, {self.obs_dim}), got {tuple(obs.shape)}"
            )
        if t.dim() == 0:
            t = t.expand(b)
        feats = [x.reshape(b, -1), self.time(t.to(x.dtype))]
        if self.two_times:
            if r is None:
                r = t
            elif r.dim() == 0:
                r = r.expand(b)
            feats.append(self.time((t - r).to(x.dtype)))
        elif r is not None:
            raise ValueError("this ObsMLP takes one time: build it with two_times=True to pass r")
        feats.append(self.obs_embed(obs.to(x.dtype)))
        h = self.act(self.inp(torch.cat(feats, dim=1)))
        for layer in self.hidden:
            h = self.act(layer(h))
        return self.out(h).reshape(x.shape)
