r"""MeanFlow: one- and few-step generation by learning the average velocity (Geng et al., 2025).

"Mean Flows for One-step Generative Modeling", arXiv:2505.13447. A network learns the average
velocity of the flow between two times instead of the instantaneous one.

**Time direction.** The paper puts noise at time 1 and writes :math:`u(z_{t_p}, r_p, t_p)` with
:math:`r_p < t_p`. In flowforge's direction (noise at 0, data at 1) the pair becomes
``r = 1 - t_p`` (where ``x`` lives, the start) and ``t = 1 - r_p`` (the end), ``r <= t``, and the
velocity changes sign, ``u = -u_paper``. Then

.. math::

    x_t = x_r + (t - r)\, u(x_r, r, t), \qquad u(x, t, t) = v(x, t).

Differentiating along the path in ``r`` (``x_r`` moves with :math:`v`) gives the MeanFlow identity
(the paper's :math:`u = v - (t - r)\, \tfrac{d}{dt} u` after the conversion):

.. math::

    u(x_r, r, t) = v + (t - r) \big(\partial_x u \cdot v + \partial_r u\big).

Training regresses :math:`u_\theta(x_r, r, t)` on the stop-gradient target
:math:`u_{tgt} = \mathrm{sg}(v + (t - r)\, \mathrm{jvp})`, with ``v = x1 - x0`` and the JVP taken in
forward mode along the tangent ``(v, 1)`` of ``(x, r)`` (``t`` held fixed). Rows with ``r = t`` are
plain flow matching. The network is called ``net(x, t, r=r, **cond)``: ``t`` the end time, ``r`` the
start time where ``x`` lives (see ``two_times=True`` on :class:`~flowforge.nn.MLP`,
:class:`~flowforge.nn.UNet`, :class:`~flowforge.nn.DiT`).

Formulas and defaults follow ``reference/verified-few-step.md`` (section 2), checked against the
official JAX (``Gsunshine/meanflow``) and PyTorch (``Gsunshine/py-meanflow``) code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DataParallel, DistributedDataParallel

from flowforge.continuous.generator import FlowGenerator
from flowforge.core.batch import split_batch
from flowforge.core.dispersive import FeatureTap, dispersive_loss
from flowforge.core.noise import standard_normal
from flowforge.core.paths import AffinePath
from flowforge.core.schedules import Linear
from flowforge.core.solvers import uniform_grid
from flowforge.core.time import LogitNormal, TimeSampler

__all__ = ["MeanFlow", "MeanFlowGenerator", "MeanFlowTimes"]


def _bc(s: Tensor, x: Tensor) -> Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` to broadcast against ``x: (B, *event)``."""
    return s.reshape(-1, *([1] * (x.dim() - 1)))


def _wide(x: Tensor) -> Tensor:
    """Half-precision tensors (autocast outputs) in float32; float32 and float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _plain(net: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper: ``torch.func.jvp`` cannot go through DDP."""
    while isinstance(net, (DistributedDataParallel, DataParallel)):
        net = net.module
    return net


