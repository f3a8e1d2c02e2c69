"""Volume-preserving shuffles and Glow's linear layers (Kingma & Dhariwal, 2018).

:class:`Permutation`, :class:`Reverse`, :func:`RandomPermutation` (``ladj = 0``), :class:`ActNorm`
(data-dependent initialisation) and :class:`LULinear` (``W = L (U + diag(e^s))``). Points have shape
``(B, D)``; conditioning keywords are accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

import torch
from torch import Tensor, nn

from flowforge.normalizing.flow import _check_points

__all__ = ["ActNorm", "LULinear", "Permutation", "RandomPermutation", "Reverse"]


@final
class Permutation(nn.Module):
    """Fixed permutation of the dimensions: ``z = x[:, perm]``, ``ladj = 0``.

    The permutation is a buffer, so it is saved and loaded with the ``state_dict``.

    Args:
        perm: a permutation of ``0..D-1``.

    Example:
        >>> p = Permutation([2, 0, 1])
        >>> p(torch.tensor([[10.0, 11.0, 12.0]]))[0]
        tensor([[12., 10., 11.]])
    """

    def __init__(self, perm: Tensor | Sequence[int]) -> None:
        super().__init__()
        perm = torch.as_tensor(perm).long().flatten()
        d = perm.numel()
        if d < 1 or not torch.equal(perm.sort().values, torch.arange(d)):
            raise ValueError(f"Permutation needs a permutation of 0..D-1, got {perm.tolist()}")
        self.register_buffer("perm", perm)
        self.register_buffer("inv", torch.argsort(perm))

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(x, self.perm.numel(), "Permutation")
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(z, self.perm.numel(), "Permutation")
        return z[:, self.inv], z.new_zeros(z.shape[0])


@final
class Reverse(nn.Module):
    """Reverse the order of the dimensions: ``z = x.flip(1)``, ``ladj = 0``; works for any ``D``.

    Example:
        >>> Reverse()(torch.tensor([[1.0, 2.0, 3.0]]))[0]
        tensor([[3., 2., 1.]])
    """

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(x, None, "Reverse")
        return x.flip(1), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward(z)


def RandomPermutation(
    dim: int, *, seed: int | None = None, generator: torch.Generator | None = None
) -> Permutation:
    """A :class:`Permutation` drawn uniformly at random from ``seed`` or ``generator``.

    With neither, torch's default generator is used. The permutation is stored as a buffer, so a
    loaded ``state_dict`` restores it whatever the seed of the fresh instance.

    Example:
        >>> RandomPermutation(4, seed=0).perm.tolist() == RandomPermutation(4, seed=0).perm.tolist()
        True
    """
    if int(dim) != dim or dim < 1:
        raise ValueError(f"RandomPermutation: dim must be a positive integer, got {dim!r}")
    if seed is not None and generator is not None:
        raise ValueError("RandomPermutation takes seed= or generator=, not both")
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    return Permutation(torch.randperm(dim, generator=generator))


@final
class ActNorm(nn.Module):
    r"""Activation normalisation (Glow; Kingma & Dhariwal, 2018): :math:`z = (x - \mu) e^{-\log\sigma}`.

    ``ladj = -sum(log_scale)``. On the first ``forward`` in training mode with at least two rows, the
    parameters are set from the batch so that ``z`` has zero mean and unit variance per dimension
    (data-dependent initialisation). Whether this happened is the persistent buffer ``initialized``,
    so a loaded ``state_dict`` is never re-initialised. Until then the layer is the identity.

    Args:
        dim: ``D``.
        eps: added to the batch std at initialisation.

    Example:
        >>> layer = ActNorm(2)
        >>> z, _ = layer(torch.randn(100, 2) * 3 + 1)
        >>> bool(z.mean(0).abs().max() < 1e-5), bool((z.std(0, correction=0) - 1).abs().max() < 1e-4)
        (True, True)
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        if int(dim) != dim or dim < 1:
            raise ValueError(f"ActNorm: dim must be a positive integer, got {dim!r}")
        self.dim, self.eps = dim, eps
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(x, self.dim, "ActNorm")
        if self.training and not bool(self.initialized) and x.shape[0] >= 2:
            with torch.no_grad():
                xd = x.detach()
                self.loc.copy_(xd.mean(0))
                self.log_scale.copy_(torch.log(xd.std(0, correction=0) + self.eps))
                self.initialized.fill_(True)
        z = (x - self.loc) * torch.exp(-self.log_scale)
        return z, (-self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(z, self.dim, "ActNorm")
        return z * torch.exp(self.log_scale) + self.loc, self.log_scale.sum().expand(z.shape[0])


@final
class LULinear(nn.Module):
    r"""Invertible linear layer in LU form (Glow; Kingma & Dhariwal, 2018): :math:`z = W x + b`.

    :math:`W = L\,(U + \mathrm{diag}(e^{s}))` with ``L`` unit lower-triangular and ``U`` strictly upper
    triangular, so :math:`\log|\det W| = \sum s` and the inverse is two triangular solves. Starts as
    the identity. Combine with a :class:`Permutation` for the full ``P L U`` form.

    Args:
        dim: ``D``.

    Example:
        >>> layer = LULinear(3)
        >>> x = torch.randn(4, 3)
        >>> torch.equal(layer(x)[0], x)
        True
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if int(dim) != dim or dim < 1:
            raise ValueError(f"LULinear: dim must be a positive integer, got {dim!r}")
        self.dim = dim
        self.lower = nn.Parameter(torch.zeros(dim, dim))
        self.upper = nn.Parameter(torch.zeros(dim, dim))
        self.log_diag = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.dim, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower.tril(-1) + eye
        upper = self.upper.triu(1) + torch.diag(torch.exp(self.log_diag))
        return lower, upper

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(x, self.dim, "LULinear")
        lower, upper = self._factors()
        z = x @ (lower @ upper).T + self.bias
        return z, self.log_diag.sum().expand(x.shape[0])

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_points(z, self.dim, "LULinear")
        lower, upper = self._factors()
        r = (z - self.bias).T  # (D, B)
        r = torch.linalg.solve_triangular(lower, r, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper, r, upper=True).T
        return x, (-self.log_diag.sum()).expand(z.shape[0])
