r"""Exact evaluation of GFlowNets on enumerable environments, by dynamic programming over the DAG.

For a forward policy :math:`P_F`, the probability of reaching state :math:`s` obeys
:math:`\rho(s_0) = 1`, :math:`\rho(s') = \sum_{s \to s'} \rho(s) P_F(s'|s)`, and the terminal
distribution is :math:`p(x) = \rho(x) P_F(\text{stop}|x)`. States are visited in topological order;
for the hypergrid (and any environment whose moves raise the coordinate sum by one) that is the order
of :math:`\sum_i x_i`; an environment may instead define ``level(states)`` (e.g.
:class:`~flowforge.gflownet.BitSequence`, the number of written words). The target is :math:`\pi(x) = R(x)/Z`.

Metrics follow torchgfn's ``env.validate`` names but are *exact* (no sampling noise):
``l1_sum`` :math:`\sum_x |p - \pi|` (torchgfn >= 2 convention), ``l1_mean`` (the mean over states of
Bengio et al. 2021's code), ``jsd`` (Jensen-Shannon divergence, nats) and ``logz_error``
:math:`|\log \hat Z - \log Z|`.

Example:
    >>> import torch
    >>> from flowforge.gflownet import HyperGrid
    >>> env = HyperGrid(ndim=2, height=8)
    >>> log_f, log_pf = exact_flows(env)            # the optimal policy for a uniform P_B
    >>> p = terminal_distribution(lambda s: log_pf[env.state_index(s)], env)
    >>> bool(l1_sum(p, env.true_distribution()) < 1e-12), round(float(log_f[0]), 5)
    (True, 3.10906)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "exact_flows",
    "exact_metrics",
    "jsd",
    "l1_mean",
    "l1_sum",
    "logz_error",
    "modes_found",
    "terminal_distribution",
]

LogProbs = Callable[[Tensor], Tensor]


def _levels(env: Any) -> tuple[Tensor, Tensor]:
    states = env.all_states()
    if not bool((env.state_index(states) == torch.arange(states.shape[0])).all()):
        raise ValueError("env.all_states() must be in env.state_index order")
    level = env.level(states) if hasattr(env, "level") else states.sum(dim=1)
    return states, level


def _uniform_pb(env: Any) -> LogProbs:
    def log_pb(states: Tensor) -> Tensor:
        mask = env.backward_mask(states)
        n = mask.sum(-1, keepdim=True).clamp(min=1).to(torch.float64)
        return torch.where(mask, -n.log(), torch.tensor(float("-inf"), dtype=torch.float64))

    return log_pb


@torch.no_grad()
def terminal_distribution(policy: Any, env: Any) -> Tensor:
    """Exact terminal distribution :math:`p(x)` of a forward policy, ``(n_states,)`` float64.

    Args:
        policy: a :class:`~flowforge.gflownet.GFlowNet` (its ``forward_log_probs``) or a callable
            ``states (B, ndim) -> (B, n_actions)`` masked log-probabilities (``-inf`` = not allowed).
        env: an enumerable environment (``all_states``, ``state_index``) whose moves raise
            ``env.level(states)`` by one (default level: the coordinate sum, as on the hypergrid).

    Returns:
        ``p`` in ``env.all_states()`` order; it sums to 1.
    """
    fn = getattr(policy, "forward_log_probs", policy)
    states, level = _levels(env)
    p = fn(states).to(torch.float64).exp()
    p = torch.where(env.forward_mask(states), p, p.new_zeros(()))
    reach = torch.zeros(states.shape[0], dtype=torch.float64)
    reach[env.state_index(env.s0[None])] = 1.0
    stop = env.n_actions - 1
    for k in range(int(level.max()) + 1):
        idx = (level == k).nonzero().squeeze(1)
        for a in range(stop):
            ok = idx[env.forward_mask(states[idx])[:, a]]
            if ok.numel() == 0:
                continue
            child = env.state_index(env.step(states[ok], torch.full((ok.numel(),), a)))
            reach.index_add_(0, child, reach[ok] * p[ok, a])
    return reach * p[:, stop]


@torch.no_grad()
def exact_flows(env: Any, backward_log_probs: LogProbs | None = None) -> tuple[Tensor, Tensor]:
    r"""The unique flow consistent with a fixed :math:`P_B` (uniform by default), float64.

    In reverse topological order :math:`F(s) = R(s)\mathbb 1[\text{stop allowed}] + \sum_{s \to s'} F(s') P_B(s|s')`; then
    :math:`P_F(s'|s) = F(s') P_B(s|s') / F(s)`, :math:`P_F(\text{stop}|s) = R(s)/F(s)` and
    :math:`F(s_0) = Z`. With these, TB, DB and SubTB residuals are all zero.

    Returns:
        ``log_F`` ``(n_states,)`` and ``log_pf`` ``(n_states, n_actions)`` (``-inf`` where not allowed),
        in ``env.all_states()`` order.
    """
    log_pb_fn = backward_log_probs or _uniform_pb(env)
    states, level = _levels(env)
    n, stop = states.shape[0], env.n_actions - 1
    # the stop edge carries R(s) only where stopping is allowed (partial objects may have a reward too)
    reward = torch.where(env.forward_mask(states)[:, stop], env.log_reward(states, torch.float64).exp(), 0.0)
    flow = torch.zeros(n, dtype=torch.float64)
    child_contrib = torch.full((n, env.n_actions), float("-inf"), dtype=torch.float64)
    child_contrib[:, stop] = reward.log()
    for k in range(int(level.max()), -1, -1):
        idx = (level == k).nonzero().squeeze(1)
        total = reward[idx].clone()
        for a in range(stop):
            ok = env.forward_mask(states[idx])[:, a]
            if not bool(ok.any()):
                continue
            src = idx[ok]
            child = env.step(states[src], torch.full((src.numel(),), a))
            edge = flow[env.state_index(child)] * log_pb_fn(child).to(torch.float64)[:, a].exp()
            child_contrib[src, a] = edge.log()
            total[ok] += edge
        flow[idx] = total
    log_f = flow.log()
    return log_f, child_contrib - log_f[:, None]


def l1_sum(p: Tensor, q: Tensor) -> Tensor:
    """:math:`\\sum_x |p(x) - q(x)|` (torchgfn's ``l1_dist``)."""
    return (p - q).abs().sum()


def l1_mean(p: Tensor, q: Tensor) -> Tensor:
    """:math:`\\frac1{|X|}\\sum_x |p(x) - q(x)|` (Bengio et al. 2021's empirical L1)."""
    return (p - q).abs().mean()


def jsd(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon divergence in nats, :math:`\\tfrac12 KL(p\\|m) + \\tfrac12 KL(q\\|m)`, :math:`m=(p+q)/2`.

    Example:
        >>> p = torch.tensor([1.0, 0.0])
        >>> round(float(jsd(p, p)), 6), round(float(jsd(p, p.flip(0))), 6)  # 0 and log 2
        (0.0, 0.693147)
    """
    m = 0.5 * (p + q)

    def kl(a: Tensor) -> Tensor:
        return torch.where(a > 0, a * (a.log() - m.log()), a.new_zeros(())).sum()

    return 0.5 * kl(p) + 0.5 * kl(q)


def logz_error(log_z: float | Tensor, env: Any) -> float:
    """:math:`|\\log \\hat Z - \\log Z|` against ``env.log_partition``."""
    return abs(float(log_z) - env.log_partition)


def modes_found(env: Any, states: Tensor) -> int:
    """Number of distinct modes (``env.mode_id``) among ``states`` ``(B, ndim)``; compare ``env.n_modes``.

    Example:
        >>> from flowforge.gflownet import HyperGrid
        >>> env = HyperGrid(2, 8)
        >>> modes_found(env, torch.tensor([[1, 1], [1, 1], [6, 6], [0, 0]])), env.n_modes
        (2, 4)
    """
    ids = env.mode_id(states)
    return int(ids[ids >= 0].unique().numel())


def exact_metrics(model: Any, env: Any) -> dict[str, float]:
    """``{"l1_sum", "l1_mean", "jsd", "logz_error"}`` of a GFlowNet's exact terminal distribution."""
    p = terminal_distribution(model, env)
    pi = env.true_distribution()
    with torch.no_grad():
        lz = float(model.log_z)
    return {
        "l1_sum": float(l1_sum(p, pi)),
        "l1_mean": float(l1_mean(p, pi)),
        "jsd": float(jsd(p, pi)),
        "logz_error": logz_error(lz, env),
    }
