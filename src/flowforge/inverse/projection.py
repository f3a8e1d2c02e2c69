r"""The plain projection baseline: sample the prior and replace the measured part along the trajectory.

The "replacement" method of score-based inpainting (Song et al., 2021, arXiv 2011.13456, §I.2; RePaint
without resampling, Lugmayr et al., 2022), written for any linear :math:`A` with a pseudo-inverse
:math:`A^+` on the linear path :math:`x_t = t x_1 + (1-t) x_0`. After each Euler step of the prior ODE the
measured component is set to the measurement carried to time :math:`t`,

.. math::

    x_t \leftarrow x_t + A^+ (y_t - A x_t), \qquad y_t = t\, y + (1 - t)\, A x_0,

where :math:`x_0` is the trajectory's own starting noise (so :math:`y_t` is what :math:`A x_t` would be on
the straight line from :math:`x_0` to a signal consistent with :math:`y`). At :math:`t = 1` this is a hard
data-consistency step: :math:`A x = y` exactly when :math:`A A^+ = I` (masks, average pooling), noise
included.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flowforge.inverse.common import (
    check_measurement,
    check_operator,
    prior_event_shape,
    prior_field,
    source_noise,
)
from flowforge.inverse.operators import LinearOperator

__all__ = ["Projection"]


class Projection:
    r"""Prior sampling with the measured component replaced after every step (Euler on a uniform grid).

    Args:
        prior: a :class:`~flowforge.continuous.FlowMatching`, a
            :class:`~flowforge.continuous.FlowGenerator` or a velocity ``v(x, t)`` on the linear path.
        operator: the measurement operator :math:`A`; its ``pseudo_inverse`` is used.
        steps: Euler steps from t=0 to t=1.
        cond: conditions passed to the network (e.g. ``{"y": null_labels}``).
        event_shape: the shape of one signal (default: the model's), to refuse measurements of other signals.

    Example:
        >>> import torch
        >>> from flowforge.inverse import Inpaint, Projection
        >>> op = Inpaint(torch.tensor([[1.0, 0.0]]))
        >>> x = Projection(lambda x, t: -x, op, steps=8)(torch.tensor([[3.0, 0.0]]),
        ...                                              generator=torch.Generator().manual_seed(0))
        >>> float(x[0, 0])
        3.0
    """

    def __init__(
        self,
        prior: Any,
        operator: LinearOperator,
        *,
        steps: int = 100,
        cond: dict[str, Tensor] | None = None,
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.field = prior_field(prior, cond)
        self.event_shape = prior_event_shape(prior, event_shape)
        self.operator = check_operator(operator)
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a whole number >= 1, got {steps}")
        self.steps = int(steps)

    def __call__(
        self, y: Tensor, *, generator: torch.Generator | None = None, x0: Tensor | None = None
    ) -> Tensor:
        """One restoration per measurement: ``y: (B, *measured)`` -> ``(B, *event)``."""
        op = self.operator
        x = source_noise(op, y, x0, generator, self.event_shape)
        check_measurement(op, y, x)
        a_x0 = op.forward(x)
        grid = torch.linspace(0.0, 1.0, self.steps + 1, dtype=torch.float64).tolist()
        with torch.no_grad():
            for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
                t = torch.full((x.shape[0],), t0, dtype=x.dtype, device=x.device)
                x = x + (t1 - t0) * self.field(x, t)
                y_t = t1 * y + (1 - t1) * a_x0
                x = x + op.pseudo_inverse(y_t - op.forward(x))
        return x
