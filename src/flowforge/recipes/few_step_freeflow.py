"""``<teacher>-freeflow`` (``flowforge distill --teacher RUN --method freeflow``): FreeFlow, flow-map
distillation without data (Tong et al., 2025, arXiv:2511.19428), as a :class:`FewStepMethod`.

The student is a two-time copy of the teacher's network (:func:`~flowforge.nn.with_two_times`: it starts
as ``u(x, s, t) = v_T(x, t)``) trained from prior samples and the frozen teacher's velocity only, with the
predictor and the corrector (an online copy of the teacher) of :class:`~flowforge.distill.FreeFlow`. No
training image or point is read. Class-conditional teachers give class-conditional students (labels drawn
uniformly). It samples by jumps ``x <- x + (t' - t) u(x, t, t')``, ``--steps K`` (default 1; more than one
jump is meaningful only with ``--set multi_step_fraction=...`` > 0, the extension that trains starts
inside the path).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from flowforge.continuous import FlowMatching
from flowforge.core.noise import standard_normal
from flowforge.core.solvers.grids import uniform_grid
from flowforge.distill import FreeFlow
from flowforge.nn import with_two_times
from flowforge.recipes.few_step import FewStepMethod, _net_cond, add_method
from flowforge.recipes.images import N_CLASSES
from flowforge.recipes.registry import Recipe

__all__ = ["JumpSampler"]


class JumpSampler:
    """A FreeFlow student speaking the teacher recipe's sampling options (``steps``, ``qmc``; ``solver``
    only ``"jump"``). ``field(x, t, r=s, **cond)`` is the student's average velocity (callers may wrap it
    to count calls)."""

    def __init__(self, model: FreeFlow) -> None:
        self.model = model
        self.event_shape = tuple(model.event_shape)

    def field(self, x: Tensor, t: Tensor, *, r: Tensor, **cond: Tensor) -> Tensor:
        """:math:`u_\\theta(x, r, t)`: ``x: (B, *event)`` at time ``r: (B,)``, end time ``t: (B,)``."""
        return self.model.average_velocity(x, r, t, **cond)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        solver: str | None = None,
        steps: int | None = None,
        qmc: bool = False,
        x0: Tensor | None = None,
    ) -> Tensor:
        """``(n, *event)`` samples after ``steps`` uniform jumps (default 1)."""
        if solver not in (None, "jump"):
            raise ValueError(
                f"FreeFlow students sample by jumps of their flow map, not --solver {solver}; drop --solver "
                "(--steps K sets the jumps)"
            )
        k = 1 if steps is None else int(steps)
        if k < 1:
            raise ValueError(f"--steps must be >= 1 (jumps), got {steps}")
        device = next(self.model.student.parameters()).device
        if x0 is None:
            x0 = standard_normal((n, *self.event_shape), generator=generator, qmc=qmc, device=device)
        grid = uniform_grid(k).to(device=x0.device, dtype=x0.dtype)
        x, ones, cond = x0, x0.new_ones(n), dict(cond or {})
        for a, b in zip(grid[:-1], grid[1:], strict=True):
            x = x + (b - a) * self.field(x, ones * b, r=ones * a, **cond)
        return x


class _JumpFlow:
    """A FreeFlow run as the teacher recipe's hooks take a flow-matching model (``generator()``, ``net``)."""

    def __init__(self, model: FreeFlow) -> None:
        self.model, self.net = model, model.student

    def generator(self, guide: Any = None, **_: Any) -> JumpSampler:
        if guide is not None:
            raise ValueError("FreeFlow students sample without guidance; drop --guidance")
        return JumpSampler(self.model)


def _defaults(kind: str) -> dict[str, Any]:
    common = {
        "corrector_fraction": 0.25,
        "alpha": 1.0,
        "multi_step_fraction": 0.0,
        "sample_steps": 1,
        "warmup": 100,
        "grad_clip": 1.0,
        "ema_decay": 0.999,
    }
    if kind == "points":
        return {**common, "steps": 2000, "batch_size": 256, "lr": 1e-3, "threads": 1, "qmc": False}
    return {**common, "steps": 1000, "batch_size": 64, "lr": 2e-4, "threads": 0, "device": ""}


def _data(config: dict[str, Any], recipe: Recipe, tc: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """No data: the trainer hands FreeFlow batch requests (it draws its own noise and labels)."""
    if not 0.0 <= float(config["corrector_fraction"]) < 1.0:
        raise ValueError(f"--set corrector_fraction={config['corrector_fraction']}: must lie in [0, 1)")
    if not 0.0 <= float(config["multi_step_fraction"]) <= 1.0:
        raise ValueError(f"--set multi_step_fraction={config['multi_step_fraction']}: must lie in [0, 1]")
    return None, {}


def _build(config: Mapping[str, Any], teacher: FlowMatching) -> FreeFlow:
    conditional = bool(config["teacher"].get("conditional")) and bool(_net_cond(teacher))
    return FreeFlow(
        with_two_times(teacher.net),
        copy.deepcopy(teacher.net),
        event_shape=tuple(teacher.event_shape or ()),
        corrector_fraction=float(config["corrector_fraction"]),
        alpha=float(config["alpha"]),
        multi_step_fraction=float(config["multi_step_fraction"]),
        start_path="student",
        num_classes=N_CLASSES if conditional else None,
    )


add_method(
    FewStepMethod(
        name="freeflow",
        summary="FreeFlow student of a {teacher} run: flow-map distillation without data; 1 jump",
        defaults=_defaults,
        build=_build,  # type: ignore[arg-type]
        data=_data,
        as_flow=lambda model, config: _JumpFlow(model),  # type: ignore[arg-type]
        fixed={"solver": "jump", "guidance": 1.0, "guidance_schedule": "constant"},
        dropped_options=("solver", "guidance", "guidance_schedule"),
        dropped_metrics=("nll",),
    )
)
