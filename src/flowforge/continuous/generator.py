"""A trained continuous flow as a :class:`FlowGenerator`: ``sample`` and ``log_prob``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flowforge.core import solvers as S
from flowforge.core.choices import unknown_choice
from flowforge.core.likelihood import log_prob as cnf_log_prob
from flowforge.core.noise import standard_normal, standard_normal_log_prob
from flowforge.core.paths import Path, convert

__all__ = ["FlowGenerator", "SOLVERS", "make_solver"]

#: Solver names accepted by :meth:`FlowGenerator.sample` (and the CLI's ``--solver``).
SOLVERS: dict[str, type] = {
    "euler": S.Euler,
    "midpoint": S.Midpoint,
    "heun": S.Heun,
    "rk4": S.RK4,
    "ralston": S.Ralston,
    "ssprk3": S.SSPRK3,
    "turbo": S.PseudoCorrector,
    "dopri5": S.Dopri5,
    "sde": S.EulerMaruyama,
}


def make_solver(solver: str | S.Solver, **opts: float) -> S.Solver:
    """A solver object from a name in :data:`SOLVERS` (with keyword options) or the object itself."""
    if not isinstance(solver, str):
        return solver
    if solver not in SOLVERS:
        raise unknown_choice("solver", solver, SOLVERS)
    return SOLVERS[solver](**opts)


class FlowGenerator:
    """Samples by integrating ``dx/dt = v(x, t)`` from noise at t=0 to data at t=1.

    Args:
        field: the velocity ``v(x, t, **cond)``.
        event_shape: shape of one sample.
        path: the path the model was trained on (for the score used by the SDE sampler).
    """

    def __init__(self, field: Callable[..., Tensor], event_shape: tuple[int, ...], path: Path) -> None:
        self.field, self.event_shape, self.path = field, tuple(event_shape), path

    def score(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        r"""Score :math:`\nabla_x \log p_t(x)` derived from the velocity (Gaussian source); ``(B, *event)``."""
        return convert(self.field(x, t, **cond), x, t, self.path, src="velocity", dst="score")

    def sample(
        self,
        n: int,
        *,
        cond: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        solver: str | S.Solver = "heun",
        steps: int = 16,
        grid: Tensor | None = None,
        eps: float = 1.0,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        x0: Tensor | None = None,
        qmc: bool = False,
        return_trajectory: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw ``n`` samples; returns ``(n, *event)`` (and the trajectory ``(K+1, n, *event)`` if asked).

        Args:
            n: number of samples.
            cond: conditions passed to the network, each ``(n, ...)``.
            generator: source of randomness for the noise (and the SDE's Brownian increments).
            solver: a name in :data:`SOLVERS` or a solver object.
            steps: number of steps on a uniform grid (ignored when ``grid`` is given or for ``dopri5``).
            grid: explicit increasing time grid from 0 to 1.
            eps: diffusion level of the ``"sde"`` sampler, :math:`\\epsilon(t) = \\epsilon\\, t(1-t)\\cdot 4`.
            atol, rtol: tolerances of ``"dopri5"``.
            x0: start from these source samples instead of drawing them.
            qmc: draw the source noise by scrambled Sobol points (:func:`~flowforge.core.noise.standard_normal`):
                the same law per sample, an evenly spread batch.
        """
        if x0 is None:
            x0 = standard_normal(
                (n, *self.event_shape), generator=generator, qmc=qmc, device=device, dtype=dtype
            )
        elif tuple(x0.shape[1:]) != self.event_shape:
            raise ValueError(
                f"x0 has event shape {tuple(x0.shape[1:])}, the model expects {self.event_shape}"
            )
        cond = dict(cond or {})
        if isinstance(solver, str):
            if solver == "dopri5":
                solver = S.Dopri5(atol=atol, rtol=rtol)
            elif solver == "sde":
                solver = S.EulerMaruyama(
                    score=lambda x, t: self.score(x, t, **cond),
                    eps=lambda t: 4.0 * eps * t * (1 - t),
                    generator=generator,
                )
            else:
                solver = make_solver(solver)
        if grid is None:
            grid = S.uniform_grid(1 if isinstance(solver, S.Dopri5) else steps)
        with torch.no_grad():
            res = S.solve(
                lambda x, t: self.field(x, t, **cond),
                x0,
                solver,
                grid.to(x0.dtype),
                return_trajectory=return_trajectory,
            )
        return (res.x, res.trajectory) if return_trajectory else res.x

    def log_prob(
        self,
        x: Tensor,
        *,
        cond: dict[str, Tensor] | None = None,
        solver: str | S.Solver = "dopri5",
        steps: int = 64,
        divergence: str = "exact",
        n_probes: int = 1,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Exact-model log-likelihood ``log p_1(x)`` (nats) by the instantaneous change of variables; ``(B,)``.

        Args:
            x: ``(B, *event)`` data points.
            divergence: ``"exact"`` (autograd, small events), ``"hutchinson-gaussian"`` or
                ``"hutchinson-rademacher"``.
        """
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x has event shape {tuple(x.shape[1:])}, the model expects {self.event_shape}")
        cond = dict(cond or {})
        if isinstance(solver, str):
            solver = S.Dopri5(atol=atol, rtol=rtol) if solver == "dopri5" else make_solver(solver)
        grid = S.uniform_grid(1 if isinstance(solver, S.Dopri5) else steps, 1.0, 0.0).to(x.dtype)
        return cnf_log_prob(
            lambda y, t: self.field(y, t, **cond),
            x,
            standard_normal_log_prob,
            solver=solver,
            grid=grid,
            divergence=divergence,
            n_probes=n_probes,
            generator=generator,
        ).detach()
