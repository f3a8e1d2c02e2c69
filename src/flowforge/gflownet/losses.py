r"""GFlowNet objectives: trajectory balance, detailed balance, sub-trajectory balance.

A :class:`GFlowNet` holds a forward policy :math:`P_F(s' \mid s)` (a network giving logits over the
environment's actions, masked, the last action being *stop*), a backward policy
:math:`P_B(s \mid s')` (a network over the non-stop actions, or uniform over the parents with
``uniform_pb=True``) and, per objective, :math:`\log Z` or a state flow :math:`\log F(s)`.

A trajectory :math:`\tau = (s_0 \to s_1 \to \dots \to s_n = x \to s_f)` ends with an explicit stop
action; the stop transition has :math:`P_B = 1` and, for a terminal edge,
:math:`F(x \to s_f) = R(x)`.

- **TB** (Malkin et al. 2022, "Trajectory balance: improved credit assignment in GFlowNets"):
  :math:`\big(\log Z + \sum_t \log P_F(s_{t+1}|s_t) - \log R(x) - \sum_t \log P_B(s_t|s_{t+1})\big)^2`.
- **DB** (Bengio et al. 2023, "GFlowNet Foundations"; the flow-matching view of Bengio et al. 2021):
  per transition :math:`\big(\log F(s) + \log P_F(s'|s) - \log F(s') - \log P_B(s|s')\big)^2`, with
  :math:`\log F(s_f\text{-edge})` replaced by :math:`\log R(x)` on the stop transition.
- **SubTB** (Madan et al. 2023, "Learning GFlowNets from partial episodes for improved convergence
  and stability"): for every sub-trajectory :math:`s_i \to \dots \to s_j`,
  :math:`r_{ij} = \log F(s_i) + \sum_{k=i}^{j-1} (\log P_F - \log P_B) - \log F(s_j)`, weighted
  :math:`\lambda^{j-i}` normalised within each trajectory ("geometric within", torchgfn's default).

**Exploration.** ``epsilon`` mixes the sampling policy with the uniform one over allowed actions and
``temperature`` divides the logits, *for choosing actions only*: the log-probabilities that enter the
losses are always those of the untempered, unexplored policy, which is the correct off-policy
handling for these objectives (any full-support behaviour policy is allowed).

**log Z learning rate.** torchgfn trains :math:`\log Z` with lr 1e-1 and the policy with 1e-3. The
flowforge trainer has one learning rate, so :class:`TrajectoryBalance` stores a raw parameter and uses
:math:`\log Z = s \cdot \text{raw}` with ``log_z_lr_scale`` :math:`s = 100` by default: under Adam the
effective step on :math:`\log Z` is then :math:`s` times the policy's (1e-1 at lr 1e-3).

Example:
    >>> import torch
    >>> from flowforge.gflownet import HyperGrid, TrajectoryBalance
    >>> env = HyperGrid(ndim=2, height=4)
    >>> tb = TrajectoryBalance(env, width=16, depth=1)
    >>> tr = tb.sample(5, generator=torch.Generator().manual_seed(0))
    >>> tr.states.shape[1:], tr.log_pf.shape == tr.log_pb.shape, bool(tr.valid[0].all())
    (torch.Size([5, 2]), True, True)
    >>> tb.loss(tr).ndim
    0
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowforge.gflownet.envs import Environment
from flowforge.nn import MLP

__all__ = [
    "DetailedBalance",
    "FlowMatching",
    "GFlowNet",
    "GFlowNetGenerator",
    "LogPartitionVariance",
    "PolicyMLP",
    "SubTrajectoryBalance",
    "Trajectories",
    "TrajectoryBalance",
]


class PolicyMLP(nn.Sequential):
    """Plain MLP ``(B, in_dim) -> (B, out_dim)`` with ReLU (torchgfn's policy net: 256 x 2 hidden).

    Example:
        >>> PolicyMLP(8, 3, width=16, depth=2)(torch.zeros(4, 8)).shape
        torch.Size([4, 3])
    """

    def __init__(self, in_dim: int, out_dim: int, width: int = 256, depth: int = 2) -> None:
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, out_dim))
        super().__init__(*layers)


def shared_trunk_policies(
    in_dim: int, n_actions: int, width: int = 256, depth: int = 2
) -> tuple[nn.Sequential, nn.Sequential]:
    """P_F ``(B, in_dim) -> (B, n_actions)`` and P_B ``-> (B, n_actions - 1)`` as two heads on one ReLU trunk
    (torchgfn's hypergrid layout); the rollout runs the shared trunk once.

    Example:
        >>> pf, pb = shared_trunk_policies(8, 3, width=16, depth=2)
        >>> pf[0] is pb[0], pf(torch.zeros(4, 8)).shape, pb(torch.zeros(4, 8)).shape
        (True, torch.Size([4, 3]), torch.Size([4, 2]))
    """
    trunk = nn.Sequential(*list(PolicyMLP(in_dim, width, width, depth))[:-1])
    return nn.Sequential(trunk, nn.Linear(width, n_actions)), nn.Sequential(
        trunk, nn.Linear(width, n_actions - 1)
    )


def _apply(net: nn.Module, x: Tensor) -> Tensor:
    """Call ``net(x)``; a ``flowforge.nn.MLP`` (time-conditioned) gets ``t = 0``."""
    if isinstance(net, MLP):
        return net(x, x.new_zeros(x.shape[0]))
    return net(x)


def _plain_leaves(net: nn.Module) -> list[Callable[[Tensor], Tensor]] | None:
    """The layers of a (nested) ``nn.Sequential`` without hooks as plain functions, in call order, or
    ``None`` if ``net`` is anything else (calling them skips only the module-call machinery)."""
    from torch.nn.modules import module as _m

    if any((_m._global_forward_hooks, _m._global_forward_pre_hooks)):
        return None
    out: list[Callable[[Tensor], Tensor]] = []

    def walk(mod: nn.Module) -> bool:
        if mod._forward_hooks or mod._forward_pre_hooks:
            return False
        if type(mod) is nn.Sequential:
            return all(walk(c) for c in mod)
        if type(mod) is nn.Linear:
            out.append(functools.partial(F.linear, weight=mod.weight, bias=mod.bias))
            return True
        if type(mod) is nn.ReLU and not mod.inplace:
            out.append(torch.relu)
            return True
        if isinstance(mod, nn.Sequential) or next(mod.children(), None) is not None:
            return False
        out.append(mod.forward)
        return True

    return out if walk(net) else None


def _check_out(logits: Tensor, mask: Tensor, what: str) -> None:
    if logits.shape != mask.shape:
        raise ValueError(
            f"the {what} network must output {mask.shape[-1]} logits per state, got shape {tuple(logits.shape)}; "
            f"build it with that output size, e.g. MLP(dim=env.obs_dim, width=256, depth=2, out_dim={mask.shape[-1]})"
        )


def _check_mask(mask: Tensor, n: int, which: str) -> None:
    """A clear error for an environment whose ``forward_mask`` / ``backward_mask`` has the wrong layout."""
    if mask.ndim != 2 or mask.shape[-1] != n or mask.dtype != torch.bool:
        what = "n_actions, stop last" if which == "forward" else "n_actions - 1, no stop column"
        raise ValueError(
            f"env.{which}_mask returned a {tuple(mask.shape)} {mask.dtype} tensor; it must be a (B, {n}) "
            f"bool tensor ({what})"
        )


def _check_layout(states: Tensor, actions: Tensor, n_actions: int) -> None:
    if actions.ndim != 2 or actions.dtype != torch.long or states.ndim < 3:
        raise ValueError(
            f"trajectories need actions (T, B) long and states (T + 1, B, *state); got actions "
            f"{tuple(actions.shape)} {actions.dtype}, states {tuple(states.shape)}"
        )
    if states.shape[:2] != (actions.shape[0] + 1, actions.shape[1]):
        raise ValueError(
            f"states must be (T + 1, B, ...) for actions (T, B) = {tuple(actions.shape)}; got {tuple(states.shape)}"
        )
    if bool(((actions < -1) | (actions >= n_actions)).any()):
        raise ValueError(f"actions must lie in [0, {n_actions}) (or -1 after the stop)")


def _check_exploration(epsilon: float, temperature: float) -> None:
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon is a mixing weight in [0, 1]; got {epsilon}")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0 (1 = the plain policy); got {temperature}")


def _masked_log_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Log-softmax over allowed entries; disallowed ones are ``-inf``. Rows with no allowed entry
    are computed as if all were allowed (finite, so no NaN gradient), and must be masked by the caller."""
    safe = mask | ~mask.any(dim=-1, keepdim=True)
    return torch.log_softmax(logits.masked_fill(~safe, float("-inf")), dim=-1)


@dataclass
class Trajectories:
    """A batch of ``B`` trajectories padded to ``T`` actions (the stop action included).

    Attributes:
        states: ``(T + 1, B, ndim)`` long; after its stop action a trajectory repeats its last state.
        actions: ``(T, B)`` long, ``-1`` after the stop action.
        valid: ``(T, B)`` bool, True for real actions (moves and the stop).
        lengths: ``(B,)`` number of actions including stop (``n + 1`` for ``n`` moves).
        terminal: ``(B, ndim)`` the terminal states :math:`x` (of an incomplete trajectory: its last state).
        log_pf: ``(T, B)`` :math:`\\log P_F(a_t | s_t)` of the *unexplored* policy (0 when not valid).
        log_pb: ``(T, B)`` :math:`\\log P_B(s_t | s_{t+1})`; 0 for stop and padding.
        log_reward: ``(B,)`` :math:`\\log R(x)` (for an incomplete trajectory: of its last state).
        complete: ``(B,)`` bool, True where the trajectory ends with its stop action; ``None`` means
            all complete. Incomplete trajectories (:meth:`GFlowNet.truncate`) train only objectives
            that need no terminal reward: forward-looking DB/SubTB (and plain DB/SubTB on the moves).
    """

    states: Tensor
    actions: Tensor
    valid: Tensor
    lengths: Tensor
    terminal: Tensor
    log_pf: Tensor
    log_pb: Tensor
    log_reward: Tensor
    complete: Tensor | None = None

    @property
    def is_complete(self) -> Tensor:
        """``(B,)`` bool: :attr:`complete`, all True when it is ``None``."""
        if self.complete is None:
            return torch.ones_like(self.lengths, dtype=torch.bool)
        return self.complete


class GFlowNet(nn.Module):
    """Base class: forward/backward policies, on-policy sampling, a ``loss(batch)`` for the trainer.

    Subclasses implement :meth:`objective` on a :class:`Trajectories` batch.

    Args:
        env: a discrete :class:`~flowforge.gflownet.envs.Environment`.
        pf: forward policy net ``(B, obs_dim) -> (B, n_actions)`` logits; default :class:`PolicyMLP`.
        pb: backward policy net ``(B, obs_dim) -> (B, n_actions - 1)``; default :class:`PolicyMLP`
            unless ``uniform_pb``.
        uniform_pb: use :math:`P_B(s|s') = 1 / \\#\\text{parents}(s')` (no parameters).
        width, depth: size of the default networks.
        epsilon: uniform exploration rate used by :meth:`loss` when sampling.
        temperature: logit temperature used by :meth:`loss` when sampling.
        replay_buffer: a :class:`~flowforge.gflownet.ReplayBuffer` (or prioritized one) of terminal
            states; :meth:`loss` adds every on-policy terminal state to it.
        replay_ratio: fraction :math:`\\rho \\in [0, 1)` of each batch drawn from the buffer: of a batch
            of size ``n``, ``round(rho * n)`` trajectories are sampled *backwards* with :math:`P_B`
            from buffered terminal states (:meth:`sample_backward`) and the rest on-policy; the loss
            is the size-weighted mean of the objective on both parts (off-policy training, valid for
            TB/DB/SubTB/ZVar since any full-support behaviour distribution is allowed).
    """

    def __init__(
        self,
        env: Environment,
        pf: nn.Module | None = None,
        pb: nn.Module | None = None,
        *,
        uniform_pb: bool = False,
        width: int = 256,
        depth: int = 2,
        epsilon: float = 0.0,
        temperature: float = 1.0,
        replay_buffer: Any = None,
        replay_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= replay_ratio < 1.0:
            raise ValueError(f"replay_ratio must be in [0, 1); got {replay_ratio}")
        if replay_ratio > 0 and replay_buffer is None:
            raise ValueError("replay_ratio > 0 needs a replay_buffer (e.g. ReplayBuffer(capacity=1000))")
        self.replay_buffer, self.replay_ratio = replay_buffer, float(replay_ratio)
        if uniform_pb and pb is not None:
            raise ValueError("pass either a pb network or uniform_pb=True, not both")
        self.env = env
        self.pf = pf if pf is not None else PolicyMLP(env.obs_dim, env.n_actions, width, depth)
        self.pb = (
            None
            if uniform_pb
            else (pb if pb is not None else PolicyMLP(env.obs_dim, env.n_actions - 1, width, depth))
        )
        _check_exploration(epsilon, temperature)
        self.epsilon, self.temperature = epsilon, temperature

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _obs(self, states: Tensor) -> Tensor:
        return self.env.obs(states).to(self._dtype)

    def forward_logits(self, states: Tensor, mask: Tensor) -> Tensor:
        """``(B, n_actions)`` unmasked forward logits (the ``pf`` network's output; subclasses such as
        :class:`~flowforge.gflownet.FlowMatching` override it)."""
        logits = _apply(self.pf, self._obs(states))
        _check_out(logits, mask, "forward policy (pf)")
        return logits

    def forward_log_probs(self, states: Tensor) -> Tensor:
        """``(B, n_actions)`` masked :math:`\\log P_F(\\cdot | s)` (``-inf`` where not allowed)."""
        mask = self.env.forward_mask(states)
        _check_mask(mask, self.env.n_actions, "forward")
        return _masked_log_softmax(self.forward_logits(states, mask), mask)

    def backward_log_probs(self, states: Tensor) -> Tensor:
        """``(B, n_actions - 1)`` masked :math:`\\log P_B(\\cdot | s')` (``-inf`` where not allowed)."""
        mask = self.env.backward_mask(states)
        _check_mask(mask, self.env.n_actions - 1, "backward")
        if self.pb is None:
            logits = torch.zeros(mask.shape, dtype=self._dtype, device=states.device)
        else:
            logits = _apply(self.pb, self._obs(states))
            _check_out(logits, mask, "backward policy (pb)")
        return _masked_log_softmax(logits, mask)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        epsilon: float = 0.0,
        temperature: float = 1.0,
    ) -> Trajectories:
        """Roll out ``n`` trajectories from ``s0`` (with gradients through ``log_pf`` and ``log_pb``).

        Actions are drawn from :math:`(1-\\epsilon)\\,\\mathrm{softmax}(\\text{logits}/T) + \\epsilon\\,
        \\mathcal U(\\text{allowed})`; the stored ``log_pf`` is that of the plain policy.

        The rollout runs without autograd; ``log_pf`` and ``log_pb`` are then recomputed in one batched
        pass over all visited states (:meth:`trajectories_from_actions`), which gives the same values
        with gradients.
        """
        _check_exploration(epsilon, temperature)
        states, actions = self._rollout(n, generator, epsilon, temperature)
        return self._score(states, actions, rollout=True)

    @torch.no_grad()
    def _rollout(
        self, n: int, generator: torch.Generator | None, epsilon: float, temperature: float
    ) -> tuple[Tensor, Tensor]:
        """``(T + 1, n, ndim)`` states and ``(T, n)`` actions (``-1`` after stop) of an on-policy rollout."""
        env, dev = self.env, self._device
        dtype = self._dtype
        stop = env.n_actions - 1
        L = env.max_length
        s0 = env.s0.to(dev)
        S = torch.empty((L + 1, n, *s0.shape), dtype=s0.dtype, device=dev)
        S[0] = s0
        A = torch.full((L, n), -1, dtype=torch.long, device=dev)
        delta_fn = getattr(env, "_step_delta", None)  # optional: moves as displacements (no checks)
        delta = delta_fn().to(dev, S.dtype) if delta_fn is not None else None
        obs_fn = env.obs
        _check_mask(env.forward_mask(S[0]), env.n_actions, "forward")
        plain_logits = type(self).forward_logits is GFlowNet.forward_logits
        pf = self.pf
        leaves = _plain_leaves(pf) if plain_logits else None
        if leaves is not None:  # check the output shape once, then call the layers without module hooks
            _check_out(_apply(pf, obs_fn(S[0]).to(dtype)), env.forward_mask(S[0]), "forward policy (pf)")
        forbidden_fn = getattr(env, "_forward_forbidden", None)
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
            if plain_logits:
                x = obs_fn(s).to(dtype)
                if leaves is None:
                    logits = _apply(pf, x)
                    _check_out(logits, forbidden, "forward policy (pf)")
                else:
                    for f in leaves:
                        x = f(x)
                    logits = x
            else:
                logits = self.forward_logits(s, ~forbidden)
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

    def _policy_logits(self, states: Tensor, fmask: Tensor, bmask: Tensor) -> tuple[Tensor, Tensor]:
        """Forward and backward logits on the same ``(N, ndim)`` states; a ``pf``/``pb`` pair built as
        ``Sequential(trunk, head)`` with a *shared* trunk (torchgfn's layout) runs the trunk once."""
        pf, pb = self.pf, self.pb
        shared = (
            type(self).forward_logits is GFlowNet.forward_logits
            and isinstance(pf, nn.Sequential)
            and isinstance(pb, nn.Sequential)
            and len(pf) == 2
            and len(pb) == 2
            and pf[0] is pb[0]
        )
        if not shared:
            flog = self.forward_logits(states, fmask)
            if pb is None:
                return flog, torch.zeros(bmask.shape, dtype=flog.dtype, device=flog.device)
            blog = _apply(pb, self._obs(states))
            _check_out(blog, bmask, "backward policy (pb)")
            return flog, blog
        h = pf[0](self._obs(states))
        flog, blog = pf[1](h), pb[1](h)
        _check_out(flog, fmask, "forward policy (pf)")
        _check_out(blog, bmask, "backward policy (pb)")
        return flog, blog

    def trajectories_from_actions(self, states: Tensor, actions: Tensor) -> Trajectories:
        """Build a :class:`Trajectories` (with fresh ``log_pf``/``log_pb``) from padded ``states``
        ``(T + 1, B, ndim)`` and ``actions`` ``(T, B)`` (stop included, ``-1`` after it).

        The networks run once, on the visited states only (``s_t`` for every valid action); the
        :math:`P_B` of a move at ``t`` uses the row of ``s_{t+1}``, which is the next valid state.
        """
        return self._score(states, actions, rollout=False)

    def _score(self, states: Tensor, actions: Tensor, rollout: bool) -> Trajectories:
        """:meth:`trajectories_from_actions`; ``rollout=True`` (from :meth:`_rollout`) skips the layout
        check and may use the environment's ``_log_reward_fast`` for its (valid) terminal states."""
        env = self.env
        T, n = actions.shape
        if not rollout:
            _check_layout(states, actions, env.n_actions)
        stop = env.n_actions - 1
        valid = actions >= 0
        move = valid & (actions != stop)
        lengths = valid.sum(0)
        ar = torch.arange(n, device=states.device)
        complete = actions[(lengths - 1).clamp(min=0), ar] == stop
        terminal = states[lengths - complete.long(), ar]  # the state a stop acts on, else the last one
        fast_reward = getattr(env, "_log_reward_fast", None) if rollout else None
        log_reward = (fast_reward or env.log_reward)(terminal, self._dtype)
        # every move must be followed by a valid action (the trajectory ends with stop)
        if not rollout and (T == 0 or bool(move[-1].any()) or bool((move[:-1] & ~valid[1:]).any())):
            lpf, lpb = self._log_probs_padded(states, actions)
        else:
            lpf, lpb = self._log_probs_visited(states, actions, valid, move, rollout)
        return Trajectories(
            states=states,
            actions=actions,
            valid=valid,
            lengths=lengths,
            terminal=terminal,
            log_pf=lpf,
            log_pb=lpb,
            log_reward=log_reward,
            complete=complete,
        )

    def _log_probs_visited(
        self, states: Tensor, actions: Tensor, valid: Tensor, move: Tensor, rollout: bool
    ) -> tuple[Tensor, Tensor]:
        """``(T, B)`` log P_F and log P_B from one network pass over the visited states only (every move
        is followed by a valid action, so the P_B of a move reuses the row of the next state)."""
        env = self.env
        T, n = actions.shape
        vflat = valid.reshape(-1)
        rows = vflat.nonzero().squeeze(1)  # (N,) in (t, b) order
        X = states[:-1].reshape(T * n, -1)[rows]
        fmask, bmask = env.forward_mask(X), env.backward_mask(X)
        _check_mask(fmask, env.n_actions, "forward")
        _check_mask(bmask, env.n_actions - 1, "backward")
        flog, blog = self._policy_logits(X, fmask, bmask)
        a = actions.reshape(-1)[rows]
        if not rollout and not bool(fmask.gather(1, a[:, None]).all()):
            raise ValueError("trajectories_from_actions got an action outside env.forward_mask of its state")
        lpf_rows = _masked_log_softmax(flog, fmask).gather(1, a[:, None]).squeeze(1)
        lpb_rows = _masked_log_softmax(blog, bmask)
        rowid = (vflat.cumsum(0) - 1).reshape(T, n)
        # move at (t, b): backward action index = forward action index, evaluated at row (t + 1, b)
        mt, mb = move.nonzero(as_tuple=True)
        lpb_m = lpb_rows[rowid[mt + 1, mb], actions[mt, mb]]
        zero = lpf_rows.new_zeros(T * n)
        lpf = zero.index_put((rows,), lpf_rows).reshape(T, n)
        lpb = zero.index_put((mt * n + mb,), lpb_m).reshape(T, n)
        return lpf, lpb

    def _log_probs_padded(self, states: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """``(T, B)`` log P_F and log P_B evaluated on every padded position (any layout)."""
        env = self.env
        T, n = actions.shape
        stop = env.n_actions - 1
        valid = actions >= 0
        move = valid & (actions != stop)
        flat = states[:-1].reshape(T * n, -1)
        lpf = self.forward_log_probs(flat).reshape(T, n, -1)
        lpf = lpf.gather(2, actions.clamp(min=0)[..., None]).squeeze(2)
        if bool((valid & lpf.isneginf()).any()):
            raise ValueError("trajectories_from_actions got an action outside env.forward_mask of its state")
        lpf = torch.where(valid, lpf, lpf.new_zeros(()))
        lpb = self.backward_log_probs(states[1:].reshape(T * n, -1)).reshape(T, n, -1)
        lpb = lpb.gather(2, actions.clamp(0, stop - 1)[..., None]).squeeze(2)
        return lpf, torch.where(move, lpb, lpb.new_zeros(()))

    def truncate(self, tr: Trajectories, keep: Tensor) -> Trajectories:
        """The first ``keep[b]`` actions of each trajectory, ``keep`` ``(B,)`` in ``[1, lengths]``.

        A trajectory cut before its stop action is *incomplete*: its terminal reward is not used
        (``log_reward`` is that of its last state). Forward-looking DB/SubTB learn from such data
        (Pan et al. 2023, "Better Training of GFlowNets with Local Credit and Incomplete Trajectories").
        """
        keep = keep.to(tr.lengths.device).long()
        if keep.shape != tr.lengths.shape or bool(((keep < 1) | (keep > tr.lengths)).any()):
            raise ValueError(f"keep must be a ({tr.lengths.numel()},) tensor with 1 <= keep <= lengths")
        T1, n = tr.states.shape[:2]
        ar = torch.arange(n, device=keep.device)
        k = torch.arange(T1, device=keep.device)[:, None]
        states = tr.states[torch.minimum(k, keep[None]), ar[None].expand(T1, n)]
        valid = k[:-1] < keep[None]
        zero = tr.log_pf.new_zeros(())
        complete = tr.is_complete & (keep == tr.lengths)
        terminal = states[keep, ar]
        log_reward = torch.where(complete, tr.log_reward, self.env.log_reward(terminal, tr.log_reward.dtype))
        return Trajectories(
            states=states,
            actions=torch.where(valid, tr.actions, torch.full_like(tr.actions, -1)),
            valid=valid,
            lengths=keep,
            terminal=terminal,
            log_pf=torch.where(valid, tr.log_pf, zero),
            log_pb=torch.where(valid, tr.log_pb, zero),
            log_reward=log_reward,
            complete=complete,
        )

    def sample_backward(self, terminal: Tensor, generator: torch.Generator | None = None) -> Trajectories:
        """Trajectories ending at the given terminal states ``(B, ndim)``, drawn backwards with
        :math:`P_B` from :math:`x` to :math:`s_0` and returned in forward order (then a stop).

        :math:`\\log P_F` and :math:`\\log P_B` are recomputed along the path (with gradients), so
        any objective can be evaluated on them (the replay / "backward sampling" of torchgfn's
        ``TerminatingStateBuffer``).
        """
        env, dev = self.env, self._device
        if terminal.ndim != 2 or terminal.shape[1:] != env.s0.shape:
            raise ValueError(f"terminal states must be (B, {env.s0.numel()}); got {tuple(terminal.shape)}")
        n = terminal.shape[0]
        s = terminal.to(dev).long()
        if not bool(env.forward_mask(s)[:, -1].all()):
            raise ValueError("sample_backward needs terminal states (where env.forward_mask allows stop)")
        back, acts = [s], []
        s0 = env.s0.to(dev)
        at_s0 = (s == s0).all(1)
        for _ in range(env.max_length):
            if bool(at_s0.all()):
                break
            with torch.no_grad():
                probs = self.backward_log_probs(s).exp()
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
        return self.trajectories_from_actions(states, actions)

    def objective(self, tr: Trajectories) -> Tensor:  # pragma: no cover - abstract
        """Scalar loss on a batch of trajectories."""
        raise NotImplementedError

    def _on_policy(self, tr: Trajectories, generator: torch.Generator | None) -> Trajectories:
        """Hook on each on-policy batch before the objective (default: unchanged)."""
        return tr

    def loss(self, batch: Any) -> Tensor:
        """The trainer's entry point: ``batch`` is a :class:`~flowforge.train.BatchRequest`
        (``size``, ``generator``, ``device``; anything with those fields) or a :class:`Trajectories`.

        With a ``replay_buffer``, on-policy terminal states are added to it and (if ``replay_ratio``
        > 0 and the buffer is not empty) ``round(replay_ratio * size)`` of the batch are
        backward-sampled from buffered states.
        """
        if isinstance(batch, Trajectories):
            return self.objective(batch)
        buf = self.replay_buffer
        n_rep = (
            min(round(self.replay_ratio * batch.size), batch.size - 1)
            if buf is not None and len(buf) > 0
            else 0
        )
        n_on = batch.size - n_rep
        tr = self.sample(n_on, generator=batch.generator, epsilon=self.epsilon, temperature=self.temperature)
        if buf is not None:
            buf.add(tr.terminal.detach(), tr.log_reward.detach())
        tr = self._on_policy(tr, batch.generator)
        if n_rep == 0:
            return self.objective(tr)
        rep = self.sample_backward(buf.sample(n_rep, generator=batch.generator), generator=batch.generator)
        return (n_on * self.objective(tr) + n_rep * self.objective(rep)) / batch.size

    @property
    def log_z(self) -> Tensor:  # pragma: no cover - overridden
        """The model's estimate of :math:`\\log Z`."""
        raise NotImplementedError

    def generator(self) -> GFlowNetGenerator:
        """This model as a flowforge Generator of terminal states."""
        return GFlowNetGenerator(self)


class GFlowNetGenerator:
    """A trained GFlowNet as a Generator: ``sample(n, generator=...) -> (n, ndim)`` terminal states.

    Example:
        >>> from flowforge.gflownet import HyperGrid, TrajectoryBalance
        >>> gen = TrajectoryBalance(HyperGrid(2, 4), width=8, depth=1).generator()
        >>> gen.sample(3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 2])
    """

    def __init__(self, model: GFlowNet) -> None:
        self.model = model

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: Any = None,
        generator: torch.Generator | None = None,
        epsilon: float = 0.0,
        temperature: float = 1.0,
        **_: Any,
    ) -> Tensor:
        """``(n, ndim)`` terminal states from the forward policy; options of other generators are ignored."""
        if cond is not None:
            raise ValueError("this GFlowNet is unconditional; call sample(n) without cond")
        return self.model.sample(n, generator=generator, epsilon=epsilon, temperature=temperature).terminal


class TrajectoryBalance(GFlowNet):
    r"""Trajectory balance (Malkin et al. 2022):
    :math:`\mathcal L = \mathbb E_\tau\big(\log Z + \sum_t \log P_F - \log R(x) - \sum_t \log P_B\big)^2`.

    Args:
        env, pf, pb, uniform_pb, width, depth, epsilon, temperature: see :class:`GFlowNet`.
        init_log_z: initial :math:`\log Z`.
        log_z_lr_scale: :math:`\log Z = s\cdot\text{raw}`; under Adam :math:`\log Z` moves :math:`s`
            times faster than the policy (default 100: lr 1e-3 -> 1e-1 as in torchgfn).
    """

    def __init__(
        self,
        env: Environment,
        pf: nn.Module | None = None,
        pb: nn.Module | None = None,
        *,
        init_log_z: float = 0.0,
        log_z_lr_scale: float = 100.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(env, pf, pb, **kwargs)
        self.log_z_lr_scale = float(log_z_lr_scale)
        self.log_z_raw = nn.Parameter(torch.tensor(init_log_z / self.log_z_lr_scale))

    @property
    def log_z(self) -> Tensor:
        return self.log_z_raw * self.log_z_lr_scale

    def residuals(self, tr: Trajectories) -> Tensor:
        """``(B,)`` :math:`\\log Z + \\sum \\log P_F - \\log R - \\sum \\log P_B`."""
        _require_complete(tr, "trajectory balance")
        return self.log_z + tr.log_pf.sum(0) - tr.log_pb.sum(0) - tr.log_reward

    def objective(self, tr: Trajectories) -> Tensor:
        return self.residuals(tr).pow(2).mean()


def _require_complete(tr: Trajectories, what: str) -> None:
    if tr.complete is not None and not bool(tr.complete.all()):
        raise ValueError(
            f"{what} needs complete trajectories (ending with the stop action); incomplete ones train "
            "DetailedBalance / SubTrajectoryBalance with forward_looking=True"
        )


class _FlowGFlowNet(GFlowNet):
    r"""A GFlowNet with a state-flow head (``logf`` net, obs -> 1), optionally *forward-looking*.

    Forward-looking (FL-GFN; Pan et al. 2023, "Better Training of GFlowNets with Local Credit and
    Incomplete Trajectories", ICML): with an energy :math:`\mathcal E` defined on every state and
    :math:`R(x) = e^{-\mathcal E(x)}`, the flow is :math:`\log F(s) = \log \tilde F(s) - \mathcal E(s)`
    where the network gives :math:`\log \tilde F`; here :math:`-\mathcal E(s)` is ``env.log_reward(s)``,
    which must then be finite on every state. The stop edge keeps :math:`\log R(x)`, so the terminal
    boundary :math:`\tilde F(x) P_F(\text{stop}|x) = 1` is enforced by the loss itself; where stop is
    the only allowed action it reads :math:`\tilde F(x) = 1` and is built in (:math:`\log\tilde F = 0`
    there). Every residual is local, so incomplete trajectories (:meth:`GFlowNet.truncate`) are valid
    training data.

    Args:
        logf: state-flow net ``(B, obs_dim) -> (B, 1)``; default :class:`PolicyMLP`.
        forward_looking: use the FL parameterisation above.
        incomplete: fraction of each on-policy batch cut at a uniform random move before its stop
            (:meth:`GFlowNet.truncate`), to train from incomplete trajectories.
        free_terminal_flow: the FL-GFN reference code's variant (``set/gflownet.py``): no stop residual
            and :math:`\log\tilde F(x)` a free network output on terminal states. The boundary is then
            not enforced and the sampler is :math:`\propto \tilde F(x) R(x)`: biased (on the set task
            10x the exact L1 of the default), but a flatter, more exploratory sampler with a higher
            top-k reward there (BENCHMARKS.md 11.3). Needs ``forward_looking``.
    """

    def __init__(
        self,
        env: Environment,
        pf: nn.Module | None = None,
        pb: nn.Module | None = None,
        *,
        logf: nn.Module | None = None,
        forward_looking: bool = False,
        incomplete: float = 0.0,
        free_terminal_flow: bool = False,
        width: int = 256,
        depth: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(env, pf, pb, width=width, depth=depth, **kwargs)
        if not 0.0 <= incomplete <= 1.0:
            raise ValueError(f"incomplete must be a fraction in [0, 1]; got {incomplete}")
        if incomplete == 1.0 and not forward_looking:
            raise ValueError(
                "incomplete=1 cuts every stop, so no reward would enter the loss; use forward_looking=True "
                "(rewards of partial objects) or incomplete < 1"
            )
        if free_terminal_flow and not forward_looking:
            raise ValueError(
                "free_terminal_flow is a variant of forward-looking losses; set forward_looking=True"
            )
        self.logf = logf if logf is not None else PolicyMLP(env.obs_dim, 1, width, depth)
        self.forward_looking, self.incomplete = bool(forward_looking), float(incomplete)
        self.free_terminal_flow = bool(free_terminal_flow)

    def log_flow(self, states: Tensor) -> Tensor:
        """``(B,)`` :math:`\\log F(s)` (forward-looking: :math:`\\log \\tilde F(s) + \\log R(s)`)."""
        lf = _apply(self.logf, self._obs(states)).reshape(-1)
        if not self.forward_looking:
            return lf
        if self.free_terminal_flow:
            return lf + self._state_log_reward(states)
        # the boundary F~(x) P_F(stop|x) = 1 pins log F~(x) = 0 where stop is the only action: no reward
        # is needed for it, so incomplete trajectories that reach such x still see the boundary
        only_stop = ~self.env.forward_mask(states)[:, :-1].any(1)
        return torch.where(only_stop, lf.new_zeros(()), lf) + self._state_log_reward(states)

    def _state_log_reward(self, states: Tensor) -> Tensor:
        lr = self.env.log_reward(states, self._dtype)
        if not bool(lr.isfinite().all()):
            raise ValueError(
                f"forward_looking needs env.log_reward finite on every state (an energy of partial objects); "
                f"{self.env!r} gives -inf/nan on some intermediate states. Use forward_looking=False"
            )
        return lr

    @property
    def log_z(self) -> Tensor:
        """:math:`\\log F(s_0)`."""
        return self.log_flow(self.env.s0.to(self._device)[None])[0]

    def _training_view(self, tr: Trajectories) -> Trajectories:
        """``tr`` without its stop actions under ``free_terminal_flow``, else unchanged."""
        if not self.free_terminal_flow:
            return tr
        return self.truncate(tr, (tr.lengths - tr.is_complete.long()).clamp(min=1))

    def _phi(self, tr: Trajectories) -> Tensor:
        """``(T + 1, B)``: :math:`\\log F(s_k)` for ``k < length``, :math:`\\log R(x)` at ``k = length``
        of a complete trajectory (an incomplete one ends at :math:`\\log F` of its last state)."""
        T1, B, _ = tr.states.shape
        lf = self.log_flow(tr.states.reshape(T1 * B, -1)).reshape(T1, B)
        k = torch.arange(T1, device=lf.device)[:, None]
        sink = (k == tr.lengths[None]) & tr.is_complete[None]
        return torch.where(sink, tr.log_reward[None], lf)

    def _on_policy(self, tr: Trajectories, generator: torch.Generator | None) -> Trajectories:
        """Cut a fraction ``incomplete`` of the batch at a uniform random move before its stop."""
        if self.incomplete == 0.0:
            return tr
        g_dev = generator.device if generator is not None else tr.lengths.device
        u = torch.rand(2, tr.lengths.numel(), generator=generator, device=g_dev).to(tr.lengths.device)
        moves = tr.lengths - 1
        keep = 1 + (u[0] * moves).long().clamp(max=(moves - 1).clamp(min=0))  # uniform in [1, moves]
        cut = (u[1] < self.incomplete) & (moves > 0)
        if self.incomplete == 1.0:
            self._check_forced_stops(tr)
        return self.truncate(tr, torch.where(cut, keep, tr.lengths))

    def _check_forced_stops(self, tr: Trajectories) -> None:
        """With every trajectory cut, only stops that are the sole allowed action (F~ = 1 built in) are
        learned; a state that may stop *or* move would keep an untrained stop probability."""
        m = self.env.forward_mask(tr.states[:-1][tr.valid])
        if bool((m[:, -1] & m[:, :-1].any(1)).any()):
            raise ValueError(
                f"incomplete=1 leaves untrained the stop probability of states that may stop or move "
                f"({self.env!r} has them); use incomplete < 1 so that some trajectories keep their stop"
            )


class DetailedBalance(_FlowGFlowNet):
    r"""Detailed balance with an explicit stop edge (Bengio et al. 2023, GFlowNet Foundations):
    per transition :math:`\big(\log F(s) + \log P_F(s'|s) - \log F(s') - \log P_B(s|s')\big)^2` and per
    stop :math:`\big(\log F(x) + \log P_F(\text{stop}|x) - \log R(x)\big)^2`, averaged over transitions.

    With ``forward_looking=True`` this is FL-DB (Pan et al. 2023): :math:`\log F = \log\tilde F + \log R(s)`,
    i.e. per move :math:`\big(\log\tilde F(s) + \log P_F - \log\tilde F(s') - \log P_B + \mathcal E(s')
    - \mathcal E(s)\big)^2` and, per stop, :math:`\big(\log\tilde F(x) + \log P_F(\text{stop}|x)\big)^2`.

    Args: as :class:`GFlowNet`, plus ``logf`` (state-flow net ``(B, obs_dim) -> (B, 1)``),
    ``forward_looking`` and ``incomplete`` (fraction of on-policy trajectories cut before their stop).

    Example:
        >>> from flowforge.gflownet import HyperGrid
        >>> fl = DetailedBalance(HyperGrid(2, 4), width=8, depth=1, forward_looking=True, incomplete=0.5)
        >>> tr = fl.sample(6, generator=torch.Generator().manual_seed(0))
        >>> cut = fl.truncate(tr, (tr.lengths - 1).clamp(min=1))  # drop the stop actions
        >>> bool(cut.is_complete.all()), fl.loss(cut).ndim
        (False, 0)
    """

    def residuals(self, tr: Trajectories) -> Tensor:
        """``(T, B)`` residuals (0 on padding)."""
        phi = self._phi(tr)
        r = phi[:-1] + tr.log_pf - tr.log_pb - phi[1:]
        return torch.where(tr.valid, r, r.new_zeros(()))

    def objective(self, tr: Trajectories) -> Tensor:
        tr = self._training_view(tr)
        return self.residuals(tr).pow(2).sum() / tr.valid.sum()


class SubTrajectoryBalance(_FlowGFlowNet):
    r"""Sub-trajectory balance (Madan et al. 2023), "geometric within" weighting.

    For positions :math:`0 \le i < j \le L` of a trajectory with :math:`L` actions (position
    :math:`L` is the sink, :math:`\Phi_L = \log R(x)`; else :math:`\Phi_k = \log F(s_k)`),

    .. math::

        r_{ij} = \Phi_i + \sum_{k=i}^{j-1} (\log P_F(a_k) - \log P_B(a_k)) - \Phi_j, \qquad
        \mathcal L = \frac1B \sum_b \frac{\sum_{i<j} \lambda^{j-i} r_{ij}^2}{\sum_{i<j} \lambda^{j-i}}.

    ``forward_looking=True`` gives FL-SubTB (Pan et al. 2023): :math:`\Phi_k = \log\tilde F(s_k) + \log R(s_k)`,
    still :math:`\Phi_L = \log R(x)` at the sink of a complete trajectory.

    Args: as :class:`DetailedBalance`, plus ``lamda`` :math:`\lambda` (default 0.9).
    """

    def __init__(
        self,
        env: Environment,
        pf: nn.Module | None = None,
        pb: nn.Module | None = None,
        *,
        lamda: float = 0.9,
        **kwargs: Any,
    ) -> None:
        if not lamda > 0:
            raise ValueError(f"lamda weights sub-trajectories by lamda^length and must be > 0; got {lamda}")
        super().__init__(env, pf, pb, **kwargs)
        self.lamda = lamda

    def residuals(self, tr: Trajectories) -> tuple[Tensor, Tensor]:
        """``(T+1, T+1, B)`` residuals :math:`r_{ij}` and the bool mask of pairs ``i < j <= L``."""
        phi = self._phi(tr)
        c = torch.cat([phi.new_zeros(1, phi.shape[1]), (tr.log_pf - tr.log_pb).cumsum(0)])  # (T+1, B)
        r = (phi - c)[:, None] - (phi - c)[None, :]  # r[i, j] = phi_i - c_i - phi_j + c_j
        k = torch.arange(phi.shape[0], device=phi.device)
        mask = (k[:, None] < k[None, :])[..., None] & (k[None, :, None] <= tr.lengths[None, None])
        return r, mask

    def objective(self, tr: Trajectories) -> Tensor:
        r, mask = self.residuals(self._training_view(tr))
        k = torch.arange(r.shape[0], device=r.device, dtype=r.dtype)
        w = (self.lamda ** (k[None, :] - k[:, None]).clamp(min=0))[..., None] * mask
        per_traj = (w * r.pow(2)).sum((0, 1)) / w.sum((0, 1))
        return per_traj.mean()


class FlowMatching(GFlowNet):
    r"""Flow matching (Bengio et al. 2021, "Flow Network based Generative Models for Non-Iterative
    Diverse Candidate Generation", NeurIPS), with the terminal reward as the stop edge's flow.

    The ``pf`` network's first ``n_actions - 1`` outputs are log edge flows
    :math:`\log F(s \to s')` (its stop output is unused); the stop edge has flow :math:`R(s)` where
    stopping is allowed. For each visited non-initial state :math:`s` the residual is

    .. math::

        \delta(s) = \log \sum_{s' \to s} F(s' \to s)
        - \log\Big(\sum_{s \to s''} F(s \to s'') + R(s)\,\mathbb 1[\text{stop allowed at } s]\Big),

    computed with ``logsumexp``; parents :math:`s'` are enumerated with ``env.backward_mask`` and
    ``env.backward_step`` (backward action ``a`` undoes forward action ``a``). The loss is the mean
    of :math:`\delta^2` over visited non-initial states. The forward policy is
    :math:`P_F(s''|s) \propto F(s \to s'')`, :math:`P_F(\text{stop}|s) \propto R(s)`, and
    :math:`\log Z` is the out-flow of :math:`s_0`. No backward policy is needed (``uniform_pb`` is
    the default; it only fills ``Trajectories.log_pb``).

    Args: as :class:`GFlowNet`.

    Example:
        >>> from flowforge.gflownet import HyperGrid
        >>> fm = FlowMatching(HyperGrid(2, 4), width=8, depth=1)
        >>> tr = fm.sample(4, generator=torch.Generator().manual_seed(0))
        >>> fm.residuals(tr).ndim, fm.loss(tr).ndim
        (1, 0)
    """

    def __init__(
        self, env: Environment, pf: nn.Module | None = None, pb: nn.Module | None = None, **kwargs: Any
    ) -> None:
        if pb is None and "uniform_pb" not in kwargs:
            kwargs["uniform_pb"] = True
        super().__init__(env, pf, pb, **kwargs)

    def forward_logits(self, states: Tensor, mask: Tensor) -> Tensor:
        """``(B, n_actions)``: log edge flows for moves, :math:`\\log R(s)` for stop (``-inf`` if masked)."""
        out = super().forward_logits(states, mask)
        stop = mask[:, -1]
        lr = self.env.log_reward(states, out.dtype)
        lr = torch.where(stop, lr, torch.full_like(lr, float("-inf")))
        return torch.cat([out[:, :-1], lr[:, None]], dim=1)

    def log_outflow(self, states: Tensor) -> Tensor:
        """``(B,)`` :math:`\\log(\\sum_{s''} F(s \\to s'') + R(s)\\mathbb 1[\\text{stop}])`."""
        mask = self.env.forward_mask(states)
        logits = self.forward_logits(states, mask).masked_fill(~mask, float("-inf"))
        return torch.logsumexp(logits, dim=1)

    def log_inflow(self, states: Tensor) -> Tensor:
        """``(B,)`` :math:`\\log \\sum_{s' \\to s} F(s' \\to s)` (``-inf`` at :math:`s_0`)."""
        bmask = self.env.backward_mask(states)
        rows, acts = bmask.nonzero(as_tuple=True)
        parents = self.env.backward_step(states[rows], acts)
        pmask = self.env.forward_mask(parents)
        edge = self.forward_logits(parents, pmask).gather(1, acts[:, None]).squeeze(1)
        table = torch.full(bmask.shape, float("-inf"), dtype=edge.dtype, device=edge.device)
        table = table.index_put((rows, acts), edge)
        return torch.logsumexp(table, dim=1)

    @property
    def log_z(self) -> Tensor:
        """Out-flow of :math:`s_0`."""
        return self.log_outflow(self.env.s0.to(self._device)[None])[0]

    def residuals(self, tr: Trajectories) -> Tensor:
        """``(M,)`` :math:`\\delta(s)` for the ``M`` non-initial states visited by the batch."""
        move = tr.valid & (tr.actions != self.env.n_actions - 1)
        states = tr.states[1:][move]
        return self.log_inflow(states) - self.log_outflow(states)

    def objective(self, tr: Trajectories) -> Tensor:
        r = self.residuals(tr)
        if r.numel() == 0:  # every trajectory stopped at s0: nothing to match
            return self.log_z * 0.0
        return r.pow(2).mean()


class LogPartitionVariance(GFlowNet):
    r"""Log-partition variance loss, "ZVar" (Zhang et al. 2023, "Robust Scheduling with GFlowNets",
    ICLR; torchgfn's ``LogPartitionVarianceGFlowNet``).

    Each trajectory gives an estimate :math:`\zeta(\tau) = \log R(x) + \sum_t \log P_B - \sum_t \log P_F`
    of :math:`\log Z` (exact for every :math:`\tau` at the optimum), and

    .. math::

        \mathcal L = \frac1B \sum_b \big(\zeta_b - \bar\zeta\big)^2, \qquad
        \bar\zeta = \frac1B \sum_b \zeta_b,

    so no :math:`\log Z` parameter is learned. :attr:`log_z` reports an exponential moving average
    (``log_z_momentum``) of the batch means seen by :meth:`objective` in training mode.

    Args: as :class:`GFlowNet`, plus ``log_z_momentum`` (default 0.9).

    Example:
        >>> from flowforge.gflownet import HyperGrid
        >>> zv = LogPartitionVariance(HyperGrid(2, 4), width=8, depth=1)
        >>> tr = zv.sample(6, generator=torch.Generator().manual_seed(0))
        >>> zv.residuals(tr).shape, bool(zv.loss(tr) >= 0)
        (torch.Size([6]), True)
    """

    def __init__(
        self,
        env: Environment,
        pf: nn.Module | None = None,
        pb: nn.Module | None = None,
        *,
        log_z_momentum: float = 0.9,
        **kwargs: Any,
    ) -> None:
        super().__init__(env, pf, pb, **kwargs)
        self.log_z_momentum = float(log_z_momentum)
        self.register_buffer("log_z_estimate", torch.tensor(float("nan")))

    @property
    def log_z(self) -> Tensor:
        return self.log_z_estimate

    def residuals(self, tr: Trajectories) -> Tensor:
        """``(B,)`` :math:`\\zeta = \\log R + \\sum \\log P_B - \\sum \\log P_F`."""
        _require_complete(tr, "the log-partition variance loss")
        return tr.log_reward + tr.log_pb.sum(0) - tr.log_pf.sum(0)

    def objective(self, tr: Trajectories) -> Tensor:
        z = self.residuals(tr)
        if self.training:
            with torch.no_grad():
                m = z.mean().to(self.log_z_estimate.dtype)
                old = self.log_z_estimate
                new = m if bool(old.isnan()) else self.log_z_momentum * old + (1 - self.log_z_momentum) * m
                self.log_z_estimate.copy_(new)
        return (z - z.mean()).pow(2).mean()
