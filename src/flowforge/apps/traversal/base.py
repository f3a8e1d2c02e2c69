r"""What every learned latent traversal shares: the step loop, the pair classifier and the change objective.

A traversal :math:`k` moves a latent code by steps :math:`z_{t+1} = z_t + s_k(z_t, t)`, :math:`t = 0..T-1`.
A learned traversal (:class:`~flowforge.apps.traversal.PotentialFlowTraversal`,
:class:`~flowforge.apps.traversal.LinearTraversal`) is trained with the objective of Song et al.
("Latent Traversals in Generative Models as Potential Flows", ICML 2023, arXiv:2304.12944, §3.3) and of
Voynov & Babenko (ICML 2020):

.. math::
    \mathcal{L} = \lambda_{\mathrm{cls}}\,\mathrm{CE}\big(c(G(z_t), G(z_{t+1})), k\big)
    - \lambda_{\mathrm{jvp}}\, \lVert J_G(z_t)\, s_k(z_t, t)\rVert^2 + \mathcal{L}_{\text{own}},

with :math:`J_G s` a Jacobian-vector product of the decoder (``torch.autograd.functional.jvp``), summed over pixels and
averaged over the batch, and :math:`\mathcal{L}_{\text{own}}` the method's own terms (the PDE of a potential flow). The batch
of latent codes is split into :math:`K` equal chunks, chunk :math:`k` trained on traversal :math:`k`, at one
random step :math:`t` per chunk reached by rolling the traversal out (without gradients) from the codes.

Steps may be capped at a latent norm ``max_step`` (:math:`s \leftarrow s\min(1, \text{max\_step}/\lVert s\rVert)`),
which gives every method the same latent budget per step (the linear baseline takes steps of exactly
``max_step``); ``None`` leaves a method's raw step.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.apps.traversal.classifier import PairClassifier

__all__ = ["TraversalModel", "cap_norm"]


def cap_norm(step: Tensor, max_step: float | None) -> Tensor:
    r"""``step`` with rows of norm above ``max_step`` scaled down to ``max_step`` (``None``: unchanged)."""
    if max_step is None:
        return step
    norm = step.norm(dim=1, keepdim=True)
    return step * torch.clamp(max_step / norm.clamp_min(1e-12), max=1.0)


class TraversalModel(nn.Module):
    """Base of learned traversals: ``step`` is the method; ``traverse``, ``loss`` and the classifier are shared.

    Args:
        decoder: the generator ``G: (B, D) -> (B, *image)`` (fixed: its parameters are not trained).
        latent_dim: ``D``.
        num_traversals: ``K``.
        steps: ``T``, the number of steps of one traversal.
        max_step: cap on a step's latent norm (``None``: none).
        classifier_width: hidden width of the :class:`PairClassifier`.
        cls_weight: :math:`\\lambda_{\\mathrm{cls}}`.
        jvp_weight: :math:`\\lambda_{\\mathrm{jvp}}`.
    """

    def __init__(
        self,
        decoder: nn.Module,
        latent_dim: int,
        num_traversals: int,
        steps: int = 8,
        *,
        max_step: float | None = None,
        classifier_width: int = 128,
        cls_weight: float = 1.0,
        jvp_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if num_traversals < 2:
            raise ValueError(
                f"num_traversals must be >= 2 (the classifier tells them apart), got {num_traversals}"
            )
        if steps < 1:
            raise ValueError(f"steps (T, the length of a traversal) must be >= 1, got {steps}")
        if max_step is not None and max_step <= 0:
            raise ValueError(f"max_step must be > 0 or None (no cap), got {max_step}")
        self.decoder = decoder
        for p in decoder.parameters():
            p.requires_grad_(False)
        self.latent_dim, self.num_traversals, self.steps = int(latent_dim), int(num_traversals), int(steps)
        self.max_step = None if max_step is None else float(max_step)
        self.cls_weight, self.jvp_weight = float(cls_weight), float(jvp_weight)
        with torch.no_grad():
            image_shape = tuple(decoder(torch.zeros(1, self.latent_dim)).shape[1:])
        self.classifier = PairClassifier(image_shape, self.num_traversals, classifier_width)
        self.last_terms: dict[str, float] = {}

    def time_of(self, index: int | Tensor, batch: int, like: Tensor) -> Tensor:
        r"""The time :math:`\tau = (t + 1)/T` of step ``index`` as a ``(B,)`` tensor (``τ = 0`` is the initial condition)."""
        tau = (torch.as_tensor(index, dtype=like.dtype, device=like.device) + 1) / self.steps
        return tau.expand(batch) if tau.dim() == 0 else tau

    @abstractmethod
    def step(self, k: int, z: Tensor, t: int, *, create_graph: bool = False) -> Tensor:
        """The latent move ``s_k(z, t)`` of traversal ``k`` at step index ``t``: ``(B, D) -> (B, D)``."""

    def own_loss(self, k: int, z: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The method's own loss terms on chunk ``z`` of traversal ``k`` (default: none)."""
        return z.new_zeros(()), {}

    def _check_k(self, k: int) -> int:
        if not 0 <= int(k) < self.num_traversals:
            raise ValueError(f"traversal index k must be in 0..{self.num_traversals - 1}, got {k}")
        return int(k)

    def _check_z(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latent codes must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        return z

    def traverse(self, k: int, z: Tensor, steps: int | None = None) -> Tensor:
        """The path ``z_0 = z, ..., z_T`` of traversal ``k``: ``(B, D) -> (B, T + 1, D)`` (no graph kept)."""
        k, z = self._check_k(k), self._check_z(z)
        path = [z.detach()]
        for t in range(self.steps if steps is None else int(steps)):
            path.append(path[-1] + self.step(k, path[-1], t).detach())
        return torch.stack(path, dim=1)

    @torch.no_grad()
    def pair_accuracy(self, z: Tensor) -> float:
        """How often the classifier names the traversal of a step pair, over all ``K`` traversals and ``T`` steps."""
        hits, total = 0.0, 0
        for k in range(self.num_traversals):
            with torch.enable_grad():
                path = self.traverse(k, z)
            for t in range(path.shape[1] - 1):
                logits = self.classifier(self.decoder(path[:, t]), self.decoder(path[:, t + 1]))
                hits += float((logits.argmax(1) == k).float().sum())
                total += z.shape[0]
        return hits / total

    def loss(self, batch: Any) -> Tensor:
        """The training loss on a batch of latent codes ``(B, D)``, ``B >= K`` (split into ``K`` chunks)."""
        z = batch[0] if isinstance(batch, tuple | list) else batch
        z = self._check_z(z)
        if z.shape[0] < self.num_traversals:
            raise ValueError(
                f"batch of {z.shape[0]} codes is smaller than K={self.num_traversals}; raise batch_size"
            )
        total = z.new_zeros(())
        ce_sum, jvp_sum, acc_sum, own_terms = 0.0, 0.0, 0.0, {}
        for k, chunk in enumerate(z.chunk(self.num_traversals)):
            t = int(torch.randint(self.steps, ()).item())
            zt = chunk.detach()
            for s in range(t):
                zt = zt + self.step(k, zt, s).detach()
            move = self.step(k, zt, t, create_graph=True)
            before = self.decoder(zt)
            after = self.decoder(zt + move)
            logits = self.classifier(before, after)
            target = torch.full((zt.shape[0],), k, dtype=torch.long, device=z.device)
            ce = F.cross_entropy(logits, target)
            _, change = torch.autograd.functional.jvp(self.decoder, zt, move, create_graph=True)
            jvp = change.flatten(1).square().sum(1).mean()
            own, terms = self.own_loss(k, chunk)
            total = total + self.cls_weight * ce - self.jvp_weight * jvp + own
            ce_sum += float(ce.detach())
            jvp_sum += float(jvp.detach())
            acc_sum += float((logits.argmax(1) == target).float().mean())
            for name, v in terms.items():
                own_terms[name] = own_terms.get(name, 0.0) + v / self.num_traversals
        n = self.num_traversals
        self.last_terms = {"ce": ce_sum / n, "jvp": jvp_sum / n, "accuracy": acc_sum / n, **own_terms}
        return total / n
