r"""TwinFlow: one- and few-step generation by self-adversarial flows, one network, no teacher.

Cheng, Sun, Li & Lin (2025), "TwinFlow: Realizing One-step Generation on Large Models with
Self-adversarial Flows", arXiv:2512.05150; official code ``inclusionAI/TwinFlow``,
``src/methodes/twinflow/twinflow.py``. The any-step target is RCGM and the sampler UCGM's
(Sun et al., arXiv:2505.07447).

**Time direction.** The paper puts noise at :math:`\tau = 1` and its net predicts
:math:`F(x_\tau, \tau, \tau_{tgt})` with :math:`x_{\tau_{tgt}} = x_\tau - (\tau - \tau_{tgt}) F`. Here (flowforge)
noise is at t=0: ``t' = 1 - t``, ``v' = -v``, so a paper pair :math:`(\tau, \tau_{tgt})` is our
``(s, t) = (1 - tau, 1 - tau_tgt)`` and :math:`u(x_s, s, t) = -F(x_s, 1 - s, 1 - t)`. Every formula
below is already converted.

**Network contract.** One two-time network, called ``net(x, t, r=s, **cond)``, returns the average
velocity :math:`u(x_s, s, t)` of the flow map from time ``s`` (where ``x`` lives) to ``t >= s``:
:math:`X_{s,t}(x) = x + (t - s)\,u(x, s, t)`; at ``r = t`` it is the instantaneous velocity.

**Two branches.** The *real* branch takes times in ``[0, 1]``. The *fake* branch (the velocity of the
model's own 1-step samples) takes the times mapped by ``fake_time``; it is only ever queried at
``r = t``:

- ``"reflect"`` (default): :math:`s \mapsto 2 - s \in [1, 2]`. The paper feeds :math:`-\tau`, a
  reflection about the DATA end :math:`\tau = 0`, where real and fake velocities coincide
  (:math:`u(x, 1, 1) = x` for any target with an independent coupling). In our time the data end is
  ``s = 1``, so the faithful mirror is ``2 - s``; the two branches touch only where they agree.
- ``"negative"``: :math:`s \mapsto -s \in [-1, 0]`, the sign flip taken literally in our time. The
  branches then touch at the NOISE end, where they differ by the generator's mean bias; a continuous
  net blurs the rectification signal near ``s = 0``. Kept for nets that want negative times.

``flowforge.nn.MLP`` (raw ``t`` plus Fourier features) and the sinusoidal embeddings of ``UNet``/``DiT``
accept times outside ``[0, 1]`` and tell ``-s``/``2 - s`` from ``s`` (the raw ``t`` or the odd ``sin``
channels differ), so both maps work with them.

**Training** (:meth:`TwinFlow.loss`, the official *scaled trainer*). A batch of data ``x1`` is split
into contiguous parts (default four equal ones, ``split``) with a base time ``s ~ time``:

- ``e2e``: ``(s, t) = (0, 1)``, the 1-step map;
- ``mul``: ``t = s + U * mul_span * (1 - s)`` (short jumps, ``mul_span = 0.05``);
- ``any``: ``t = s + U * (1 - s)``;
- ``adv``: ``x1`` is replaced by the model's own 1-step sample :math:`sg(x_0' + u(x_0', 0, 1))`, trained by
  plain flow matching on the FAKE branch at ``(s, s)``.

On the real rows the regression target is RCGM's (:func:`rcgm_residual`):
:math:`u_{tgt} = sg(u_\theta - \mathrm{clip}(R, -c, c))` with
:math:`R = [(t - s) u_\theta - D]/\Delta - \bar v` (``t - s >= Delta``; otherwise :math:`R = u_\theta - \bar v`),
where :math:`D` is the displacement of an ``order``-step chain of the target (EMA) flow map from
:math:`x' = x_s + \Delta \bar v` at :math:`s + \Delta` to ``t``, and :math:`\bar v = x_1 - x_0`
(plus ``enhance * (u(x_s, s, s | y) - u(x_s, s, s | null))`` of the target net: training-time guidance).
As :math:`\Delta \to 0` this is the MeanFlow residual, a finite difference with no JVP.
Each row's distance is weighted by :math:`1 + \tan(0.4\pi(1 - (t - s)))` (adv rows: 1). The
*rectify* term on the e2e rows moves the 1-step output :math:`\hat x_1` along
:math:`u_{real} - u_{fake}` (distribution matching, DMD-like): with fresh noise and ``s' ~ U(0, 1)``,
:math:`y = s'\hat x_1 + (1 - s') n`, :math:`\Delta u = \mathrm{clip}(u_{fake}(y, s') - u_{real}(y, s'))`
(:meth:`TwinFlow.distribution_shift`, current weights, no gradient), and the loss
``rectify_weight * d(u_e2e, sg(u_e2e - Delta u))``.

The default distance is the official Barron loss (alpha = 1, c = 1e-3); its gradient is that of
``2 (sqrt(mse + c^2) - c)``, i.e. :class:`~flowforge.core.objectives.PseudoHuber` on the RMS error, which is
what we compute.

**Sampling** (:class:`TwinFlowGenerator`, UCGM): on a grid :math:`t_0 < \dots < t_K = 1`, evaluate
``u(x, t_k, target)`` (target ``1``: "few", ``t_{k+1}``: "any", ``t_k``: "mul"), form
:math:`\hat x_1 = x + (1 - t_k) u`, :math:`\hat x_0 = x - t_k u`, and move to
:math:`t_{k+1}\hat x_1 + (1 - t_{k+1})(\sqrt{1-\rho}\,\hat x_0 + \sqrt\rho\,\xi)`. One step is
:math:`x_1 = x_0 + u(x_0, 0, 1)`.

Not verified here (no official number reproduced): the large-model hyperparameters; the official
RNG save/restore around the target passes (it keeps dropout masks equal; our target passes draw no
randomness from the net, so nets with dropout see different masks there); the official ``estimate_order
= 0`` mode (multi-step only) is not offered.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.batch import split_batch
from flowforge.core.choices import unknown_choice
from flowforge.core.guidance import drop_labels
from flowforge.core.noise import standard_normal
from flowforge.core.objectives import Distance, PseudoHuber
from flowforge.core.time import TimeSampler, Uniform

__all__ = [
    "TwinFlow",
    "TwinFlowGenerator",
    "rcgm_residual",
    "twinflow_grid",
    "two_time_call",
    "FAKE_TIMES",
    "STYLES",
    "PARTS",
]

#: How the fake branch's times reach the network (see the module docstring).
FAKE_TIMES = ("reflect", "negative")
#: UCGM sampling styles: the flow map's target time is 1 ("few"), the next grid time ("any") or now ("mul").
STYLES = ("few", "any", "mul")
#: The parts a training batch is split into, in this order.
PARTS = ("e2e", "mul", "any", "adv")

FlowMap = Callable[[Tensor, Tensor, Tensor], Tensor]


def _b(v: Tensor, x: Tensor) -> Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` to broadcast against ``x: (B, *event)``."""
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def two_time_call(
    net: Callable[..., Tensor], x: Tensor, s: Tensor, t: Tensor, cond: Mapping[str, Tensor]
) -> Tensor:
    """``net(x, t, r=s, **cond)``: the average velocity from ``s`` to ``t``, with a clear error for one-time nets.

    The one place where the two-time contract is spelled: ``x: (B, *event)`` lives at time ``s: (B,)``
    and the net returns :math:`u(x, s, t)` with :math:`X_{s,t}(x) = x + (t - s) u`, ``(B, *event)``.

    Example:
        >>> import torch
        >>> net = lambda x, t, r: x * (t - r)[:, None]
        >>> two_time_call(net, torch.ones(2, 3), torch.zeros(2), torch.ones(2), {}).shape
        torch.Size([2, 3])
    """
    try:
        return net(x, t, r=s, **cond)
    except TypeError as e:
        if "'r'" not in str(e):
            raise
        raise TypeError(
            f"{type(net).__name__} does not take a second time: two-time methods call net(x, t, r=s, **cond) "
            "(x at time s, jump to time t). Build the net with a second time input, e.g. "
            "flowforge.nn.MLP(..., two_times=True), or wrap yours so that forward(x, t, r) accepts r"
        ) from e


