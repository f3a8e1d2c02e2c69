r"""The hypergrid of Bengio et al. (2021), the standard GFlowNet benchmark with an exact target.

A state is an integer vector; a batch of states is a ``(B, ndim)`` long tensor. Actions are integers
in ``[0, n_actions)``; the **last action** (``n_actions - 1``) is the explicit *stop* action, which
ends a trajectory at the current state (every state of the hypergrid is terminal-able). Backward
actions are the non-stop actions, ``[0, n_actions - 1)``: backward action ``a`` undoes forward action
``a``. The optional rollout hooks of :mod:`flowforge.core.contracts` (``step_delta``,
``forward_forbidden``, ``log_reward_fast``) are all implemented.

Example:
    >>> env = HyperGrid(ndim=2, height=8)
    >>> s = env.s0.expand(3, 2)
    >>> s = env.step(s, torch.tensor([0, 1, 2]))       # +x, +y, stop
    >>> s.tolist()
    [[1, 0], [0, 1], [0, 0]]
    >>> round(env.log_partition, 5)
    3.10906
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["HyperGrid"]


class HyperGrid:
    r"""The hypergrid of Bengio et al. (2021), "Flow Network based Generative Models for Non-Iterative
    Diverse Candidate Generation" (NeurIPS), as used by torchgfn and Malkin et al. (2022).

    States :math:`x \in \{0, \dots, H-1\}^D`, :math:`s_0 = 0`; actions: +1 on one coordinate (not past
    :math:`H-1`) or stop (:math:`D + 1` actions). With :math:`a_i = |x_i / (H-1) - 0.5|`,

    .. math::

        R(x) = R_0 + R_1 \prod_i \mathbb 1[0.25 < a_i \le 0.5] + R_2 \prod_i \mathbb 1[0.3 < a_i < 0.4].

    Modes are the states with :math:`R \ge R_0 + R_1 + R_2`; they sit in the :math:`2^D` corners
    (one state per corner for :math:`H = 8`). The encoding :meth:`obs` is one-hot per coordinate
    ("K-hot"), ``obs_dim = D * H``.

    Args:
        ndim: :math:`D`.
        height: :math:`H`.
        r0, r1, r2: the reward constants (defaults 0.1, 0.5, 2.0).

    Example:
        >>> env = HyperGrid(ndim=2, height=8)
        >>> sorted(set(env.log_reward(env.all_states(), torch.float64).exp().round(decimals=3).tolist()))
        [0.1, 0.6, 2.6]
        >>> env.modes.tolist()
        [[1, 1], [1, 6], [6, 1], [6, 6]]
    """

    def __init__(
        self, ndim: int = 2, height: int = 8, r0: float = 0.1, r1: float = 0.5, r2: float = 2.0
    ) -> None:
        if ndim < 1 or height < 2:
            raise ValueError(f"HyperGrid needs ndim >= 1 and height >= 2; got ndim={ndim}, height={height}")
        if not (math.isfinite(r0) and r0 > 0):
            raise ValueError(
                f"HyperGrid needs a finite r0 > 0 so that log R is finite; got r0={r0}; write e.g. r0=0.1"
            )
        for name, r in (("r1", r1), ("r2", r2)):
            if not (math.isfinite(r) and r >= 0):
                raise ValueError(
                    f"HyperGrid needs a finite {name} >= 0; got {name}={r}; write e.g. {name}=0.5"
                )
        self.ndim, self.height = ndim, height
        self.r0, self.r1, self.r2 = r0, r1, r2
        self.n_actions = ndim + 1
        self.stop_action = ndim
        self.obs_dim = ndim * height
        self.max_length = ndim * (height - 1) + 1
        self.n_states = height**ndim
        self.s0 = torch.zeros(ndim, dtype=torch.long)
        self._eye = torch.eye(height)  # K-hot lookup table (obs)
        # row a = e_a for a move, zeros for stop (the rollout's unchecked step)
        self._lr_table: tuple | None = None  # (key, log R of all states, index weights), see log_reward_fast
        self._units = torch.cat([torch.eye(ndim, dtype=torch.long), torch.zeros(1, ndim, dtype=torch.long)])

    def __repr__(self) -> str:
        return f"HyperGrid(ndim={self.ndim}, height={self.height}, r0={self.r0}, r1={self.r1}, r2={self.r2})"

    # -- encoding and masks ------------------------------------------------------------------------

    def obs(self, states: Tensor) -> Tensor:
        """K-hot encoding: ``(B, ndim)`` -> ``(B, ndim * height)`` float (default dtype)."""
        eye = self._eye
        dtype = torch.get_default_dtype()
        if eye.device != states.device or eye.dtype != dtype:
            eye = self._eye = torch.eye(self.height, dtype=dtype, device=states.device)
        return eye[states.long()].reshape(states.shape[0], -1)

    def forward_mask(self, states: Tensor) -> Tensor:
        """``(B, ndim + 1)`` bool: +1 on coordinate ``i`` allowed while ``x_i < H - 1``; stop always."""
        stop = torch.ones(states.shape[0], 1, dtype=torch.bool, device=states.device)
        return torch.cat([states < self.height - 1, stop], dim=1)

    def backward_mask(self, states: Tensor) -> Tensor:
        """``(B, ndim)`` bool: -1 on coordinate ``i`` allowed while ``x_i > 0``."""
        return states > 0

    # -- transitions -------------------------------------------------------------------------------

    def step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Forward step: ``x + e_a`` for ``a < ndim``; the stop action ``ndim`` returns ``x`` unchanged."""
        ok = self.forward_mask(states).gather(1, actions.long().clamp(0, self.ndim)[:, None]).squeeze(1)
        if bool(((actions < 0) | (actions > self.ndim) | ~ok).any()):
            raise ValueError(
                "HyperGrid.step got an action outside forward_mask(states); mask the policy first"
            )
        return states + F.one_hot(actions.long(), self.n_actions)[:, : self.ndim].to(states.dtype)

    def step_delta(self) -> Tensor:
        """``(ndim + 1, ndim)``: row ``a`` is the displacement of action ``a`` (``e_a``, zeros for stop);
        rollouts use ``s + delta[a]``, an unchecked :meth:`step` for actions drawn from the masked policy."""
        return self._units

    def forward_forbidden(self, states: Tensor) -> Tensor:
        """``~forward_mask(states)`` in two ops (rollout hot path)."""
        return F.pad(states >= self.height - 1, (0, 1))

    def backward_step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Backward step: ``x - e_a`` for ``a < ndim`` (``a`` must be allowed by :meth:`backward_mask`)."""
        ok = self.backward_mask(states).gather(1, actions.long().clamp(0, self.ndim - 1)[:, None]).squeeze(1)
        if bool(((actions < 0) | (actions >= self.ndim) | ~ok).any()):
            raise ValueError("HyperGrid.backward_step got an action outside backward_mask(states)")
        return states - F.one_hot(actions.long(), self.ndim).to(states.dtype)

    # -- reward ------------------------------------------------------------------------------------

    def log_reward(self, states: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``(B,)`` :math:`\\log R(x)` in ``dtype`` (default: torch's default dtype)."""
        dtype = dtype or torch.get_default_dtype()
        a = (states.to(torch.float64) / (self.height - 1) - 0.5).abs()
        band1 = ((a > 0.25) & (a <= 0.5)).all(dim=1)
        band2 = ((a > 0.3) & (a < 0.4)).all(dim=1)
        r = self.r0 + self.r1 * band1.to(torch.float64) + self.r2 * band2.to(torch.float64)
        return r.log().to(dtype)

    def log_reward_fast(self, states: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """:meth:`log_reward` by table lookup, for states known to be on the grid (rollouts)."""
        if self.n_states > 1 << 20:  # keep the table small
            return self.log_reward(states, dtype)
        dtype = dtype or torch.get_default_dtype()
        key = (states.device, dtype)
        if self._lr_table is None or self._lr_table[0] != key:
            table = self.log_reward(self.all_states(), dtype).to(states.device)
            weights = self.height ** torch.arange(self.ndim - 1, -1, -1, device=states.device)
            self._lr_table = (key, table, weights)
        _, table, weights = self._lr_table
        return table[(states.long() * weights).sum(dim=1)]

    def mode_mask(self, states: Tensor) -> Tensor:
        """``(B,)`` bool: :math:`R(x) \\ge R_0 + R_1 + R_2`."""
        rmax = self.r0 + self.r1 + self.r2
        return self.log_reward(states, torch.float64) >= math.log(rmax) - 1e-9

    def mode_id(self, states: Tensor) -> Tensor:
        """``(B,)`` long: which of the :math:`2^D` corner modes a mode state belongs to (-1 if not a mode)."""
        corner = (states.to(torch.float64) / (self.height - 1) > 0.5).long()
        weights = 2 ** torch.arange(self.ndim - 1, -1, -1, device=states.device)
        return torch.where(self.mode_mask(states), (corner * weights).sum(1), -1)

    @property
    def n_modes(self) -> int:
        """Number of corner modes that contain at least one mode state (``2^D`` for the usual sizes)."""
        return int(self.mode_id(self.all_states()).unique().ge(0).sum())

    @property
    def modes(self) -> Tensor:
        """``(M, ndim)`` all mode states, in :meth:`all_states` order."""
        s = self.all_states()
        return s[self.mode_mask(s)]

    # -- enumeration -------------------------------------------------------------------------------

    def all_states(self) -> Tensor:
        """``(H^D, ndim)`` every state; row ``k`` has :meth:`state_index` ``k`` (last coordinate fastest)."""
        grids = torch.meshgrid(*[torch.arange(self.height)] * self.ndim, indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=1)

    def state_index(self, states: Tensor) -> Tensor:
        """``(B,)`` long: :math:`\\sum_i x_i H^{D-1-i}`."""
        weights = self.height ** torch.arange(self.ndim - 1, -1, -1, device=states.device)
        return (states.long() * weights).sum(dim=1)

    @property
    def log_partition(self) -> float:
        """Exact :math:`\\log Z = \\log \\sum_x R(x)` (float64)."""
        return float(torch.logsumexp(self.log_reward(self.all_states(), torch.float64), dim=0))

    def true_distribution(self) -> Tensor:
        """``(H^D,)`` float64 target :math:`\\pi(x) = R(x) / Z` in :meth:`all_states` order."""
        return torch.softmax(self.log_reward(self.all_states(), torch.float64), dim=0)
