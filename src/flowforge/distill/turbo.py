r"""FlowTurbo's velocity refiner and its ``H P R`` sampler (Zhao, Shi et al., NeurIPS 2024, arXiv:2409.18128).

Official code ``shiml20/FlowTurbo`` (``transport/transport.py``, ``transport/integrators.py``). It uses
flowforge's direction already (t=0 noise, t=1 data), so nothing is converted.

Along a sampling trajectory the velocity changes slowly, so a light network :math:`r_\phi` can predict
the *offset* from a recent teacher velocity :math:`v_{prev}` to the current one,
:math:`r_\phi(x, t, v_{prev}) \approx V(x, t) - v_{prev}`. Training (``transport.py``): with
:math:`t \sim U(0, 1)` per sample and one :math:`\Delta t \sim U(0, \Delta_{max})` per batch
(:math:`\Delta_{max} = 0.12`),

.. math::
    v_t = V(x_t, t),\quad x' = x_t + \Delta t\, v_t,\quad
    L(\phi) = E\,\big\| r_\phi(x', t + \Delta t, v_t) + v_t - V(x', t + \Delta t) \big\|^2,

i.e. one teacher Euler step from a point of the path, the refiner asked for the velocity at its end.
The teacher :math:`V` is frozen. Unlike the official code we draw ``t`` in ``[0, 1 - dt]`` so that the
teacher is never queried beyond t=1, and a dropped label is dropped for all three calls.

Sampling on the uniform grid :math:`t_i = i/N`, :math:`N = n_H + n_P + n_R`: ``n_H`` Heun steps, ``n_P``
pseudo-corrector steps (Heun reusing the last predicted velocity,
:class:`~flowforge.core.solvers.PseudoCorrector`), then ``n_R`` refiner steps
(``integrators.py``, ``one_step_refiner``):

.. math::
    d = r_\phi(x_i, t_i, v) + v,\quad \tilde x = x_i + \Delta d,\quad
    \tilde d = r_\phi(\tilde x, t_{i+1}, d) + d,\quad x_{i+1} = x_i + \tfrac\Delta2 (d + \tilde d),\quad v \leftarrow d.

With the exact refiner :math:`r^* = V(x, t) - v` an R step is exactly a Heun step. The first ``v`` is
the teacher velocity cached by the last H/P step (the velocity at the predicted point :math:`\tilde x`,
:math:`O(\Delta^2)` from :math:`x_i`). Differences from ``integrators.py``: there the first P step after
H steps re-evaluates the teacher (its H step does not fill the cache) and an R step right after an H step
gets the H step's *start* velocity; here H steps fill the cache, saving one teacher call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.continuous.generator import FlowGenerator
from flowforge.core import solvers as S
from flowforge.core.batch import split_batch
from flowforge.core.guidance import drop_labels
from flowforge.core.noise import standard_normal
from flowforge.core.objectives import Distance, SquaredError, regression_loss
from flowforge.core.paths import AffinePath
from flowforge.core.schedules import Linear
from flowforge.core.time import TimeSampler, Uniform

__all__ = ["VelocityRefiner", "TurboGenerator", "default_schedule"]


def _teacher_velocity(teacher: Any) -> tuple[Callable[..., Tensor], tuple[int, ...] | None, list[nn.Module]]:
    """``(V(x, t, **cond), event_shape or None, modules to freeze)`` from a model, a FlowGenerator or a callable."""
    if isinstance(teacher, FlowGenerator):
        return teacher.field, teacher.event_shape, []
    velocity = getattr(teacher, "velocity", None)
    if isinstance(teacher, nn.Module) and callable(velocity):  # FlowMatching, Reflow
        return velocity, getattr(teacher, "event_shape", None), [teacher]
    if isinstance(teacher, nn.Module):  # a bare velocity network
        return teacher, getattr(teacher, "event_shape", None), [teacher]
    if callable(teacher):
        return teacher, None, []
    raise TypeError(
        "the teacher must be a FlowMatching (or any model with velocity(x, t, **cond)), a FlowGenerator, a "
        f"velocity network or a callable V(x, t, **cond); got {type(teacher).__name__}"
    )


def default_schedule(steps: int) -> tuple[int, int, int]:
    """The ``(n_H, n_P, n_R)`` used for a plain ``steps``: one Heun step, up to 3 refiner steps, P between.

    ``steps = 9`` gives FlowTurbo's ``H1 P5 R3`` (``sample.py``).

    Example:
        >>> default_schedule(9), default_schedule(2), default_schedule(1)
        ((1, 5, 3), (1, 0, 1), (1, 0, 0))
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}; or pass schedule=(n_H, n_P, n_R)")
    n_r = min(3, int(steps) - 1)
    return 1, int(steps) - 1 - n_r, n_r


