r"""Equivariant optimal-transport pairing for particle systems (Klein, Krämer & Noé, NeurIPS 2023, §4).

For a source sample :math:`x_0` and a data sample :math:`x_1` of ``N`` identical particles, both centre-of-mass
free, the equivariant pair cost is

.. math:: c(x_0, x_1) = \min_{\sigma \in S_N,\; R \in SO(d)} \lVert x_1 - R\, x_{0,\sigma}\rVert^2 ,

and flow matching on pairs aligned this way learns straighter paths than independent pairs, because the
source is invariant under :math:`(\sigma, R)` (the aligned :math:`R x_{0,\sigma}` has the same law as
:math:`x_0`). :func:`align_particles` minimises it by alternating an optimal permutation (the Hungarian
algorithm on the :math:`N \times N` particle cost :math:`\lVert x_{1,a} - x_{0,b}\rVert^2`) and the
optimal rotation (Kabsch, 1976: :func:`kabsch`); each step can only lower the cost.
:class:`EquivariantOT` first pairs the minibatch by a plain minibatch OT assignment (Hungarian on
:math:`\lVert x_0^i - x_1^j\rVert^2`; Klein et al. use the aligned cost for all :math:`B^2` pairs, which
costs :math:`B^2` alignments per step: too slow on a CPU) and then aligns each pair.

The Hungarian algorithm comes from SciPy (``scipy.optimize.linear_sum_assignment``), imported lazily.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x1 = torch.randn(2, 4, 2, generator=g); x1 = x1 - x1.mean(1, keepdim=True)
    >>> c, s = torch.cos(torch.tensor(0.7)), torch.sin(torch.tensor(0.7))
    >>> x0 = (x1 @ torch.stack([torch.stack([c, -s]), torch.stack([s, c])]))[:, [3, 1, 0, 2]]
    >>> y = align_particles(x0.reshape(2, 8), x1.reshape(2, 8), 4, 2)
    >>> bool(torch.allclose(y, x1.reshape(2, 8), atol=1e-5))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["EquivariantOT", "align_particles", "kabsch"]


def _hungarian():
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("equivariant OT needs SciPy's Hungarian algorithm: pip install scipy") from e
    return linear_sum_assignment


def kabsch(x: Tensor, y: Tensor, *, reflections: bool = False) -> Tensor:
    r"""The orthogonal :math:`R` minimising :math:`\lVert y - x R^\top\rVert^2`, per configuration (Kabsch, 1976).

    With :math:`H = x^\top y = U S V^\top`, :math:`R = V\,\mathrm{diag}(1, \dots, 1, s)\,U^\top` with
    :math:`s = \operatorname{sign}\det(V U^\top)` (a proper rotation; ``reflections=True``: :math:`s = 1`).

    Args:
        x, y: ``(B, N, d)`` centred configurations.
        reflections: allow improper rotations (the optimum over :math:`O(d)`).

    Returns:
        ``(B, d, d)`` matrices; the aligned ``x`` is ``x @ R.transpose(1, 2)``.
    """
    if x.shape != y.shape or x.dim() != 3:
        raise ValueError(
            f"kabsch takes two (B, N, d) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    h = x.transpose(1, 2) @ y
    u, _, vt = torch.linalg.svd(h)
    v = vt.transpose(1, 2)
    if not reflections:
        s = torch.sign(torch.linalg.det(v @ u.transpose(1, 2)))
        s = torch.where(s == 0, torch.ones_like(s), s)
        v = torch.cat([v[..., :-1], v[..., -1:] * s[:, None, None]], dim=-1)
    return v @ u.transpose(1, 2)


def _check_pairs(x0: Tensor, x1: Tensor, n: int, d: int) -> None:
    if x0.shape != x1.shape or x0.dim() != 2 or x0.shape[1] != n * d:
        raise ValueError(
            f"x0 and x1 must both have shape (B, N*d) = (B, {n * d}); got {tuple(x0.shape)} and {tuple(x1.shape)}"
        )


def align_particles(
    x0: Tensor,
    x1: Tensor,
    n_particles: int,
    spatial_dim: int,
    *,
    iters: int = 2,
    reflections: bool = False,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A permuted and rotated copy of ``x0`` closer to ``x1``, pair by pair; ``(B, N*d) -> (B, N*d)``.

    Alternates ``iters`` times: the optimal permutation of ``x0``'s particles (Hungarian), then the
    optimal rotation (:func:`kabsch`). Both inputs must be centre-of-mass free (rotations are about 0).
    The squared distance to ``x1`` never increases. The alternation is a local search: a copy rotated far
    from ``x1`` can be matched wrongly; ``restarts > 1`` also starts from ``restarts - 1`` random
    rotations of ``x0`` (drawn from ``generator``) and keeps each pair's best.
    """
    n, d = int(n_particles), int(spatial_dim)
    _check_pairs(x0, x1, n, d)
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    lsa = _hungarian()
    b = x0.shape[0]
    p1 = x1.reshape(b, n, d)
    rows = torch.arange(b)[:, None]
    best, best_cost = None, None
    for k in range(int(restarts)):
        p0 = x0.reshape(b, n, d)
        if k > 0:
            q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
            p0 = p0 @ q.to(p0).T
        for _ in range(int(iters)):
            cost = torch.cdist(p1.double(), p0.double()).square().cpu().numpy()  # [a, b] = |x1_a - x0_b|^2
            perm = np.stack([lsa(c)[1] for c in cost])
            p0 = p0[rows, torch.from_numpy(perm).to(p0.device)]
            r = kabsch(p0, p1, reflections=reflections)
            p0 = p0 @ r.transpose(1, 2)
        c = (p0 - p1).square().sum((1, 2))
        if best is None:
            best, best_cost = p0, c
        else:
            better = c < best_cost
            best = torch.where(better[:, None, None], p0, best)
            best_cost = torch.where(better, c, best_cost)
    return best.reshape(b, n * d)


@dataclass(frozen=True)
class EquivariantOT:
    """Equivariant minibatch OT pairing: ``coupling(x0, x1) -> (x0', x1)`` with ``x0'`` reordered and aligned.

    Args:
        n_particles, spatial_dim: the particle layout ``(B, N*d)``.
        batch_ot: first reorder the source rows by a minibatch OT assignment (Hungarian on squared distances).
        iters: permutation/rotation alternations per pair (:func:`align_particles`).
        reflections: align over :math:`O(d)` instead of :math:`SO(d)`.
    """

    n_particles: int
    spatial_dim: int
    batch_ot: bool = True
    iters: int = 2
    reflections: bool = False

    @torch.no_grad()
    def __call__(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        """``(x0', x1)``: the source rows paired to ``x1`` and aligned to them, both ``(B, N*d)``."""
        _check_pairs(x0, x1, self.n_particles, self.spatial_dim)
        if self.batch_ot and x0.shape[0] > 1:
            cost = torch.cdist(x1.double(), x0.double()).square().cpu().numpy()
            x0 = x0[torch.from_numpy(_hungarian()(cost)[1]).to(x0.device)]
        x0 = align_particles(
            x0, x1, self.n_particles, self.spatial_dim, iters=self.iters, reflections=self.reflections
        )
        return x0, x1