def rcgm_residual(
    u: Tensor,
    x_s: Tensor,
    s: Tensor,
    t: Tensor,
    v: Tensor,
    flow_map: FlowMap,
    *,
    delta: float = 0.01,
    order: int = 2,
) -> Tensor:
    r"""RCGM's residual :math:`R` of an average velocity (TwinFlow / RCGM, arXiv:2512.05150, 2505.07447).

    For ``t - s >= delta``: :math:`x' = x_s + \Delta v`, :math:`D` = the displacement of ``order`` equal
    flow-map jumps ``x <- x + (b - a) flow_map(x, a, b)`` from :math:`x'` at :math:`s + \Delta` to ``t``, and

    .. math:: R = \frac{(t - s)\,u - D}{\Delta} - v .

    For ``t - s < delta``: :math:`R = u - v` (flow matching). With the exact map and the marginal
    velocity ``v``, :math:`R = O(\Delta)`: :math:`(t-s)u - D` is the map's own finite difference.

    Args:
        u: ``(B, *event)`` the model's :math:`u(x_s, s, t)`.
        x_s: ``(B, *event)`` the points at time ``s``.
        s, t: ``(B,)`` start and end times, ``s <= t``.
        v: ``(B, *event)`` the velocity at ``(x_s, s)`` the step :math:`x'` follows (the (enhanced)
            conditional velocity :math:`x_1 - x_0` in training).
        flow_map: ``flow_map(x, a, b) -> (B, *event)``, the target average velocity from ``a`` to ``b``.
        delta: the finite-difference step :math:`\Delta` (official 0.01).
        order: the number of chained jumps ``N`` (official ``estimate_order = 2``).

    Returns:
        ``(B, *event)``; not clipped.

    Example:
        >>> import torch
        >>> x = torch.randn(4, 2, dtype=torch.float64)
        >>> s, t = torch.full((4,), 0.2, dtype=torch.float64), torch.full((4,), 0.9, dtype=torch.float64)
        >>> still = lambda x, a, b: torch.zeros_like(x)  # the map of v = 0
        >>> rcgm_residual(torch.zeros_like(x), x, s, t, torch.zeros_like(x), still).abs().max().item()
        0.0
    """
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}; the official value is 0.01")
    if order < 1:
        raise ValueError(f"order must be >= 1 jumps, got {order}; the official value is 2")
    gap = t - s
    far = gap >= delta
    start = torch.minimum(s + delta, t)  # near rows: a zero-length chain (their R is u - v anyway)
    x = x_s + delta * v
    x_start = x
    for k in range(order):
        a = start + (t - start) * (k / order)
        b = start + (t - start) * ((k + 1) / order)
        x = x + _b(b - a, x) * flow_map(x, a, b)
    r_far = (_b(gap, u) * u - (x - x_start)) / delta - v
    return torch.where(_b(far, u), r_far, u - v)


