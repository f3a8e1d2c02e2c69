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

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.gflownet.envs import Environment
from flowforge.nn import MLP

__all__ = [
    "DetailedBalance",
    "GFlowNet",
    "GFlowNetGenerator",
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


def _apply(net: nn.Module, x: Tensor) -> Tensor:
    """Call ``net(x)``; a ``flowforge.nn.MLP`` (time-conditioned) gets ``t = 0``."""
    if isinstance(net, MLP):
        return net(x, x.new_zeros(x.shape[0]))
    return net(x)


def _check_out(logits: Tensor, mask: Tensor, what: str) -> None:
    if logits.shape != mask.shape:
        raise ValueError(
            f"the {what} network must output {mask.shape[-1]} logits per state, got shape {tuple(logits.shape)}; "
            f"build it with that output size, e.g. MLP(dim=env.obs_dim, width=256, depth=2, out_dim={mask.shape[-1]})"
        )


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
        terminal: ``(B, ndim)`` the terminal states :math:`x`.
        log_pf: ``(T, B)`` :math:`\\log P_F(a_t | s_t)` of the *unexplored* policy (0 when not valid).
        log_pb: ``(T, B)`` :math:`\\log P_B(s_t | s_{t+1})`; 0 for stop and padding.
        log_reward: ``(B,)`` :math:`\\log R(x)`.
    """

    states: Tensor
    actions: Tensor
    valid: Tensor
    lengths: Tensor
    terminal: Tensor
    log_pf: Tensor
    log_pb: Tensor
    log_reward: Tensor


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
    ) -> None:
        super().__init__()
        if uniform_pb and pb is not None:
            raise ValueError("pass either a pb network or uniform_pb=True, not both")
        self.env = env
        self.pf = pf if pf is not None else PolicyMLP(env.obs_dim, env.n_actions, width, depth)
        self.pb = (
            None
            if uniform_pb
            else (pb if pb is not None else PolicyMLP(env.obs_dim, env.n_actions - 1, width, depth))
        )
        self.epsilon, self.temperature = epsilon, temperature

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _obs(self, states: Tensor) -> Tensor:
        return self.env.obs(states).to(self._dtype)

    def forward_log_probs(self, states: Tensor) -> Tensor:
        """``(B, n_actions)`` masked :math:`\\log P_F(\\cdot | s)` (``-inf`` where not allowed)."""
        logits, mask = _apply(self.pf, self._obs(states)), self.env.forward_mask(states)
        _check_out(logits, mask, "forward policy (pf)")
        return _masked_log_softmax(logits, mask)

    def backward_log_probs(self, states: Tensor) -> Tensor:
        """``(B, n_actions - 1)`` masked :math:`\\log P_B(\\cdot | s')` (``-inf`` where not allowed)."""
        mask = self.env.backward_mask(states)
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
        """
        env, dev = self.env, self._device
        states = env.s0.to(dev).expand(n, -1).clone()
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        stop = env.n_actions - 1
        all_states, all_actions, all_lpf = [states], [], []
        for _ in range(env.max_length):
            if bool(done.all()):
                break
            mask = env.forward_mask(states)
            logits = _apply(self.pf, self._obs(states))
            _check_out(logits, mask, "forward policy (pf)")
            logp = _masked_log_softmax(logits, mask)
            with torch.no_grad():
                probs = torch.softmax(logits.detach().masked_fill(~mask, float("-inf")) / temperature, dim=-1)
                if epsilon > 0:
                    uniform = mask.to(probs.dtype) / mask.sum(-1, keepdim=True)
                    probs = (1 - epsilon) * probs + epsilon * uniform
                gdev = generator.device if generator is not None else probs.device
                a = torch.multinomial(probs.to(gdev), 1, generator=generator).squeeze(1).to(dev)
                a = torch.where(done, torch.full_like(a, stop), a)
            all_lpf.append(torch.where(done, logp.new_zeros(()), logp.gather(1, a[:, None]).squeeze(1)))
            all_actions.append(torch.where(done, torch.full_like(a, -1), a))
            states = env.step(states, a)
            all_states.append(states)
            done = done | (a == stop)
        S = torch.stack(all_states)  # (T+1, B, ndim)
        A = torch.stack(all_actions)  # (T, B)
        valid = A >= 0
        move = valid & (A != stop)
        T = A.shape[0]
        # log P_B(s_t | s_{t+1}) for moves: backward action index = forward action index.
        lpb_all = self.backward_log_probs(S[1:].reshape(T * n, -1)).reshape(T, n, -1)
        lpb = lpb_all.gather(2, A.clamp(0, stop - 1)[..., None]).squeeze(2)
        lpb = torch.where(move, lpb, lpb.new_zeros(()))
        lengths = valid.sum(0)
        terminal = S[lengths - 1, torch.arange(n, device=dev)]
        return Trajectories(
            states=S,
            actions=A,
            valid=valid,
            lengths=lengths,
            terminal=terminal,
            log_pf=torch.stack(all_lpf),
            log_pb=lpb,
            log_reward=env.log_reward(terminal, self._dtype),
        )

    def objective(self, tr: Trajectories) -> Tensor:  # pragma: no cover - abstract
        """Scalar loss on a batch of trajectories."""
        raise NotImplementedError

    def loss(self, batch: Any) -> Tensor:
        """The trainer's entry point: ``batch`` is a :class:`~flowforge.train.BatchRequest`
        (``size``, ``generator``, ``device``; anything with those fields) or a :class:`Trajectories`."""
        if isinstance(batch, Trajectories):
            return self.objective(batch)
        tr = self.sample(
            batch.size, generator=batch.generator, epsilon=self.epsilon, temperature=self.temperature
        )
        return self.objective(tr)

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
    ) -> Tensor:
        """``(n, ndim)`` terminal states from the forward policy."""
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
        return self.log_z + tr.log_pf.sum(0) - tr.log_pb.sum(0) - tr.log_reward

    def objective(self, tr: Trajectories) -> Tensor:
        return self.residuals(tr).pow(2).mean()