class VelocityRefiner(nn.Module):
    r"""FlowTurbo's light velocity refiner :math:`r_\phi(x, t, v_{prev}) \approx V(x, t) - v_{prev}` and its loss.

    The network sees the point and the previous velocity stacked along dim 1, ``net(cat([x, v_prev], 1), t,
    **cond)``, and returns the offset shaped like ``x`` (FlowTurbo doubles the input channels of a
    1-block DiT): an ``MLP(dim=2 * D, out_dim=D)`` for vectors, a ``UNet(in_channels=2 * C,
    out_channels=C)`` for images.

    The teacher is frozen: it is put in eval mode, its parameters stop requiring gradients, it is called
    under ``torch.no_grad()``, and it is *not* a submodule, so optimizers, the EMA and checkpoints see the
    refiner's weights only (moving the refiner with ``.to(...)`` moves a module teacher along).

    Args:
        net: the refiner network (see above).
        teacher: the frozen teacher: a :class:`~flowforge.continuous.FlowMatching` (or any module with
            ``velocity(x, t, **cond)``), a :class:`~flowforge.continuous.FlowGenerator` (e.g. guided),
            a velocity network or a callable ``V(x, t, **cond)``.
        dt_max: largest training gap :math:`\Delta_{max}` (0.12 in FlowTurbo); the sampler refuses refiner
            steps longer than this.
        time: sampler of ``t`` before it is scaled into ``[0, 1 - dt]`` (default uniform).
        distance: per-sample distance (default mean squared error, as in FlowTurbo).
        path: the teacher's affine path, for ``x_t`` (default linear).
        label_dropout: probability of replacing ``y`` by ``null_label`` (FlowTurbo forces 0.1 for a
            class-conditional teacher).
        null_label: the null class.
        event_shape: shape of one sample (default: the teacher's, else the first batch's).

    Example:
        >>> import torch
        >>> from flowforge import FlowMatching
        >>> from flowforge.distill import VelocityRefiner
        >>> from flowforge.nn import MLP
        >>> teacher = FlowMatching(MLP(dim=2, width=32, depth=2), event_shape=(2,))
        >>> refiner = VelocityRefiner(MLP(dim=4, width=16, depth=1, out_dim=2), teacher)
        >>> refiner.loss(torch.randn(32, 2)).ndim
        0
        >>> gen = refiner.generator()
        >>> gen.sample(4, schedule=(1, 5, 3), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 2])
        >>> gen.last_nfe
        {'teacher': 7, 'refiner': 6}
    """

    def __init__(
        self,
        net: nn.Module,
        teacher: Any,
        *,
        dt_max: float = 0.12,
        time: TimeSampler | None = None,
        distance: Distance | None = None,
        path: AffinePath | None = None,
        label_dropout: float = 0.0,
        null_label: int | None = None,
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < dt_max <= 1.0:
            raise ValueError(f"dt_max must lie in (0, 1], got {dt_max}; FlowTurbo uses 0.12")
        if not 0.0 <= label_dropout <= 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1], got {label_dropout}")
        if label_dropout > 0 and null_label is None:
            raise ValueError("label_dropout > 0 needs null_label=... (the teacher's null class)")
        velocity, shape, modules = _teacher_velocity(teacher)
        for m in modules:
            m.eval()
            m.requires_grad_(False)
        self.net = net
        # plain attributes, not submodules: the optimizer, EMA and checkpoints see the refiner only
        object.__setattr__(self, "_teacher_velocity", velocity)
        object.__setattr__(self, "_teacher_modules", modules)
        self.dt_max = float(dt_max)
        self.time = time if time is not None else Uniform()
        self.distance = distance if distance is not None else SquaredError()
        self.path = path if path is not None else AffinePath(Linear())
        self.label_dropout = float(label_dropout)
        self.null_label = null_label
        self.event_shape = tuple(event_shape) if event_shape is not None else shape

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> VelocityRefiner:
        super()._apply(fn, *args, **kwargs)
        for m in self._teacher_modules:  # .to(device) / .double() move the frozen teacher as well
            m._apply(fn, *args, **kwargs)
        return self

    def teacher(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        """The frozen teacher velocity :math:`V(x, t)`, ``(B, *event)``, without gradients."""
        for m in self._teacher_modules:
            if m.training:
                m.eval()
        with torch.no_grad():
            return self._teacher_velocity(x, t, **cond)

    def offset(self, x: Tensor, t: Tensor, v_prev: Tensor, **cond: Tensor) -> Tensor:
        r"""The refiner output :math:`r_\phi(x, t, v_{prev})`; ``x, v_prev: (B, *event)``, ``t: (B,)``."""
        if v_prev.shape != x.shape:
            raise ValueError(f"v_prev {tuple(v_prev.shape)} must be shaped like x {tuple(x.shape)}")
        out = self.net(torch.cat([x, v_prev], dim=1), t, **cond)
        if out.shape != x.shape:
            raise ValueError(
                f"the refiner net returned {tuple(out.shape)} for x of shape {tuple(x.shape)}; it takes "
                "cat([x, v_prev], 1) (twice the channels) and returns a tensor shaped like x, e.g. "
                "MLP(dim=2 * D, out_dim=D)"
            )
        return out

    def loss(self, batch: Any) -> Tensor:
        """FlowTurbo's refiner loss on a data batch ``x1: (B, *event)`` (plus conditions); a scalar."""
        x1, cond = split_batch(batch)
        if self.event_shape is None:
            self.event_shape = tuple(x1.shape[1:])
        b = x1.shape[0]
        x0 = torch.randn_like(x1)
        dt = self.dt_max * torch.rand((), dtype=x1.dtype, device=x1.device)  # one gap per batch
        t = (1 - dt) * self.time(b, device=x1.device, dtype=x1.dtype)  # t + dt <= 1
        if self.label_dropout > 0 and "y" in cond:
            cond["y"] = drop_labels(cond["y"], self.label_dropout, self.null_label)
        x_t = self.path.sample(x0, x1, t).x_t
        v_t = self.teacher(x_t, t, **cond)
        x_next = x_t + dt * v_t
        t_next = t + dt
        target = self.teacher(x_next, t_next, **cond) - v_t
        return regression_loss(self.offset(x_next, t_next, v_t, **cond), target, t_next, self.distance)

    def generator(self) -> TurboGenerator:
        """The teacher and the refiner as a :class:`TurboGenerator` (``H P R`` schedules)."""
        if self.event_shape is None:
            raise RuntimeError(
                "event shape unknown: train on a batch first or pass event_shape=... to VelocityRefiner"
            )
        return TurboGenerator(self.teacher, self.offset, self.event_shape, dt_max=self.dt_max)


class TurboGenerator:
    r"""FlowTurbo's sampler ``H_{n_H} P_{n_P} R_{n_R}`` on a uniform grid; counts teacher and refiner calls.

    Args:
        teacher: the teacher velocity ``V(x, t, **cond)``.
        refiner: the offset ``r(x, t, v_prev, **cond)`` (``VelocityRefiner.offset``); ``None`` for
            teacher-only schedules.
        event_shape: shape of one sample.
        dt_max: the refiner's training gap; refiner steps longer than this are refused.
    """

    def __init__(
        self,
        teacher: Callable[..., Tensor],
        refiner: Callable[..., Tensor] | None,
        event_shape: tuple[int, ...],
        *,
        dt_max: float = 1.0,
    ) -> None:
        self.teacher, self.refiner = teacher, refiner
        self.event_shape, self.dt_max = tuple(event_shape), float(dt_max)
        self.last_nfe: dict[str, int] = {"teacher": 0, "refiner": 0}

    def sample(
        self,
        n: int,
        *,
        cond: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        schedule: tuple[int, int, int] | None = None,
        steps: int | None = None,
        x0: Tensor | None = None,
        return_nfe: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor | tuple[Tensor, dict[str, int]]:
        """Draw ``n`` samples ``(n, *event)``; the calls made are in ``last_nfe`` (and returned if asked).

        Args:
            n: number of samples.
            cond: conditions for the teacher and the refiner, each ``(n, ...)``.
            generator: source of the noise.
            schedule: ``(n_H, n_P, n_R)``: Heun, pseudo-corrector and refiner steps, in this order.
            steps: total steps when no ``schedule`` is given (:func:`default_schedule`; default 9).
            x0: start from these source samples instead of drawing them.
            return_nfe: also return ``{"teacher": ..., "refiner": ...}``, the numbers of calls.
        """
        if schedule is None:
            schedule = default_schedule(9 if steps is None else steps)
        elif steps is not None and steps != sum(schedule):
            raise ValueError(f"steps={steps} disagrees with schedule={tuple(schedule)}; pass one of them")
        if len(schedule) != 3 or any(isinstance(k, bool) or int(k) != k or k < 0 for k in schedule):
            raise ValueError(
                f"schedule must be three counts (n_H, n_P, n_R) >= 0, got {schedule!r}; e.g. (1, 5, 3)"
            )
        n_h, n_p, n_r = (int(k) for k in schedule)
        total = n_h + n_p + n_r
        if total == 0:
            raise ValueError("schedule (0, 0, 0) takes no step; e.g. schedule=(1, 5, 3)")
        if n_r > 0 and self.refiner is None:
            raise ValueError("this generator has no refiner; use n_R = 0 or VelocityRefiner(...).generator()")
        if n_r > 0 and 1.0 / total > self.dt_max * (1 + 1e-9):
            raise ValueError(
                f"refiner steps of 1/{total} = {1.0 / total:.3g} exceed the gap the refiner was trained on "
                f"(dt_max = {self.dt_max}); take at least {int(-(-1 // self.dt_max))} steps in all, or train "
                "the refiner with a larger dt_max"
            )
        if x0 is None:
            x0 = standard_normal((n, *self.event_shape), generator=generator, device=device, dtype=dtype)
        elif tuple(x0.shape[1:]) != self.event_shape:
            raise ValueError(
                f"x0 has event shape {tuple(x0.shape[1:])}, the model expects {self.event_shape}"
            )
        cond = dict(cond or {})
        ts = S.uniform_grid(total).tolist()

        def teacher(x: Tensor, t: Tensor) -> Tensor:
            return self.teacher(x, t, **cond)

        pc = S.PseudoCorrector()
        with torch.no_grad():
            state = pc.init(teacher, x0, ts[0])
            for i in range(n_h + n_p):
                if i < n_h:  # Heun: fresh d, then d~ at the predicted point (cached for P and R)
                    state = replace(state, v=None)
                state = pc.step(teacher, state, ts[i + 1])
            x, v, nfe_teacher, nfe_refiner = state.x, state.v, state.nfe, 0
            if n_r > 0 and v is None:  # no teacher step before: start from V(x0, 0)
                v = teacher(x, torch.full((n,), ts[0], dtype=x.dtype, device=x.device))
                nfe_teacher += 1
            for i in range(n_h + n_p, total):
                assert self.refiner is not None and v is not None
                h = ts[i + 1] - ts[i]
                t_i = torch.full((x.shape[0],), ts[i], dtype=x.dtype, device=x.device)
                t_j = torch.full((x.shape[0],), ts[i + 1], dtype=x.dtype, device=x.device)
                d = self.refiner(x, t_i, v, **cond) + v
                d_tilde = self.refiner(x + h * d, t_j, d, **cond) + d
                x, v = x + 0.5 * h * (d + d_tilde), d
                nfe_refiner += 2
        self.last_nfe = {"teacher": nfe_teacher, "refiner": nfe_refiner}
        return (x, dict(self.last_nfe)) if return_nfe else x
