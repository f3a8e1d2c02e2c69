r"""Multi-objective GFlowNet environments: a multi-objective hypergrid and Pareto fronts (the loss that
uses them, order-preserving TB, is :mod:`flowforge.gflownet.order_preserving`).

Order-preserving GFlowNets (Chen & Mauch, ICLR 2024, arXiv 2310.00386) learn from an order on the
terminal states (here the Pareto order of :meth:`MultiObjectiveHyperGrid.objectives`) instead of a
scalar reward; the loss is written out in :mod:`flowforge.gflownet.order_preserving`.

The environment, :class:`MultiObjectiveHyperGrid`, is the hypergrid of
:class:`~flowforge.gflownet.HyperGrid` (same states, actions, masks and enumeration) whose terminal
states are scored by :math:`K` of the 2-D test functions Branin, Currin, Shubert and Beale of the
authors' ``multi/hypergrid_comb.py`` (coordinates mapped to :math:`[-1, 1]^2`, then to each function's
domain). Its scalar :meth:`~MultiObjectiveHyperGrid.log_reward` is a preference-scalarised reward,
the target of the reward-scalarised TB baseline.

Example:
    >>> env = MultiObjectiveHyperGrid(ndim=2, height=8, objectives=("branin", "currin"))
    >>> env.objectives(env.all_states()).shape, int(env.pareto_mask().sum())
    (torch.Size([64, 2]), 6)
    >>> pareto_front(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.4, 0.4]])).tolist()
    [True, True, True, False]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowforge.gflownet.envs.hypergrid import HyperGrid

__all__ = [
    "OBJECTIVE_FUNCTIONS",
    "MultiObjectiveHyperGrid",
    "dirichlet_preferences",
    "pareto_front",
    "pareto_share",
]


# -- the 2-D test functions, on x in [-1, 1]^2, "higher is better" as in OP-GFN's multi/grid_cond_gfn.py


def _branin(x: Tensor) -> Tensor:
    """Negated Branin on :math:`u \\in [-5, 10]`, :math:`v \\in [0, 15]`."""
    u = 15.0 * (x[:, 0] / 2 + 0.5) - 5.0
    v = 15.0 * (x[:, 1] / 2 + 0.5)
    t1 = v - 5.1 / (4 * math.pi**2) * u**2 + 5.0 / math.pi * u - 6.0
    t2 = 10.0 * (1 - 1 / (8 * math.pi)) * torch.cos(u)
    return -(t1**2 + t2 + 10.0)


def _currin(x: Tensor) -> Tensor:
    """Currin's exponential function on :math:`[0, 1]^2`."""
    u, v = x[:, 0] / 2 + 0.5, x[:, 1] / 2 + 0.5
    factor = 1 - torch.exp(-1 / (2 * v))  # v = 0: exp(-inf) = 0
    return factor * (2300 * u**3 + 1900 * u**2 + 2092 * u + 60) / (100 * u**3 + 500 * u**2 + 4 * u + 20)


def _shubert(x: Tensor) -> Tensor:
    """Shubert's product of cosine sums on :math:`[-1.5, 1.5]^2` (the authors' map :math:`-1.5 x`)."""
    u, v = -1.5 * x[:, 0], -1.5 * x[:, 1]
    i = torch.arange(1, 6, dtype=x.dtype, device=x.device)
    su = (i * torch.cos((i + 1) * u[:, None] + i)).sum(1)
    sv = (i * torch.cos((i + 1) * v[:, None] + i)).sum(1)
    return su * sv


def _beale(x: Tensor) -> Tensor:
    """Beale's function on :math:`[-1, 1]^2`, maximised as in the authors' code."""
    a, b = x[:, 0], x[:, 1]
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


#: name -> ``(B, 2) float64 in [-1, 1]^2 -> (B,)`` raw objective (higher is better, not normalised)
OBJECTIVE_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "branin": _branin,
    "currin": _currin,
    "shubert": _shubert,
    "beale": _beale,
}


def pareto_front(values: Tensor, chunk: int = 1024) -> Tensor:
    r"""Non-dominated mask of ``values`` ``(N, K)`` (higher is better): ``(N,)`` bool.

    :math:`x_i` is dominated if some :math:`x_j \ge x_i` in every objective and :math:`>` in one.
    Exact duplicates do not dominate each other, so every copy of a front point is kept (botorch's
    ``is_non_dominated(..., deduplicate=False)``, used by OP-GFN). :math:`O(N^2 K)` work, vectorised
    over ``chunk`` rows at a time.

    Example:
        >>> pareto_front(torch.tensor([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [1.0, 1.0]])).tolist()
        [True, True, True, False]
    """
    if values.ndim != 2:
        raise ValueError(f"pareto_front expects values of shape (N, K); got {tuple(values.shape)}")
    if values.is_floating_point() and bool(values.isnan().any()):
        raise ValueError("pareto_front got NaN values; the order of NaN objectives is undefined")
    n = values.shape[0]
    dominated = torch.zeros(n, dtype=torch.bool, device=values.device)
    for i in range(0, n, chunk):
        a = values[i : i + chunk, None, :]  # (c, 1, K) candidates
        ge = (values[None] >= a).all(-1)  # (c, N): x_j >= a everywhere
        gt = (values[None] > a).any(-1)
        dominated[i : i + chunk] = (ge & gt).any(1)
    return ~dominated