class _FlowGFlowNet(GFlowNet):
    """A GFlowNet with a state-flow head :math:`\\log F(s)` (``logf`` net, obs -> 1)."""

    def __init__(
        self,
        env: Environment,
        pf: nn.Module | None = None,
        pb: nn.Module | None = None,
        *,
        logf: nn.Module | None = None,
        width: int = 256,
        depth: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(env, pf, pb, width=width, depth=depth, **kwargs)
        self.logf = logf if logf is not None else PolicyMLP(env.obs_dim, 1, width, depth)

    def log_flow(self, states: Tensor) -> Tensor:
        """``(B,)`` :math:`\\log F(s)`."""
        return _apply(self.logf, self._obs(states)).reshape(-1)

    @property
    def log_z(self) -> Tensor:
        """:math:`\\log F(s_0)`."""
        return self.log_flow(self.env.s0.to(self._device)[None])[0]

    def _phi(self, tr: Trajectories) -> Tensor:
        """``(T + 1, B)``: :math:`\\log F(s_k)` for ``k < length``, :math:`\\log R(x)` at ``k = length``."""
        T1, B, _ = tr.states.shape
        lf = self.log_flow(tr.states.reshape(T1 * B, -1)).reshape(T1, B)
        k = torch.arange(T1, device=lf.device)[:, None]
        return torch.where(k == tr.lengths[None], tr.log_reward[None], lf)


class DetailedBalance(_FlowGFlowNet):
    r"""Detailed balance with an explicit stop edge (Bengio et al. 2023, GFlowNet Foundations):
    per transition :math:`\big(\log F(s) + \log P_F(s'|s) - \log F(s') - \log P_B(s|s')\big)^2` and per
    stop :math:`\big(\log F(x) + \log P_F(\text{stop}|x) - \log R(x)\big)^2`, averaged over transitions.

    Args: as :class:`GFlowNet`, plus ``logf``: state-flow net ``(B, obs_dim) -> (B, 1)``.
    """

    def residuals(self, tr: Trajectories) -> Tensor:
        """``(T, B)`` residuals (0 on padding)."""
        phi = self._phi(tr)
        r = phi[:-1] + tr.log_pf - tr.log_pb - phi[1:]
        return torch.where(tr.valid, r, r.new_zeros(()))

    def objective(self, tr: Trajectories) -> Tensor:
        return self.residuals(tr).pow(2).sum() / tr.valid.sum()


class SubTrajectoryBalance(_FlowGFlowNet):
    r"""Sub-trajectory balance (Madan et al. 2023), "geometric within" weighting.

    For positions :math:`0 \le i < j \le L` of a trajectory with :math:`L` actions (position
    :math:`L` is the sink, :math:`\Phi_L = \log R(x)`; else :math:`\Phi_k = \log F(s_k)`),

    .. math::

        r_{ij} = \Phi_i + \sum_{k=i}^{j-1} (\log P_F(a_k) - \log P_B(a_k)) - \Phi_j, \qquad
        \mathcal L = \frac1B \sum_b \frac{\sum_{i<j} \lambda^{j-i} r_{ij}^2}{\sum_{i<j} \lambda^{j-i}}.

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
        r, mask = self.residuals(tr)
        k = torch.arange(r.shape[0], device=r.device, dtype=r.dtype)
        w = (self.lamda ** (k[None, :] - k[:, None]).clamp(min=0))[..., None] * mask
        per_traj = (w * r.pow(2)).sum((0, 1)) / w.sum((0, 1))
        return per_traj.mean()
