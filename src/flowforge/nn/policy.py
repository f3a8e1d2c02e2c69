r"""Policy networks of discrete samplers (GFlowNets): :class:`PolicyMLP`, :func:`shared_trunk_policies`,
and the helpers that call them (:func:`call_policy`, :func:`plain_layers`, :func:`masked_log_softmax`).

A policy net maps a ``(B, obs_dim)`` float encoding of states to ``(B, n_actions)`` logits; a
time-conditioned :class:`~flowforge.nn.MLP` is accepted too and called with ``t = 0``.

Example:
    >>> import torch
    >>> net = PolicyMLP(4, 3, width=8, depth=1)
    >>> mask = torch.tensor([[True, False, True]])
    >>> masked_log_softmax(call_policy(net, torch.zeros(1, 4)), mask).exp()[0, 1].item()
    0.0
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowforge.nn.mlp import MLP

__all__ = ["PolicyMLP", "call_policy", "masked_log_softmax", "plain_layers", "shared_trunk_policies"]


class PolicyMLP(nn.Sequential):
    """Plain MLP ``(B, in_dim) -> (B, out_dim)`` with ReLU (torchgfn's policy net: 256 x 2 hidden).

    Example:
        >>> PolicyMLP(8, 3, width=16, depth=2)(torch.zeros(4, 8)).shape
        torch.Size([4, 3])
    """

    def __init__(self, in_dim: int, out_dim: int, width: int = 256, depth: int = 2) -> None:
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, out_dim))
        super().__init__(*layers)


def shared_trunk_policies(
    in_dim: int, n_actions: int, width: int = 256, depth: int = 2
) -> tuple[nn.Sequential, nn.Sequential]:
    """P_F ``(B, in_dim) -> (B, n_actions)`` and P_B ``-> (B, n_actions - 1)`` as two heads on one ReLU trunk
    (torchgfn's hypergrid layout); the rollout runs the shared trunk once.

    Example:
        >>> pf, pb = shared_trunk_policies(8, 3, width=16, depth=2)
        >>> pf[0] is pb[0], pf(torch.zeros(4, 8)).shape, pb(torch.zeros(4, 8)).shape
        (True, torch.Size([4, 3]), torch.Size([4, 2]))
    """
    trunk = nn.Sequential(*list(PolicyMLP(in_dim, width, width, depth))[:-1])
    return nn.Sequential(trunk, nn.Linear(width, n_actions)), nn.Sequential(
        trunk, nn.Linear(width, n_actions - 1)
    )


def call_policy(net: nn.Module, x: Tensor) -> Tensor:
    """Call ``net(x)``; a ``flowforge.nn.MLP`` (time-conditioned) gets ``t = 0``."""
    if isinstance(net, MLP):
        return net(x, x.new_zeros(x.shape[0]))
    return net(x)


def plain_layers(net: nn.Module) -> list[Callable[[Tensor], Tensor]] | None:
    """The layers of a (nested) ``nn.Sequential`` without hooks as plain functions, in call order, or
    ``None`` if ``net`` is anything else (calling them skips only the module-call machinery)."""
    from torch.nn.modules import module as _m

    if any((_m._global_forward_hooks, _m._global_forward_pre_hooks)):
        return None
    out: list[Callable[[Tensor], Tensor]] = []

    def walk(mod: nn.Module) -> bool:
        if mod._forward_hooks or mod._forward_pre_hooks:
            return False
        if type(mod) is nn.Sequential:
            return all(walk(c) for c in mod)
        if type(mod) is nn.Linear:
            out.append(functools.partial(F.linear, weight=mod.weight, bias=mod.bias))
            return True
        if type(mod) is nn.ReLU and not mod.inplace:
            out.append(torch.relu)
            return True
        if isinstance(mod, nn.Sequential) or next(mod.children(), None) is not None:
            return False
        out.append(mod.forward)
        return True

    return out if walk(net) else None


def masked_log_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Log-softmax over allowed entries; disallowed ones are ``-inf``. Rows with no allowed entry
    are computed as if all were allowed (finite, so no NaN gradient), and must be masked by the caller."""
    safe = mask | ~mask.any(dim=-1, keepdim=True)
    return torch.log_softmax(logits.masked_fill(~safe, float("-inf")), dim=-1)
