r"""Flow matching, rectified flow and stochastic interpolants as one objective of parts.

:class:`FlowMatching` chooses a path, a time sampler, a coupling, what the network predicts and a
distance; its :meth:`~FlowMatching.loss` is conditional flow matching (Lipman et al., 2023; Liu et al.,
2023; Albergo & Vanden-Eijnden, 2023):

.. math:: L(\theta) = E_{t \sim p(t),\,(x_0, x_1) \sim \pi}\; w(t)\, d\big(f_\theta(x_t, t), u_t(x_0, x_1)\big).

:class:`FlowGenerator` is the trained model as a sampler and a likelihood.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.continuous.generator import FlowGenerator
from flowforge.core.batch import split_batch
from flowforge.core.couplings import Coupling, Independent
from flowforge.core.guidance import ConstantGuidance, GuidanceSchedule, drop_labels, guided
from flowforge.core.objectives import TARGETS, Distance, SquaredError, regression_loss, regression_target
from flowforge.core.paths import PREDICTIONS, AffinePath, Path, convert
from flowforge.core.schedules import Linear
from flowforge.core.time import TimeSampler, Uniform

__all__ = ["FlowMatching"]


class FlowMatching(nn.Module):
    """Conditional flow matching with interchangeable parts.

    Args:
        net: the network, called ``net(x, t, **cond)``.
        path: an :class:`~flowforge.core.paths.AffinePath` or
            :class:`~flowforge.core.paths.StochasticInterpolant` (default: linear, i.e. rectified flow).
        time: training-time sampler (default uniform).
        coupling: how ``(x0, x1)`` are paired in a batch (default independent).
        prediction: what ``net`` outputs: ``"velocity"``, ``"x1"``, ``"x0"``, ``"score"`` or
            ``"denoiser"`` (interpolant :math:`\\eta`).
        distance: per-sample distance (default :class:`~flowforge.core.objectives.SquaredError`).
        weighting: optional ``w(t) -> (B,)`` loss weights.
        label_dropout: probability of replacing the class ``y`` by ``null_label`` (classifier-free guidance).
        null_label: the null class (defaults to ``net.num_classes`` when the net has it).
        t_range: clamp training times to this interval (paths with singular ends need ``(eps, 1 - eps)``).
        event_shape: shape of one sample; inferred from the first batch when omitted.

    Example:
        >>> import torch
        >>> from flowforge import FlowMatching
        >>> from flowforge.nn import MLP
        >>> fm = FlowMatching(MLP(dim=2, width=32, depth=2))
        >>> loss = fm.loss(torch.randn(64, 2))
        >>> x = fm.generator().sample(8, steps=4, generator=torch.Generator().manual_seed(0))
        >>> x.shape
        torch.Size([8, 2])
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        path: Path | None = None,
        time: TimeSampler | None = None,
        coupling: Coupling | None = None,
        prediction: str = "velocity",
        distance: Distance | None = None,
        weighting: Callable[[Tensor], Tensor] | None = None,
        label_dropout: float = 0.0,
        null_label: int | None = None,
        t_range: tuple[float, float] = (0.0, 1.0),
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if prediction not in TARGETS:
            raise ValueError(f"unknown prediction {prediction!r}; use one of {TARGETS}")
        self.net = net
        self.path = path if path is not None else AffinePath(Linear())
        self.time = time if time is not None else Uniform()
        self.coupling = coupling if coupling is not None else Independent()
        self.prediction = prediction
        self.distance = distance if distance is not None else SquaredError()
        self.weighting = weighting
        self.label_dropout = float(label_dropout)
        self.null_label = null_label if null_label is not None else getattr(net, "num_classes", None)
        if self.label_dropout > 0 and self.null_label is None:
            raise ValueError("label_dropout > 0 needs null_label=... (or a net with num_classes)")
        lo, hi = t_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"t_range must satisfy 0 <= lo < hi <= 1, got {t_range}")
        self.t_range = (float(lo), float(hi))
        self.event_shape = (
            tuple(event_shape) if event_shape is not None else getattr(net, "event_shape", None)
        )

    def loss(self, batch: Any) -> Tensor:
        """Flow-matching loss on a batch of data ``x1: (B, *event)`` (plus conditions); a scalar."""
        x1, cond = split_batch(batch)
        if self.event_shape is None:
            self.event_shape = tuple(x1.shape[1:])
        b = x1.shape[0]
        x0 = torch.randn_like(x1)
        if not isinstance(self.coupling, Independent):
            i, j = self.coupling(x0, x1)
            x0, x1 = x0[i], x1[j]
            cond = {k: v[j] for k, v in cond.items()}
        t = self.time(b, device=x1.device, dtype=x1.dtype)
        lo, hi = self.t_range
        if lo > 0.0 or hi < 1.0:
            t = t.clamp(lo, hi)
        ps = self.path.sample(x0, x1, t)
        if self.label_dropout > 0 and "y" in cond:
            cond["y"] = drop_labels(cond["y"], self.label_dropout, self.null_label)
        pred = self.net(ps.x_t, t, **cond)
        sigma = self.path.effective_schedule(t).sigma if self.prediction == "score" and ps.z is None else None
        target = regression_target(ps, self.prediction, sigma)
        return regression_loss(pred, target, t, self.distance, self.weighting)

    def velocity(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        """The learned velocity at ``(x, t)``; ``x: (B, *event)``, ``t: (B,)``."""
        return self.to_velocity(self.net, x, t, **cond)

    def to_velocity(self, net: Callable[..., Tensor], x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        """Convert ``net``'s prediction to a velocity through the path's canonical form."""
        out = net(x, t, **cond)
        if self.prediction == "velocity":
            return out
        kind = self.prediction
        if kind == "denoiser" or (kind == "x0" and hasattr(self.path, "gamma")):
            # the canonical x0 of an interpolant is the total noise eps = (sigma x0 + gamma z) / sigma_bar;
            # E[z|x_t] = (gamma / sigma_bar) eps_hat and E[x0|x_t] = (sigma / sigma_bar) eps_hat (Gaussian source)
            s = self.path.effective_schedule(t)
            part = self.path.gamma(t)[0] if kind == "denoiser" else self.path.schedule(t).sigma
            out = out * (s.sigma / part).reshape(-1, *([1] * (x.dim() - 1)))
            kind = "x0"
        assert kind in PREDICTIONS
        return convert(out, x, t, self.path, src=kind, dst="velocity")

    def generator(
        self,
        guidance: float | GuidanceSchedule | None = None,
        *,
        schedule: GuidanceSchedule | None = None,
        key: str = "y",
        null: int | float | None = None,
    ) -> FlowGenerator:
        """The model as a :class:`FlowGenerator` (sampling and likelihood), optionally guided.

        Guidance acts in VELOCITY space, after :meth:`to_velocity`: ``v = v_u + w (v_c - v_u)`` with
        ``v_c``, ``v_u`` from one batched call on ``[cond; null]`` (see
        :func:`flowforge.core.guidance.guided`). For a constant ``w`` this equals guiding the raw
        prediction (the conversions are affine); ratio-based schedules such as
        :class:`~flowforge.core.guidance.RAAG` need the velocities.

        Args:
            guidance: a constant weight ``w`` (``None`` or 1: no guidance) or a
                :class:`~flowforge.core.guidance.GuidanceSchedule`.
            schedule: a :class:`~flowforge.core.guidance.GuidanceSchedule` (instead of ``guidance``).
            key: the condition that guidance drops (``"y"`` for class labels).
            null: its "no condition" value; defaults to ``self.null_label``.

        Example:
            >>> import torch
            >>> from flowforge import FlowMatching
            >>> from flowforge.core.guidance import RAAG
            >>> from flowforge.nn import MLP
            >>> fm = FlowMatching(MLP(2, 16, 1, num_classes=3), event_shape=(2,))
            >>> y = torch.tensor([0, 1, 2, 0])
            >>> gen = fm.generator(schedule=RAAG(w_max=4.0))
            >>> gen.sample(4, cond={"y": y}, steps=2, generator=torch.Generator().manual_seed(0)).shape
            torch.Size([4, 2])
        """
        if self.event_shape is None:
            raise RuntimeError(
                "event shape unknown: train on a batch first or pass event_shape=... to FlowMatching"
            )
        if guidance is not None and schedule is not None:
            raise ValueError(
                "pass either guidance=w (a float or a schedule) or schedule=..., not both; "
                "e.g. generator(schedule=RAAG(w_max=18.0)) or generator(guidance=2.0)"
            )
        if schedule is None and guidance is not None:
            if isinstance(guidance, (int, float)):
                schedule = None if float(guidance) == 1.0 else ConstantGuidance(float(guidance))
            else:
                schedule = guidance
        if schedule is not None and not isinstance(schedule, GuidanceSchedule):
            raise TypeError(
                f"guidance must be a float or a GuidanceSchedule (e.g. RAAG(), IntervalGuidance(w, lo, hi)), "
                f"got {type(schedule).__name__}"
            )
        if schedule is None:

            def field(x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
                return self.to_velocity(self.net, x, t, **cond)

            return FlowGenerator(field, self.event_shape, self.path)

        null_value = null if null is not None else self.null_label
        if null_value is None:
            raise ValueError(
                "guidance needs a conditional model with a null condition: build FlowMatching(..., "
                "null_label=...) (or use a net with num_classes), or pass generator(..., null=...)"
            )

        def velocity(x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
            return self.to_velocity(self.net, x, t, **cond)

        def guided_field(x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
            return guided(velocity, x, t, cond, key=key, null=null_value, schedule=schedule)

        return FlowGenerator(guided_field, self.event_shape, self.path)
