r"""Explicit Runge–Kutta methods as Butcher tableaus, driven by one generic stepper.

An ``s``-stage explicit Runge–Kutta method (Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.1) is
its Butcher tableau :math:`(a, b, c)`; one step of size :math:`h = t_{i+1} - t_i` is

.. math::
    k_s = f\big(x_i + h \textstyle\sum_{j<s} a_{sj} k_j,\ t_i + c_s h\big),\quad s = 1, \dots, S,
    \qquad x_{i+1} = x_i + h \textstyle\sum_s b_s k_s.

:class:`ExplicitRungeKutta` takes any :class:`ButcherTableau`; :class:`Euler`, :class:`Midpoint`,
:class:`Heun`, :class:`RK4`, :class:`Ralston` and :class:`SSPRK3` are it with a fixed tableau. A new
method is one tableau and a three-line class (the convergence test in ``tests/test_solvers.py`` picks
up every exported solver by itself).

Example:
    >>> import torch
    >>> from flowforge.core.solvers import solve
    >>> x0 = torch.ones(2, 1, dtype=torch.float64)
    >>> a = solve(lambda x, t: -x, x0, RK4(), 10).x
    >>> b = solve(lambda x, t: -x, x0, ExplicitRungeKutta(RK4.tableau), 10).x
    >>> bool(torch.equal(a, b)), RK4().order, RK4.tableau.stages
    (True, 4, 4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import final

import torch
from torch import Tensor

from flowforge.core.solvers.base import SolverState, Time, VelocityField, _call, _check_x

__all__ = [
    "RK4",
    "SSPRK3",
    "ButcherTableau",
    "Euler",
    "ExplicitRungeKutta",
    "Heun",
    "Midpoint",
    "Ralston",
]

_TOL = 1e-12  # consistency checks of a tableau's coefficients


@dataclass(frozen=True)
class ButcherTableau:
    r"""Coefficients of an explicit Runge–Kutta method (Butcher, 1964; Hairer, Nørsett & Wanner, §II.1).

    Attributes:
        a: the strictly lower-triangular matrix as ragged rows: row ``s`` holds
            :math:`a_{s,0}, \dots, a_{s,s-1}` (so row 0 is ``()``).
        b: the weights :math:`b_s` of the stages in the update, summing to 1.
        c: the nodes :math:`c_s = \sum_j a_{sj}`, with :math:`c_0 = 0`.
        order: the global convergence order the coefficients reach.

    Example:
        >>> t = ButcherTableau(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2)  # Heun
        >>> t.stages
        2
    """

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int

    def __post_init__(self) -> None:
        a = tuple(tuple(float(v) for v in row) for row in self.a)
        b = tuple(float(v) for v in self.b)
        c = tuple(float(v) for v in self.c)
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "c", c)
        s = len(b)
        if s < 1 or len(c) != s or len(a) != s:
            raise ValueError(
                f"ButcherTableau needs a, b and c for the same number of stages >= 1, got {len(a)} rows of "
                f"a, {len(b)} weights b and {len(c)} nodes c; e.g. Heun: "
                "ButcherTableau(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2)"
            )
        for i, row in enumerate(a):
            if len(row) != i:
                raise ValueError(
                    f"ButcherTableau row {i} of a has {len(row)} entries; an explicit method's row i holds "
                    f"the {i} coefficients a_i0 ... a_i(i-1) below the diagonal (row 0 is ())"
                )
            if abs(math.fsum(row) - c[i]) > _TOL:
                raise ValueError(
                    f"ButcherTableau row {i} of a sums to {math.fsum(row)!r} but c[{i}] = {c[i]!r}; the nodes "
                    "must be the row sums, c_i = sum_j a_ij"
                )
        if abs(math.fsum(b) - 1.0) > _TOL:
            raise ValueError(
                f"ButcherTableau weights b must sum to 1 (consistency), got sum {math.fsum(b)!r}"
            )
        if isinstance(self.order, bool) or int(self.order) != self.order or self.order < 1:
            raise ValueError(f"ButcherTableau order must be an integer >= 1, got {self.order!r}")
        object.__setattr__(self, "order", int(self.order))

    @property
    def stages(self) -> int:
        """Number of stages, i.e. field evaluations per step."""
        return len(self.b)


def _combine(x: Tensor, h: Time, terms: tuple[tuple[int, float], ...], ks: list[Tensor]) -> Tensor:
    """``x + h * sum_j w_j k_j`` over the nonzero ``(j, w_j)`` in ``terms``.

    One term is ``x + (h w) k`` (so Euler's step is bit for bit ``x + h f(x, t)``); more terms are one
    fused ``torch.add(..., alpha=h w_j)`` each.
    """
    if len(terms) == 1:
        j, w = terms[0]
        return x + (h * w) * ks[j]
    if isinstance(h, Tensor):
        for j, w in terms:
            x = x + (h * w) * ks[j]
        return x
    for j, w in terms:
        x = torch.add(x, ks[j], alpha=h * w)
    return x


class ExplicitRungeKutta:
    r"""The explicit Runge–Kutta step of any :class:`ButcherTableau`.

    .. math::
        k_s = f\big(x_i + h \textstyle\sum_{j<s} a_{sj} k_j,\ t_i + c_s h\big),\qquad
        x_{i+1} = x_i + h \textstyle\sum_s b_s k_s,\qquad h = t_{i+1} - t_i.

    Zero coefficients are skipped; stages with :math:`c_s = 1` are evaluated at exactly
    :math:`t_{i+1}`. Order ``tableau.order``, ``tableau.stages`` evaluations per step.

    Args:
        tableau: the method's coefficients.

    Example:
        >>> import torch
        >>> from flowforge.core.solvers import solve
        >>> ralston = ButcherTableau(a=((), (2 / 3,)), b=(0.25, 0.75), c=(0.0, 2 / 3), order=2)
        >>> out = solve(lambda x, t: torch.ones_like(x), torch.zeros(3, 2), ExplicitRungeKutta(ralston), 5)
        >>> out.nfe, round(out.x[0, 0].item(), 6)
        (10, 1.0)
    """

    adaptive: bool = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        """A named method's class declares its ``order`` from its ``tableau`` (``Euler.order == 1``)."""
        super().__init_subclass__(**kwargs)
        if isinstance(cls.__dict__.get("tableau"), ButcherTableau):
            cls.order = cls.__dict__["tableau"].order

    def __init__(self, tableau: ButcherTableau) -> None:
        if not isinstance(tableau, ButcherTableau):
            raise TypeError(
                f"ExplicitRungeKutta needs a ButcherTableau, got {type(tableau).__name__}; write e.g. "
                "ExplicitRungeKutta(RK4.tableau)"
            )
        self.tableau = tableau
        self.order: float = tableau.order
        # the nonzero (j, a_sj) of every stage and (j, b_j) of the update, precomputed once
        self._later_stages = tuple(
            (c, tuple((j, w) for j, w in enumerate(row) if w != 0.0))
            for row, c in zip(tableau.a[1:], tableau.c[1:])
        )
        self._weights = tuple((j, w) for j, w in enumerate(tableau.b) if w != 0.0)
        self._nfe = tableau.stages

    def __repr__(self) -> str:
        if type(self) is ExplicitRungeKutta:
            return f"ExplicitRungeKutta({self.tableau!r})"
        return f"{type(self).__name__}()"

    def init(self, f: VelocityField, x: Tensor, t: Time) -> SolverState:
        """State at ``(x, t)``; evaluates nothing."""
        _check_x(x)
        return SolverState(x=x, t=t)

    def step(self, f: VelocityField, state: SolverState, t_next: Time) -> SolverState:
        """One Runge–Kutta step from ``state.t`` to ``t_next`` (either direction)."""
        x, t = state.x, state.t
        h = t_next - t
        ks = [_call(f, x, t)]  # c_0 = 0 and row 0 of a is empty: the first stage is f(x_i, t_i)
        for c, terms in self._later_stages:
            ts = t_next if c == 1.0 else t + c * h
            ks.append(_call(f, _combine(x, h, terms, ks), ts))
        return replace(state, x=_combine(x, h, self._weights, ks), t=t_next, nfe=state.nfe + self._nfe)


@final
class Euler(ExplicitRungeKutta):
    r"""Explicit Euler method (Euler, 1768; Hairer, Nørsett & Wanner, *Solving ODEs I*, §I.7).

    .. math:: x_{i+1} = x_i + h\, f(x_i, t_i), \qquad h = t_{i+1} - t_i.

    Tableau :math:`c = (0),\ b = (1)`. Order 1, 1 evaluation per step.
    """

    tableau = ButcherTableau(a=((),), b=(1.0,), c=(0.0,), order=1)

    def __init__(self) -> None:
        super().__init__(Euler.tableau)


@final
class Midpoint(ExplicitRungeKutta):
    r"""Explicit midpoint rule (Runge, 1895; Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.1).

    .. math::
        k_1 = f(x_i, t_i), \quad
        k_2 = f(x_i + \tfrac{h}{2} k_1,\ t_i + \tfrac{h}{2}), \quad
        x_{i+1} = x_i + h\, k_2.

    Tableau :math:`c = (0, \tfrac12),\ a_{21} = \tfrac12,\ b = (0, 1)`. Order 2, 2 evaluations per step.
    """

    tableau = ButcherTableau(a=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.5), order=2)

    def __init__(self) -> None:
        super().__init__(Midpoint.tableau)


