r"""Rewards for fine-tuning: plain callables ``reward(x, **cond) -> (B,)``, and how several are summed.

A reward is any callable that takes samples ``x: (B, *event)`` (plus the sampler's conditions as keyword
arguments) and returns one float per sample, ``(B,)``. :func:`total_reward` checks that contract (with an
error that says what was returned and what to return instead) and sums several weighted rewards,
:math:`R(x) = \sum_j c_j r_j(x)`.

Two smooth 2-D rewards and two image rewards live here (pure torch; the image classifier is passed in as
a module, so ``finetune`` needs no ``metrics``: the recipes wire in the shipped one,
``flowforge.metrics.load_classifier``):

- :class:`ModePreference`: :math:`r(x) = \log \sum_k \exp(-\lVert x - c_k\rVert^2 / 2s^2)` over the preferred
  centres :math:`c_k`, clipped below at ``floor`` (a soft "be near one of these modes");
- :class:`HalfPlane`: :math:`r(x) = \tanh(a^\top x / s)`, prefer one side of a line;
- :class:`ClassifierReward`: :math:`r(x) = p_\phi(c \mid x)` (or :math:`\log p_\phi(c \mid x)`), a classifier's
  probability of a target class :math:`c` for images ``(B, C, H, W)`` in ``[-1, 1]``;
- :class:`StrokeThickness`: the share of ink in an image, :math:`r(x) = \operatorname{mean}_{pixels} (x + 1)/2`
  (``"ink"``) or the soft share of pixels above a threshold (``"area"``).

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
from torch import Tensor, nn

__all__ = ["Reward", "ModePreference", "HalfPlane", "ClassifierReward", "StrokeThickness", "total_reward"]

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


def _check_images(x: Tensor, shape: tuple[int, ...] | None, who: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or (shape is not None and tuple(x.shape[1:]) != shape):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        want = f"(B, {', '.join(map(str, shape))})" if shape is not None else "(B, C, H, W)"
        hint = " (add the channel axis with x.unsqueeze(1))" if isinstance(x, Tensor) and x.dim() == 3 else ""
        raise ValueError(f"{who} takes images {want} in [-1, 1], got {got}{hint}")


class ClassifierReward:
    r"""A classifier's probability of a target class: :math:`r(x) = p_\phi(c \mid x) = \mathrm{softmax}(f_\phi(x))_c`.

    With ``log=True`` the reward is :math:`\log p_\phi(c \mid x)` (``log_softmax``), clipped below at
    ``floor``: unbounded above 0 no more, but with larger gradients and advantages away from the class.
    Images are clamped to ``[-1, 1]`` first (the classifier's domain; the sampler may overshoot). The
    classifier is put in eval mode (batch-norm statistics, no dropout) and is never trained here.

    Args:
        classifier: ``f_phi(x: (B, C, H, W)) -> (B, K)`` logits, e.g. the shipped MNIST classifier
            ``flowforge.metrics.load_classifier("mnist")``; any ``nn.Module`` with that contract.
        target: the class :math:`c` in ``0..K-1`` (a digit 0..9 for MNIST and digits).
        log: reward the log-probability instead of the probability.
        floor: lower clip of the log-probability (``log=True`` only).
        image_shape: ``(C, H, W)`` the classifier takes; default the classifier's own
            (``in_channels``, ``image_size``) when it has them.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))  # a toy 3-class "classifier" of 1x2x2 images
        >>> r = ClassifierReward(net, target=2, image_shape=(1, 2, 2))
        >>> x = torch.zeros(5, 1, 2, 2)
        >>> torch.allclose(r(x), net(x).softmax(-1)[:, 2])
        True
    """

    def __init__(
        self,
        classifier: nn.Module,
        target: int,
        *,
        log: bool = False,
        floor: float = -10.0,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(classifier, nn.Module):
            raise TypeError(
                f"classifier must be an nn.Module returning (B, K) logits, got {type(classifier).__name__}; "
                "e.g. flowforge.metrics.load_classifier('mnist')"
            )
        k = getattr(classifier, "num_classes", None)
        if isinstance(target, bool) or int(target) != target or target < 0 or (k is not None and target >= k):
            top = f"0..{k - 1}" if k is not None else "0..K-1"
            raise ValueError(f"target must be a class in {top}, got {target!r}; e.g. target=3")
        if image_shape is None and hasattr(classifier, "image_size"):
            side = int(classifier.image_size)
            image_shape = (int(getattr(classifier, "in_channels", 1)), side, side)
        self.classifier = classifier.eval().requires_grad_(False)
        self.target, self.log, self.floor = int(target), bool(log), float(floor)
        self.image_shape = tuple(int(s) for s in image_shape) if image_shape is not None else None
        self.__name__ = f"{'log_' if log else ''}p(class={self.target})"

    def logits(self, x: Tensor) -> Tensor:
        """The classifier's logits ``(B, K)`` of ``x`` (clamped to ``[-1, 1]``), in the classifier's dtype."""
        _check_images(x, self.image_shape, "ClassifierReward")
        p = next(self.classifier.parameters(), None)
        dtype = p.dtype if p is not None else x.dtype
        out = self.classifier(x.clamp(-1.0, 1.0).to(dtype))
        if out.dim() != 2 or self.target >= out.shape[1]:
            raise ValueError(
                f"the classifier returned {tuple(out.shape)} for {x.shape[0]} images; it must return (B, K) "
                f"logits with K > target = {self.target}"
            )
        return out

    def __call__(self, x: Tensor, **cond: Any) -> Tensor:
        lp = torch.log_softmax(self.logits(x), dim=-1)[:, self.target].to(x.dtype)
        return lp.clamp(min=self.floor) if self.log else lp.exp()


class StrokeThickness:
    r"""How much ink an image holds, in ``[0, 1]``; pixels in ``[-1, 1]``, ``+1`` = ink (white on black).

    - ``mode="ink"``: the mean ink :math:`r(x) = \frac1{CHW}\sum_p \tfrac12(\mathrm{clip}(x_p, -1, 1) + 1)`
      (linear in the pixels; thick strokes and more strokes both raise it);
    - ``mode="area"``: the soft share of inked pixels
      :math:`r(x) = \frac1{CHW}\sum_p \sigma\big(k\,(x_p - \tau)\big)` with threshold :math:`\tau`
      (``threshold``) and sharpness :math:`k` (``sharpness``): a differentiable "area above
      :math:`\tau`" that ignores how bright the ink is.

    Both are differentiable (``clip`` has zero gradient outside ``[-1, 1]``). Optionally ``target``:
    :math:`r = -|m(x) - m^*|` rewards a stroke mass near :math:`m^*` instead of "more ink".

    Args:
        mode: ``"ink"`` or ``"area"``.
        threshold: :math:`\tau` of ``"area"`` (in ``[-1, 1]`` pixel units).
        sharpness: :math:`k > 0` of ``"area"``.
        target: :math:`m^*` in ``[0, 1]``, or None (reward more ink).

    Example:
        >>> import torch
        >>> x = -torch.ones(2, 1, 4, 4)
        >>> x[1, 0, :2] = 1.0  # half of the second image is ink
        >>> StrokeThickness()(x)
        tensor([0.0000, 0.5000])
    """

    MODES = ("ink", "area")

    def __init__(
        self,
        mode: str = "ink",
        *,
        threshold: float = 0.0,
        sharpness: float = 10.0,
        target: float | None = None,
    ) -> None:
        if mode not in self.MODES:
            raise ValueError(f"unknown stroke-thickness mode {mode!r}; use 'ink' (mean ink) or 'area'")
        if not sharpness > 0:
            raise ValueError(f"sharpness must be > 0, got {sharpness}; e.g. 10")
        if target is not None and not 0 <= target <= 1:
            raise ValueError(f"target must be a share of ink in [0, 1], got {target}; e.g. 0.2")
        self.mode, self.threshold, self.sharpness = mode, float(threshold), float(sharpness)
        self.target = None if target is None else float(target)
        self.__name__ = f"stroke_{mode}"

    def mass(self, x: Tensor) -> Tensor:
        """The ink share ``(B,)`` before the optional target."""
        _check_images(x, None, "StrokeThickness")
        if self.mode == "ink":
            m = 0.5 * (x.clamp(-1.0, 1.0) + 1.0)
        else:
            m = torch.sigmoid(self.sharpness * (x - self.threshold))
        return m.flatten(1).mean(1)

    def __call__(self, x: Tensor, **cond: Any) -> Tensor:
        m = self.mass(x)
        return m if self.target is None else -(m - self.target).abs()


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