def twinflow_grid(steps: int, gap: tuple[float, float] = (0.0, 0.0), **like: Any) -> Tensor:
    r"""UCGM's time grid in flowforge time: ``steps`` start times then 1; ``(steps + 1,)``.

    ``gap = (g0, g1)`` (the official ``rfba_gap_steps``): with ``g1 = 0`` the start times are the first
    ``steps`` points of ``linspace(g0, 1, steps + 1)``, else ``linspace(g0, 1 - g1, steps)``. The README's
    2-NFE setting ``gap=(0.001, 0.6)`` gives ``0.001, 0.4, 1``.

    Example:
        >>> twinflow_grid(2, (0.001, 0.6), dtype=torch.float64).tolist()
        [0.001, 0.4, 1.0]
        >>> twinflow_grid(4).tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    g0, g1 = (float(g) for g in gap)
    if not (0.0 <= g0 < 1.0 and 0.0 <= g1 < 1.0 and g0 <= 1.0 - g1):
        raise ValueError(
            f"gap = (g0, g1) needs 0 <= g0 <= 1 - g1 and both in [0, 1), got {gap}; e.g. gap=(0.001, 0.6)"
        )
    if g1 == 0.0:
        starts = torch.linspace(g0, 1.0, int(steps) + 1, **like)[:-1]
    else:
        starts = torch.linspace(g0, 1.0 - g1, int(steps), **like)
    return torch.cat([starts, torch.ones(1, **like)])


@dataclass(frozen=True)
class _BarronOne:
    """The official Barron loss (alpha = 1), ``mse * sg((mse / c^2 + 1)^(-1/2)) / c``, by its gradient.

    Its gradient equals that of ``2 (sqrt(mse + c^2) - c)``, which is ``2 sqrt(d)`` times
    :class:`~flowforge.core.objectives.PseudoHuber` with ``c' = c sqrt(d)``; ``(B, *event) -> (B,)``.
    """

    c: float = 1e-3

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        d = pred[0].numel()
        return 2.0 * math.sqrt(d) * PseudoHuber(self.c * math.sqrt(d))(pred, target)


def _randn(shape: tuple[int, ...], g: torch.Generator | None, like: Tensor) -> Tensor:
    dev = g.device if g is not None else like.device
    return torch.randn(shape, generator=g, device=dev, dtype=like.dtype).to(like.device)


def _rand(n: int, g: torch.Generator | None, like: Tensor) -> Tensor:
    dev = g.device if g is not None else like.device
    return torch.rand(n, generator=g, device=dev, dtype=like.dtype).to(like.device)


def _rows(cond: Mapping[str, Tensor], m: Tensor) -> dict[str, Tensor]:
    return {k: v[m] for k, v in cond.items()}


class TwinFlow(nn.Module):
    r"""TwinFlow (Cheng et al., 2025, arXiv:2512.05150): self-adversarial any-step flow maps in one network.

    See the module docstring for the objective, the time conversion and the two branches.

    Args:
        net: the two-time network ``net(x, t, r=s, **cond) -> (B, *event)``, :math:`u(x, s, t)`.
        split: relative sizes of the batch parts ``{"e2e", "mul", "any", "adv"}`` (missing keys: 0);
            official: equal quarters. Parts are contiguous, in that order, sized by rounding.
        time: sampler of the base time ``s`` (flowforge direction; official ``Beta(1, 1)`` = uniform).
        delta: RCGM's finite-difference step :math:`\Delta` (official 0.01).
        order: RCGM's chain length ``N`` (official ``estimate_order = 2``).
        mul_span: the ``mul`` rows jump at most ``mul_span * (1 - s)`` (official 0.05).
        clip: both clips, of :math:`R` and of :math:`\Delta u`, at ``+-clip`` (official 1; elementwise,
            so they depend on the data's scale).
        enhance: training-time guidance weight ``w`` of the enhanced target (official 0.5 MNIST, 0.8
            SD3.5/Qwen-Image; 0 = off). Needs class labels ``y`` and a null label.
        enhance_range: the open interval of ``s`` where the target is enhanced (official ``(0, 1)``).
        ema_decay: decay of the target network used by RCGM and the enhancement (official 0.99,
            reached by the official warm-up ``d <- d + (1 - d)(decay - d)/2`` from 0; 0 = the live net).
        rectify_weight: weight of the rectify term (official ``dist_match_cof = 0.5``; 0 = off).
        fake_time: ``"reflect"`` (``2 - s``) or ``"negative"`` (``-s``), how fake times reach the net.
        distance: per-sample distance ``(B, *event) -> (B,)``; default the official Barron loss (see the
            module docstring); :class:`~flowforge.core.objectives.SquaredError` is the MNIST tutorial's L2.
        label_dropout: probability of replacing ``y`` by ``null_label`` in training.
        null_label: the null class (default ``net.num_classes`` when the net has it).
        event_shape: shape of one sample; inferred from the first batch when omitted.

    Example:
        >>> import torch
        >>> from flowforge.continuous import TwinFlow
        >>> from flowforge.nn import MLP
        >>> tf = TwinFlow(MLP(dim=2, width=32, depth=2, two_times=True))
        >>> g = torch.Generator().manual_seed(0)
        >>> loss = tf.loss(torch.randn(64, 2), generator=g)
        >>> loss.backward()
        >>> tf.generator().sample(8, steps=1, generator=g).shape
        torch.Size([8, 2])
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        split: Mapping[str, float] | None = None,
        time: TimeSampler | None = None,
        delta: float = 0.01,
        order: int = 2,
        mul_span: float = 0.05,
        clip: float = 1.0,
        enhance: float = 0.0,
        enhance_range: tuple[float, float] = (0.0, 1.0),
        ema_decay: float = 0.99,
        rectify_weight: float = 0.5,
        fake_time: str = "reflect",
        distance: Distance | None = None,
        label_dropout: float = 0.0,
        null_label: int | None = None,
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        split = dict(split) if split is not None else dict.fromkeys(PARTS, 1.0)
        unknown = sorted(set(split) - set(PARTS))
        if unknown:
            raise ValueError(
                f"unknown batch parts {unknown}; split takes the keys {PARTS}, e.g. {{'e2e': 1, 'any': 3}}"
            )
        if (
            any(not (float(w) >= 0 and math.isfinite(float(w))) for w in split.values())
            or not sum(split.values()) > 0
        ):
            raise ValueError(f"split needs finite weights >= 0 with a positive sum, got {split}")
        self.split = {k: float(split.get(k, 0.0)) for k in PARTS}
        if not delta > 0:
            raise ValueError(f"delta must be > 0, got {delta}; the official value is 0.01")
        if isinstance(order, bool) or int(order) != order or order < 1:
            raise ValueError(f"order must be an integer >= 1, got {order!r}; the official value is 2")
        if not 0 < mul_span <= 1:
            raise ValueError(f"mul_span must lie in (0, 1], got {mul_span}; the official value is 0.05")
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip}; the official value is 1.0")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1) (0 = the live net as target), got {ema_decay}")
        if not rectify_weight >= 0:
            raise ValueError(f"rectify_weight must be >= 0, got {rectify_weight}; the official value is 0.5")
        if fake_time not in FAKE_TIMES:
            raise unknown_choice("fake_time", fake_time, FAKE_TIMES)
        lo, hi = enhance_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"enhance_range must satisfy 0 <= lo < hi <= 1, got {enhance_range}")
        self.net = net
        self.time = time if time is not None else Uniform()
        self.delta, self.order, self.mul_span, self.clip = (
            float(delta),
            int(order),
            float(mul_span),
            float(clip),
        )
        self.enhance, self.enhance_range = float(enhance), (float(lo), float(hi))
        self.ema_decay, self.rectify_weight, self.fake_time = (
            float(ema_decay),
            float(rectify_weight),
            fake_time,
        )
        self.distance = distance if distance is not None else _BarronOne()
        self.label_dropout = float(label_dropout)
        self.null_label = null_label if null_label is not None else getattr(net, "num_classes", None)
        if (self.enhance != 0.0 or self.label_dropout > 0) and self.null_label is None:
            raise ValueError(
                "enhance != 0 and label_dropout > 0 need a null class: pass null_label=... (or use a net with "
                "num_classes, whose null class is num_classes)"
            )
        self.event_shape = (
            tuple(event_shape) if event_shape is not None else getattr(net, "event_shape", None)
        )
        if self.ema_decay > 0:
            self.ema_net = copy.deepcopy(net).requires_grad_(False)
            self.register_buffer(
                "ema_weight", torch.zeros(())
            )  # the official warm-up state, saved and resumed
        else:
            self.ema_net = None

    # ------------------------------------------------------------------------------------------
    # branches
    # ------------------------------------------------------------------------------------------

    def fake_times(self, s: Tensor) -> Tensor:
        """The network times of the fake branch at flowforge time ``s``: ``2 - s`` or ``-s``; ``(B,)``."""
        return 2.0 - s if self.fake_time == "reflect" else -s

    def average_velocity(
        self, x: Tensor, s: Tensor, t: Tensor, *, net: nn.Module | None = None, **cond: Tensor
    ) -> Tensor:
        """Real-branch :math:`u(x, s, t)`; ``x: (B, *event)``, ``s, t: (B,)``; ``net`` defaults to ``self.net``."""
        return two_time_call(net if net is not None else self.net, x, s, t, cond)

    def fake_velocity(self, x: Tensor, s: Tensor, *, net: nn.Module | None = None, **cond: Tensor) -> Tensor:
        """Fake-branch velocity at ``(x, s)``: the net at the mapped times, ``r = t``; ``(B, *event)``."""
        f = self.fake_times(s)
        return two_time_call(net if net is not None else self.net, x, f, f, cond)

    def one_step(self, x0: Tensor, **cond: Tensor) -> Tensor:
        """The 1-step map :math:`x_0 + u(x_0, 0, 1)`; ``(B, *event)``."""
        b = x0.shape[0]
        return x0 + self.average_velocity(x0, x0.new_zeros(b), x0.new_ones(b), **cond)

    @torch.no_grad()
    def distribution_shift(
        self, x1_hat: Tensor, *, generator: torch.Generator | None = None, **cond: Tensor
    ) -> Tensor:
        r""":math:`\Delta u = \mathrm{clip}(u_{fake}(y, s', s') - u_{real}(y, s', s'))` at noised 1-step samples.

        ``y = s' x1_hat + (1 - s') n`` with fresh ``n ~ N(0, I)`` and ``s' ~ U(0, 1)``; both branches of the
        current net in one batched call, no gradient. For a generator whose samples are
        :math:`N(m + b, c^2)` against data :math:`N(m, c^2)` the unclipped shift is :math:`b(1 - s')/\sigma_{s'}^2`.

        Args:
            x1_hat: ``(B, *event)`` the model's 1-step samples.
            generator: source of ``n`` and ``s'``.

        Returns:
            ``(B, *event)``.
        """
        b = x1_hat.shape[0]
        s = _rand(b, generator, x1_hat)
        y = _b(s, x1_hat) * x1_hat + _b(1 - s, x1_hat) * _randn(tuple(x1_hat.shape), generator, x1_hat)
        f = self.fake_times(s)
        both = {k: torch.cat([v, v]) for k, v in cond.items()}
        out = two_time_call(self.net, torch.cat([y, y]), torch.cat([f, s]), torch.cat([f, s]), both)
        u_fake, u_real = out.chunk(2)
        return (u_fake - u_real).clamp(-self.clip, self.clip)

    # ------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------

    def part_sizes(self, b: int) -> dict[str, int]:
        """Rows of each part for a batch of ``b`` (the official rounding; the last part takes the rest)."""
        total = sum(self.split.values())
        sizes = {k: int(round(b * self.split[k] / total)) for k in PARTS}
        last = [k for k in PARTS if self.split[k] > 0][-1]
        sizes[last] = b - sum(v for k, v in sizes.items() if k != last)
        active = [k for k in PARTS if self.split[k] > 0]
        if any(sizes[k] < 1 for k in active):
            raise ValueError(
                f"a batch of {b} rows leaves a part of split {self.split} empty (sizes {sizes}); use a larger "
                "batch (the official trainer needs >= 4 rows for its four equal parts)"
            )
        return sizes

    @torch.no_grad()
    def _update_ema(self) -> None:
        """Official warm-up EMA: ``ema <- d ema + (1 - d) net`` with ``d`` from 0 towards ``ema_decay``."""
        assert self.ema_net is not None
        d = float(self.ema_weight)
        for pe, p in zip(self.ema_net.parameters(), self.net.parameters(), strict=True):
            pe.lerp_(p.detach(), 1.0 - d)
        for be, bl in zip(self.ema_net.buffers(), self.net.buffers(), strict=True):
            be.copy_(bl)
        self.ema_weight.fill_(d + (1.0 - d) * (self.ema_decay - d) * 0.5)

    def loss(self, batch: Any, *, generator: torch.Generator | None = None) -> Tensor:
        """TwinFlow loss on data ``x1: (B, *event)`` (plus conditions); a scalar. See the module docstring.

        Args:
            batch: ``x``, ``(x, y)`` or ``{"x": x, **cond}``; ``B`` must fill every part of ``split``.
            generator: source of the times, noises and the adv rows' fresh noise (default: global RNG).
        """
        x1, cond = split_batch(batch)
        if self.event_shape is None:
            self.event_shape = tuple(x1.shape[1:])
        if tuple(x1.shape[1:]) != tuple(self.event_shape):
            raise ValueError(
                f"x has event shape {tuple(x1.shape[1:])}, the model expects {tuple(self.event_shape)}"
            )
        if not x1.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor (B, *event), got {x1.dtype}")
        b = x1.shape[0]
        sizes = self.part_sizes(b)
        masks, start = {}, 0
        for k in PARTS:
            m = torch.zeros(b, dtype=torch.bool, device=x1.device)
            m[start : start + sizes[k]] = True
            masks[k], start = m, start + sizes[k]
        adv, real = masks["adv"], ~masks["adv"]
        cond = dict(cond)
        if self.label_dropout > 0 and "y" in cond:
            assert self.null_label is not None
            cond["y"] = drop_labels(cond["y"], self.label_dropout, self.null_label, generator).to(x1.device)

        # times (flowforge direction): s = the time of x_s, t = the jump's end
        g_dev = generator.device if generator is not None else x1.device
        s = self.time(b, generator=generator, device=g_dev, dtype=x1.dtype).to(x1.device)
        jump = _rand(b, generator, x1)
        t = s + jump * (1 - s)  # any
        t = torch.where(masks["mul"], s + jump * self.mul_span * (1 - s), t)
        s = torch.where(masks["e2e"], torch.zeros_like(s), s)
        t = torch.where(masks["e2e"], torch.ones_like(t), t)
        t = torch.where(adv, s, t)

        x1 = x1.clone()
        if adv.any():  # the adv rows' "data" are the model's own 1-step samples
            noise = _randn((int(adv.sum()), *x1.shape[1:]), generator, x1)
            with torch.no_grad():
                x1[adv] = self.one_step(noise, **_rows(cond, adv)).to(x1.dtype)
        x0 = _randn(tuple(x1.shape), generator, x1)
        x_s = _b(s, x1) * x1 + _b(1 - s, x1) * x0
        v = x1 - x0

        f = self.fake_times(s)
        u = two_time_call(self.net, x_s, torch.where(adv, f, s), torch.where(adv, f, t), cond)

        if self.ema_net is not None and self.training and torch.is_grad_enabled():
            self._update_ema()
        target_net = self.ema_net if self.ema_net is not None else self.net

        with torch.no_grad():
            v_bar = v.clone()
            if self.enhance != 0.0:
                v_bar = v_bar + self._enhancement(target_net, x_s, s, cond, real)
            target = v.clone()  # adv rows: flow matching towards x_fake - x0 on the fake branch
            if real.any():
                cr = _rows(cond, real)

                def ema_map(x: Tensor, a: Tensor, c: Tensor) -> Tensor:
                    return two_time_call(target_net, x, a, c, cr)

                uh = u.detach()[real]
                r = rcgm_residual(
                    uh, x_s[real], s[real], t[real], v_bar[real], ema_map, delta=self.delta, order=self.order
                )
                target[real] = (uh - r.clamp(-self.clip, self.clip)).to(target.dtype)

        weight = 1.0 + torch.tan(0.4 * math.pi * (1.0 - (t - s)))
        weight = torch.where(adv, torch.ones_like(weight), weight)
        total = (self.distance(u, target) * weight).mean()

        e2e = masks["e2e"]
        if self.rectify_weight > 0 and e2e.any():
            u_e2e = u[e2e]
            x1_hat = (x_s[e2e] + u_e2e).detach()  # s = 0: x_0 + u(x_0, 0, 1)
            shift = self.distribution_shift(x1_hat, generator=generator, **_rows(cond, e2e))
            total = total + self.rectify_weight * self.distance(u_e2e, (u_e2e - shift).detach()).mean()
        return total

    def _enhancement(
        self, target_net: nn.Module, x_s: Tensor, s: Tensor, cond: dict[str, Tensor], real: Tensor
    ) -> Tensor:
        """``enhance * (u(x_s, s, s | y) - u(x_s, s, s | null))`` on real rows with ``s`` in the open range; 0 elsewhere."""
        if "y" not in cond:
            raise ValueError("enhance != 0 is training-time guidance: train on labelled batches (x, y)")
        lo, hi = self.enhance_range
        rows = real & (s > lo) & (s < hi)
        out = torch.zeros_like(x_s)
        if not rows.any():
            return out
        x, sr = x_s[rows], s[rows]
        both = {k: torch.cat([c[rows], c[rows]]) for k, c in cond.items() if k != "y"}
        y = cond["y"][rows]
        both["y"] = torch.cat([y, torch.full_like(y, int(self.null_label))])  # type: ignore[arg-type]
        uc, uu = two_time_call(
            target_net, torch.cat([x, x]), torch.cat([sr, sr]), torch.cat([sr, sr]), both
        ).chunk(2)
        out[rows] = self.enhance * (uc - uu)
        return out

    def generator(self) -> TwinFlowGenerator:
        """The model as a :class:`TwinFlowGenerator` (1- and few-step sampling with ``self.net``)."""
        if self.event_shape is None:
            raise RuntimeError(
                "event shape unknown: train on a batch first or pass event_shape=... to TwinFlow"
            )
        return TwinFlowGenerator(self)