def dirichlet_preferences(n: int, k: int, alpha: float = 1.5, seed: int = 0) -> Tensor:
    r"""``(n, k)`` float64 preference vectors :math:`w \sim \mathrm{Dir}(\alpha \mathbf 1)` (OP-GFN's
    preference-conditioned baseline draws :math:`\alpha = 1.5`), from an explicit ``seed`` (numpy's
    ``default_rng(seed).dirichlet``).

    Example:
        >>> w = dirichlet_preferences(4, 2, seed=0)
        >>> w.shape, bool(torch.allclose(w.sum(1), torch.ones(4, dtype=torch.float64)))
        (torch.Size([4, 2]), True)
    """
    if n < 1 or k < 1 or alpha <= 0:
        raise ValueError(
            f"dirichlet_preferences needs n, k >= 1 and alpha > 0; got n={n}, k={k}, alpha={alpha}"
        )
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.dirichlet([float(alpha)] * k, size=n)).to(torch.float64)


class MultiObjectiveHyperGrid(HyperGrid):
    r"""The hypergrid scored by :math:`K` objectives (Chen & Mauch 2024, multi-objective HyperGrid; the authors'
    ``multi/hypergrid_comb.py``).

    States, actions (``+1`` on a coordinate, or stop), masks, ``obs`` and enumeration are those of
    :class:`~flowforge.gflownet.HyperGrid`; ``ndim`` must be 2 (the objectives are 2-D test
    functions). Grid point :math:`s` maps to :math:`x = 2 s / (H - 1) - 1 \in [-1, 1]^2`, and each
    objective to its own domain as in the authors' code. :meth:`objectives` gives
    :math:`f_k(x) \in [0, 1]`, min-max normalised over the grid, higher is better.

    The scalar reward (for reward-scalarised baselines; the order-preserving loss ignores it) is

    .. math::

        R(x) = \frac1J \sum_{j=1}^J \frac{(w_j^\top f(x))^\beta}{Z_j}, \qquad
        Z_j = \sum_{x'} (w_j^\top f(x'))^\beta,

    for ``preferences`` :math:`w_1..w_J` (``(J, K)``, rows normalised to sum 1; ``None``: one equal-weight
    vector). :math:`J = 1` is the plain scalarised reward :math:`(w^\top f)^\beta / Z`; a Dirichlet set
    (:func:`dirichlet_preferences`) gives the marginal target of OP-GFN's preference-conditioned
    baseline (:math:`w \sim \mathrm{Dir}(1.5)`, reward :math:`(w^\top f)^\beta`, Jain et al. 2023) when
    preferences are drawn at random at sampling time. :math:`w^\top f` is floored at ``1e-12`` so that
    :math:`\log R` stays finite.

    Args:
        ndim: must be 2.
        height: :math:`H`.
        objectives: names from :data:`OBJECTIVE_FUNCTIONS` (at least two, distinct).
        preferences: ``(K,)`` or ``(J, K)`` non-negative weights; ``None`` = equal weights.
        beta: the reward exponent :math:`\beta > 0`.

    Example:
        >>> env = MultiObjectiveHyperGrid(ndim=2, height=4, objectives=("branin", "currin"), beta=2.0)
        >>> f = env.objectives(env.all_states())
        >>> float(f.min()), float(f.max()), env.n_actions, env.obs_dim
        (0.0, 1.0, 3, 8)
        >>> round(float(env.log_reward(env.all_states(), torch.float64).exp().sum()), 6)  # R sums to 1
        1.0
    """

    def __init__(
        self,
        ndim: int = 2,
        height: int = 32,
        objectives: Sequence[str] = ("branin", "currin"),
        preferences: Tensor | Sequence[float] | Sequence[Sequence[float]] | None = None,
        beta: float = 1.0,
    ) -> None:
        if ndim != 2:
            raise ValueError(
                f"MultiObjectiveHyperGrid needs ndim=2 (Branin, Currin, Shubert and Beale are 2-D); got {ndim}"
            )
        super().__init__(ndim=ndim, height=height)
        if isinstance(objectives, str):
            objectives = tuple(o for o in objectives.replace(",", "+").split("+") if o)
        names = tuple(objectives)
        bad = [o for o in names if o not in OBJECTIVE_FUNCTIONS]
        if bad:
            raise ValueError(
                f"unknown objective(s) {', '.join(map(repr, bad))}; valid objectives: {', '.join(OBJECTIVE_FUNCTIONS)}"
            )
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"give at least two distinct objectives, e.g. ('branin', 'currin'); got {names}")
        if not beta > 0:
            raise ValueError(f"beta must be > 0; got {beta}")
        self.objective_names, self.n_objectives, self.beta = names, len(names), float(beta)
        raw = self._raw_objectives(self.all_states())
        lo, hi = raw.min(0).values, raw.max(0).values
        flat = [n for n, lo_k, hi_k in zip(names, lo.tolist(), hi.tolist(), strict=True) if hi_k <= lo_k]
        if flat:
            raise ValueError(
                f"objective(s) {flat} are constant on a grid of height {height}; use a larger height"
            )
        self._f_table = (raw - lo) / (hi - lo)  # (H^2, K) float64 in [0, 1]
        w = (
            torch.full((1, self.n_objectives), 1.0, dtype=torch.float64)
            if preferences is None
            else preferences
        )
        w = torch.as_tensor(w, dtype=torch.float64)
        w = w[None] if w.ndim == 1 else w
        if (
            w.ndim != 2
            or w.shape[1] != self.n_objectives
            or bool((w < 0).any())
            or bool((w.sum(1) <= 0).any())
        ):
            raise ValueError(
                f"preferences must be (K,) or (J, K) non-negative weights with K={self.n_objectives} "
                f"and positive row sums; got shape {tuple(w.shape)}"
            )
        self.preferences = w / w.sum(1, keepdim=True)
        self._log_zj = torch.logsumexp(self._log_scalarised(self._f_table), dim=0)  # (J,)
        self._front: Tensor | None = None

    def __repr__(self) -> str:
        return (
            f"MultiObjectiveHyperGrid(ndim={self.ndim}, height={self.height}, objectives={self.objective_names}, "
            f"preferences={self.preferences.shape[0]}, beta={self.beta})"
        )

    def scalarised(
        self, preferences: Tensor | Sequence[float] | None, beta: float
    ) -> MultiObjectiveHyperGrid:
        """The same grid and objectives with another scalarisation of :meth:`log_reward`."""
        return MultiObjectiveHyperGrid(self.ndim, self.height, self.objective_names, preferences, beta)

    # -- objectives --------------------------------------------------------------------------------

    def coordinates(self, states: Tensor) -> Tensor:
        """``(B, 2)`` float64 points :math:`x = 2 s / (H - 1) - 1 \\in [-1, 1]^2`."""
        return states.to(torch.float64) / (self.height - 1) * 2.0 - 1.0

    def _raw_objectives(self, states: Tensor) -> Tensor:
        x = self.coordinates(states)
        return torch.stack([OBJECTIVE_FUNCTIONS[n](x) for n in self.objective_names], dim=1)

    def objectives(self, states: Tensor) -> Tensor:
        """``(B, K)`` float64 :math:`f_k(x) \\in [0, 1]` (min-max over the grid; higher is better)."""
        table = self._f_table.to(states.device)
        return table[self.state_index(states)]

    def _log_scalarised(self, f: Tensor) -> Tensor:
        """``(B, K) -> (B, J)``: :math:`\\beta \\log \\max(w_j^\\top f, 10^{-12})`."""
        s = f @ self.preferences.to(f.device).T
        return self.beta * s.clamp_min(1e-12).log()

    def log_reward(self, states: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``(B,)`` :math:`\\log R(x)` of the scalarised reward (see the class docstring)."""
        dtype = dtype or torch.get_default_dtype()
        lj = self._log_scalarised(self.objectives(states)) - self._log_zj.to(states.device)
        return (torch.logsumexp(lj, dim=1) - math.log(lj.shape[1])).to(dtype)

    # -- the Pareto front ----------------------------------------------------------------------------

    def pareto_mask(self) -> Tensor:
        """``(H^D,)`` bool: the exact Pareto front of the grid, in :meth:`all_states` order."""
        if self._front is None:
            self._front = pareto_front(self._f_table)
        return self._front

    @property
    def pareto_states(self) -> Tensor:
        """``(M, ndim)`` the states on the Pareto front."""
        return self.all_states()[self.pareto_mask()]

    def mode_mask(self, states: Tensor) -> Tensor:
        """``(B,)`` bool: on the grid's Pareto front (the "modes" of a multi-objective grid)."""
        return self.pareto_mask().to(states.device)[self.state_index(states)]

    def mode_id(self, states: Tensor) -> Tensor:
        """``(B,)`` long: rank of the state among the Pareto states (``all_states`` order), -1 if not on it."""
        front = self.pareto_mask().to(states.device)
        rank = front.long().cumsum(0) - 1
        idx = self.state_index(states)
        return torch.where(front[idx], rank[idx], -1)

    @property
    def n_modes(self) -> int:
        """Size of the Pareto front."""
        return int(self.pareto_mask().sum())


def pareto_share(env: Any, states: Tensor) -> float:
    """Fraction of the true Pareto-front states of ``env`` that occur among ``states`` ``(B, ndim)``.

    Example:
        >>> env = MultiObjectiveHyperGrid(ndim=2, height=8)
        >>> pareto_share(env, env.pareto_states[:3]), pareto_share(env, env.all_states())
        (0.5, 1.0)
    """
    front = env.pareto_mask()
    if states.numel() == 0:
        return 0.0
    idx = env.state_index(states.to(front.device)).unique()
    return float(front[idx].sum()) / float(front.sum())
