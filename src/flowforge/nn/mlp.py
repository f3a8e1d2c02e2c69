"""MLP velocity network: ``net(x, t, y=None)`` (``net(x, t, r=None, y=None)`` with ``two_times=True``)."""

from __future__ import annotations

from math import prod

import torch
from torch import Tensor, nn

from flowforge.nn.embeddings import FourierTime

__all__ = ["MLP"]


class MLP(nn.Module):
    """Fully connected network for vectors or small flattened events, conditioned on time (and a class).

    The input is ``[x, embed(t)]``; ``depth`` hidden layers of ``width`` units with SiLU; a class
    embedding (with one extra "null" class for classifier-free guidance) is added to every hidden layer.

    With ``two_times=True`` the network also takes a second time ``r`` (the start time of a two-time
    map such as MeanFlow's average velocity :math:`u(x, r, t)`, where ``x`` lives at ``r`` and ``t`` is
    the end time) and its input becomes ``[x, embed(t), embed_h(t - r)]``: the gap ``h = t - r`` gets
    its own Fourier features (a separate block of first-layer weights, i.e. its own embedding added to
    the time embedding's contribution). The gap rather than ``r`` is embedded because it is zero on the
    diagonal ``r = t`` (``r=None`` means ``r = t``), where the net is an ordinary velocity field of
    ``(x, t)``, and because MeanFlow (Geng et al., 2025, arXiv:2505.13447) conditions on
    ``(t, t - r)``. With ``two_times=False`` (default) nothing changes.

    Args:
        dim: event size (``prod(event_shape)``), or the event shape as a tuple.
        width: hidden units per layer.
        depth: number of hidden layers.
        num_classes: number of classes for conditioning; class ``num_classes`` is the null label.
        time_freqs: Fourier time frequencies (0 feeds raw ``t``).
        out_dim: output size; defaults to ``dim`` (a velocity).
        two_times: accept a second time ``r`` (keyword) and embed the gap ``t - r``.

    Example:
        >>> import torch
        >>> from flowforge.nn import MLP
        >>> net = MLP(dim=2, width=32, depth=2)
        >>> net(torch.randn(5, 2), torch.rand(5)).shape
        torch.Size([5, 2])
        >>> u = MLP(dim=2, width=32, depth=2, two_times=True)
        >>> u(torch.randn(5, 2), torch.ones(5), r=torch.zeros(5)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        dim: int | tuple[int, ...],
        width: int = 256,
        depth: int = 3,
        *,
        num_classes: int | None = None,
        time_freqs: int = 0,
        out_dim: int | None = None,
        two_times: bool = False,
    ) -> None:
        super().__init__()
        self.event_shape = (dim,) if isinstance(dim, int) else tuple(dim)
        d = prod(self.event_shape)
        if d < 1 or width < 1 or depth < 1:
            raise ValueError(f"MLP needs dim, width, depth >= 1; got dim={dim}, width={width}, depth={depth}")
        self.num_classes = num_classes
        self.time = FourierTime(time_freqs)
        self.two_times = bool(two_times)
        # the gap's features are the last inputs, so the first d + time.out_dim columns mean the same
        self.inp = nn.Linear(d + self.time.out_dim * (2 if self.two_times else 1), width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.out = nn.Linear(width, out_dim or d)
        self.act = nn.SiLU()
        self.label = nn.Embedding(num_classes + 1, width) if num_classes else None

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, *, r: Tensor | None = None) -> Tensor:
        """``x: (B, *event)``, ``t: (B,)``, ``y: (B,)`` class indices, ``r: (B,)`` start time -> ``(B, *event)``."""
        b = x.shape[0]
        if t.dim() == 0:
            t = t.expand(b)
        feats = [x.reshape(b, -1), self.time(t.to(x.dtype))]
        if self.two_times:
            if r is None:
                r = t
            elif r.dim() == 0:
                r = r.expand(b)
            if r.shape != (b,):
                raise ValueError(f"r must have shape (B,) = ({b},) (or be a scalar), got {tuple(r.shape)}")
            feats.append(self.time((t - r).to(x.dtype)))
        elif r is not None:
            raise ValueError(
                "this MLP takes one time: build it with MLP(..., two_times=True) to pass a second time r"
            )
        h = self.inp(torch.cat(feats, dim=1))
        c = None
        if self.label is not None:
            if y is None:
                raise ValueError(
                    "this MLP is class-conditional: pass y=(B,) class indices (null class = num_classes)"
                )
            c = self.label(y)
            h = h + c
        h = self.act(h)
        for layer in self.hidden:
            h = layer(h)
            if c is not None:
                h = h + c
            h = self.act(h)
        out = self.out(h)
        return out.reshape(x.shape) if out.shape[1] == x[0].numel() else out