class TwinFlowGenerator:
    """A trained :class:`TwinFlow` as a Generator: UCGM sampling in ``steps`` flow-map jumps.

    Args:
        model: the trained model (its ``net`` is used, e.g. with the run's EMA weights loaded).
    """

    def __init__(self, model: TwinFlow) -> None:
        self.model = model
        self.event_shape = tuple(model.event_shape)  # type: ignore[arg-type]

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        steps: int = 1,
        style: str = "few",
        stochastic: float = 1.0,
        gap: tuple[float, float] = (0.0, 0.0),
        grid: Tensor | None = None,
        x0: Tensor | None = None,
        return_trajectory: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Draw ``n`` samples ``(n, *event)`` (and the states ``(K + 1, n, *event)`` if asked).

        Args:
            n: number of samples.
            cond: conditions for the net, each ``(n, ...)``.
            generator: source of the noise (start and re-noising).
            steps: number of network evaluations ``K`` (1 = :math:`x_0 + u(x_0, 0, 1)`).
            style: the jump's target: ``"few"`` (to 1, official default), ``"any"`` (to the next grid
                time) or ``"mul"`` (instantaneous velocity).
            stochastic: re-noising ratio :math:`\rho \in [0, 1]` (official 1; ``"any"`` with 0 follows the
                flow map exactly).
            gap: UCGM's ``(g0, g1)`` grid gaps (:func:`twinflow_grid`; README 2 NFE: ``(0.001, 0.6)``).
            grid: an explicit increasing grid ``(K + 1,)`` ending at 1 instead of ``steps``/``gap``.
            x0: start from these source samples instead of drawing them.
        """
        if style not in STYLES:
            raise unknown_choice("style", style, STYLES)
        if not 0.0 <= stochastic <= 1.0:
            raise ValueError(f"stochastic must lie in [0, 1], got {stochastic}; 0 is deterministic")
        if x0 is None:
            x = standard_normal((n, *self.event_shape), generator=generator, dtype=dtype, device=device)
        else:
            if tuple(x0.shape) != (n, *self.event_shape):
                raise ValueError(f"x0 has shape {tuple(x0.shape)}, expected {(n, *self.event_shape)}")
            x = x0
        if grid is None:
            grid = twinflow_grid(steps, gap, dtype=torch.float64)
        grid = grid.to(device=x.device, dtype=x.dtype)
        if (
            grid.dim() != 1
            or grid.numel() < 2
            or not bool((grid[1:] > grid[:-1]).all())
            or float(grid[-1]) != 1.0
        ):
            raise ValueError(
                f"grid must be increasing, (K + 1,) with K >= 1, and end at 1; got {grid.tolist()}"
            )
        cond = dict(cond or {})
        states = [x]
        ones = x.new_ones(n)
        for a, c in zip(grid[:-1], grid[1:], strict=True):
            end = {"few": ones, "any": ones * c, "mul": ones * a}[style]
            u = self.model.average_velocity(x, ones * a, end, **cond)
            x1_hat, x0_hat = x + (1 - a) * u, x - a * u
            if stochastic > 0 and float(c) < 1.0:
                xi = standard_normal(tuple(x.shape), generator=generator, dtype=x.dtype, device=x.device)
                x0_hat = math.sqrt(1 - stochastic) * x0_hat + math.sqrt(stochastic) * xi
            x = c * x1_hat + (1 - c) * x0_hat
            states.append(x)
        return (x, torch.stack(states)) if return_trajectory else x