@final
class Heun(ExplicitRungeKutta):
    r"""Heun's method, the explicit trapezoidal rule (Heun, 1900; used as EDM's 2nd-order sampler,
    Karras et al., NeurIPS 2022, Alg. 1).

    .. math::
        d_i = f(x_i, t_i), \quad \tilde x = x_i + h\, d_i, \quad
        \tilde d = f(\tilde x, t_{i+1}), \quad x_{i+1} = x_i + \tfrac{h}{2}(d_i + \tilde d).

    Tableau :math:`c = (0, 1),\ a_{21} = 1,\ b = (\tfrac12, \tfrac12)`. Order 2, 2 evaluations per step.
    """

    tableau = ButcherTableau(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2)

    def __init__(self) -> None:
        super().__init__(Heun.tableau)


@final
class Ralston(ExplicitRungeKutta):
    r"""Ralston's second-order method, the 2-stage method of least truncation-error bound
    (Ralston, *Math. Comp.* 16, 1962).

    .. math::
        k_1 = f(x_i, t_i), \quad k_2 = f(x_i + \tfrac{2h}{3} k_1,\ t_i + \tfrac{2h}{3}), \quad
        x_{i+1} = x_i + \tfrac{h}{4}(k_1 + 3 k_2).

    Tableau :math:`c = (0, \tfrac23),\ a_{21} = \tfrac23,\ b = (\tfrac14, \tfrac34)`. Order 2,
    2 evaluations per step.
    """

    tableau = ButcherTableau(a=((), (2 / 3,)), b=(0.25, 0.75), c=(0.0, 2 / 3), order=2)

    def __init__(self) -> None:
        super().__init__(Ralston.tableau)


