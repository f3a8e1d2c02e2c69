r"""The mean-free (centre-of-mass-free) standard normal: the source of equivariant flows for particles.

``N`` particles in ``d`` dimensions, ``x`` of shape ``(B, N*d)`` (particle ``i`` is ``x.view(B, N, d)[:, i]``).
The centre-of-mass-free subspace :math:`U = \{x : \sum_i x_i = 0\}` has dimension :math:`(N-1)d`; with
:math:`P` the orthogonal projection onto it (subtract the mean over particles),
:math:`x = P\varepsilon`, :math:`\varepsilon \sim N(0, I_{Nd})`, is a standard normal on :math:`U` in any
orthonormal basis of :math:`U` (Köhler, Klein & Noé, ICML 2020; Garcia Satorras et al., NeurIPS 2021, §3):

.. math:: \log p_0(x) = -\tfrac12\lVert x\rVert^2 - \tfrac{(N-1)d}{2}\log 2\pi, \qquad x \in U,

a density with respect to the :math:`(N-1)d`-dimensional Lebesgue measure on :math:`U` (the :math:`d`
removed dimensions contribute no factor). It is invariant under rotations and permutations of the
particles.

**Divergence on U.** For a field of the form :math:`f(x) = P\,g(Px)` the ambient Jacobian is
:math:`P\,\partial g\,P`, whose trace equals the divergence of :math:`f` restricted to :math:`U`
(:math:`P` is the identity on :math:`U` and zero on its complement). A translation-invariant, mean-free
field (an EGNN) already has this form, so the usual exact trace over all :math:`Nd` coordinates is the
divergence on :math:`U`; :meth:`MeanFreeNormal.project_field` wraps any field into this form.

Example:
    >>> import torch
    >>> src = MeanFreeNormal(n_particles=4, spatial_dim=2)
    >>> x = src.sample(3, generator=torch.Generator().manual_seed(0))
    >>> x.shape, bool(x.view(3, 4, 2).sum(1).abs().max() < 1e-6), src.subspace_dim
    (torch.Size([3, 8]), True, 6)
    >>> src.log_prob(torch.zeros(1, 8))  # -(6/2) log(2 pi)
    tensor([-5.5136])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["MeanFreeNormal", "remove_com"]


def remove_com(x: Tensor, n_particles: int, spatial_dim: int) -> Tensor:
    """:math:`Px`: subtract each configuration's mean over particles; ``(B, N*d)`` or ``(B, N, d)``, same shape."""
    p = x.reshape(x.shape[0], n_particles, spatial_dim)
    return (p - p.mean(1, keepdim=True)).reshape(x.shape)


class MeanFreeNormal:
    """Standard normal on the centre-of-mass-free subspace of ``N`` particles in ``d`` dimensions.

    Args:
        n_particles: ``N`` (at least 2).
        spatial_dim: ``d``.
        atol: :meth:`log_prob` refuses points whose centre of mass is further than this from 0
            (``None``: no check).
    """

    def __init__(self, n_particles: int, spatial_dim: int, atol: float | None = 1e-3) -> None:
        if int(n_particles) < 2 or int(spatial_dim) < 1:
            raise ValueError(
                f"MeanFreeNormal needs n_particles >= 2 and spatial_dim >= 1, got {n_particles} and "
                f"{spatial_dim}; write e.g. MeanFreeNormal(4, 2)"
            )
        self.n, self.d = int(n_particles), int(spatial_dim)
        self.dim = self.n * self.d
        self.subspace_dim = (self.n - 1) * self.d
        self.atol = atol

    def project(self, x: Tensor) -> Tensor:
        """:math:`Px` (see :func:`remove_com`)."""
        return remove_com(x, self.n, self.d)

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``(n, N*d)`` samples :math:`P\\varepsilon`."""
        eps = torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)
        return self.project(eps)

    def log_prob(self, x: Tensor) -> Tensor:
        """:math:`-\\lVert x\\rVert^2/2 - (N-1)d/2 \\log 2\\pi` for mean-free ``x: (B, N*d)``; ``(B,)``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}) = (B, N*d), got {tuple(x.shape)}")
        if self.atol is not None:
            com = x.reshape(x.shape[0], self.n, self.d).mean(1).abs().max() if len(x) else 0.0
            if float(com) > self.atol:
                raise ValueError(
                    f"x is not centre-of-mass free (largest |mean over particles| = {float(com):.3g}); the "
                    "density lives on the subspace sum_i x_i = 0: pass remove_com(x, N, d) or project(x)"
                )
        return -0.5 * x.square().sum(1) - 0.5 * self.subspace_dim * math.log(2 * math.pi)

    def project_field(self, f: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
        """The field :math:`x \\mapsto P f(Px, t)`, whose ambient divergence is its divergence on the subspace."""

        def projected(x: Tensor, t: Tensor) -> Tensor:
            return self.project(f(self.project(x), t))

        return projected
