r"""FreeFlow: flow-map distillation without data, from a frozen teacher velocity and prior samples only.

Tong, Ma, Xie & Jaakkola (2025), "Flow Map Distillation Without Data", arXiv:2511.19428. No training
code is public; the objectives below follow two independent third-party summaries of the paper that
agree (flowforge's verified sheet tags them [secondary]). Not verified against the paper text: the
learning rate, the predictor's time distribution (we default to uniform), the adaptive weight's
``eps``, how the corrector net is initialised (we copy the teacher) and its update schedule (we train it
in the same step as the student, with the same optimizer).

**Time direction.** flowforge: t=0 noise, t=1 data. The paper's "jump length from the prior"
:math:`\delta` is our ``t``; the summaries differ in sign convention (:math:`f = z - \delta F` towards noise or
:math:`f = z + \delta F` towards data); we write the data-pointing form, so nothing is flipped.

**Student.** A two-time network ``student(x, t, r=s, **cond)`` returns the average velocity
:math:`u_\theta(x, s, t)` of the map :math:`X_{s,t}(x) = x + (t - s) u_\theta(x, s, t)`; the paper's
student is its prior slice :math:`f_\theta(x_0, t) = x_0 + t F_\theta(x_0, t)`, :math:`F = u(\cdot, 0, t)`.

**Predictor** (data-free: starting points come from the prior, or from the teacher's own sampling
path). The map solves the Lagrangian equation :math:`\partial_t X_{s,t}(x) = v_T(X_{s,t}(x), t)`, i.e.

.. math::
    u + (t - s)\,\partial_t u = v_T(X_{s,t}(x), t),
    \qquad L_{pred} = E\,\frac{\|u_\theta - sg(v_T(X_{s,t}, t) - (t - s)\,\partial_t u_\theta)\|^2}
                               {sg(\|\Delta_G\|^2/d + \epsilon)^k},

with the teacher evaluated at the STUDENT's own point and :math:`\Delta_G = \partial_t X - v_T` (the
"generating" minus the teacher velocity, which is also :math:`u_\theta` minus its target);
:math:`\partial_t u` comes from one forward-mode JVP in ``t`` (or a central difference). The paper trains
``s = 0`` only; a fraction ``multi_step_fraction`` of rows here starts at ``s ~ U(0, t)`` from a state on
the teacher's ODE path (``start_path="teacher"``, Heun) or the student's own map (``"student"``), which
is what lets the map be composed for few-step sampling. That extension is ours, not the paper's.

**Corrector** (integral-KL / VSD on the 1-step samples :math:`\hat x = x_0 + u_\theta(x_0, 0, 1)`). An
online velocity net :math:`g_\psi` learns the flow of the student's own samples by flow matching on
:math:`y = r\,sg(\hat x) + (1 - r) n`, target :math:`sg(\hat x) - n`; the student gets the surrogate

.. math:: L_{corr} = E\,[\,u_\theta(x_0, 0, 1) \cdot sg(g_\psi(y, r) - v_T(y, r))\,],

whose gradient moves :math:`\hat x` along :math:`v_T - g_\psi` (for samples :math:`N(m + b, c^2)` against a
teacher :math:`N(m, c^2)`, :math:`\Delta_N = g_\psi - v_T = b(1 - r)/\sigma_r^2`). ``r`` must cover the
high-noise end (default logit-normal with its bulk near ``r = 0.2``; the paper reports that dropping
``r < 0.4`` breaks training). The batch is split ``1 - corrector_fraction`` / ``corrector_fraction``
(paper 75/25) and the surrogate is scaled by
:math:`\lambda = \alpha\,E\|\Delta_G\| / (E\|\Delta_N\| + \varepsilon)` (robust for :math:`\alpha \in [0.3, 3]`).

Guided teachers: pass ``ClassifierFreeGuidance(net, w, null_label)`` (any
:class:`~flowforge.core.guidance.GuidanceSchedule`, e.g. an interval) as ``teacher``, and a tighter one as
``corrector_teacher`` (paper: guidance on t in [0.3, 1] there).

**Sampling.** One step: :math:`x_1 = x_0 + u_\theta(x_0, 0, 1)`; ``steps = K`` composes the map on a grid,
:math:`x \leftarrow x + (t_{k+1} - t_k)\,u_\theta(x, t_k, t_{k+1})` (meaningful only when trained with
``multi_step_fraction > 0``). The paper's inference-time scaling (a best-of-N noise search) is not here.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.continuous.twinflow import two_time_call
from flowforge.core.choices import unknown_choice
from flowforge.core.guidance import ClassifierFreeGuidance
from flowforge.core.noise import standard_normal
from flowforge.core.solvers import uniform_grid
from flowforge.core.time import LogitNormal, TimeSampler, Uniform

__all__ = ["FreeFlow", "FreeFlowGenerator", "START_PATHS", "DERIVATIVES"]

#: Where the multi-step rows' starting states come from.
START_PATHS = ("teacher", "student")
#: How the predictor gets the time derivative of the student's average velocity.
DERIVATIVES = ("jvp", "fd")


def _b(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))


class FreeFlow(nn.Module):
    r"""FreeFlow (Tong et al., 2025, arXiv:2511.19428): a student flow map from a frozen teacher, no data.

    See the module docstring for the objectives and what is not verified.

    Args:
        student: two-time network ``student(x, t, r=s, **cond) -> (B, *event)``, :math:`u_\theta(x, s, t)`.
        teacher: frozen velocity ``teacher(x, t, **cond) -> (B, *event)`` (its parameters are set to
            ``requires_grad=False`` and it is kept in eval mode); wrap it in
            :class:`~flowforge.core.guidance.ClassifierFreeGuidance` for a guided teacher.
        event_shape: shape of one sample (default ``student.event_shape`` or ``teacher.event_shape``).
        corrector: the online velocity net :math:`g_\psi(y, r, **cond)`; default a trainable copy of the
            teacher (of its ``.net`` when the teacher is a guidance wrapper).
        corrector_fraction: share of each batch used by the corrector (paper 0.25; 0 = predictor only).
        corrector_teacher: the velocity the corrector compares with (default ``teacher``).
        alpha: corrector balance :math:`\alpha` in :math:`\lambda` (paper: robust in [0.3, 3]).
        weight_power: ``k`` of the adaptive weight (paper: 1 best).
        weight_eps: :math:`\epsilon` of the adaptive weight (not verified).
        time: sampler of the predictor's end time ``t`` (default uniform; not verified).
        corrector_time: sampler of the corrector's ``r`` (default ``LogitNormal(-1.4, 1.0)``, bulk near 0.2).
        multi_step_fraction: share of predictor rows that start at ``s ~ U(0, t)`` instead of the prior.
        start_path: ``"teacher"`` (Heun on the teacher's ODE from the prior) or ``"student"`` (the
            student's own jump :math:`X_{0,s}`) for those rows' starting states.
        teacher_steps: Heun steps of the teacher path to ``s``.
        derivative: ``"jvp"`` (forward-mode, exact) or ``"fd"`` (central difference of step ``fd_step``).
        fd_step: the central-difference step in ``t``.
        num_classes: labels are drawn uniformly in ``0..num_classes-1`` when a batch brings none
            (default ``student.num_classes``); ``None``: unconditional.

    Example:
        >>> import torch
        >>> from flowforge.distill import FreeFlow
        >>> from flowforge.nn import MLP
        >>> teacher = MLP(dim=2, width=32, depth=2)  # a trained velocity in practice
        >>> ff = FreeFlow(MLP(dim=2, width=32, depth=2, two_times=True), teacher, event_shape=(2,))
        >>> g = torch.Generator().manual_seed(0)
        >>> ff.loss(64, generator=g).backward()  # a batch size: no data is read
        >>> ff.generator().sample(8, generator=g).shape
        torch.Size([8, 2])
    """

    #: the Trainer passes a ``BatchRequest(size, generator, device)`` when trained with ``data=None``
    makes_own_batches = True

    def __init__(
        self,
        student: nn.Module,
        teacher: Callable[..., Tensor],
        *,
        event_shape: tuple[int, ...] | None = None,
        corrector: nn.Module | None = None,
        corrector_fraction: float = 0.25,
        corrector_teacher: Callable[..., Tensor] | None = None,
        alpha: float = 1.0,
        weight_power: float = 1.0,
        weight_eps: float = 1e-3,
        time: TimeSampler | None = None,
        corrector_time: TimeSampler | None = None,
        multi_step_fraction: float = 0.0,
        start_path: str = "teacher",
        teacher_steps: int = 8,
        derivative: str = "jvp",
        fd_step: float = 1e-3,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= corrector_fraction < 1.0:
            raise ValueError(
                f"corrector_fraction must lie in [0, 1), got {corrector_fraction}; the paper uses 0.25"
            )
        if not 0.0 <= multi_step_fraction <= 1.0:
            raise ValueError(f"multi_step_fraction must lie in [0, 1], got {multi_step_fraction}")
        if start_path not in START_PATHS:
            raise unknown_choice("start_path", start_path, START_PATHS)
        if derivative not in DERIVATIVES:
            raise unknown_choice("derivative", derivative, DERIVATIVES)
        if isinstance(teacher_steps, bool) or int(teacher_steps) != teacher_steps or teacher_steps < 1:
            raise ValueError(f"teacher_steps must be an integer >= 1, got {teacher_steps!r}")
        for name, value in (("alpha", alpha), ("weight_eps", weight_eps), ("fd_step", fd_step)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if not weight_power >= 0:
            raise ValueError(f"weight_power must be >= 0 (0 = plain MSE), got {weight_power}")
        if not callable(teacher):
            raise TypeError(
                f"teacher must be a velocity net teacher(x, t, **cond), got {type(teacher).__name__}"
            )
        self.student = student
        self.teacher = teacher
        self.corrector_teacher = corrector_teacher
        for frozen in (teacher, corrector_teacher):
            if isinstance(frozen, nn.Module):
                frozen.requires_grad_(False).eval()
        if corrector is None and corrector_fraction > 0:
            base = teacher.net if isinstance(teacher, ClassifierFreeGuidance) else teacher
            if not isinstance(base, nn.Module):
                raise ValueError(
                    "the corrector needs a trainable velocity net g(y, r, **cond): pass corrector=... (e.g. a "
                    "copy of the teacher's network) or corrector_fraction=0 for the predictor alone"
                )
            corrector = copy.deepcopy(base).requires_grad_(True)
        self.corrector = corrector if corrector_fraction > 0 else None
        self.corrector_fraction = float(corrector_fraction)
        self.alpha, self.weight_power, self.weight_eps = float(alpha), float(weight_power), float(weight_eps)
        self.time = time if time is not None else Uniform()
        self.corrector_time = corrector_time if corrector_time is not None else LogitNormal(-1.4, 1.0)
        self.multi_step_fraction, self.start_path = float(multi_step_fraction), start_path
        self.teacher_steps, self.derivative, self.fd_step = int(teacher_steps), derivative, float(fd_step)
        self.num_classes = num_classes if num_classes is not None else getattr(student, "num_classes", None)
        shape = event_shape
        for src in (student, teacher):
            shape = shape if shape is not None else getattr(src, "event_shape", None)
        if shape is None:
            raise ValueError("FreeFlow draws its own noise: pass event_shape=... (e.g. (2,) for 2-D points)")
        self.event_shape = tuple(int(n) for n in shape)

    def train(self, mode: bool = True) -> FreeFlow:
        """Train/eval mode for the student and the corrector; the frozen teachers stay in eval mode."""
        super().train(mode)
        for frozen in (self.teacher, self.corrector_teacher):
            if isinstance(frozen, nn.Module):
                frozen.eval()
        return self

    # ------------------------------------------------------------------------------------------
    # the maps
    # ------------------------------------------------------------------------------------------

    def average_velocity(self, x: Tensor, s: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        r"""The student's :math:`u_\theta(x, s, t)`; ``x: (B, *event)`` at time ``s: (B,)``, end ``t: (B,)``."""
        return two_time_call(self.student, x, s, t, cond)

    def flow_map(self, x: Tensor, s: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        r""":math:`X_{s,t}(x) = x + (t - s)\,u_\theta(x, s, t)`; ``(B, *event)``."""
        return x + _b(t - s, x) * self.average_velocity(x, s, t, **cond)

    def _teacher(self, x: Tensor, t: Tensor, cond: Mapping[str, Tensor], corrector: bool = False) -> Tensor:
        field = self.corrector_teacher if corrector and self.corrector_teacher is not None else self.teacher
        with torch.no_grad():
            return field(x, t, **cond)

    @torch.no_grad()
    def start_states(self, x0: Tensor, s: Tensor, *, cond: Mapping[str, Tensor] | None = None) -> Tensor:
        """States at times ``s: (B,)`` from prior samples ``x0: (B, *event)``, data-free, no gradient.

        ``start_path="teacher"``: ``teacher_steps`` Heun steps of the teacher's ODE from 0 to ``s`` (per
        row); ``"student"``: the student's own jump :math:`X_{0,s}(x_0)`.
        """
        cond = dict(cond or {})
        if self.start_path == "student":
            return self.flow_map(x0, torch.zeros_like(s), s, **cond)
        x, h = x0, s / self.teacher_steps
        hb = _b(h, x0)
        for k in range(self.teacher_steps):
            a = h * k
            v1 = self._teacher(x, a, cond)
            v2 = self._teacher(x + hb * v1, a + h, cond)
            x = x + 0.5 * hb * (v1 + v2)
        return x

    # ------------------------------------------------------------------------------------------
    # objectives
    # ------------------------------------------------------------------------------------------

    def predictor(self, x_s: Tensor, s: Tensor, t: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        r"""The student's :math:`u_\theta(x_s, s, t)` (with gradient) and its target (without).

        Target: :math:`v_T(X_{s,t}(x_s), t) - (t - s)\,\partial_t u_\theta(x_s, s, t)`, the teacher at the
        student's own end point. ``x_s: (B, *event)``, ``s, t: (B,)``; both outputs ``(B, *event)``.
        """
        if self.derivative == "jvp":

            def along_t(tt: Tensor) -> Tensor:
                return two_time_call(self.student, x_s, s, tt, cond)

            u, du_dt = torch.func.jvp(along_t, (t,), (torch.ones_like(t),))
            du_dt = du_dt.detach()
        else:
            u = self.average_velocity(x_s, s, t, **cond)
            with torch.no_grad():
                h = self.fd_step
                du_dt = (
                    self.average_velocity(x_s, s, t + h, **cond)
                    - self.average_velocity(x_s, s, t - h, **cond)
                ) / (2 * h)
        with torch.no_grad():
            end = x_s + _b(t - s, x_s) * u.detach()
            target = self._teacher(end, t, cond) - _b(t - s, x_s) * du_dt
        return u, target

    def predictor_loss(self, x_s: Tensor, s: Tensor, t: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        r"""Adaptively weighted predictor loss (a scalar) and :math:`\|\Delta_G\|` per row ``(B,)``."""
        u, target = self.predictor(x_s, s, t, **cond)
        mse = (u - target).square().flatten(1).mean(1)
        weight = (mse.detach() + self.weight_eps) ** (-self.weight_power)
        delta_norm = (u.detach() - target).flatten(1).norm(dim=1)
        return (weight * mse).mean(), delta_norm

    def corrector_terms(
        self, x0: Tensor, r: Tensor, noise: Tensor, **cond: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        r"""The corrector on prior samples ``x0: (B, *event)``: ``(surrogate, fm, |Delta_N|)``.

        - ``surrogate``: :math:`E[u_\theta(x_0, 0, 1) \cdot sg(\Delta_N)]` (gradient to the student only);
        - ``fm``: flow matching of :math:`g_\psi` on :math:`y = r\,sg(\hat x) + (1 - r)\,n` (gradient to
          :math:`g_\psi` only);
        - :math:`\|\Delta_N\|` per row, :math:`\Delta_N = g_\psi(y, r) - v_T(y, r)`, ``(B,)``.

        ``r: (B,)`` the corrector times, ``noise: (B, *event)`` the ``n`` above.
        """
        if self.corrector is None:
            raise RuntimeError("this FreeFlow has no corrector (corrector_fraction=0)")
        b = x0.shape[0]
        u1 = self.average_velocity(x0, x0.new_zeros(b), x0.new_ones(b), **cond)
        x_hat = (x0 + u1).detach()
        y = _b(r, x0) * x_hat + _b(1 - r, x0) * noise
        g = self.corrector(y, r, **cond)
        fm = (g - (x_hat - noise)).square().mean()
        delta = g.detach() - self._teacher(y, r, cond, corrector=True)
        surrogate = (u1 * delta).flatten(1).sum(1).mean()
        return surrogate, fm, delta.flatten(1).norm(dim=1)

    def _request(
        self, batch: Any
    ) -> tuple[int, torch.Generator | None, torch.device, torch.dtype, dict[str, Tensor]]:
        """``(size, generator, device, dtype, cond)`` from an int, a BatchRequest, a tensor, ``(x, y)`` or a dict."""
        p = next((q for q in self.student.parameters() if q.is_floating_point()), None)
        device = p.device if p is not None else torch.device("cpu")
        dtype = p.dtype if p is not None else torch.float32
        gen, cond = None, {}
        if isinstance(batch, bool):
            raise TypeError("batch must be a batch size, a BatchRequest or a batch; got a bool")
        if isinstance(batch, int):
            size = batch
        elif isinstance(getattr(batch, "size", None), int):  # the Trainer's BatchRequest
            size, gen = batch.size, getattr(batch, "generator", None)
            device = getattr(batch, "device", None) or device
        elif isinstance(batch, Tensor):
            size, dtype = batch.shape[0], batch.dtype if batch.is_floating_point() else dtype
        elif isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], Tensor):
            size, cond = batch[1].shape[0], {"y": batch[1]}
        elif isinstance(batch, Mapping):
            cond = {k: v for k, v in batch.items() if k != "x"}
            first = next(iter(batch.values()), None)
            if not isinstance(first, Tensor):
                raise ValueError("a dict batch needs tensors, e.g. {'y': labels}")
            size = first.shape[0]
        else:
            raise TypeError(
                f"FreeFlow reads no data: pass a batch size (int), the Trainer's BatchRequest (train with "
                f"data=None), or (x, y) / {{'y': y}} for labels; got {type(batch).__name__}"
            )
        if size < 1:
            raise ValueError(f"the batch size must be >= 1, got {size}")
        if gen is not None and gen.device.type != torch.device(device).type:
            gen = None  # the Trainer's CPU generator cannot draw on another device; use that device's RNG
        if not cond and self.num_classes is not None:
            gdev = gen.device if gen is not None else device
            cond = {"y": torch.randint(0, int(self.num_classes), (size,), generator=gen, device=gdev)}
        cond = {k: v.to(device) for k, v in cond.items()}
        return size, gen, torch.device(device), dtype, cond

    def loss(self, batch: Any, *, generator: torch.Generator | None = None) -> Tensor:
        r"""FreeFlow loss :math:`L_{pred} + \lambda L_{corr} + L_{FM}(g_\psi)`; a scalar.

        Args:
            batch: a batch size ``B``, the Trainer's ``BatchRequest``, a tensor ``(B, *event)`` (only its size
                and dtype are read), or ``(x, y)`` / ``{"y": y}`` for class labels. No data value is read.
            generator: source of every draw (default: the request's generator, else the global RNG).
        """
        size, gen, device, dtype, cond = self._request(batch)
        gen = generator if generator is not None else gen
        gdev = gen.device if gen is not None else device
        n_corr = int(round(size * self.corrector_fraction)) if self.corrector is not None else 0
        n_pred = size - n_corr
        if self.corrector is not None and (n_corr < 1 or n_pred < 1):
            raise ValueError(
                f"a batch of {size} leaves the predictor or the corrector empty (fraction {self.corrector_fraction}); "
                "use a larger batch"
            )

        def draw(shape: tuple[int, ...]) -> Tensor:
            return torch.randn(shape, generator=gen, device=gdev, dtype=dtype).to(device)

        def rows(a: int, b: int) -> dict[str, Tensor]:
            return {k: v[a:b] for k, v in cond.items()}

        x0 = draw((n_pred, *self.event_shape))
        t = self.time(n_pred, generator=gen, device=gdev, dtype=dtype).to(device)
        s = torch.zeros_like(t)
        n_multi = int(round(n_pred * self.multi_step_fraction))
        if n_multi > 0:
            frac = torch.rand(n_multi, generator=gen, device=gdev, dtype=dtype).to(device)
            s = torch.cat([s[: n_pred - n_multi], frac * t[n_pred - n_multi :]])
            x_s = torch.cat(
                [
                    x0[: n_pred - n_multi],
                    self.start_states(
                        x0[n_pred - n_multi :], s[n_pred - n_multi :], cond=rows(n_pred - n_multi, n_pred)
                    ),
                ]
            )
        else:
            x_s = x0
        pred, delta_g = self.predictor_loss(x_s, s, t, **rows(0, n_pred))
        if self.corrector is None:
            return pred
        x0c = draw((n_corr, *self.event_shape))
        noise = draw((n_corr, *self.event_shape))
        r = self.corrector_time(n_corr, generator=gen, device=gdev, dtype=dtype).to(device)
        surrogate, fm, delta_n = self.corrector_terms(x0c, r, noise, **rows(n_pred, size))
        lam = self.alpha * delta_g.mean() / (delta_n.mean() + 1e-8)
        return pred + lam.detach() * surrogate + fm

    def generator(self) -> FreeFlowGenerator:
        """The student as a :class:`FreeFlowGenerator` (1-step, or composed jumps)."""
        return FreeFlowGenerator(self)


class FreeFlowGenerator:
    """A distilled :class:`FreeFlow` student as a Generator: ``x <- x + (t' - t) u(x, t, t')`` on a grid.

    Args:
        model: the distilled model.
    """

    def __init__(self, model: FreeFlow) -> None:
        self.model = model
        self.event_shape = model.event_shape

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        steps: int = 1,
        grid: Tensor | None = None,
        x0: Tensor | None = None,
        return_trajectory: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw ``n`` samples ``(n, *event)`` (and the states ``(K + 1, n, *event)`` if asked).

        Args:
            n: number of samples.
            cond: conditions for the student, each ``(n, ...)``.
            generator: source of the noise.
            steps: number of jumps on a uniform grid (1: :math:`x_0 + u(x_0, 0, 1)`).
            grid: an explicit increasing grid from 0 to 1 instead of ``steps``.
            x0: start from these prior samples instead of drawing them.
        """
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if x0 is None:
            x = standard_normal((n, *self.event_shape), generator=generator, dtype=dtype, device=device)
        else:
            if tuple(x0.shape) != (n, *self.event_shape):
                raise ValueError(f"x0 has shape {tuple(x0.shape)}, expected {(n, *self.event_shape)}")
            x = x0
        grid = (uniform_grid(int(steps)) if grid is None else grid).to(device=x.device, dtype=x.dtype)
        if grid.dim() != 1 or grid.numel() < 2 or not bool((grid[1:] > grid[:-1]).all()):
            raise ValueError(f"grid must be increasing with at least 2 points, got {grid.tolist()}")
        if grid.numel() > 2 and self.model.multi_step_fraction == 0:
            warnings.warn(
                "this FreeFlow student was trained from the prior only (multi_step_fraction=0): its map from "
                "intermediate times is untrained, so composed steps may be worse than 1; train with "
                "multi_step_fraction > 0 to compose",
                stacklevel=2,
            )
        cond = dict(cond or {})
        states, ones = [x], x.new_ones(n)
        for a, c in zip(grid[:-1], grid[1:], strict=True):
            x = self.model.flow_map(x, ones * a, ones * c, **cond)
            states.append(x)
        return (x, torch.stack(states)) if return_trajectory else x
