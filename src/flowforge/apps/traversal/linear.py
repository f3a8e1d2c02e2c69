r"""Learned linear traversal directions: the fair baseline of potential flows (Voynov & Babenko, ICML 2020).

:math:`K` global directions :math:`v_k\in\mathbb{R}^D` (learned), each traversal taking steps of fixed
latent length :math:`\varepsilon` (``max_step``),

.. math:: z_{t+1} = z_t + \varepsilon\, v_k/\lVert v_k\rVert,

trained with exactly the objective of the potential flows without the PDE terms: the pair classifier's
cross-entropy and the change term :math:`-\lVert J_G\, \varepsilon v_k/\lVert v_k\rVert\rVert^2`
(:class:`~flowforge.apps.traversal.base.TraversalModel`). Song et al. (arXiv:2304.12944) compare against
this family of baselines.

Example:
    >>> import torch
    >>> from flowforge.apps.traversal import BlobDecoder, LinearTraversal
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> lin = LinearTraversal(BlobDecoder(size=8), latent_dim=4, num_traversals=3, steps=4, max_step=0.5)
    >>> path = lin.traverse(0, torch.zeros(2, 4))
    >>> round(float((path[:, 1] - path[:, 0]).norm(dim=1)[0]), 4)
    0.5
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowforge.apps.traversal.base import TraversalModel

__all__ = ["LinearTraversal"]


class LinearTraversal(TraversalModel):
    """``K`` learned global directions, steps of latent length ``max_step``.

    Args:
        decoder: the generator ``G: (B, D) -> (B, *image)``.
        latent_dim: ``D``.
        num_traversals: ``K``.
        steps: ``T``.
        max_step: the step length :math:`\\varepsilon` (required: a direction has no length of its own).
        classifier_width: hidden width of the pair classifier.
        cls_weight: weight of the cross-entropy.
        jvp_weight: weight of the change term.
    """

    def __init__(
        self,
        decoder: nn.Module,
        latent_dim: int,
        num_traversals: int,
        steps: int = 8,
        *,
        max_step: float,
        classifier_width: int = 128,
        cls_weight: float = 1.0,
        jvp_weight: float = 1.0,
    ) -> None:
        if max_step is None:
            raise ValueError("LinearTraversal needs a step length max_step > 0, e.g. max_step=0.5")
        super().__init__(
            decoder,
            latent_dim,
            num_traversals,
            steps,
            max_step=max_step,
            classifier_width=classifier_width,
            cls_weight=cls_weight,
            jvp_weight=jvp_weight,
        )
        self.directions = nn.Parameter(torch.randn(self.num_traversals, self.latent_dim))

    def unit_directions(self) -> Tensor:
        """The normalised directions ``(K, D)``."""
        return self.directions / self.directions.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def step(self, k: int, z: Tensor, t: int, *, create_graph: bool = False) -> Tensor:
        """``max_step * v_k / |v_k|``, the same at every ``z`` and ``t``."""
        v = self.unit_directions()[self._check_k(k)].to(z.dtype) * self.max_step
        v = v.expand_as(z)
        return v if create_graph else v.detach()
