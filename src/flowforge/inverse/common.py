"""Shared plumbing of the inverse-problem solvers: the prior's velocity field and input checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from flowforge.continuous.flow_matching import FlowMatching
from flowforge.continuous.generator import FlowGenerator
from flowforge.core.paths import AffinePath
from flowforge.core.schedules import Linear
from flowforge.inverse.operators import LinearOperator

__all__ = ["Field", "prior_field", "prior_event_shape", "check_operator", "check_measurement", "source_noise"]

#: A velocity field ``v(x, t) -> (B, *event)`` on the linear path, ``x: (B, *event)``, ``t: (B,)``.
Field = Callable[[Tensor, Tensor], Tensor]


def prior_field(prior: Any, cond: dict[str, Tensor] | None = None) -> Field:
    r"""The prior's velocity ``v(x, t)`` from a :class:`~flowforge.continuous.FlowMatching`, a
    :class:`~flowforge.continuous.FlowGenerator` or a callable ``v(x, t, **cond)``.

    The solvers of this package use the linear path :math:`x_t = t x_1 + (1-t) x_0` (rectified flow, t=0
    noise): its data estimate is :math:`\hat x_1 = x + (1-t) v`. A model trained on another path is refused.
    ``cond`` (e.g. ``{"y": null_labels}``) is passed to the network at every call; tensors with one row
    are broadcast to the batch, longer ones sliced to it.
    """
    if isinstance(prior, (FlowMatching, FlowGenerator)):
        path = prior.path
        if not (isinstance(path, AffinePath) and isinstance(path.schedule, Linear)):
            raise ValueError(
                f"inverse-problem solvers need a flow on the linear path x_t = t x1 + (1-t) x0, got {path!r}; "
                "train with FlowMatching(net) (the default path) or pass a velocity callable v(x, t)"
            )
        fn = prior.velocity if isinstance(prior, FlowMatching) else prior.field
    elif callable(prior):
        fn = prior
    else:
        raise TypeError(
            f"the prior must be a FlowMatching model, a FlowGenerator or a callable v(x, t), got {type(prior).__name__}"
        )
    cond = dict(cond or {})

    def fit(v: Any, b: int) -> Any:
        if not torch.is_tensor(v) or v.dim() == 0:
            return v
        return v.expand(b, *v.shape[1:]) if v.shape[0] == 1 else v[:b]

    def field(x: Tensor, t: Tensor) -> Tensor:
        return fn(x, t, **{k: fit(v, x.shape[0]) for k, v in cond.items()})

    return field


def prior_event_shape(prior: Any, given: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
    """The shape of one signal: ``given``, else the model's ``event_shape`` (None for a bare callable)."""
    if given is not None:
        return tuple(given)
    shape = getattr(prior, "event_shape", None)
    return None if shape is None else tuple(shape)


def check_operator(operator: Any) -> LinearOperator:
    """Refuse anything that is not a :class:`~flowforge.inverse.operators.LinearOperator`."""
    if not isinstance(operator, LinearOperator):
        raise TypeError(
            f"operator must be a LinearOperator (Inpaint, AvgPoolDownsample, GaussianBlur, MatrixOperator, "
            f"FunctionOperator), got {type(operator).__name__}"
        )
    return operator


def check_measurement(operator: LinearOperator, y: Tensor, x: Tensor) -> None:
    """Check that ``y`` has the shape of ``A x`` for a signal batch shaped like ``x``."""
    expected = tuple(operator.forward(x[:1]).shape[1:])
    if y.dim() < 1 or tuple(y.shape[1:]) != expected or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y has shape {tuple(y.shape)}, but the operator measures ({x.shape[0]}, {', '.join(map(str, expected))}) "
            f"from signals of shape {tuple(x.shape)}; give one measurement per sample (repeat y for several "
            "posterior samples of one measurement)"
        )


def source_noise(
    operator: LinearOperator,
    y: Tensor,
    x0: Tensor | None,
    generator: torch.Generator | None,
    event_shape: tuple[int, ...] | None = None,
) -> Tensor:
    """The starting noise ``x0 ~ N(0, I)`` shaped like :math:`A^\\top y`, ``(B, *event)`` (or the given ``x0``).

    With ``event_shape`` (the prior's signal shape) a measurement that belongs to other signals is refused.
    """
    shape = tuple(operator.adjoint(y).shape)
    if event_shape is not None and shape[1:] != tuple(event_shape):
        raise ValueError(
            f"y of shape {tuple(y.shape)} is the measurement of signals {shape[1:]}, but the prior makes "
            f"{tuple(event_shape)}; measure signals of the prior's shape (e.g. downsample the full-size image)"
        )
    if x0 is not None:
        if tuple(x0.shape) != shape:
            raise ValueError(f"x0 has shape {tuple(x0.shape)}; the signals of this measurement have {shape}")
        return x0
    gdev = generator.device if generator is not None else None
    return torch.randn(shape, generator=generator, dtype=y.dtype, device=gdev).to(y.device)