@final
class SSPRK3(ExplicitRungeKutta):
    r"""Third-order strong-stability-preserving Runge–Kutta method (Shu & Osher, *J. Comput. Phys.*
    77, 1988, eq. 2.18; Gottlieb & Shu, *Math. Comp.* 67, 1998).

    .. math::
        k_1 = f(x_i, t_i),\ k_2 = f(x_i + h k_1, t_i + h),\
        k_3 = f(x_i + \tfrac{h}{4}(k_1 + k_2), t_i + \tfrac{h}{2}),\
        x_{i+1} = x_i + \tfrac{h}{6}(k_1 + k_2 + 4 k_3).

    Tableau :math:`c = (0, 1, \tfrac12),\ a_{21} = 1,\ a_{31} = a_{32} = \tfrac14,\
    b = (\tfrac16, \tfrac16, \tfrac23)`. Order 3, 3 evaluations per step.
    """

    tableau = ButcherTableau(
        a=((), (1.0,), (0.25, 0.25)), b=(1 / 6, 1 / 6, 2 / 3), c=(0.0, 1.0, 0.5), order=3
    )

    def __init__(self) -> None:
        super().__init__(SSPRK3.tableau)


@final
class RK4(ExplicitRungeKutta):
    r"""Classical 4th-order Runge–Kutta method (Kutta, 1901; Hairer, Nørsett & Wanner, §II.1).

    .. math::
        k_1 = f(x_i, t_i),\ k_2 = f(x_i + \tfrac{h}{2}k_1, t_i + \tfrac{h}{2}),\
        k_3 = f(x_i + \tfrac{h}{2}k_2, t_i + \tfrac{h}{2}),\ k_4 = f(x_i + h k_3, t_i + h),

        x_{i+1} = x_i + \tfrac{h}{6}(k_1 + 2k_2 + 2k_3 + k_4).

    Tableau :math:`c = (0, \tfrac12, \tfrac12, 1)`, :math:`a_{21} = a_{32} = \tfrac12,\ a_{43} = 1`,
    :math:`b = (\tfrac16, \tfrac13, \tfrac13, \tfrac16)`. Order 4, 4 evaluations per step.
    """

    tableau = ButcherTableau(
        a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
        b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
        c=(0.0, 0.5, 0.5, 1.0),
        order=4,
    )

    def __init__(self) -> None:
        super().__init__(RK4.tableau)
