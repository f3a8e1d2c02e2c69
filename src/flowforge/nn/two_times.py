"""``with_two_times(net)``: a copy of a one-time velocity network that also takes a start time ``r``.

Few-step students (MeanFlow fine-tuning, FreeFlow, ...) are flow maps ``u(x, r, t)`` that are often
initialised from a trained velocity ``v(x, t)``. The copy embeds the gap ``t - r`` like the nets built
with ``two_times=True`` and starts with that branch switched off, so for every ``r`` it returns the
teacher's ``v(x, t)`` bit for bit until training moves it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from flowforge.nn.dit import DiT, TimeEmbed
from flowforge.nn.mlp import MLP
from flowforge.nn.unet import UNet

__all__ = ["with_two_times"]


def _zero_last(mlp: nn.Sequential) -> nn.Sequential:
    last = mlp[-1]
    assert isinstance(last, nn.Linear)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return mlp


def with_two_times(net: nn.Module) -> nn.Module:
    """A two-time copy of ``net`` (a :class:`UNet`, :class:`DiT` or :class:`MLP` built without
    ``two_times``): ``copy(x, t, r=r, **cond) == net(x, t, **cond)`` for every ``r`` at the start.

    The gap branch's last linear layer is zero (UNet, DiT), or the MLP's input columns of the gap's
    features are; the rest are the trained weights (copied, so ``net`` is untouched).

    Example:
        >>> import torch
        >>> net = MLP(dim=2, width=16, depth=2)
        >>> u = with_two_times(net)
        >>> x, t = torch.randn(4, 2), torch.rand(4)
        >>> torch.equal(u(x, t, r=torch.zeros(4)), net(x, t))
        True
    """
    if getattr(net, "two_times", None) is not False:
        raise ValueError(
            f"with_two_times takes a one-time UNet, DiT or MLP, got {type(net).__name__}"
            + (" that already takes two times" if getattr(net, "two_times", False) else "")
        )
    out = copy.deepcopy(net)
    param = next(net.parameters())
    like = {"device": param.device, "dtype": param.dtype}
    if isinstance(out, UNet):
        c, emb = out.channels, out.time_mlp[-1].out_features
        out.gap_mlp = _zero_last(nn.Sequential(nn.Linear(c, emb), nn.SiLU(), nn.Linear(emb, emb))).to(**like)
    elif isinstance(out, DiT):
        gap = TimeEmbed(out.time.mlp[-1].out_features, out.time.freqs).to(**like)
        _zero_last(gap.mlp)
        out.gap = gap
    elif isinstance(out, MLP):
        old = out.inp
        new = nn.Linear(old.in_features + out.time.out_dim, old.out_features).to(**like)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, : old.in_features] = old.weight
            new.bias.copy_(old.bias)
        out.inp = new
    else:
        raise ValueError(f"with_two_times takes a UNet, DiT or MLP, got {type(net).__name__}")
    out.two_times = True
    return out
