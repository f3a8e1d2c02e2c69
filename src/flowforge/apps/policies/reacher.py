r"""MuJoCo ``Reacher-v5`` (through ``gymnasium[mujoco]``, imported lazily) as a batch of episodes, with a
scripted two-solution expert.

The two-link arm (links :math:`l_1 = 0.1`, :math:`l_2 = 0.11`) must bring its fingertip to a random target
in 50 control steps. The expert solves the inverse kinematics for the *elbow* sign
:math:`s \in \{-1, +1\}` drawn per episode,

.. math::

    q_2^* = s \arccos\frac{d^2 - l_1^2 - l_2^2}{2 l_1 l_2}, \qquad
    q_1^* = \operatorname{atan2}(g_y, g_x) - \operatorname{atan2}(l_2 \sin q_2^*, l_1 + l_2 \cos q_2^*),

and applies the joint-space PD torque :math:`a = \mathrm{clip}(K_p\, \mathrm{wrap}(q^* - q) - K_d\, \dot q,
-1, 1)`. Both elbow solutions reach the target equally well, so the demonstrations are bimodal: the
average of the two torques at the start points elsewhere. Success: the fingertip within ``tol`` of the
target at the end of the episode.

Observations are Reacher's 10 numbers rescaled to order one: ``[cos q, sin q, 5 g, qdot / 10, 5 (tip - g)]``.
Install with ``pip install "flowforge[robot]"`` (``gymnasium[mujoco]>=1.0``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["Reacher", "mujoco_available"]

L1, L2 = 0.1, 0.11
_SCALE = np.array([1, 1, 1, 1, 5, 5, 0.1, 0.1, 5, 5], dtype=np.float64)


def mujoco_available() -> bool:
    """Whether ``gymnasium`` and ``mujoco`` import (the ``robot`` extra)."""
    try:
        import gymnasium  # noqa: F401
        import mujoco  # noqa: F401
    except ImportError:
        return False
    return True


def _gym():
    try:
        import gymnasium
    except ImportError as e:
        raise ImportError(
            'the MuJoCo policy tasks need gymnasium with MuJoCo: pip install "gymnasium[mujoco]>=1.0" '
            '(or pip install "flowforge[robot]")'
        ) from e
    return gymnasium


class Reacher:
    """``n`` MuJoCo ``Reacher-v5`` episodes stepped together (states on the CPU, float64 inside gymnasium).

    Args:
        tol: success distance of the fingertip to the target at the end.
        kp, kd: the expert's PD gains.
        horizon: control steps per episode (Reacher-v5: 50).

    Example:
        >>> import torch
        >>> env = Reacher()  # doctest: +SKIP
        >>> obs = env.reset(2, generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
        >>> obs.shape  # doctest: +SKIP
        torch.Size([2, 10])
    """

    obs_dim = 10
    act_dim = 2

    def __init__(self, *, tol: float = 0.02, kp: float = 2.0, kd: float = 0.2, horizon: int = 50) -> None:
        if not (tol > 0 and kp > 0 and kd >= 0 and horizon >= 1):
            raise ValueError(
                f"Reacher needs tol, kp > 0, kd >= 0, horizon >= 1; got {tol}, {kp}, {kd}, {horizon}"
            )
        self.tol, self.kp, self.kd, self.horizon = float(tol), float(kp), float(kd), int(horizon)
        self._gym = _gym()
        self.envs: list = []
        self._raw = np.zeros((0, 10))

    def reset(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Start ``n`` episodes (gymnasium seeds drawn from ``generator``); returns observations ``(n, 10)``."""
        if n < 1:
            raise ValueError(f"reset needs n >= 1 episodes, got {n}")
        while len(self.envs) < n:
            self.envs.append(self._gym.make("Reacher-v5", max_episode_steps=self.horizon).unwrapped)
        seeds = torch.randint(0, 2**31 - 1, (n,), generator=generator).tolist()
        self._raw = np.stack([self.envs[i].reset(seed=s)[0] for i, s in enumerate(seeds)])
        self.n = n
        return self.observe()

    def observe(self) -> Tensor:
        """Rescaled observations ``(n, 10)`` float32."""
        return torch.from_numpy(self._raw * _SCALE).float()

    def step(self, action: Tensor) -> Tensor:
        """Apply torques ``(n, 2)`` (clipped to ``[-1, 1]``); returns the observations."""
        if action.shape != (self.n, 2):
            raise ValueError(f"action must have shape (n, 2) = ({self.n}, 2), got {tuple(action.shape)}")
        a = torch.nan_to_num(action.detach().double(), nan=0.0).clamp(-1, 1).numpy()
        self._raw = np.stack([self.envs[i].step(a[i])[0] for i in range(self.n)])
        return self.observe()

    def distance(self) -> Tensor:
        """Fingertip-to-target distance ``(n,)``."""
        return torch.from_numpy(np.linalg.norm(self._raw[:, 8:10], axis=1))

    def done(self) -> Tensor:
        """Reacher episodes run their full horizon: all False."""
        return torch.zeros(self.n, dtype=torch.bool)

    def success(self) -> Tensor:
        """The fingertip within ``tol`` of the target, ``(n,)`` bool."""
        return self.distance() < self.tol

    def draw_modes(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """The expert's elbow sign per episode, ``(n,)`` in ``{-1, +1}`` (a fair coin)."""
        return torch.where(torch.rand(n, generator=generator) < 0.5, 1.0, -1.0).to(torch.float64)

    def expert_action(self, modes: Tensor) -> Tensor:
        """PD torques ``(n, 2)`` towards the inverse-kinematics solution with elbow sign ``modes``."""
        raw = self._raw
        q = np.arctan2(raw[:, 2:4], raw[:, 0:2])
        qd = raw[:, 6:8]
        g = raw[:, 4:6]
        d2 = (g**2).sum(1)
        c2 = np.clip((d2 - L1**2 - L2**2) / (2 * L1 * L2), -1.0, 1.0)
        q2 = modes.numpy() * np.arccos(c2)
        q1 = np.arctan2(g[:, 1], g[:, 0]) - np.arctan2(L2 * np.sin(q2), L1 + L2 * np.cos(q2))
        err = np.stack([q1, q2], 1) - q
        err = (err + math.pi) % (2 * math.pi) - math.pi
        a = np.clip(self.kp * err - self.kd * qd, -1.0, 1.0)
        return torch.from_numpy(a).float()
