r"""Euler–Maruyama for the SDEs of stochastic interpolants, and the diffusion levels ``eps(t)``.

Example:
    >>> import torch
    >>> from flowforge.core.solvers import solve
    >>> em = EulerMaruyama(score=lambda x, t: -x, eps=0.5, generator=torch.Generator().manual_seed(0))
    >>> out = solve(lambda x, t: torch.zeros_like(x), torch.zeros(4, 2), em, 10)
    >>> out.nfe, tuple(out.x.shape)
    (20, (4, 2))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import final

import torch
from torch import Tensor

from flowforge.core.solvers.base import SolverState, Time, VelocityField, _call, _check_x, _tvec

__all__ = ["EulerMaruyama", "constant_eps", "vanishing_eps"]


def constant_eps(e0: float) -> Callable[[Tensor], Tensor]:
    r"""Constant diffusion level :math:`\epsilon(t) = e_0`.

    Args:
        e0: the level, ``>= 0``.

    Returns:
        ``eps(t) -> (B,)`` for ``t`` of shape ``(B,)``.
    """
    if not e0 >= 0:
        raise ValueError(f"constant_eps needs e0 >= 0, got {e0}; use constant_eps(0.0) for the ODE")
    return lambda t: torch.full_like(t, float(e0))


def vanishing_eps(e0: float) -> Callable[[Tensor], Tensor]:
    r"""Diffusion level that vanishes at both ends: :math:`\epsilon(t) = 4 e_0\, t (1 - t)`.

    It peaks at :math:`e_0` at :math:`t = 1/2` and is 0 at :math:`t = 0, 1`, where learned scores are
    singular (the advice of Albergo, Boffi & Vanden-Eijnden, 2023, §2.3 / §6).

    Args:
        e0: peak level, ``>= 0``.

    Returns:
        ``eps(t) -> (B,)`` for ``t`` of shape ``(B,)``.
    """
    if not e0 >= 0:
        raise ValueError(f"vanishing_eps needs e0 >= 0, got {e0}; use vanishing_eps(0.0) for the ODE")
    return lambda t: (4.0 * float(e0)) * t * (1.0 - t)


@final
class EulerMaruyama:
    r"""Euler–Maruyama sampler for the SDEs of stochastic interpolants (Albergo, Boffi &
    Vanden-Eijnden, *Stochastic Interpolants: A Unifying Framework for Flows and Diffusions*, 2023,
    Thm. 2.21 / eq. 2.32; Kloeden & Platen 1992 for the scheme).

    Forward in time (:math:`\rho_0 \to \rho_1`) the SDE with the same marginals as the interpolant is

    .. math:: dX_t = [\,b(X_t, t) + \epsilon(t)\, s(X_t, t)\,]\,dt + \sqrt{2\epsilon(t)}\, dW_t,

    and backward in time it is :math:`dX_t = [b - \epsilon s]\,dt + \sqrt{2\epsilon}\,d\bar W_t`.
    One step from :math:`t_i` to :math:`t_{i+1}`, :math:`h = t_{i+1} - t_i` of either sign:

    .. math::
        x_{i+1} = x_i + h\,[\,b(x_i, t_i) + \mathrm{sign}(h)\,\epsilon(t_i)\, s(x_i, t_i)\,]
        + \sqrt{2\epsilon(t_i)\,|h|}\; z_i, \qquad z_i \sim \mathcal N(0, I).

    Here ``b`` is the velocity field given to :meth:`step` and ``s = score(x, t)``. A step that lands
    on the end of the time interval (``t_{i+1} = 1`` going forward, ``0`` going backward) is taken
    without noise (its drift is kept), so the last sample is not blurred by a final kick. When
    :math:`\epsilon(t_i) = 0` for the whole batch the score is not evaluated and the step is exactly
    an Euler step (so ``eps = 0`` reproduces :class:`Euler` and a vanishing ``eps`` never calls the
    score at the ends). ``nfe`` counts evaluations of ``b`` and of ``score``.

    Declared ``order`` 0.5 (strong: the noise-free last step alone is an :math:`O(\sqrt h)` pathwise
    change); ``weak_order`` 1 (error of expectations, the final step's missing variance included).

    Args:
        score: ``score(x, t) -> (B, *event)``, the score :math:`\nabla\log\rho_t` at ``x``.
        eps: ``eps(t) -> (B,)`` diffusion level for ``t`` of shape ``(B,)`` (see :func:`constant_eps`,
            :func:`vanishing_eps`), or a float for a constant level.
        generator: the ``torch.Generator`` the Gaussian noise is drawn from.
        noise: alternatively, ``noise(x) -> Tensor`` returning standard-normal noise shaped like ``x``.
    """

    order: float = 0.5
    weak_order: float = 1
    adaptive: bool = False

    def __init__(
        self,
        score: VelocityField,
        eps: Callable[[Tensor], Tensor] | float,
        generator: torch.Generator | None = None,
        noise: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if generator is None and noise is None:
            raise ValueError(
                "EulerMaruyama needs an explicit source of randomness: pass "
                "generator=torch.Generator().manual_seed(0) or noise=lambda x: torch.randn_like(x)"
            )
        if generator is not None and noise is not None:
            raise ValueError("EulerMaruyama takes generator= or noise=, not both")
        self.score = score
        self.eps = constant_eps(eps) if isinstance(eps, (int, float)) else eps
        self.generator = generator
        self.noise = noise

    def _draw(self, x: Tensor) -> Tensor:
        if self.noise is not None:
            z = self.noise(x)
            if not isinstance(z, Tensor) or z.shape != x.shape:
                shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
                raise ValueError(
                    f"noise returned shape {shape} for x of shape {tuple(x.shape)}; it must return "
                    "standard-normal noise shaped like x"
                )
            return z
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)

    def init(self, f: VelocityField, x: Tensor, t: Time) -> SolverState:
        """State at ``(x, t)``; evaluates nothing."""
        _check_x(x)
        return SolverState(x=x, t=t)

    def step(self, f: VelocityField, state: SolverState, t_next: Time) -> SolverState:
        """One Euler–Maruyama step from ``state.t`` to ``t_next`` (either direction)."""
        x, t, nfe = state.x, state.t, state.nfe
        h = t_next - t
        forward = float(h) > 0
        drift = _call(f, x, t)
        nfe += 1
        e = self.eps(_tvec(t, x))
        if not isinstance(e, Tensor) or e.shape != (x.shape[0],):
            shape = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
            raise ValueError(f"eps(t) returned shape {shape} for t of shape ({x.shape[0]},); return (B,)")
        if bool((e < 0).any()):
            raise ValueError("eps(t) must be >= 0; got a negative diffusion level")
        if bool((e != 0).any()):
            e = e.reshape((-1,) + (1,) * (x.dim() - 1))
            s = _call(self.score, x, t)
            nfe += 1
            drift = drift + (e * s if forward else -(e * s))
        x_next = x + h * drift
        at_end = abs(float(t_next) - (1.0 if forward else 0.0)) < 1e-12
        if not at_end and bool((e != 0).any()):
            x_next = x_next + torch.sqrt(2.0 * e * abs(float(h))) * self._draw(x)
        return replace(state, x=x_next, t=t_next, nfe=nfe)
