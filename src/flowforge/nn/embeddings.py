"""Embeddings of time and classes for velocity networks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["FourierTime", "PeriodicInput"]


class FourierTime(nn.Module):
    r"""Sinusoidal time features :math:`[t, \sin(2\pi f_k t), \cos(2\pi f_k t)]_{k}` (Tancik et al., 2020).

    Frequencies are fixed and geometric from 1 to ``max_freq``; ``t`` of shape ``(B,)`` becomes
    ``(B, 1 + 2 * n_freq)``.
    """

    def __init__(self, n_freq: int = 8, max_freq: float = 32.0) -> None:
        super().__init__()
        if n_freq < 0:
            raise ValueError(f"FourierTime needs n_freq >= 0, got {n_freq}")
        freqs = torch.logspace(0, math.log10(max_freq), n_freq) if n_freq else torch.zeros(0)
        self.register_buffer("freqs", 2 * math.pi * freqs, persistent=False)
        self.out_dim = 1 + 2 * n_freq

    def forward(self, t: Tensor) -> Tensor:
        """``(B,) -> (B, 1 + 2 n_freq)``."""
        t = t[:, None]
        if not self.freqs.numel():
            return t
        arg = t * self.freqs.to(t.dtype)
        return torch.cat([t, torch.sin(arg), torch.cos(arg)], dim=1)


class PeriodicInput(nn.Module):
    r"""Feed a network angles through :math:`[\cos x, \sin x]`: ``net(x, t) = inner([cos x, sin x], t)``.

    A field on the torus must be :math:`2\pi`-periodic in every angle; raw angles in
    :math:`[0, 2\pi)` would put a seam at 0. ``inner`` sees ``(B, 2 D)`` features and returns
    ``(B, D)``, e.g. ``MLP(2 * D, out_dim=D)``.

    Example:
        >>> import torch
        >>> from flowforge.nn import MLP
        >>> net = PeriodicInput(MLP(4, 16, 2, out_dim=2))
        >>> x = torch.rand(3, 2)
        >>> bool(torch.allclose(net(x, torch.zeros(3)), net(x + 2 * math.pi, torch.zeros(3)), atol=1e-5))
        True
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        """``x: (B, D)`` angles, ``t: (B,)`` -> ``(B, D)``."""
        return self.inner(torch.cat([torch.cos(x), torch.sin(x)], dim=-1), t, **cond)
