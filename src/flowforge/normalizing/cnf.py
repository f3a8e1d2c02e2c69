r"""Continuous normalizing flows: FFJORD (Grathwohl et al., 2019) with RNODE regularisers (Finlay et al., 2020).

A :class:`CNF` is a :class:`~flowforge.core.contracts.Bijection` defined by an ODE
:math:`\dot z_t = f(z_t, t)` on :math:`t \in [0, T]`. Following the package's time convention
(DESIGN.md: t=0 is the source/noise, t=T the data side, the velocity points from noise to data), the
data point is :math:`x = z_T` and the noise point is :math:`z = z_0`:

- ``forward(x)`` (data to noise) integrates from :math:`t=T` back to :math:`t=0` and returns
  :math:`\log|\det \partial z_0/\partial z_T| = -\int_0^T \operatorname{tr} \partial f/\partial z\, dt`;
- ``inverse(z)`` (noise to data) integrates from :math:`t=0` to :math:`t=T` and returns
  :math:`+\int_0^T \operatorname{tr} \partial f/\partial z\, dt`.

Both come from the instantaneous change of variables :math:`\frac{d}{dt}\log p(z_t) =
-\operatorname{tr}\frac{\partial f}{\partial z}(z_t, t)` (Chen et al., *Neural ODEs*, NeurIPS 2018,
Thm. 1; FFJORD, ICLR 2019, eq. 4): the state :math:`[z, \ell]` with :math:`\dot\ell =
\operatorname{tr}\partial f/\partial z` is integrated jointly by one fixed-step Runge–Kutta solver of
:mod:`flowforge.core.solvers`, and :math:`\ell` at the end of the solve is the log-determinant of the
map just applied. The trace is exact (``D`` vector-Jacobian products, for small ``D``) or FFJORD's
Hutchinson estimate :math:`\varepsilon^\top (\partial f/\partial z)\,\varepsilon` with one probe per
sample held fixed for the whole solve (both from :func:`flowforge.core.likelihood.divergence`).

**Gradients** are plain backpropagation through the fixed-step solver ("discretise-then-optimise"),
not the adjoint method: with a fixed grid the computed map *is* the model, so its gradient is exact
(the adjoint of Chen et al. re-solves the ODE backwards and is only approximately the gradient of the
discrete forward pass). ``checkpoint=True`` recomputes each solver step in the backward pass
(``torch.utils.checkpoint``), trading one extra forward per step for memory that does not grow with
the number of stages; the gradient is unchanged.

**RNODE regularisers** (Finlay, Jacobsen, Nurbekyan & Oberman, *How to train your neural ODE*, ICML
2020, eq. 9): the kinetic energy :math:`K = \int_0^T \|f(z_t, t)\|^2 dt` and the Frobenius norm of the
Jacobian :math:`B = \int_0^T \|\partial f/\partial z\|_F^2 dt`, the latter estimated as
:math:`\|\varepsilon^\top \partial f/\partial z\|^2` (unbiased for :math:`E[\varepsilon\varepsilon^\top]
= I`; the Hutchinson probe is reused). They are integrated alongside the state and returned per
sample by :meth:`CNF.forward_with_regularisers`; when ``kinetic`` or ``jacobian_norm`` is non-zero,
``forward`` also leaves them in ``CNF.last_regularisers`` and :meth:`CNF.regulariser_loss` turns them
into the weighted term :math:`\lambda_K \bar K + \lambda_B \bar B` a training loss adds
(:class:`FFJORD` does so in ``loss``).

Example:
    >>> import torch
    >>> from flowforge.nn import MLP
    >>> cnf = CNF(MLP(dim=2, width=16, depth=2), steps=4)
    >>> x = torch.randn(5, 2)
    >>> z, ladj = cnf(x)
    >>> x2, ladj_inv = cnf.inverse(z)
    >>> z.shape, ladj.shape, bool(torch.allclose(x2, x, atol=1e-4))
    (torch.Size([5, 2]), torch.Size([5]), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from flowforge.core.batch import split_batch
from flowforge.core.choices import unknown_choice
from flowforge.core.likelihood import divergence as _divergence
from flowforge.core.solvers import RK4, Euler, ExplicitRungeKutta, Heun, Midpoint, SolverState, uniform_grid
from flowforge.nn import MLP
from flowforge.normalizing.flow import Compose, Flow, StandardNormal, _check_points

__all__ = ["CNF", "FFJORD"]

#: the fixed-step solvers a CNF accepts by name (an ``ExplicitRungeKutta`` instance works too)
SOLVERS: dict[str, Callable[[], ExplicitRungeKutta]] = {
    "euler": Euler,
    "midpoint": Midpoint,
    "heun": Heun,
    "rk4": RK4,
}
_DIVERGENCES = ("exact", "hutchinson")
_PROBES = ("rademacher", "gaussian")


class CNF(nn.Module):
    r"""A continuous normalizing flow layer (FFJORD; Grathwohl et al., 2019) with RNODE regularisers.

    See the module docstring for the maths and the time direction: ``forward`` integrates the field
    from ``t1`` (data) back to 0 (noise), ``inverse`` from 0 to ``t1``; both return the
    log-determinant of the map they apply, so forward + inverse ladj is zero up to solver error.

    Args:
        net: the velocity field, called ``net(z, t)`` with ``z: (B, D)`` and ``t: (B,)``, returning
            ``(B, D)``; it must treat batch entries independently (e.g. ``flowforge.nn.MLP``).
        t1: the integration time :math:`T > 0`.
        solver: a fixed-step solver name (``"euler"``, ``"midpoint"``, ``"heun"``, ``"rk4"``) or an
            ``ExplicitRungeKutta`` instance; adaptive solvers are refused (the round trip and
            the exact backprop need the same fixed grid both ways).
        steps: number of uniform solver steps on ``[0, t1]``.
        divergence: ``"exact"`` trace or ``"hutchinson"`` estimate.
        probe: the Hutchinson (and Frobenius-norm) probe distribution, ``"rademacher"`` or
            ``"gaussian"``.
        kinetic: weight :math:`\lambda_K` of the kinetic-energy regulariser (0: not computed in
            ``forward``).
        jacobian_norm: weight :math:`\lambda_B` of the Jacobian Frobenius regulariser (0: not
            computed in ``forward``).
        generator: the ``torch.Generator`` the probes are drawn from; ``None`` draws them from
            torch's default generator, fresh in every call.
        checkpoint: recompute each solver step in the backward pass to save memory.

    Attributes:
        last_regularisers: ``{"kinetic": (B,), "jacobian": (B,)}`` from the last ``forward`` when a
            regulariser weight is non-zero (carrying the graph), else ``None``.

    Shapes:
        ``forward: (B, D) -> ((B, D), (B,))``; ``inverse`` likewise.

    Example:
        >>> import torch
        >>> from flowforge.nn import MLP
        >>> cnf = CNF(MLP(dim=2, width=8, depth=1), steps=2, divergence="hutchinson",
        ...           kinetic=0.01, jacobian_norm=0.01, generator=torch.Generator().manual_seed(0))
        >>> z, ladj = cnf(torch.randn(3, 2))
        >>> sorted(cnf.last_regularisers), cnf.regulariser_loss().shape
        (['jacobian', 'kinetic'], torch.Size([]))
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        t1: float = 1.0,
        solver: str | ExplicitRungeKutta = "rk4",
        steps: int = 8,
        divergence: Literal["exact", "hutchinson"] = "exact",
        probe: Literal["rademacher", "gaussian"] = "rademacher",
        kinetic: float = 0.0,
        jacobian_norm: float = 0.0,
        generator: torch.Generator | None = None,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"CNF needs a velocity network nn.Module net(z, t), got {type(net).__name__}")
        if isinstance(solver, str):
            if solver not in SOLVERS:
                raise unknown_choice(
                    "solver", solver, SOLVERS, hint="or pass an ExplicitRungeKutta instance such as RK4()"
                )
            solver = SOLVERS[solver]()
        elif not isinstance(solver, ExplicitRungeKutta):
            raise ValueError(
                f"CNF needs a fixed-step solver, got {type(solver).__name__}; write solver='rk4' (or "
                "'euler', 'midpoint', 'heun', or an ExplicitRungeKutta instance) and raise steps for accuracy"
            )
        if divergence not in _DIVERGENCES:
            raise unknown_choice("divergence", divergence, _DIVERGENCES)
        if probe not in _PROBES:
            raise unknown_choice("probe", probe, _PROBES)
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise ValueError(f"CNF needs an integer steps >= 1, got {steps!r}; write e.g. steps=8")
        if not (math.isfinite(t1) and t1 > 0):
            raise ValueError(f"CNF needs a finite integration time t1 > 0, got {t1!r}; write e.g. t1=1.0")
        if kinetic < 0 or jacobian_norm < 0:
            raise ValueError(
                f"regulariser weights must be >= 0, got kinetic={kinetic}, jacobian_norm={jacobian_norm}"
            )
        self.net = net
        self.t1 = float(t1)
        self.solver = solver
        self.steps = int(steps)
        self.divergence = divergence
        self.probe = probe
        self.kinetic = float(kinetic)
        self.jacobian_norm = float(jacobian_norm)
        self.generator = generator
        self.checkpoint = bool(checkpoint)
        event = getattr(net, "event_shape", None)
        self.dim: int | None = math.prod(event) if event is not None else None
        self.last_regularisers: dict[str, Tensor] | None = None

    def extra_repr(self) -> str:
        return (
            f"t1={self.t1}, solver={self.solver!r}, steps={self.steps}, divergence={self.divergence!r}, "
            f"kinetic={self.kinetic}, jacobian_norm={self.jacobian_norm}"
        )

    # ------------------------------------------------------------------------------------------- core

    def _draw_probe(self, x: Tensor) -> Tensor:
        g = self.generator
        dev = g.device if g is not None else x.device
        if self.probe == "gaussian":
            eps = torch.randn(x.shape, generator=g, dtype=x.dtype, device=dev)
        else:
            eps = torch.randint(0, 2, x.shape, generator=g, device=dev).to(x.dtype) * 2 - 1
        return eps.to(x.device)

    def _integrate(self, x: Tensor, t_start: float, t_end: float, regularise: bool) -> tuple[Tensor, ...]:
        """Solve ``[z, l, K, B]`` from ``t_start`` to ``t_end``; returns ``(z, l)`` or ``(z, l, K, B)``."""
        _check_points(x, self.dim, "CNF")
        if not x.is_floating_point():
            raise ValueError(f"CNF expects floating-point points, got {x.dtype}; write x.float()")
        b, d = x.shape
        create_graph = torch.is_grad_enabled()
        need_probe = self.divergence == "hutchinson" or regularise
        eps = self._draw_probe(x) if need_probe else None  # one probe per sample, fixed for the solve
        method = "hutchinson-rademacher" if self.probe == "rademacher" else "hutchinson-gaussian"
        method = method if self.divergence == "hutchinson" else "exact"
        sign = 1.0 if t_end > t_start else -1.0  # regularisers integrate |dt|: they are >= 0 either way
        net = self.net

        def field(s: Tensor, t: Tensor) -> Tensor:
            z = s[:, :d]
            seen: dict[str, Tensor] = {}

            def f(zz: Tensor, tt: Tensor) -> Tensor:
                seen["z"] = zz
                return net(zz, tt)

            probes = eps[None] if method != "exact" else None
            v, div = _divergence(f, z, t, method, probes, create_graph=create_graph)
            cols = [v, div[:, None]]
            if regularise:
                with torch.enable_grad():
                    if create_graph:  # v still has its graph to seen["z"]
                        zz, vv = seen["z"], v
                    else:
                        zz = z.detach().requires_grad_(True)
                        vv = net(zz, t)
                    if vv.requires_grad:
                        (g,) = torch.autograd.grad(vv, zz, eps, create_graph=create_graph, allow_unused=True)
                    else:
                        g = None
                    jac = (g**2).sum(1) if g is not None else torch.zeros(b, dtype=s.dtype, device=s.device)
                kin = (v**2).sum(1)
                if not create_graph:
                    jac, kin = jac.detach(), kin.detach()
                cols += [sign * kin[:, None], sign * jac[:, None]]
            return torch.cat(cols, dim=1)

        extra = 3 if regularise else 1
        s = torch.cat([x, x.new_zeros(b, extra)], dim=1)
        times = uniform_grid(self.steps, t_start, t_end).tolist()
        solver = self.solver
        state = solver.init(field, s, times[0])
        for t_next in times[1:]:
            if self.checkpoint and create_graph:
                t_now = state.t

                def one_step(s_in: Tensor, t_now: Any = t_now, t_next: float = t_next) -> Tensor:
                    return solver.step(field, SolverState(x=s_in, t=t_now), t_next).x

                state = SolverState(x=_checkpoint(one_step, state.x, use_reentrant=False), t=t_next)
            else:
                state = solver.step(field, state, t_next)
        out = state.x
        z, ladj = out[:, :d], out[:, d]
        return (z, ladj, out[:, d + 1], out[:, d + 2]) if regularise else (z, ladj)

    # ------------------------------------------------------------------------------------------- API

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        """Data to noise: ``(z, log|det dz/dx|)`` for ``x: (B, D)``.

        With a non-zero regulariser weight also sets ``last_regularisers`` (see the class).
        """
        if self.kinetic > 0 or self.jacobian_norm > 0:
            z, ladj, kin, jac = self._integrate(x, self.t1, 0.0, regularise=True)
            self.last_regularisers = {"kinetic": kin, "jacobian": jac}
            return z, ladj
        self.last_regularisers = None
        return self._integrate(x, self.t1, 0.0, regularise=False)

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        """Noise to data: ``(x, log|det dx/dz|)`` for ``z: (B, D)``."""
        return self._integrate(z, 0.0, self.t1, regularise=False)

    def forward_with_regularisers(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""``(z, ladj, K, B)``: :meth:`forward` plus the per-sample kinetic energy
        :math:`\int_0^T \|f\|^2 dt` and Jacobian Frobenius estimate :math:`\int_0^T
        \|\varepsilon^\top \partial f/\partial z\|^2 dt`, each ``(B,)``, whatever the weights."""
        return self._integrate(x, self.t1, 0.0, regularise=True)

    def regulariser_loss(self) -> Tensor:
        r""":math:`\lambda_K \operatorname{mean} K + \lambda_B \operatorname{mean} B` from the last
        ``forward`` (a scalar; zero when both weights are zero)."""
        r = self.last_regularisers
        if r is None:
            anchor = next(self.parameters(), None)
            return torch.zeros((), dtype=anchor.dtype if anchor is not None else torch.float32)
        return self.kinetic * r["kinetic"].mean() + self.jacobian_norm * r["jacobian"].mean()


class FFJORD(Flow):
    r"""FFJORD (Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud, ICLR 2019) as a recipe of parts.

    One :class:`CNF` whose field is ``flowforge.nn.MLP(dim, width, depth)`` and a standard normal base:
    a :class:`~flowforge.normalizing.flow.Flow`, so ``log_prob``, ``sample`` and ``loss`` come from
    there; ``loss`` adds the RNODE regularisers (Finlay et al., 2020) when their weights are non-zero.
    Standardise the data.

    Args:
        dim: ``D``.
        width: hidden units of the MLP field.
        depth: hidden layers of the MLP field.
        time_freqs: Fourier time features of the MLP (0: raw ``t``).
        **cnf: the :class:`CNF` options (``t1``, ``solver``, ``steps``, ``divergence``, ``probe``,
            ``kinetic``, ``jacobian_norm``, ``generator``, ``checkpoint``).

    Attributes:
        dim, width, depth: the constructor arguments; ``cnf``: the CNF layer.

    Shapes:
        events ``(D,)``: ``log_prob: (B, D) -> (B,)``, ``sample(n) -> (n, D)``.

    Example:
        >>> flow = FFJORD(2, width=16, depth=2, steps=4)
        >>> x = flow.sample(3, generator=torch.Generator().manual_seed(0))
        >>> x.shape, flow.log_prob(x).shape, flow.loss(x).shape
        (torch.Size([3, 2]), torch.Size([3]), torch.Size([]))
    """

    def __init__(self, dim: int, width: int = 64, depth: int = 3, *, time_freqs: int = 0, **cnf: Any) -> None:
        layer = CNF(MLP(dim=dim, width=width, depth=depth, time_freqs=time_freqs), **cnf)
        super().__init__(Compose([layer]), StandardNormal(dim))
        self.dim, self.width, self.depth = dim, width, depth

    @property
    def cnf(self) -> CNF:
        return self.transform.bijections[0]

    def loss(self, batch: Any) -> Tensor:
        """Mean ``-log p(x)`` plus the weighted RNODE regularisers of this forward pass."""
        x, cond = split_batch(batch)
        return -self.log_prob(x, **cond).mean() + self.cnf.regulariser_loss()
