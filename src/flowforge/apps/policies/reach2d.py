r"""A pure-torch 2-D reaching task with an obstacle and two equally good routes (multimodal demonstrations).

A point agent starts below a round obstacle (centre ``(0, 0)``, radius ``R``) at
``(x_0, y_0)`` (``y_0 = -0.7``), ``x_0 ~ U(-s, s)``, and must reach a goal ``g = (g_x, 1)``, ``g_x ~ U(-w, w)``, above it
within ``horizon`` moves of length at most ``max_step``. An action :math:`a \in \mathbb{R}^2` moves the
agent by ``max_step * a`` (rows with :math:`\|a\| > 1` are scaled to norm 1). Touching the obstacle ends the
episode as a failure; coming within ``goal_tol`` of the goal ends it as a success.

The scripted expert goes around the obstacle on a side :math:`s \in \{-1, +1\}` through the waypoint
``(s (R + margin), 0)`` and then to the goal. With ``mode="random"`` the side is a fair coin per episode,
so the demonstrations are bimodal at the start (left and right are equally good) and their average,
straight ahead, hits the obstacle: the toy of DM1 (Zou et al., 2025, arXiv:2510.07865) where a regression
policy fails and a generative policy must pick one mode. With ``mode="cue"`` the side is the sign of
``x_0``, so start observations that differ only by a few hundredths need opposite actions (DM1's
"observations that differ subtly" case).

The observation is ``[p, g]`` (agent position and goal), ``(B, 4)``.

Example:
    >>> import torch
    >>> env = Reach2D()
    >>> obs = env.reset(4, generator=torch.Generator().manual_seed(0))
    >>> modes = env.draw_modes(4, generator=torch.Generator().manual_seed(1))
    >>> for _ in range(env.horizon):
    ...     obs = env.step(env.expert_action(modes))
    >>> bool(env.success().all())
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Reach2D"]

_MODES = ("random", "cue")


class Reach2D:
    """A batch of 2-D reaching episodes around a round obstacle (state in float64, observations float32).

    Args:
        radius: obstacle radius :math:`R`.
        start_spread: start ``x_0 ~ U(-start_spread, start_spread)``.
        start_y: start height ``y_0 < -R``.
        goal_spread: goal ``g_x ~ U(-goal_spread, goal_spread)`` at ``y = 1``.
        max_step: length of a move with ``|a| = 1``.
        horizon: moves per episode.
        goal_tol: success radius around the goal.
        margin: the expert's clearance: waypoints at ``(+-(R + margin), 0)``.
        mode: ``"random"`` (the expert's side is a coin) or ``"cue"`` (the side is ``sign(x_0)``).
    """

    obs_dim = 4
    act_dim = 2

    def __init__(
        self,
        *,
        radius: float = 0.4,
        start_spread: float = 0.05,
        start_y: float = -0.7,
        goal_spread: float = 0.2,
        max_step: float = 0.1,
        horizon: int = 40,
        goal_tol: float = 0.1,
        margin: float = 0.25,
        mode: str = "random",
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"unknown Reach2D mode {mode!r}; write mode='random' or mode='cue'")
        if not (radius > 0 and max_step > 0 and goal_tol > 0 and margin > 0 and horizon >= 1):
            raise ValueError(
                f"Reach2D needs radius, max_step, goal_tol, margin > 0 and horizon >= 1; got radius={radius}, "
                f"max_step={max_step}, goal_tol={goal_tol}, margin={margin}, horizon={horizon}"
            )
        if start_spread < 0 or goal_spread < 0 or start_spread >= radius:
            raise ValueError(
                f"start_spread must be in [0, radius) and goal_spread >= 0; got {start_spread}, {goal_spread}"
            )
        self.radius, self.start_spread, self.goal_spread = (
            float(radius),
            float(start_spread),
            float(goal_spread),
        )
        self.max_step, self.horizon, self.goal_tol = float(max_step), int(horizon), float(goal_tol)
        self.margin, self.mode, self.start_y = float(margin), mode, float(start_y)
        if not start_y < -radius:
            raise ValueError(f"start_y must lie below the obstacle (< -radius = {-radius}), got {start_y}")
        self.pos = self.goal = self.start = torch.zeros(0, 2, dtype=torch.float64)
        self.reached = self.crashed = torch.zeros(0, dtype=torch.bool)

    # -- the episode -------------------------------------------------------------------------------

    def reset(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Start ``n`` episodes; returns the observations ``(n, 4)``."""
        if n < 1:
            raise ValueError(f"reset needs n >= 1 episodes, got {n}")
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 2 - 1
        self.start = torch.stack(
            [u[:, 0] * self.start_spread, torch.full((n,), self.start_y, dtype=torch.float64)], 1
        )
        self.goal = torch.stack([u[:, 1] * self.goal_spread, torch.ones(n, dtype=torch.float64)], 1)
        self.pos = self.start.clone()
        self.reached = torch.zeros(n, dtype=torch.bool)
        self.crashed = torch.zeros(n, dtype=torch.bool)
        return self.observe()

    def observe(self) -> Tensor:
        """``[p, g]``, ``(n, 4)`` float32."""
        return torch.cat([self.pos, self.goal], 1).float()

    def done(self) -> Tensor:
        """Episodes that ended (reached or crashed), ``(n,)`` bool."""
        return self.reached | self.crashed

    def success(self) -> Tensor:
        """Episodes that reached the goal without touching the obstacle, ``(n,)`` bool."""
        return self.reached & ~self.crashed

    def step(self, action: Tensor) -> Tensor:
        """Move every running episode by ``max_step * a`` (``a: (n, 2)``, norm clipped to 1); returns obs."""
        if action.shape != self.pos.shape:
            raise ValueError(
                f"action must have shape (n, 2) = {tuple(self.pos.shape)}, got {tuple(action.shape)}"
            )
        a = action.to(torch.float64)
        a = torch.nan_to_num(a, nan=0.0) / a.norm(dim=1, keepdim=True).clamp(min=1.0)
        live = ~self.done()
        new = self.pos + self.max_step * a
        # the segment's closest point to the obstacle's centre
        d = new - self.pos
        s = (-(self.pos * d).sum(1) / d.square().sum(1).clamp(min=1e-12)).clamp(0, 1)
        closest = (self.pos + s[:, None] * d).norm(dim=1)
        self.pos = torch.where(live[:, None], new, self.pos)
        self.crashed |= live & (closest < self.radius)
        self.reached |= live & ~self.crashed & ((self.pos - self.goal).norm(dim=1) < self.goal_tol)
        return self.observe()

    # -- the expert --------------------------------------------------------------------------------

    def draw_modes(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """The expert's side per episode, ``(n,)`` in ``{-1, +1}`` (a coin, or ``sign(x_0)`` with ``mode="cue"``)."""
        if self.mode == "cue":
            return torch.where(self.start[:, 0] >= 0, 1.0, -1.0).to(torch.float64)
        return torch.where(torch.rand(n, generator=generator) < 0.5, 1.0, -1.0).to(torch.float64)

    def expert_action(self, modes: Tensor) -> Tensor:
        """The expert's move ``(n, 2)``: to the waypoint ``(s (R + margin), 0)`` while below it, then to the goal."""
        way = torch.stack([modes * (self.radius + self.margin), torch.zeros_like(modes)], 1)
        target = torch.where((self.pos[:, 1] < -1e-9)[:, None], way, self.goal)
        a = (target - self.pos) / self.max_step
        return (a / a.norm(dim=1, keepdim=True).clamp(min=1.0)).float()
