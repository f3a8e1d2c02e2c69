r"""Forward and backward sampling of GFlowNet trajectories: :func:`rollout` (on-policy, with exploration)
and :func:`backward_rollout` (from terminal states with :math:`P_B`, for replay).

Both return the padded layout of :class:`~flowforge.gflownet.Trajectories`: states ``(T + 1, B, ndim)``
(a trajectory repeats its last state after its stop) and actions ``(T, B)`` (``-1`` after the stop).
They run without autograd; :meth:`~flowforge.gflownet.GFlowNet.trajectories_from_actions` scores the
result with gradients.

**Exploration.** ``epsilon`` mixes the policy with the uniform one over allowed actions and
``temperature`` divides the logits, for choosing actions only. With ``epsilon = 0`` actions are drawn
by Gumbel-max, :math:`\arg\max_a (z_a / T + G_a)`; otherwise by the inverse CDF of the mixture.

**Fast paths.** An environment may implement the optional hooks of
:mod:`flowforge.core.contracts`: :class:`~flowforge.core.contracts.HasStepDelta` (a move is
``s + step_delta()[a]``, no checks) and :class:`~flowforge.core.contracts.HasForwardForbidden`
(``~forward_mask`` in fewer ops). A policy given as a plain ``nn.Sequential`` of ``Linear``/``ReLU``
is called layer by layer, without the module-call machinery.

Example:
    >>> import torch
    >>> from flowforge.gflownet import HyperGrid
    >>> from flowforge.nn import PolicyMLP
    >>> env = HyperGrid(ndim=2, height=4)
    >>> S, A = rollout(env, PolicyMLP(env.obs_dim, env.n_actions, 8, 1), 5, torch.Generator().manual_seed(0))
    >>> S.shape[1:], A.shape[0] == S.shape[0] - 1, bool((A == env.n_actions - 1).any(0).all())
    (torch.Size([5, 2]), True, True)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from flowforge.core.contracts import Environment, HasForwardForbidden, HasStepDelta
from flowforge.nn.policy import call_policy, plain_layers

__all__ = ["backward_rollout", "check_exploration", "check_mask", "check_out", "rollout"]


def check_out(logits: Tensor, mask: Tensor, what: str) -> None:
    """A clear error for a policy network whose output does not match the mask ``(B, n)``."""
    if logits.shape != mask.shape:
        raise ValueError(
            f"the {what} network must output {mask.shape[-1]} logits per state, got shape {tuple(logits.shape)}; "
            f"build it with that output size, e.g. MLP(dim=env.obs_dim, width=256, depth=2, out_dim={mask.shape[-1]})"
        )


def check_mask(mask: Tensor, n: int, which: str) -> None:
    """A clear error for an environment whose ``forward_mask`` / ``backward_mask`` has the wrong layout."""
    if mask.ndim != 2 or mask.shape[-1] != n or mask.dtype != torch.bool:
        what = "n_actions, stop last" if which == "forward" else "n_actions - 1, no stop column"
        raise ValueError(
            f"env.{which}_mask returned a {tuple(mask.shape)} {mask.dtype} tensor; it must be a (B, {n}) "
            f"bool tensor ({what})"
        )


def check_exploration(epsilon: float, temperature: float) -> None:
    """A clear error for an exploration rate outside ``[0, 1]`` or a non-positive temperature."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon is a mixing weight in [0, 1]; got {epsilon}")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0 (1 = the plain policy); got {temperature}")


