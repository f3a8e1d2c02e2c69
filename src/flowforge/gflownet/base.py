r"""The GFlowNet base: policies, log-probabilities, exploration, the replay hook and the trainer's ``loss``.

A :class:`GFlowNet` holds a forward policy :math:`P_F(s' \mid s)` (a network giving logits over the
environment's actions, masked, the last action being *stop*), a backward policy
:math:`P_B(s \mid s')` (a network over the non-stop actions, or uniform over the parents with
``uniform_pb=True``) and, per objective, :math:`\log Z` or a state flow :math:`\log F(s)`. Each
objective is one file (see the table in :mod:`flowforge.gflownet`).

A trajectory :math:`\tau = (s_0 \to s_1 \to \dots \to s_n = x \to s_f)` ends with an explicit stop
action; the stop transition has :math:`P_B = 1` and, for a terminal edge,
:math:`F(x \to s_f) = R(x)`.

**Exploration.** ``epsilon`` mixes the sampling policy with the uniform one over allowed actions and
``temperature`` divides the logits, *for choosing actions only*: the log-probabilities that enter the
losses are always those of the untempered, unexplored policy, which is the correct off-policy
handling for these objectives (any full-support behaviour policy is allowed).

Example:
    >>> import torch
    >>> from flowforge.gflownet import HyperGrid, TrajectoryBalance
    >>> env = HyperGrid(ndim=2, height=4)
    >>> tb = TrajectoryBalance(env, width=16, depth=1)
    >>> tr = tb.sample(5, generator=torch.Generator().manual_seed(0))
    >>> tr.states.shape[1:], tr.log_pf.shape == tr.log_pb.shape, bool(tr.valid[0].all())
    (torch.Size([5, 2]), True, True)
    >>> tb.loss(tr).ndim, tb.makes_own_batches
    (0, True)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowforge.core.contracts import Environment, HasFastLogReward
from flowforge.gflownet.local_search import LocalSearch, cat_trajectories
from flowforge.gflownet.replay import ReplayBuffer
from flowforge.gflownet.sampler import backward_rollout, check_exploration, check_mask, check_out, rollout
from flowforge.gflownet.trajectories import Trajectories
from flowforge.nn.policy import PolicyMLP, call_policy, masked_log_softmax

__all__ = ["GFlowNet", "GFlowNetGenerator"]


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


class GFlowNet(nn.Module):
    """Base class: forward/backward policies, on-policy sampling, a ``loss(batch)`` for the trainer.

    Subclasses implement :meth:`objective` on a :class:`Trajectories` batch and set the class
    attributes ``key`` (the recipes' name of the objective, e.g. ``"tb"``) and ``options`` (the
    constructor keywords a recipe may set). ``makes_own_batches = True``: the trainer hands
    :meth:`loss` a :class:`~flowforge.train.BatchRequest` and the model samples its own trajectories.

    Every piece of state that changes during training is a tensor of :meth:`state_dict` (the replay
    buffer's contents included), so a run resumed from a checkpoint continues bit for bit.

    Args:
        env: a discrete :class:`~flowforge.core.contracts.Environment`.
        pf: forward policy net ``(B, obs_dim) -> (B, n_actions)`` logits; default :class:`PolicyMLP`.
        pb: backward policy net ``(B, obs_dim) -> (B, n_actions - 1)``; default :class:`PolicyMLP`
            unless ``uniform_pb``.
        uniform_pb: use :math:`P_B(s|s') = 1 / \\#\\text{parents}(s')` (no parameters).
        width, depth: size of the default networks.
        epsilon: uniform exploration rate used by :meth:`loss` when sampling.
        temperature: logit temperature used by :meth:`loss` when sampling.
        replay_buffer: a :class:`~flowforge.gflownet.ReplayBuffer` (or prioritized one) of terminal
            states; :meth:`loss` adds every on-policy terminal state to it. It becomes a submodule
            (its preallocated contents are part of :meth:`state_dict`). Under DDP the trainer's
            wrapper broadcasts rank 0's buffer like any module buffer.
        replay_ratio: fraction :math:`\\rho \\in [0, 1)` of each batch drawn from the buffer: of a batch
            of size ``n``, ``round(rho * n)`` trajectories are sampled *backwards* with :math:`P_B`
            from buffered terminal states (:meth:`sample_backward`) and the rest on-policy; the loss
            is the size-weighted mean of the objective on both parts (off-policy training, valid for
            TB/DB/SubTB/ZVar since any full-support behaviour distribution is allowed).
        local_search: a :class:`~flowforge.gflownet.LocalSearch` (LS-GFN, Kim et al. 2024): each
            on-policy batch of :meth:`loss` is refined by destroy-and-reconstruct and the objective is
            taken on one batch of the originals *and* the refined trajectories (as torchgfn's
            ``LocalSearchSampler`` batches them; where torchgfn keeps every candidate, a rejected one is
            replaced here by the :math:`P_B` path to the kept :math:`x`, as in Kim et al.). Stateless,
            so nothing is added to :meth:`state_dict`.
    """

    #: False where the objective's target is not :math:`R(x)/Z`, so a Metropolis-Hastings local search
    #: towards :math:`R/Z` does not apply (order-preserving TB learns its own reward).
    local_search_mh: ClassVar[bool] = True

    makes_own_batches: ClassVar[bool] = True

    #: small policies, Python-level rollouts: fp32 and eager mode on CUDA unless told otherwise
    cuda_defaults = {"precision": "fp32", "compile": False}

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
        replay_buffer: ReplayBuffer | None = None,
        replay_ratio: float = 0.0,
        local_search: LocalSearch | None = None,
    ) -> None:
        super().__init__()
        if local_search is not None and not isinstance(local_search, LocalSearch):
            raise TypeError(
                f"local_search must be a LocalSearch, e.g. LocalSearch(back_ratio=0.5, iterations=1); "
                f"got {type(local_search).__name__}"
            )
        if local_search is not None and local_search.filter == "mh" and not type(self).local_search_mh:
            raise ValueError(
                f"{type(self).__name__} does not sample from R(x)/Z, so a Metropolis-Hastings local search "
                "towards R/Z does not apply; use LocalSearch(filter='deterministic')"
            )
        self.local_search = local_search
        if not 0.0 <= replay_ratio < 1.0:
            raise ValueError(f"replay_ratio must be in [0, 1); got {replay_ratio}")
        if replay_ratio > 0 and replay_buffer is None:
            raise ValueError("replay_ratio > 0 needs a replay_buffer (e.g. ReplayBuffer(capacity=1000))")
        if isinstance(replay_buffer, ReplayBuffer):
            replay_buffer.reserve(env.s0.shape)  # preallocated: the buffer is part of state_dict()
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
        check_exploration(epsilon, temperature)
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
        logits = call_policy(self.pf, self._obs(states))
        check_out(logits, mask, "forward policy (pf)")
        return logits

    def forward_log_probs(self, states: Tensor) -> Tensor:
        """``(B, n_actions)`` masked :math:`\\log P_F(\\cdot | s)` (``-inf`` where not allowed)."""
        mask = self.env.forward_mask(states)
        check_mask(mask, self.env.n_actions, "forward")
        return masked_log_softmax(self.forward_logits(states, mask), mask)

    def backward_log_probs(self, states: Tensor) -> Tensor:
        """``(B, n_actions - 1)`` masked :math:`\\log P_B(\\cdot | s')` (``-inf`` where not allowed)."""
        mask = self.env.backward_mask(states)
        check_mask(mask, self.env.n_actions - 1, "backward")
        if self.pb is None:
            logits = torch.zeros(mask.shape, dtype=self._dtype, device=states.device)
        else:
            logits = call_policy(self.pb, self._obs(states))
            check_out(logits, mask, "backward policy (pb)")
        return masked_log_softmax(logits, mask)

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
        states, actions = rollout(
            self.env,
            self.rollout_policy(),
            n,
            generator,
            epsilon=epsilon,
            temperature=temperature,
            device=self._device,
            dtype=self._dtype,
        )
        return self._score(states, actions, rollout=True)

    def rollout_policy(self) -> nn.Module | Any:
        """What :func:`~flowforge.gflownet.rollout` calls: the ``pf`` net (its fast path) unless a subclass
        overrides :meth:`forward_logits`, then that method ``(states, allowed) -> logits``."""
        plain = type(self).forward_logits is GFlowNet.forward_logits
        return self.pf if plain else self.forward_logits

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
            blog = call_policy(pb, self._obs(states))
            check_out(blog, bmask, "backward policy (pb)")
            return flog, blog
        h = pf[0](self._obs(states))
        flog, blog = pf[1](h), pb[1](h)
        check_out(flog, fmask, "forward policy (pf)")
        check_out(blog, bmask, "backward policy (pb)")
        return flog, blog

    def trajectories_from_actions(self, states: Tensor, actions: Tensor) -> Trajectories:
        """Build a :class:`Trajectories` (with fresh ``log_pf``/``log_pb``) from padded ``states``
        ``(T + 1, B, ndim)`` and ``actions`` ``(T, B)`` (stop included, ``-1`` after it).

        The networks run once, on the visited states only (``s_t`` for every valid action); the
        :math:`P_B` of a move at ``t`` uses the row of ``s_{t+1}``, which is the next valid state.
        """
        return self._score(states, actions, rollout=False)

    def _score(self, states: Tensor, actions: Tensor, rollout: bool) -> Trajectories:
        """:meth:`trajectories_from_actions`; ``rollout=True`` (from :func:`~flowforge.gflownet.sampler.rollout`) skips the layout
        check and may use the environment's ``log_reward_fast`` for its (valid) terminal states."""
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
        if rollout and isinstance(env, HasFastLogReward):
            log_reward = env.log_reward_fast(terminal, self._dtype)
        else:
            log_reward = env.log_reward(terminal, self._dtype)
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
        check_mask(fmask, env.n_actions, "forward")
        check_mask(bmask, env.n_actions - 1, "backward")
        flog, blog = self._policy_logits(X, fmask, bmask)
        a = actions.reshape(-1)[rows]
        if not rollout and not bool(fmask.gather(1, a[:, None]).all()):
            raise ValueError("trajectories_from_actions got an action outside env.forward_mask of its state")
        lpf_rows = masked_log_softmax(flog, fmask).gather(1, a[:, None]).squeeze(1)
        lpb_rows = masked_log_softmax(blog, bmask)
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
        if terminal.ndim != 2 or terminal.shape[1:] != self.env.s0.shape:
            raise ValueError(
                f"terminal states must be (B, {self.env.s0.numel()}); got {tuple(terminal.shape)}"
            )
        states, actions = backward_rollout(
            self.env, self.backward_log_probs, terminal.to(self._device), generator=generator
        )
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
        backward-sampled from buffered states. With ``local_search``, the on-policy part is refined
        (:meth:`LocalSearch.refine`) and the objective sees the originals and the refined
        trajectories as one batch (replay, if any, is added with weight ``n_rep / size`` as before).
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
        if self.local_search is not None:
            refined, _ = self.local_search.refine(self, tr, batch.generator)
            tr = cat_trajectories(tr, refined)
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
