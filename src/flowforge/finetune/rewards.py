r"""Rewards for fine-tuning: plain callables ``reward(x, **cond) -> (B,)``, and how several are summed.

A reward is any callable that takes samples ``x: (B, *event)`` (plus the sampler's conditions as keyword
arguments) and returns one float per sample, ``(B,)``. :func:`total_reward` checks that contract (with an
error that says what was returned and what to return instead) and sums several weighted rewards,
:math:`R(x) = \sum_j c_j r_j(x)`.

Two smooth 2-D rewards live here (pure torch, no data needed); rewards that need a trained classifier
(MNIST) belong in ``recipes``/``metrics``:

- :class:`ModePreference`: :math:`r(x) = \log \sum_k \exp(-\lVert x - c_k\rVert^2 / 2s^2)` over the preferred
  centres :math:`c_k`, clipped below at ``floor`` (a soft "be near one of these modes");
- :class:`HalfPlane`: :math:`r(x) = \tanh(a^\top x / s)`, prefer one side of a line.

Example:
    >>> import torch
    >>> r = ModePreference.eight_gaussians([0, 1])
    >>> x = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    >>> (r(x)[0] > r(x)[1]).item()
    True
    >>> total_reward([r, HalfPlane((1.0, 0.0))], x, weights=[1.0, 0.5]).shape
    torch.Size([2])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["Reward", "ModePreference", "HalfPlane", "total_reward"]

#: What a reward is: ``reward(x, **cond) -> (B,)``.
Reward = Callable[..., Tensor]


class ModePreference:
    r"""Smooth preference for some modes: :math:`r(x) = \max(\log\sum_k e^{-\lVert x - c_k\rVert^2/2s^2}, f)`.

    Args:
        centres: ``(K, D)`` preferred points :math:`c_k`.
        scale: :math:`s`, how far from a centre the reward falls off (in data units).
        floor: lower clip :math:`f` of the reward (keeps far-away samples from dominating a batch).

    Example:
        >>> import torch
        >>> r = ModePreference(torch.zeros(1, 2), scale=1.0)
        >>> r(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        tensor([ 0.0000, -0.5000])
    """

    def __init__(
        self, centres: Tensor | Sequence[Sequence[float]], *, scale: float = 0.5, floor: float = -8.0
    ):
        c = torch.as_tensor(centres, dtype=torch.float64)
        if c.dim() != 2 or c.shape[0] < 1:
            raise ValueError(
                f"centres must be (K, D) with K >= 1, got shape {tuple(c.shape)}; e.g. [[2.0, 0.0]]"
            )
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}; e.g. 0.5")
        self.centres, self.scale, self.floor = c, float(scale), float(floor)

    @classmethod
    def eight_gaussians(cls, modes: Sequence[int], *, radius: float = 2.0, **kw: Any) -> ModePreference:
        """Prefer the modes ``modes`` (indices 0..7, angle ``k pi/4``) of ``toy2d("eight-gaussians")``."""
        bad = [k for k in modes if not 0 <= int(k) < 8]
        if bad or not modes:
            raise ValueError(
                f"modes must be indices in 0..7 of the eight Gaussians, got {list(modes)}; e.g. [0, 1]"
            )
        ang = torch.tensor([int(k) * math.pi / 4 for k in modes], dtype=torch.float64)
        return cls(radius * torch.stack([ang.cos(), ang.sin()], 1), **kw)

    def __call__(self, x: Tensor, **cond: Any) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.centres.shape[1]:
            raise ValueError(
                f"ModePreference of {self.centres.shape[1]}-D centres got samples of shape {tuple(x.shape)}; "
                f"pass (B, {self.centres.shape[1]})"
            )
        c = self.centres.to(x.device, x.dtype)
        d2 = ((x[:, None, :] - c[None]) ** 2).sum(-1)
        return torch.logsumexp(-d2 / (2 * self.scale**2), dim=1).clamp(min=self.floor)


class HalfPlane:
    r"""Prefer one side of a line: :math:`r(x) = \tanh(a^\top x / s)`.

    Args:
        direction: :math:`a`, ``(D,)``.
        scale: :math:`s`, the width of the soft step.

    Example:
        >>> import torch
        >>> HalfPlane((1.0, 0.0), scale=1.0)(torch.tensor([[0.0, 5.0]]))
        tensor([0.])
    """

    def __init__(self, direction: Sequence[float] | Tensor, *, scale: float = 1.0) -> None:
        a = torch.as_tensor(direction, dtype=torch.float64)
        if a.dim() != 1:
            raise ValueError(f"direction must be a vector (D,), got shape {tuple(a.shape)}; e.g. (1.0, 0.0)")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}; e.g. 1.0")
        self.direction, self.scale = a, float(scale)

    def __call__(self, x: Tensor, **cond: Any) -> Tensor:
        return torch.tanh(x.flatten(1) @ self.direction.to(x.device, x.dtype) / self.scale)


def total_reward(
    rewards: Reward | Sequence[Reward],
    x: Tensor,
    cond: dict[str, Tensor] | None = None,
    *,
    weights: Sequence[float] | None = None,
) -> Tensor:
    r"""The weighted sum :math:`\sum_j c_j r_j(x)`, ``(B,)``, of rewards checked against the contract.

    Raises:
        ValueError: a reward that returns something other than a finite ``(B,)`` tensor (the message
            names the reward and the shape it returned), or ``weights`` of the wrong length.
    """
    rs = [rewards] if callable(rewards) else list(rewards)
    if not rs:
        raise ValueError("no reward given; pass a callable reward(x, **cond) -> (B,) or a list of them")
    w = [1.0] * len(rs) if weights is None else [float(c) for c in weights]
    if len(w) != len(rs):
        raise ValueError(f"{len(rs)} rewards but {len(w)} weights; give one weight per reward")
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for r, c in zip(rs, w, strict=True):
        out = r(x, **(cond or {}))
        name = getattr(r, "__name__", type(r).__name__)
        if not isinstance(out, Tensor) or out.shape != (x.shape[0],):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"reward {name} returned {got} for {x.shape[0]} samples; a reward must return one value "
                f"per sample, shape ({x.shape[0]},) (e.g. end with .sum(-1) or .squeeze(-1))"
            )
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"reward {name} returned NaN or inf; clip it (e.g. .clamp(min=-10)) before use")
        total = total + c * out.to(x.dtype)
    return total