@torch.no_grad()
def rollout(
    env: Environment,
    policy: nn.Module | Callable[[Tensor, Tensor], Tensor],
    n: int,
    generator: torch.Generator | None = None,
    *,
    epsilon: float = 0.0,
    temperature: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    start: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(T + 1, n, ndim)`` states and ``(T, n)`` actions (``-1`` after stop) of ``n`` rollouts from ``s0``
    (or from the states ``start``).

    Args:
        env: the environment.
        policy: a network ``(B, obs_dim) -> (B, n_actions)`` logits, called on ``env.obs(states)``, or
            a callable ``policy(states, allowed) -> (B, n_actions)`` logits (or log-probabilities).
        n: number of trajectories.
        generator: the source of randomness (its device is used for the draws).
        epsilon, temperature: exploration (see the module docstring).
        device: where the states live (default: the policy's parameters, else ``env.s0``'s device).
        dtype: float dtype of the encoding and the draws (default: torch's default dtype).
        start: optional ``(n, ndim)`` states to start from instead of ``s0`` (local search rebuilds
            from a junction state); ``T`` stays at most ``env.max_length``.
    """
    check_exploration(epsilon, temperature)
    net = policy if isinstance(policy, nn.Module) else None
    if device is None:
        p = next(net.parameters(), None) if net is not None else None
        device = p.device if p is not None else env.s0.device
    dev = torch.device(device)
    dtype = dtype or torch.get_default_dtype()
    stop = env.n_actions - 1
    L = env.max_length
    s0 = env.s0.to(dev)
    if start is not None and (start.ndim != 2 or start.shape != (n, *s0.shape)):
        raise ValueError(f"start must be ({n}, {s0.numel()}) states; got {tuple(start.shape)}")
    S = torch.empty((L + 1, n, *s0.shape), dtype=s0.dtype, device=dev)
    S[0] = s0 if start is None else start.to(dev, s0.dtype)
    A = torch.full((L, n), -1, dtype=torch.long, device=dev)
    delta = env.step_delta().to(dev, S.dtype) if isinstance(env, HasStepDelta) else None
    forbidden_fn = env.forward_forbidden if isinstance(env, HasForwardForbidden) else None
    obs_fn = env.obs
    check_mask(env.forward_mask(S[0]), env.n_actions, "forward")
    leaves = plain_layers(net) if net is not None else None
    if leaves is not None:  # check the output shape once, then call the layers without module hooks
        check_out(call_policy(net, obs_fn(S[0]).to(dtype)), env.forward_mask(S[0]), "forward policy (pf)")
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    gdev = generator.device if generator is not None else dev
    if epsilon > 0:  # inverse CDF of the mixture, u in (0, 1]: never picks a zero-probability action
        U = 1.0 - torch.rand((L, n, 1), generator=generator, device=gdev, dtype=dtype).to(dev)
    else:  # Gumbel-max: argmax(logits / T + G) ~ softmax(logits / T)
        G = torch.rand((L, n, env.n_actions), generator=generator, device=gdev, dtype=dtype).to(dev)
        G = G.clamp_min_(torch.finfo(dtype).tiny).log_().neg_().log_().neg_()  # finite: u = 0 is clamped
    neg_inf = float("-inf")
    T = L
    for t in range(L):
        s = S[t]
        forbidden = forbidden_fn(s) if forbidden_fn is not None else ~env.forward_mask(s)
        if net is None:
            logits = policy(s, ~forbidden)
        else:
            x = obs_fn(s).to(dtype)
            if leaves is None:
                logits = call_policy(net, x)
                check_out(logits, forbidden, "forward policy (pf)")
            else:
                for f in leaves:
                    x = f(x)
                logits = x
        z = logits.masked_fill(forbidden, neg_inf)
        if temperature != 1.0:
            z = z / temperature
        if epsilon > 0:
            allowed = (~forbidden).to(z.dtype)
            probs = (1 - epsilon) * torch.softmax(z, dim=-1) + epsilon * allowed / allowed.sum(
                -1, keepdim=True
            )
            cdf = probs.cumsum(-1)
            a = (cdf < U[t] * cdf[:, -1:]).sum(-1)
        else:
            a = (z + G[t]).argmax(-1)
        a.masked_fill_(done, stop)
        A[t] = a
        if delta is None:
            S[t + 1] = env.step(s, a)
        else:
            torch.add(s, delta[a], out=S[t + 1])
        done = a == stop
        if bool(done.all()):
            T = t + 1
            break
    A = A[:T]
    stops = A == stop
    A.masked_fill_(stops.cumsum(0) > stops.long(), -1)  # -1 after the first stop
    return S[: T + 1], A


@torch.no_grad()
def backward_rollout(
    env: Environment,
    backward_log_probs: Callable[[Tensor], Tensor],
    terminal: Tensor,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Trajectories drawn backwards with :math:`P_B` from terminal states ``(B, ndim)`` to ``s0``, returned
    in forward order (then a stop): ``(T + 1, B, ndim)`` states and ``(T, B)`` actions.

    ``backward_log_probs(states) -> (B, n_actions - 1)`` masked :math:`\\log P_B(\\cdot|s')`; backward
    action ``a`` undoes forward action ``a``. The states stay on ``terminal``'s device.
    """
    if terminal.ndim != 2 or terminal.shape[1:] != env.s0.shape:
        raise ValueError(f"terminal states must be (B, {env.s0.numel()}); got {tuple(terminal.shape)}")
    n = terminal.shape[0]
    s = terminal.long()
    dev = s.device
    if not bool(env.forward_mask(s)[:, -1].all()):
        raise ValueError("sample_backward needs terminal states (where env.forward_mask allows stop)")
    back, acts = [s], []
    s0 = env.s0.to(dev)
    at_s0 = (s == s0).all(1)
    for _ in range(env.max_length):
        if bool(at_s0.all()):
            break
        probs = backward_log_probs(s).exp()
        probs = torch.where(at_s0[:, None], torch.ones_like(probs), probs)
        gdev = generator.device if generator is not None else probs.device
        a = torch.multinomial(probs.to(gdev), 1, generator=generator).squeeze(1).to(dev)
        prev = s.clone()
        if bool((~at_s0).any()):
            prev[~at_s0] = env.backward_step(s[~at_s0], a[~at_s0])
        acts.append(torch.where(at_s0, torch.full_like(a, -1), a))
        s = prev
        back.append(s)
        at_s0 = (s == s0).all(1)
    if not bool(at_s0.all()):
        raise RuntimeError("backward sampling did not reach s0 within env.max_length steps")
    K = len(acts)  # backward moves, padded
    B = torch.stack(back)  # (K+1, n, ndim): B[k] = state after k backward moves
    moves = (torch.stack(acts) >= 0).sum(0) if K else torch.zeros(n, dtype=torch.long, device=dev)
    T = K + 1
    t = torch.arange(T + 1, device=dev)[:, None]  # forward positions
    src = (moves[None] - t).clamp(min=0)  # forward t <= moves  ->  back[moves - t]
    ar = torch.arange(n, device=dev)[None].expand(T + 1, n)
    states = B[src, ar]
    actions = torch.full((T, n), -1, dtype=torch.long, device=dev)
    if K:
        A = torch.stack(acts)  # (K, n)
        tt = torch.arange(T, device=dev)[:, None]
        k = (moves[None] - 1 - tt).clamp(0, K - 1)
        actions = torch.where(tt < moves[None], A[k, ar[:T]], actions)
    actions = torch.where(torch.arange(T, device=dev)[:, None] == moves[None], env.n_actions - 1, actions)
    return states, actions
