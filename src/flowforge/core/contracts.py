"""The contracts everything composes through, as ``typing.Protocol`` s (DESIGN.md, "The few contracts").

Every implementation in the package is checked against these by ``tests/test_contracts.py``.

============================  ===========================================================
protocol                      implemented by
============================  ===========================================================
:class:`Generator`            ``FlowGenerator``, ``RiemannianGenerator``, ``Flow`` (and ``TARFlow``), ``GFlowNetGenerator``, run generators
:class:`Objective`            ``FlowMatching``, ``Flow``, ``ReverseKL``, every ``GFlowNet`` objective
:class:`Bijection`            every normalizing-flow layer (couplings, autoregressive, linear, residual, TARFlow blocks)
:class:`Energy`               ``data.energies.Energy`` and its subclasses, ``user_energy``
:class:`Environment`          ``gflownet.envs``: ``HyperGrid``, ``BitSequence``, ``SetGeneration``, ``Ising``, ...
:class:`HasStepDelta`         optional rollout hook ``step_delta()`` (``HyperGrid``, ``SetGeneration``, ``Ising``, ...)
:class:`HasForwardForbidden`  optional rollout hook ``forward_forbidden(states)`` (``HyperGrid``, ``SetGeneration``)
:class:`HasFastLogReward`     optional rollout hook ``log_reward_fast(states, dtype)`` (``HyperGrid``)
:class:`FastEnvironment`      all three hooks at once (``HyperGrid``)
============================  ===========================================================
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "Bijection",
    "Energy",
    "Environment",
    "FastEnvironment",
    "Generator",
    "HasFastLogReward",
    "HasForwardForbidden",
    "HasStepDelta",
    "Objective",
]


@runtime_checkable
class Generator(Protocol):
    """What a trained model is, in every family: ``sample(n, *, cond=None, generator=None, **opts)``.

    ``sample`` returns ``(n, *event)``; a family with a density adds ``log_prob(x) -> (B,)``.
    """

    def sample(self, n: int, **opts: Any) -> Tensor: ...


@runtime_checkable
class Objective(Protocol):
    """A training method: ``loss(batch) -> scalar Tensor``; the Trainer needs nothing else.

    A model that draws its own batches (GFlowNets, reverse KL) sets ``makes_own_batches = True`` and
    receives a :class:`~flowforge.train.BatchRequest` ``(size, generator, device)`` as ``batch``.
    """

    def loss(self, batch: Any) -> Tensor: ...


@runtime_checkable
class Bijection(Protocol):
    """An invertible map that reports its log-Jacobian with the value.

    ``forward(x, **cond) -> (z, ladj)`` with ``ladj = log|det dz/dx|`` of shape ``(B,)``;
    ``inverse(z, **cond) -> (x, ladj)`` with ``ladj = log|det dx/dz|`` (so the two sum to zero).
    """

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]: ...

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class Energy(Protocol):
    r"""A Boltzmann target :math:`\pi(x) \propto e^{-E(x)}` in units of kT.

    ``energy: (B, dim) -> (B,)``; ``log_z`` is :math:`\log Z` when known, else ``None``.
    """

    dim: int
    log_z: float | None

    def energy(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class Environment(Protocol):
    """What a GFlowNet needs from a discrete environment (states are ``(B, ndim)`` long tensors).

    Attributes:
        s0: the initial state, ``(ndim,)``.
        n_actions: number of forward actions; the last one is *stop*.
        obs_dim: size of the float encoding :meth:`obs`.
        max_length: the longest possible trajectory, counted in actions (stop included).

    Methods act on a batch; enumerable environments add ``all_states()`` and ``state_index(states)``.
    """

    s0: Tensor
    n_actions: int
    obs_dim: int
    max_length: int

    def obs(self, states: Tensor) -> Tensor:
        """``(B, ndim)`` long -> ``(B, obs_dim)`` float encoding for the networks."""
        ...

    def forward_mask(self, states: Tensor) -> Tensor:
        """``(B, n_actions)`` bool: allowed forward actions (stop is last)."""
        ...

    def backward_mask(self, states: Tensor) -> Tensor:
        """``(B, n_actions - 1)`` bool: allowed backward actions (all False at ``s0``)."""
        ...

    def step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Apply forward ``actions`` ``(B,)``; stop leaves the state unchanged."""
        ...

    def backward_step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Undo forward ``actions`` ``(B,)`` (non-stop)."""
        ...

    def log_reward(self, states: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``(B,)`` log-reward of terminal states, in ``dtype`` (default: torch's default dtype)."""
        ...


@runtime_checkable
class HasStepDelta(Protocol):
    """Optional rollout hook of an :class:`Environment` whose moves are fixed displacements.

    ``step_delta()``: ``(n_actions, ndim)`` long, row ``a`` the displacement of action ``a`` (zeros for
    stop), so ``step(s, a) == s + step_delta()[a]`` for every ``a`` that ``forward_mask(s)`` allows; a
    rollout then steps without checks.
    """

    def step_delta(self) -> Tensor: ...


@runtime_checkable
class HasForwardForbidden(Protocol):
    """Optional rollout hook: ``forward_forbidden(states) -> (B, n_actions)`` bool, equal to
    ``~forward_mask(states)`` but cheaper (the rollout's hot path needs the complement)."""

    def forward_forbidden(self, states: Tensor) -> Tensor: ...


@runtime_checkable
class HasFastLogReward(Protocol):
    """Optional rollout hook: ``log_reward_fast(states, dtype) -> (B,)``, equal to
    :meth:`Environment.log_reward` for states known to be reachable (e.g. by table lookup)."""

    def log_reward_fast(self, states: Tensor, dtype: torch.dtype | None = None) -> Tensor: ...


@runtime_checkable
class FastEnvironment(HasStepDelta, HasForwardForbidden, HasFastLogReward, Protocol):
    """An environment with all three optional rollout hooks (each is detected on its own, with
    ``isinstance(env, HasStepDelta)`` etc.; this one only names the complete set)."""
