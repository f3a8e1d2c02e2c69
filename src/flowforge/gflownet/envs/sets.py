r"""Set generation with an additive energy: the task of forward-looking GFlowNets (Pan et al. 2023,
"Better Training of GFlowNets with Local Credit and Incomplete Trajectories", ICML, §5.1).

Choose a set of ``set_size`` distinct items from a universe of ``n_items``; each item :math:`u` has an
energy :math:`e(u)` and :math:`\mathcal E(s) = \sum_{u \in s} e(u)` is defined on *every* partial set,
so :math:`R(x) = e^{-\mathcal E(x)}` and each step earns :math:`e^{-e(u)}`: the setting in which
forward-looking DB/SubTB (``forward_looking=True``) assign credit locally and learn from incomplete
trajectories. The search metric of the paper is the mean reward of the top-``k`` unique sets found
(:class:`TopKTracker`).

Example:
    >>> env = SetGeneration(n_items=6, set_size=3, energies=torch.tensor([0.0, 1, 2, 3, 4, 5]))
    >>> s = env.step(env.s0[None], torch.tensor([2]))
    >>> s.tolist(), env.log_reward(s).tolist(), env.forward_mask(s)[0, -1].item()
    ([[0, 0, 1, 0, 0, 0]], [-2.0], False)
    >>> env.n_states, round(env.log_partition, 4)  # 1 + 6 + 15 + 20 subsets; sets of size 3
    (42, -2.3726)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SetGeneration", "TopKTracker", "fl_gfn_energies"]

#: (n_items, set_size) of the paper's small / medium / large tasks
SIZES: dict[str, tuple[int, int]] = {"small": (30, 20), "medium": (80, 60), "large": (100, 80)}


def fl_gfn_energies(n_items: int, seed: int = 0, n_levels: int | None = None) -> Tensor:
    """``(n_items,)`` float64 item energies in the style of the FL-GFN set task: ``n_levels`` distinct
    values uniform in :math:`(-1, 1)` (default ``n_items // 3``), each item drawn one of them with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    n_levels = n_levels or max(1, n_items // 3)
    levels = torch.rand(n_levels, generator=g, dtype=torch.float64) * 2 - 1
    return levels[torch.randint(0, n_levels, (n_items,), generator=g)]


class SetGeneration:
    r"""Sets of ``set_size`` items out of ``n_items`` with an additive energy (FL-GFN's set task).

    A state is the ``(n_items,)`` 0/1 membership vector, :math:`s_0 = 0`. Forward action ``i < n_items``
    adds item ``i`` (allowed while it is absent and the set is not full); the stop action
    (``n_items``) is allowed only on full sets, the terminal states. Backward action ``i`` removes item
    ``i``; a full set has ``set_size`` parents, so :math:`P_B` matters. ``log_reward`` is
    :math:`-\sum_{u \in s} e(u)` on every state (the energy of partial sets, needed by forward-looking
    losses).

    Args:
        n_items: universe size (paper: 30 / 80 / 100 for small / medium / large).
        set_size: items per set (paper: 20 / 60 / 80).
        energies: ``(n_items,)`` item energies; default :func:`fl_gfn_energies` with ``seed``.
        seed: seed of the default energies.

    Small universes (``n_items <= 20``) are enumerable for the exact DP of
    :mod:`flowforge.gflownet.exact` (``all_states``, ``state_index``, ``level``).
    """

    def __init__(
        self, n_items: int = 30, set_size: int = 20, energies: Tensor | None = None, seed: int = 0
    ) -> None:
        if not 1 <= set_size <= n_items:
            raise ValueError(f"SetGeneration needs 1 <= set_size <= n_items; got {set_size}, {n_items}")
        e = fl_gfn_energies(n_items, seed) if energies is None else torch.as_tensor(energies)
        e = e.to(torch.float64)
        if e.shape != (n_items,) or not bool(e.isfinite().all()):
            raise ValueError(f"energies must be a finite ({n_items},) tensor; got shape {tuple(e.shape)}")
        self.n_items, self.set_size, self.energies = n_items, set_size, e
        self.n_actions = n_items + 1
        self.stop_action = n_items
        self.obs_dim = n_items
        self.max_length = set_size + 1
        self.s0 = torch.zeros(n_items, dtype=torch.long)
        self._units = torch.cat(
            [torch.eye(n_items, dtype=torch.long), torch.zeros(1, n_items, dtype=torch.long)]
        )
        self._rank: Tensor | None = None

    def __repr__(self) -> str:
        return f"SetGeneration(n_items={self.n_items}, set_size={self.set_size})"

    # -- encoding, masks, transitions --------------------------------------------------------------

    def obs(self, states: Tensor) -> Tensor:
        """``(B, n_items)`` float membership."""
        return states.to(torch.get_default_dtype())

    def level(self, states: Tensor) -> Tensor:
        """``(B,)`` set size."""
        return states.sum(1)

    def forward_mask(self, states: Tensor) -> Tensor:
        """``(B, n_items + 1)``: absent items while not full; stop only when full."""
        full = self.level(states) >= self.set_size
        return torch.cat([(states == 0) & ~full[:, None], full[:, None]], dim=1)

    def forward_forbidden(self, states: Tensor) -> Tensor:
        return ~self.forward_mask(states)

    def step_delta(self) -> Tensor:
        """``(n_items + 1, n_items)``: adding item ``a`` is ``s + e_a``; stop adds nothing."""
        return self._units

    def backward_mask(self, states: Tensor) -> Tensor:
        """``(B, n_items)``: present items can be removed."""
        return states == 1

    def step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Add item ``a``; stop returns the state unchanged."""
        a = actions.long()
        ok = self.forward_mask(states).gather(1, a.clamp(0, self.n_items)[:, None]).squeeze(1)
        if bool(((a < 0) | (a > self.n_items) | ~ok).any()):
            raise ValueError(
                "SetGeneration.step got an action outside forward_mask(states); mask the policy first"
            )
        return states + F.one_hot(a, self.n_actions)[:, : self.n_items].to(states.dtype)

    def backward_step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Remove item ``a`` (it must be present)."""
        a = actions.long()
        ok = self.backward_mask(states).gather(1, a.clamp(0, self.n_items - 1)[:, None]).squeeze(1)
        if bool(((a < 0) | (a >= self.n_items) | ~ok).any()):
            raise ValueError("SetGeneration.backward_step got an action outside backward_mask(states)")
        return states - F.one_hot(a, self.n_items).to(states.dtype)

    # -- reward ------------------------------------------------------------------------------------

    def log_reward(self, states: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``(B,)`` :math:`-\\mathcal E(s) = -\\sum_{u \\in s} e(u)`, on every (partial) set."""
        dtype = dtype or torch.get_default_dtype()
        return -(states.to(torch.float64) @ self.energies.to(states.device)).to(dtype)

    @property
    def best_log_reward(self) -> float:
        """:math:`\\max_x \\log R(x)`: the ``set_size`` lowest energies."""
        return float(-self.energies.sort().values[: self.set_size].sum())

    @property
    def log_partition(self) -> float:
        """Exact :math:`\\log Z = \\log e_{k}(e^{-e(u_1)}, \\dots)` (elementary symmetric polynomial of
        order ``set_size``, in log space; any universe size)."""
        w = -self.energies
        # E[j] = log e_j of the items seen so far
        E = torch.full((self.set_size + 1,), -math.inf, dtype=torch.float64)
        E[0] = 0.0
        for wi in w:
            E[1:] = torch.logaddexp(E[1:], E[:-1] + wi)
        return float(E[self.set_size])

    # -- enumeration (small universes) --------------------------------------------------------------

    def _check_small(self) -> None:
        if self.n_items > 20:
            raise ValueError(f"enumeration needs n_items <= 20 (2^n_items subsets); got {self.n_items}")

    def all_states(self) -> Tensor:
        """``(n_states, n_items)``: subsets of size ``<= set_size``, by size, then by binary code."""
        self._check_small()
        codes = torch.arange(1 << self.n_items)
        bits = (codes[:, None] >> torch.arange(self.n_items - 1, -1, -1)) & 1
        size = bits.sum(1)
        keep = size <= self.set_size
        order = torch.argsort(size[keep] * (1 << self.n_items) + codes[keep])
        return bits[keep][order]

    def state_index(self, states: Tensor) -> Tensor:
        """``(B,)`` row of :meth:`all_states`."""
        if self._rank is None:
            s = self.all_states()
            rank = torch.full((1 << self.n_items,), -1, dtype=torch.long)
            rank[self._code(s)] = torch.arange(s.shape[0])
            self._rank = rank
        return self._rank.to(states.device)[self._code(states)]

    def _code(self, states: Tensor) -> Tensor:
        w = 2 ** torch.arange(self.n_items - 1, -1, -1, device=states.device)
        return (states.long() * w).sum(1)

    @property
    def n_states(self) -> int:
        return sum(math.comb(self.n_items, k) for k in range(self.set_size + 1))

    def true_distribution(self) -> Tensor:
        """``(n_states,)`` float64 :math:`R(x)/Z` on full sets, 0 on partial ones."""
        s = self.all_states()
        lr = torch.where(self.level(s) == self.set_size, self.log_reward(s, torch.float64), -math.inf)
        return torch.softmax(lr, dim=0)


class TopKTracker:
    """The unique terminal states found so far and the mean reward of the best ``k`` (FL-GFN's
    ``mean_top_k_R``; rewards, not log-rewards).

    Example:
        >>> t = TopKTracker(k=2)
        >>> t.add(torch.tensor([[1, 0], [1, 0], [0, 1]]), torch.tensor([0.0, 0.0, -1.0]))
        >>> len(t), round(t.mean_top_k(), 4)
        (2, 0.6839)
    """

    def __init__(self, k: int = 100) -> None:
        self.k = k
        self._seen: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, states: Tensor, log_reward: Tensor) -> None:
        """Record ``(B, ndim)`` terminal states with their ``(B,)`` log-rewards."""
        s = states.detach().to("cpu", torch.int16).numpy()
        lr = log_reward.detach().double().cpu().tolist()
        for row, r in zip(s, lr):
            self._seen.setdefault(row.tobytes(), r)

    def mean_top_k(self, k: int | None = None) -> float:
        """Mean of :math:`R` over the top ``k`` unique states (fewer if fewer were found)."""
        if not self._seen:
            return float("nan")
        best = torch.tensor(list(self._seen.values()), dtype=torch.float64).topk(min(k or self.k, len(self)))
        return float(best.values.exp().mean())