class MeanFlowTimes:
    r"""The ``(r, t)`` sampler of MeanFlow: two logit-normal draws, sorted, and a fraction put on ``r = t``.

    Draw ``a, b ~ base``, set ``r = min(a, b)``, ``t = max(a, b)``; with probability ``diagonal`` a row
    becomes a flow-matching row ``t = r``. The paper's ImageNet setting (the default) is both times
    from logit-normal :math:`(-0.4, 1.0)` in paper time, i.e. ``LogitNormal(loc=0.4, scale=1.0)`` in
    ours (:math:`1 - \sigma(n) = \sigma(-n)`), and 75% of the rows with ``r = t`` (the paper's 25% of
    :math:`r \ne t`, its ablation). As in the official code the diagonal rows keep the start time ``r``
    (the paper's :math:`r_p \leftarrow t_p`). CIFAR-10 used ``LogitNormal(2.0, 2.0)`` and ``diagonal=0.25``.

    Args:
        base: the law of each of the two draws (default ``LogitNormal(0.4, 1.0)``).
        diagonal: the fraction of rows with ``r = t``, in ``[0, 1]``.

    Example:
        >>> import torch
        >>> r, t = MeanFlowTimes()(6, generator=torch.Generator().manual_seed(0))
        >>> bool((r <= t).all()), r.shape
        (True, torch.Size([6]))
    """

    def __init__(self, base: TimeSampler | None = None, diagonal: float = 0.75) -> None:
        if not 0.0 <= diagonal <= 1.0:
            raise ValueError(f"diagonal (the fraction of r = t rows) must be in [0, 1], got {diagonal}")
        self.base = base if base is not None else LogitNormal(0.4, 1.0)
        self.diagonal = float(diagonal)

    def __call__(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` pairs; returns ``(r, t)``, each ``(n,)``, with ``0 <= r <= t <= 1``."""
        a = self.base(n, generator=generator, device=device, dtype=dtype)
        b = self.base(n, generator=generator, device=device, dtype=dtype)
        r, t = torch.minimum(a, b), torch.maximum(a, b)
        diag = torch.rand(n, generator=generator, device=device, dtype=dtype) < self.diagonal
        return r, torch.where(diag, r, t)


class MeanFlow(nn.Module):
    r"""MeanFlow (Geng et al., 2025, arXiv:2505.13447): average-velocity network trained by the MeanFlow identity.

    The loss per row is :math:`\ell = \|u_\theta(x_r, r, t) - u_{tgt}\|^2` summed over the event (as
    the official code does) with the paper's adaptive weight :math:`w = \mathrm{sg}(1 / (\ell + c)^p)`
    (``p = 0``: the plain squared error), averaged over the batch. The target
    :math:`u_{tgt} = \mathrm{sg}(\tilde v + (t - r)\,\tfrac{d}{dr}u_\theta)` comes from one
    forward-mode JVP (:meth:`total_derivative`) of the plain network (never a DDP wrapper), computed
    without a graph; :math:`u_\theta` then comes from an ordinary forward pass that shares the JVP's
    dropout masks (the RNG state is restored in between). The gradient equals that of the
    single-pass form, since the target is a stop-gradient.

    **Guidance in training** (the JAX code's CFG; the sheet's section 2): on rows that keep their label
    and whose start time ``r`` lies in ``guidance_interval`` (flowforge time; the paper's
    :math:`[t_s, t_e]` is ``(1 - t_e, 1 - t_s)``), ``v`` is replaced in the tangent and the target by

    .. math:: \tilde v = \omega v + (1 - \omega - \kappa)\, u_\theta(x_r, r, r \mid \varnothing)
              + \kappa\, u_\theta(x_r, r, r \mid c),

    both network terms without gradient, in eval mode. The learned model then samples with the
    effective guidance scale :math:`\omega / (1 - \kappa)` at 1 NFE. ``omega=1, kappa=0`` (default) is
    no guidance. ImageNet used ``omega=1, kappa=0.5, label_dropout=0.1``. Unlike the JAX code, the
    label-drop and ``r = t`` masks are independent.

    **Dispersive regulariser** (Wang & He, arXiv:2506.09027; used with MeanFlow by DM1,
    arXiv:2510.07865): with ``dispersive_weight > 0`` the features of the submodules named in
    ``dispersive_layers`` (from the training forward pass, collected by
    :class:`~flowforge.core.dispersive.FeatureTap`) add
    ``dispersive_weight * mean(dispersive_loss(h, tau))``.

    Args:
        net: the average-velocity network, called ``net(x, t, r=r, **cond)`` (e.g.
            ``MLP(2, 256, 3, two_times=True)``).
        times: the ``(r, t)`` sampler (default :class:`MeanFlowTimes`: paper ImageNet settings).
        p: adaptive-weight power :math:`p` (paper default 1.0; CIFAR-10 0.75).
        c: adaptive-weight constant :math:`c` (official ImageNet 1e-2; CIFAR-10 1e-3); it is on the scale
            of the error *summed* over the event.
        label_dropout: probability of replacing the class ``y`` by ``null_label``.
        null_label: the null class (default ``net.num_classes`` when the net has it).
        omega: guidance :math:`\omega` folded into training.
        kappa: guidance mixing :math:`\kappa < 1`.
        guidance_interval: start times ``r`` where training guidance acts.
        dispersive_weight: :math:`\lambda` of the dispersive term (0: off).
        dispersive_layers: names of the submodules whose outputs are dispersed (``net.named_modules()``).
        tau: dispersive temperature :math:`\tau`.
        dispersive_form: ``"infonce_l2"`` (official) or ``"dm1"`` (DM1 release).
        event_shape: shape of one sample; inferred from the net or the first batch when omitted.

    Example:
        >>> import torch
        >>> from flowforge import MeanFlow
        >>> from flowforge.nn import MLP
        >>> mf = MeanFlow(MLP(dim=2, width=32, depth=2, two_times=True))
        >>> loss = mf.loss(torch.randn(64, 2))
        >>> x = mf.generator().sample(8, steps=1, generator=torch.Generator().manual_seed(0))
        >>> x.shape
        torch.Size([8, 2])
    """

    #: the JVP is not compiled (forward-mode AD under torch.compile is untested here); see the Trainer
    cuda_defaults: ClassVar[dict[str, Any]] = {"compile": False}

    def __init__(
        self,
        net: nn.Module,
        *,
        times: MeanFlowTimes | None = None,
        p: float = 1.0,
        c: float = 1e-2,
        label_dropout: float = 0.0,
        null_label: int | None = None,
        omega: float = 1.0,
        kappa: float = 0.0,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        dispersive_weight: float = 0.0,
        dispersive_layers: Sequence[str] = (),
        tau: float = 1.0,
        dispersive_form: str = "infonce_l2",
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if getattr(_plain(net), "two_times", None) is False:
            raise ValueError(
                f"MeanFlow needs a network with a second time input, called net(x, t, r=r): build "
                f"{type(_plain(net)).__name__}(..., two_times=True)"
            )
        if not p >= 0 or not c > 0:
            raise ValueError(f"the adaptive weight 1/(l + c)^p needs p >= 0 and c > 0, got p={p}, c={c}")
        if not 0.0 <= label_dropout <= 1.0:
            raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")
        if not kappa < 1.0:
            raise ValueError(f"kappa must be < 1 (the effective scale is omega / (1 - kappa)), got {kappa}")
        lo, hi = guidance_interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"guidance_interval must satisfy 0 <= lo <= hi <= 1, got {guidance_interval}")
        self.net = net
        self.times = times if times is not None else MeanFlowTimes()
        self.p, self.c = float(p), float(c)
        self.label_dropout = float(label_dropout)
        self.null_label = null_label if null_label is not None else getattr(_plain(net), "num_classes", None)
        self.omega, self.kappa = float(omega), float(kappa)
        self.guidance_interval = (float(lo), float(hi))
        if (self.label_dropout > 0 or self.guides) and self.null_label is None:
            raise ValueError(
                "label dropout and training guidance need a null class: pass null_label=... (or a net with "
                "num_classes)"
            )
        if self.guides and self.label_dropout == 0:
            raise ValueError(
                f"training guidance (omega={omega}, kappa={kappa}) needs an unconditional branch: pass "
                "label_dropout > 0 (the paper uses 0.1), or omega=1, kappa=0 for no guidance"
            )
        if dispersive_weight < 0:
            raise ValueError(f"dispersive_weight must be >= 0, got {dispersive_weight}")
        self.dispersive_weight = float(dispersive_weight)
        self.dispersive_layers = (
            (dispersive_layers,) if isinstance(dispersive_layers, str) else tuple(dispersive_layers)
        )
        self.tau = float(tau)
        self.dispersive_form = dispersive_form
        if self.dispersive_weight > 0:
            if not self.dispersive_layers:
                names = [n for n, _ in _plain(net).named_modules() if n][:8]
                raise ValueError(
                    f"dispersive_weight > 0 needs dispersive_layers=(...), submodule names of the net, e.g. {names}"
                )
            FeatureTap(_plain(net), self.dispersive_layers)  # validates the names
            dispersive_loss(torch.zeros(2, 1), self.tau, form=dispersive_form)  # validates tau and form
        self.event_shape = (
            tuple(event_shape) if event_shape is not None else getattr(_plain(net), "event_shape", None)
        )

    @property
    def guides(self) -> bool:
        """Whether guidance is folded into training (``omega != 1`` or ``kappa != 0``)."""
        return self.omega != 1.0 or self.kappa != 0.0

    # -- the network -------------------------------------------------------------------------------

    def average_velocity(self, x: Tensor, r: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        r"""The learned :math:`u(x, r, t)`: ``x: (B, *event)`` at time ``r: (B,)``, end time ``t: (B,)``."""
        return _call(self.net, x, r, t, cond)

    def velocity(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        """The instantaneous velocity :math:`v(x, t) = u(x, t, t)`; ``x: (B, *event)``, ``t: (B,)``."""
        return _call(self.net, x, t, t, cond)

    def total_derivative(
        self, x: Tensor, r: Tensor, t: Tensor, tangent: Tensor, **cond: Tensor
    ) -> tuple[Tensor, Tensor]:
        r""":math:`u` and :math:`\frac{d}{dr}u = \partial_x u \cdot \dot x + \partial_r u` by one forward-mode JVP.

        The JVP runs through the plain network (inside any DDP wrapper), in float32 or wider (autocast
        off) and with the math attention kernel (the fused ones have no forward-mode derivative).

        Args:
            x: points ``(B, *event)`` at times ``r``.
            r: start times ``(B,)``.
            t: end times ``(B,)``, held fixed.
            tangent: :math:`\dot x` ``(B, *event)``, the velocity that moves ``x`` with ``r``.

        Returns:
            ``(u, du_dr)``, both ``(B, *event)``.
        """
        net = _plain(self.net)

        def u_of(x_: Tensor, r_: Tensor) -> Tensor:
            return _call(net, x_, r_, t, cond)

        with _jvp_context(x):
            return torch.func.jvp(u_of, (x, r), (tangent, torch.ones_like(r)))

    def target(self, x: Tensor, r: Tensor, t: Tensor, v: Tensor, **cond: Tensor) -> Tensor:
        r"""The stop-gradient MeanFlow target :math:`v + (t - r)\,\frac{d}{dr}u_\theta(x, r, t)`; ``(B, *event)``.

        With the exact :math:`u` and the marginal :math:`v(x, r)` it returns :math:`u` itself (the
        identity); in training ``v`` is the conditional velocity ``x1 - x0`` (or its guided form).
        """
        with torch.no_grad():
            _, dudr = self.total_derivative(x, r, t, v, **cond)
            return v + _bc(t - r, x) * dudr

    # -- training ----------------------------------------------------------------------------------

    def _guided_tangent(
        self, x: Tensor, r: Tensor, v: Tensor, cond: dict[str, Tensor], keep: Tensor
    ) -> Tensor:
        """:math:`\\tilde v` on rows with their label and ``r`` in the interval; ``v`` elsewhere."""
        net = _plain(self.net)
        y = cond["y"]
        lo, hi = self.guidance_interval
        on = keep & (r >= lo) & (r <= hi)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad(), _jvp_context(x):
                null = torch.full_like(y, self.null_label)
                if self.kappa != 0.0:  # one batched call on [cond; null]
                    both = _call(
                        net,
                        torch.cat([x, x]),
                        torch.cat([r, r]),
                        torch.cat([r, r]),
                        {**{k: torch.cat([c, c]) for k, c in cond.items()}, "y": torch.cat([y, null])},
                    )
                    u_c, u_n = both.chunk(2)
                    vg = self.omega * v + (1 - self.omega - self.kappa) * u_n + self.kappa * u_c
                else:
                    u_n = _call(net, x, r, r, {**cond, "y": null})
                    vg = self.omega * v + (1 - self.omega) * u_n
        finally:
            net.train(was_training)
        return torch.where(_bc(on, x), vg.to(v.dtype), v)

    def loss(self, batch: Any) -> Tensor:
        """MeanFlow loss on a batch of data ``x1: (B, *event)`` (plus conditions, e.g. ``(x1, y)``); a scalar."""
        x1, cond = split_batch(batch)
        if self.event_shape is None:
            self.event_shape = tuple(x1.shape[1:])
        elif tuple(x1.shape[1:]) != self.event_shape:
            raise ValueError(
                f"the batch has event shape {tuple(x1.shape[1:])}, the model expects {self.event_shape}"
            )
        b = x1.shape[0]
        x0 = torch.randn_like(x1)
        r, t = self.times(b, device=x1.device, dtype=x1.dtype)
        x_r = _bc(r, x1) * x1 + _bc(1 - r, x1) * x0  # linear path, x at the start time r
        v = x1 - x0
        if self.guides and "y" not in cond:
            raise ValueError("training guidance (omega, kappa) needs class labels: pass batches (x, y)")
        if "y" in cond and (self.label_dropout > 0 or self.guides):
            y = cond["y"]
            keep = torch.rand(y.shape, device=y.device) >= self.label_dropout
            cond["y"] = torch.where(keep, y, torch.full_like(y, self.null_label))
            if self.guides:
                v = self._guided_tangent(x_r, r, v, {**cond, "y": y}, keep)

        # the target: JVP without a graph; fork_rng restores the RNG so the forward below reuses the
        # JVP's dropout masks (the state of x1.device; the CPU state is always included)
        devices = [x1.device] if x1.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            u_tgt = self.target(x_r, r, t, v, **cond)

        tap = (
            FeatureTap(_plain(self.net), self.dispersive_layers)
            if self.dispersive_weight > 0
            else contextlib.nullcontext()
        )
        with tap:
            u = _call(self.net, x_r, r, t, cond)
        err = _wide(u - u_tgt).flatten(1).square().sum(1)
        weight = (err.detach() + self.c) ** -self.p if self.p else torch.ones_like(err)
        loss = (weight * err).mean()
        if self.dispersive_weight > 0:
            feats = tap.all()
            if not feats:
                raise RuntimeError(
                    f"the dispersive layers {self.dispersive_layers} were not called in the forward pass; "
                    "pick submodules that the net runs (net.named_modules())"
                )
            disp = torch.stack(
                [dispersive_loss(_wide(h), self.tau, form=self.dispersive_form) for h in feats]
            )
            loss = loss + self.dispersive_weight * disp.mean()
        return loss

    # -- sampling ----------------------------------------------------------------------------------

    def generator(self) -> MeanFlowGenerator:
        """The model as a :class:`MeanFlowGenerator` (``steps`` mean-flow jumps; 1 and 2 are the point)."""
        if self.event_shape is None:
            raise RuntimeError(
                "event shape unknown: train on a batch first or pass event_shape=... to MeanFlow"
            )
        return MeanFlowGenerator(self.average_velocity, self.event_shape)


def _call(net: Callable[..., Tensor], x: Tensor, r: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
    """``net(x, t, r=r, **cond)`` with a clear error for a net without the second time."""
    try:
        return net(x, t, r=r, **cond)
    except TypeError as e:
        if "'r'" not in str(e):
            raise
        raise TypeError(
            f"MeanFlow calls net(x, t, r=r, **cond) but {type(net).__name__} takes no keyword r ({e}); build "
            "flowforge nets with two_times=True, or give yours a second time input r"
        ) from e


def _jvp_context(x: Tensor) -> contextlib.ExitStack:
    """Autocast off and the math attention kernel (forward-mode AD has no fused-kernel derivative)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device_type=x.device.type, enabled=False))
    stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
    return stack


class MeanFlowGenerator:
    r"""Samples a MeanFlow model by ``steps`` jumps :math:`x \leftarrow x + (t_{k+1} - t_k)\,u(x, t_k, t_{k+1})`.

    One step is :math:`x_1 = x_0 + u(x_0, 0, 1)`. :meth:`log_prob` integrates the diagonal
    :math:`v(x, t) = u(x, t, t)` as an ordinary flow (a likelihood of the instantaneous field, which
    matches the jump sampler only as far as the model is self-consistent).

    Args:
        u: the average velocity ``u(x, r, t, **cond)``.
        event_shape: shape of one sample.
    """

    def __init__(self, u: Callable[..., Tensor], event_shape: tuple[int, ...]) -> None:
        self.u, self.event_shape = u, tuple(event_shape)

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
        """Draw ``n`` samples ``(n, *event)`` (and the trajectory ``(K+1, n, *event)`` if asked).

        Args:
            n: number of samples.
            cond: conditions passed to the network, each ``(n, ...)``.
            generator: source of randomness for the noise.
            steps: number of uniform jumps ``K >= 1`` (ignored when ``grid`` is given).
            grid: explicit increasing times from 0 to 1, ``(K+1,)``.
            x0: start from these source samples instead of drawing them.
        """
        if x0 is None:
            x0 = standard_normal((n, *self.event_shape), generator=generator, device=device, dtype=dtype)
        elif tuple(x0.shape[1:]) != self.event_shape:
            raise ValueError(
                f"x0 has event shape {tuple(x0.shape[1:])}, the model expects {self.event_shape}"
            )
        if grid is None:
            grid = uniform_grid(steps)
        grid = torch.as_tensor(grid).to(device=x0.device, dtype=x0.dtype)
        if grid.dim() != 1 or grid.numel() < 2 or not bool((grid[1:] > grid[:-1]).all()):
            raise ValueError(
                f"grid must be increasing times (K+1,), e.g. uniform_grid(2); got {grid.tolist()}"
            )
        cond = dict(cond or {})
        x, traj = x0, [x0]
        with torch.no_grad():
            for k in range(grid.numel() - 1):
                r = grid[k].expand(x.shape[0])
                t = grid[k + 1].expand(x.shape[0])
                x = x + (grid[k + 1] - grid[k]) * self.u(x, r, t, **cond)
                if return_trajectory:
                    traj.append(x)
        return (x, torch.stack(traj)) if return_trajectory else x

    def log_prob(self, x: Tensor, *, cond: dict[str, Tensor] | None = None, **opts: Any) -> Tensor:
        """``log p_1(x)`` of the instantaneous field :math:`u(x, t, t)`; ``(B,)`` (see :meth:`FlowGenerator.log_prob`)."""

        def field(y: Tensor, t: Tensor, **c: Tensor) -> Tensor:
            return self.u(y, t, t, **c)

        return FlowGenerator(field, self.event_shape, AffinePath(Linear())).log_prob(x, cond=cond, **opts)
