r"""Fixed traversals for comparison: PCA directions of the latent codes, random directions, the factor oracle.

- :func:`pca_directions`: the top-:math:`K` principal axes of a sample of latent codes (GANSpace, Härkönen
  et al., NeurIPS 2020, in the latent space itself): no training, no classifier.
- :func:`random_directions`: :math:`K` random unit directions (the noise floor of the purity metrics).
- :class:`FixedDirections`: the traversal along given global directions, steps of latent length
  ``max_step``.
- :class:`FactorOracle`: the ceiling: at every :math:`z` it steps along the direction that moves one true
  factor alone (``decoder.factor_directions(z)``), again with latent steps of length ``max_step``.

Example:
    >>> import torch
    >>> from flowforge.apps.traversal import BlobDecoder, FixedDirections, pca_directions
    >>> dec = BlobDecoder(size=8, bend=0.0)
    >>> codes = dec.sample_codes(4000, generator=torch.Generator().manual_seed(0))
    >>> pca = FixedDirections(pca_directions(codes, 4), steps=3, max_step=0.3)
    >>> pca.traverse(0, codes[:2]).shape
    torch.Size([2, 4, 4])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FactorOracle", "FixedDirections", "pca_directions", "random_directions"]


def pca_directions(codes: Tensor, k: int) -> Tensor:
    """The top-``k`` principal axes ``(k, D)`` (unit rows, by decreasing variance) of codes ``(N, D)``."""
    if codes.dim() != 2 or not 1 <= k <= codes.shape[1] or codes.shape[0] < 2:
        raise ValueError(
            f"pca_directions needs codes (N >= 2, D) and 1 <= k <= D; got {tuple(codes.shape)}, k={k}"
        )
    x = codes - codes.mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return vh[:k]


def random_directions(k: int, dim: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``k`` random unit directions ``(k, dim)``."""
    v = torch.randn(k, dim, generator=generator)
    return v / v.norm(dim=1, keepdim=True)


class _Fixed(nn.Module):
    def __init__(self, num_traversals: int, steps: int, max_step: float) -> None:
        super().__init__()
        if steps < 1 or max_step <= 0:
            raise ValueError(f"steps must be >= 1 and max_step > 0; got steps={steps}, max_step={max_step}")
        self.num_traversals, self.steps, self.max_step = int(num_traversals), int(steps), float(max_step)

    def direction(self, k: int, z: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def traverse(self, k: int, z: Tensor, steps: int | None = None) -> Tensor:
        """The path ``(B, T + 1, D)`` of traversal ``k`` from ``z (B, D)``."""
        if not 0 <= k < self.num_traversals:
            raise ValueError(f"traversal index k must be in 0..{self.num_traversals - 1}, got {k}")
        path = [z.detach()]
        for _ in range(self.steps if steps is None else int(steps)):
            d = self.direction(k, path[-1])
            path.append(path[-1] + self.max_step * d / d.norm(dim=1, keepdim=True).clamp_min(1e-12))
        return torch.stack(path, dim=1)


class FixedDirections(_Fixed):
    """Traversals along fixed global directions ``(K, D)`` (PCA, random), steps of length ``max_step``."""

    def __init__(self, directions: Tensor, steps: int = 8, max_step: float = 0.5) -> None:
        super().__init__(directions.shape[0], steps, max_step)
        self.register_buffer("directions", directions.detach().clone())

    def direction(self, k: int, z: Tensor) -> Tensor:
        return self.directions[k].to(z.dtype).expand_as(z)


class FactorOracle(_Fixed):
    """Traversal ``k`` moves true factor ``k`` alone (``decoder.factor_directions``): the purity ceiling."""

    def __init__(self, decoder: nn.Module, steps: int = 8, max_step: float = 0.5) -> None:
        super().__init__(decoder.num_factors, steps, max_step)
        self.decoder = decoder

    def direction(self, k: int, z: Tensor) -> Tensor:
        return self.decoder.factor_directions(z)[:, k]
