r"""Energy-based GFlowNets, EB-GFN (Zhang, Malkin, Liu, Volokhova, Courville, Bengio 2022, "Generative Flow
Networks for Discrete Probabilistic Modeling", ICML): learn an energy :math:`E_\phi` from data together with
a GFlowNet that samples from :math:`p_\phi(x) \propto e^{-E_\phi(x)}`.

Each iteration, on a batch :math:`x_{1:B}` of data:

1. **GFlowNet step** on the current reward :math:`\log R(x) = -E_\phi(x)` (no gradient to :math:`\phi`;
   :class:`~flowforge.gflownet.EnergyEnvironment` evaluates it afresh on every call): the objective of the
   wrapped GFlowNet (TB in the paper, any objective here) on forward trajectories sampled with
   :math:`P_F` and on backward trajectories drawn with :math:`P_B` from the data points,
   :math:`\mathcal L_\text{GFN} = (1-\rho)\,\mathcal L(\tau \sim P_F) + \rho\,\mathcal L(\tau \sim P_B(\cdot|x))`,
   :math:`\rho` = ``back_ratio`` (paper default 0.5).
2. **Negatives.** ``negatives="mh"`` (the paper's): from each data point, a :math:`K`-step back-and-forth
   proposal (undo :math:`K` steps with :math:`P_B`, redo them with :math:`P_F`) accepted with the
   Metropolis-Hastings probability

   .. math::

       A(x \to x') = \min\Big(1, \frac{e^{-E_\phi(x')}\,P_B(x' \dashrightarrow \tilde s)\,P_F(\tilde s \dashrightarrow x)}
       {e^{-E_\phi(x)}\,P_B(x \dashrightarrow \tilde s)\,P_F(\tilde s \dashrightarrow x')}\Big),

   one step of :meth:`LocalSearch.step <flowforge.gflownet.LocalSearch.step>` with ``filter="mh"``. The
   ratio is the paper's (``backforth_sample`` in the official code: ``logp_xprime2x - logp_x2xprime``);
   the official code accepts with Barker's rule :math:`r/(1+r)` (``Bernoulli(logits=log r)``) where this
   uses :math:`\min(1, r)`: both keep :math:`p_\phi` invariant, MH accepts more often. Every trajectory of
   a slot-filling environment (Ising) has :math:`D` moves, so the kernel is exact for any :math:`K`.
   :math:`K` rises linearly from 1 to ``mh_steps`` over ``mh_warmup`` iterations (the paper's ``lin_k``).
   ``negatives="gfn"``: fully-forward GFlowNet samples instead.
3. **Energy step**, contrastive divergence:
   :math:`\mathcal L_E = \frac1B\sum_b E_\phi(x_b) - \frac1B\sum_b E_\phi(x^-_b)` (negatives detached), whose
   gradient for an Ising energy is :math:`\nabla_J \mathcal L_E = -(\hat{\mathbb E}_\text{data}[\sigma\sigma^\top]
   - \hat{\mathbb E}_\text{neg}[\sigma\sigma^\top])`.

:meth:`EBGFN.loss` returns :math:`\mathcal L_\text{GFN} + \mathcal L_E`: the two parts touch disjoint
parameters (the reward is detached, the negatives too), so one optimizer step does both updates, and the
flowforge :class:`~flowforge.train.Trainer` trains an :class:`EBGFN` on a ``(N, D)`` data tensor as it is.
(The paper's loop updates the GFlowNet first and draws the negatives with the updated sampler; here both
use the sampler as it was at the start of the step.)

Example:
    >>> import torch
    >>> from flowforge.gflownet import EnergyEnvironment, Ising, IsingEnergy, TrajectoryBalance
    >>> energy = IsingEnergy(side=2, generator=torch.Generator().manual_seed(0))
    >>> gfn = TrajectoryBalance(EnergyEnvironment(Ising(side=2), energy), width=16, depth=1)
    >>> eb = EBGFN(gfn, mh_steps=2)
    >>> x = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]])
    >>> parts = eb.losses(x, generator=torch.Generator().manual_seed(0))
    >>> sorted(parts), eb.loss(x).ndim, eb.sample(3, generator=torch.Generator().manual_seed(1)).shape
    (['energy', 'gfn'], 0, torch.Size([3, 4]))
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowforge.core.choices import unknown_choice
from flowforge.gflownet.base import GFlowNet
from flowforge.gflownet.energies import check_binary
from flowforge.gflownet.envs.energy_env import EnergyEnvironment
from flowforge.gflownet.exact import terminal_distribution
from flowforge.gflownet.local_search import LocalSearch

__all__ = ["EBGFN", "binary_states", "coupling_rmse", "kl_l1"]

NEGATIVES = ("mh", "gfn")


def binary_states(d: int) -> Tensor:
    """``(2^d, d)`` long, every configuration in :math:`\\{0,1\\}^d`, the last site varying fastest
    (the order of the complete states in an :class:`~flowforge.gflownet.Ising` enumeration).

    Example:
        >>> binary_states(2).tolist()
        [[0, 0], [0, 1], [1, 0], [1, 1]]
    """
    if not 1 <= d <= 22:
        raise ValueError(f"enumerating 2^D configurations needs 1 <= D <= 22; got D={d}")
    k = torch.arange(2**d)
    return (k[:, None] >> torch.arange(d - 1, -1, -1)[None]) & 1


def kl_l1(p: Tensor, q: Tensor) -> tuple[float, float]:
    """:math:`KL(p\\|q) = \\sum_x p(\\log p - \\log q)` (nats) and :math:`\\sum_x |p - q|` of two distributions.

    Example:
        >>> kl_l1(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]))
        (0.0, 0.0)
    """
    p, q = p.double(), q.double()
    kl = torch.where(p > 0, p * (p.log() - q.log()), p.new_zeros(())).sum()
    return float(kl), float((p - q).abs().sum())


def coupling_rmse(J: Tensor, J_true: Tensor) -> float:
    """:math:`\\sqrt{\\frac1{D^2}\\sum_{ij}(J_{ij} - J^\\star_{ij})^2}` over all :math:`D^2` entries (Grathwohl et
    al. 2021's metric, reported by Zhang et al. 2022 as :math:`\\log` RMSE).

    Example:
        >>> coupling_rmse(torch.zeros(2, 2), torch.ones(2, 2))
        1.0
    """
    J, J_true = J.detach().double().cpu(), torch.as_tensor(J_true).double().cpu()
    if J.shape != J_true.shape:
        raise ValueError(f"J {tuple(J.shape)} and J_true {tuple(J_true.shape)} must have one shape")
    return float((J - J_true).pow(2).mean().sqrt())


class EBGFN(nn.Module):
    r"""EB-GFN (Zhang et al. 2022): an energy :math:`E_\phi` learned by contrastive divergence with negatives
    from a GFlowNet trained on :math:`\log R = -E_\phi`. See the module docstring for the three steps.

    Args:
        gfn: any :class:`~flowforge.gflownet.GFlowNet` objective (e.g. ``TrajectoryBalance``) whose ``env``
            is an :class:`~flowforge.gflownet.EnergyEnvironment`; its energy is the learned one. Its
            ``epsilon`` / ``temperature`` set the exploration of the forward trajectories.
        back_ratio: :math:`\rho \in [0, 1]`, the weight of the backward trajectories from the data in the
            GFlowNet loss (paper: 0.5; 0 = on-policy only, 1 = data only).
        negatives: ``"mh"`` (:math:`K`-step back-and-forth Metropolis-Hastings from the data, the paper's)
            or ``"gfn"`` (forward samples of the GFlowNet).
        mh_steps: the final :math:`K` (default: every move, :math:`K = D`, a proposal independent of the data
            point).
        mh_warmup: iterations over which :math:`K` rises linearly from 1 to ``mh_steps`` (0: constant).
        forward_batch: number of forward trajectories per step (default: the data batch size).

    Attributes:
        energy: the learned energy (``gfn.env.energy``), a submodule.
        iteration: the number of :meth:`loss` calls so far (a buffer, so resumed runs keep the
            :math:`K` schedule).
        last: statistics of the last step: ``K``, ``acceptance`` (MH negatives), ``gfn``, ``energy``.
    """

    makes_own_batches: ClassVar[bool] = False
    cuda_defaults: ClassVar[dict[str, Any]] = {"precision": "fp32", "compile": False}

    def __init__(
        self,
        gfn: GFlowNet,
        *,
        back_ratio: float = 0.5,
        negatives: str = "mh",
        mh_steps: int | None = None,
        mh_warmup: int = 0,
        forward_batch: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(gfn, GFlowNet):
            raise TypeError(
                f"gfn must be a GFlowNet objective, e.g. TrajectoryBalance(env); got {type(gfn).__name__}"
            )
        if not isinstance(gfn.env, EnergyEnvironment):
            raise TypeError(
                "EBGFN trains the GFlowNet on a learned energy: build it on EnergyEnvironment(env, energy), e.g. "
                "TrajectoryBalance(EnergyEnvironment(Ising(side=4), IsingEnergy(side=4)))"
            )
        if not (isinstance(back_ratio, int | float) and 0.0 <= back_ratio <= 1.0):
            raise ValueError(f"back_ratio is a weight in [0, 1] (paper: 0.5); got {back_ratio!r}")
        if negatives not in NEGATIVES:
            raise unknown_choice("negatives", negatives, NEGATIVES)
        n_moves = int(gfn.env.max_length) - 1
        if mh_steps is not None and (int(mh_steps) != mh_steps or not 1 <= mh_steps <= n_moves):
            raise ValueError(
                f"mh_steps is the K of the back-and-forth proposal, an integer in [1, {n_moves}]; got {mh_steps}"
            )
        if int(mh_warmup) != mh_warmup or mh_warmup < 0:
            raise ValueError(f"mh_warmup must be an integer >= 0 (iterations); got {mh_warmup}")
        if forward_batch is not None and (int(forward_batch) != forward_batch or forward_batch < 1):
            raise ValueError(
                f"forward_batch must be an integer >= 1 (or None: the data batch size); got {forward_batch}"
            )
        self.gfn = gfn
        self.energy = gfn.env.energy
        self.back_ratio = float(back_ratio)
        self.negative_kind = negatives
        self.mh_steps = n_moves if mh_steps is None else int(mh_steps)
        self.mh_warmup = int(mh_warmup)
        self.forward_batch = forward_batch
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.last: dict[str, float] = {}

    @property
    def env(self) -> EnergyEnvironment:
        """The GFlowNet's :class:`~flowforge.gflownet.EnergyEnvironment`."""
        return self.gfn.env

    @property
    def dim(self) -> int:
        return int(self.env.s0.numel())

    def current_k(self) -> int:
        """:math:`K` of this iteration: :math:`\\max(1, \\min(K, \\lfloor K (t + 1) / W \\rfloor))` during the
        warm-up of :math:`W` iterations, then ``mh_steps``."""
        if self.mh_warmup == 0:
            return self.mh_steps
        t = int(self.iteration)
        return max(1, min(self.mh_steps, math.floor(self.mh_steps * (t + 1) / self.mh_warmup)))

    def gfn_loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """:math:`(1-\\rho)\\mathcal L(\\tau \\sim P_F) + \\rho\\,\\mathcal L(\\tau \\sim P_B(\\cdot|x))` on the
        current reward; ``x`` ``(B, D)`` data in :math:`\\{0,1\\}`."""
        x = check_binary(x, self.dim)
        g, rho = self.gfn, self.back_ratio
        total = x.new_zeros((), dtype=g._dtype)
        if rho < 1.0:
            tr = g.sample(
                self.forward_batch or x.shape[0], generator, epsilon=g.epsilon, temperature=g.temperature
            )
            total = total + (1.0 - rho) * g.objective(tr)
        if rho > 0.0:
            total = total + rho * g.objective(g.sample_backward(x, generator))
        return total

    @torch.no_grad()
    def negatives(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, D)`` negative samples for the data ``x`` (``"mh"``: one back-and-forth MH step from each
        data point; ``"gfn"``: ``B`` forward samples)."""
        x = check_binary(x, self.dim)
        if self.negative_kind == "gfn":
            return self.gfn.sample(x.shape[0], generator).terminal
        k = self.current_k()
        x_neg, acc = LocalSearch(filter="mh", back_steps=k).step(self.gfn, x, generator)
        self.last.update(K=float(k), acceptance=float(acc.double().mean()))
        return x_neg

    def energy_loss(self, x: Tensor, x_neg: Tensor) -> Tensor:
        """Contrastive divergence :math:`\\overline{E_\\phi(x)} - \\overline{E_\\phi(x^-)}` (``x_neg`` detached)."""
        x, x_neg = check_binary(x, self.dim), check_binary(x_neg.detach(), self.dim, "negatives")
        return self.energy(x).mean() - self.energy(x_neg).mean()

    def losses(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``{"gfn": ..., "energy": ...}`` of one EB-GFN step on data ``x`` ``(B, D)``; advances :attr:`iteration`."""
        x = check_binary(x, self.dim).to(self.iteration.device)
        x_neg = self.negatives(x, generator)
        gfn = self.gfn_loss(x, generator)
        energy = self.energy_loss(x, x_neg)
        self.iteration += 1
        self.last.update(gfn=float(gfn.detach()), energy=float(energy.detach()))
        return {"gfn": gfn, "energy": energy}

    def loss(self, batch: Tensor) -> Tensor:
        """The trainer's entry point: ``batch`` is ``(B, D)`` data in :math:`\\{0, 1\\}`; randomness from torch's
        global generator (seeded by the trainer). Returns :math:`\\mathcal L_\\text{GFN} + \\mathcal L_E`."""
        parts = self.losses(batch)
        return parts["gfn"] + parts["energy"]

    @torch.no_grad()
    def sample(
        self, n: int, *, cond: Any = None, generator: torch.Generator | None = None, **_: Any
    ) -> Tensor:
        """``(n, D)`` long configurations from the GFlowNet's forward policy (the amortised sampler of
        :math:`p_\\phi`); options of other generators are ignored."""
        if cond is not None:
            raise ValueError("EB-GFN is unconditional; call sample(n) without cond")
        if int(n) != n or n < 1:
            raise ValueError(f"n must be an integer >= 1; got {n}")
        return self.gfn.sample(int(n), generator=generator).terminal

    def generator(self) -> EBGFN:
        """This model as a flowforge Generator (:meth:`sample`)."""
        return self

    @torch.no_grad()
    def exact_metrics(self, true_log_reward: Any, *, gfn: bool = True) -> dict[str, float]:
        """Exact distances to a true model by enumeration of the :math:`2^D` configurations.

        Args:
            true_log_reward: the truth's unnormalised :math:`\\log \\pi`, ``(B, D) -> (B,)`` (e.g. an
                :class:`~flowforge.gflownet.Ising` environment's ``log_reward``, or the environment itself).
            gfn: also the GFlowNet's exact terminal distribution (dynamic programming over every state of
                the environment: :math:`3^D` for Ising, so ``side <= 3``).

        Returns:
            ``kl_model``, ``l1_model``: :math:`KL(\\pi\\|p_\\phi)` and :math:`\\sum|\\pi - p_\\phi|` of the learned
            Boltzmann distribution; with ``gfn``: ``kl_gfn``, ``l1_gfn`` (GFlowNet vs truth) and
            ``l1_gfn_model`` (GFlowNet vs :math:`p_\\phi`, how well the sampler tracks the energy).
        """
        fn = getattr(true_log_reward, "log_reward", true_log_reward)
        X = binary_states(self.dim).to(self.iteration.device)
        pi = torch.softmax(fn(X, torch.float64).double(), 0)
        p_model = torch.softmax(-self.energy(X).double(), 0)
        out: dict[str, float] = {}
        out["kl_model"], out["l1_model"] = kl_l1(pi, p_model)
        if gfn:
            env = self.env
            n_states = int(getattr(env, "n_states", 0) or 0)
            if not hasattr(env, "all_states") or n_states > 200_000:
                raise ValueError(
                    f"the GFlowNet's exact distribution enumerates all {n_states or 'the'} states; "
                    "use gfn=False (or a lattice with side <= 3)"
                )
            S = env.all_states()
            full = env.forward_mask(S)[:, -1]
            if not torch.equal(S[full].to(X.device), X):
                raise ValueError("the environment's complete states are not the 2^D binary configurations")
            p_gfn = terminal_distribution(self.gfn, env)[full].to(X.device)
            out["kl_gfn"], out["l1_gfn"] = kl_l1(pi, p_gfn)
            out["l1_gfn_model"] = kl_l1(p_model, p_gfn)[1]
        return out
