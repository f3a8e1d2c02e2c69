"""A normalizing flow: bijections from data to noise plus a base distribution.

Convention (DESIGN.md): ``forward`` maps data ``x`` to noise ``z`` and returns ``(z, log|det dz/dx|)``;
sampling runs the inverse. ``log p(x) = log p_base(z) + log|det dz/dx|``. Every layer is a
:class:`~flowforge.core.contracts.Bijection`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.batch import split_batch
from flowforge.core.noise import standard_normal_log_prob

__all__ = ["Affine", "Compose", "Flow", "StandardNormal"]


def _check_points(x: Tensor, dim: int | None, who: str) -> None:
    """Raise a ValueError naming ``who`` unless ``x`` is a ``(B, dim)`` tensor (``dim=None``: any ``D``)."""
    if not isinstance(x, Tensor) or x.dim() != 2 or (dim is not None and x.shape[1] != dim):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        want = f"(B, {dim})" if dim is not None else "(B, D)"
        raise ValueError(
            f"{who} expects points of shape {want}, got {got}; flatten events with x.flatten(1)"
            + (
                f" or build the layer with dim={x.shape[-1]}"
                if isinstance(x, Tensor) and x.dim() == 2
                else ""
            )
        )


class Compose(nn.Module):
    """Bijections applied in order in ``forward`` (data to noise) and in reverse order in ``inverse``.

    Example:
        >>> from flowforge.normalizing.linear import ActNorm, Reverse
        >>> f = Compose([ActNorm(2), Reverse()])
        >>> x = torch.randn(5, 2)
        >>> z, ladj = f(x)
        >>> torch.allclose(f.inverse(z)[0], x, atol=1e-6)
        True
    """

    def __init__(self, bijections: Iterable[nn.Module]) -> None:
        super().__init__()
        self.bijections = nn.ModuleList(bijections)

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        ladj = x.new_zeros(x.shape[0])
        for b in self.bijections:
            x, l = b(x, **cond)
            ladj = ladj + l
        return x, ladj

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        ladj = z.new_zeros(z.shape[0])
        for b in reversed(self.bijections):
            z, l = b.inverse(z, **cond)
            ladj = ladj + l
        return z, ladj


class Affine(nn.Module):
    """A fixed elementwise affine map ``z = (x - loc) / scale`` (e.g. a standardisation), not trained.

    Put it first in a flow trained on standardised data to get a flow in data units.

    Example:
        >>> a = Affine(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))
        >>> z, ladj = a(torch.tensor([[3.0, 6.0]]))
        >>> import math
        >>> z, round(float(ladj), 4), round(-math.log(8.0), 4)
        (tensor([[1., 1.]]), -2.0794, -2.0794)
    """

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        super().__init__()
        loc, scale = torch.as_tensor(loc, dtype=torch.float32), torch.as_tensor(scale, dtype=torch.float32)
        if loc.shape != scale.shape or not bool((scale > 0).all()):
            raise ValueError("Affine needs loc and scale of the same shape with scale > 0 everywhere")
        self.register_buffer("loc", loc)
        self.register_buffer("scale", scale)

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        ladj = -self.scale.log().sum().to(x.dtype).expand(x.shape[0])
        return (x - self.loc) / self.scale, ladj

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        ladj = self.scale.log().sum().to(z.dtype).expand(z.shape[0])
        return z * self.scale + self.loc, ladj


class StandardNormal(nn.Module):
    """``N(0, I)`` over an event of shape ``event_shape``; ``log_prob: (B, *event) -> (B,)``."""

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        super().__init__()
        self.event_shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # follows .to(device, dtype)

    def log_prob(self, z: Tensor) -> Tensor:
        return standard_normal_log_prob(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        a = self._anchor
        return torch.randn((n, *self.event_shape), generator=generator, device=a.device, dtype=a.dtype)


class Flow(nn.Module):
    r"""A normalizing flow :math:`z = f(x)`, :math:`\log p(x) = \log p_Z(f(x)) + \log|\det J_f(x)|`.

    A Flow is its own :class:`Generator` (``sample``, ``log_prob``) and its own objective (``loss`` is
    the mean negative log-likelihood per sample, maximum likelihood).

    Args:
        transform: a bijection, or a sequence of them (composed in order, data to noise).
        base: base distribution with ``log_prob(z) -> (B,)`` and ``sample(n, generator)``; default
            ``StandardNormal(event_shape)``.
        event_shape: shape of one sample; needed when ``base`` is not given.

    Example:
        >>> from flowforge.normalizing.linear import ActNorm
        >>> flow = Flow([ActNorm(2)], event_shape=(2,))
        >>> x = flow.sample(4, generator=torch.Generator().manual_seed(0))
        >>> flow.log_prob(x).shape
        torch.Size([4])
    """

    #: exact likelihoods: the trainer keeps fp32 and eager mode on CUDA unless told otherwise
    cuda_defaults = {"precision": "fp32", "compile": False}

    def __init__(
        self,
        transform: nn.Module | Sequence[nn.Module],
        base: nn.Module | None = None,
        *,
        event_shape: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(transform, (list, tuple)):
            transform = Compose(transform)
        self.transform = transform
        if base is None:
            if event_shape is None:
                raise ValueError("Flow needs event_shape=(D,) (or a base distribution)")
            base = StandardNormal(event_shape)
        self.base = base
        shape = event_shape if event_shape is not None else getattr(base, "event_shape", None)
        if shape is None:
            raise ValueError("Flow needs event_shape=... when the base has no event_shape")
        self.event_shape = (shape,) if isinstance(shape, int) else tuple(shape)

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"expected points of shape (B, {', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}"
            )

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log|det dz/dx|)`` for data ``x: (B, *event)``."""
        self._check(x)
        return self.transform(x, **cond)

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, log|det dx/dz|)`` for noise ``z: (B, *event)``."""
        return self.transform.inverse(z, **cond)

    def log_prob(self, x: Tensor, **cond: Tensor) -> Tensor:
        """Exact ``log p(x)``; ``(B, *event) -> (B,)``."""
        z, ladj = self(x, **cond)
        return self.base.log_prob(z) + ladj

    def sample_and_log_prob(
        self, n: int, *, cond: dict[str, Tensor] | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparameterised samples ``(n, *event)`` and their ``log q`` ``(n,)`` (gradients flow)."""
        z = self.base.sample(n, generator)
        x, ladj = self.inverse(z, **(cond or {}))
        return x, self.base.log_prob(z) - ladj

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        **_: Any,
    ) -> Tensor:
        """``n`` samples ``(n, *event)``; extra options of other generators are ignored."""
        return self.sample_and_log_prob(n, cond=cond, generator=generator)[0]

    def loss(self, batch: Any) -> Tensor:
        """Maximum likelihood: mean ``-log p(x)`` per sample over ``x``, ``(x, y)`` or a dict batch."""
        x, cond = split_batch(batch)
        return -self.log_prob(x, **cond).mean()

    def generator(self) -> Flow:
        return self
