r"""Source distributions :math:`p_0` of discrete flow matching: factorised over positions.

Every source is a distribution over ``num_states`` token ids per position. The data vocabulary is
``0..vocab_size-1``; the masked source uses one extra id, ``vocab_size`` (the mask token), so its
``num_states`` is ``vocab_size + 1`` (Gat et al. 2024, "Discrete Flow Matching", arXiv:2407.15595;
Meta flow_matching's text example adds the mask as an extra vocabulary entry in the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Source", "MaskedSource", "UniformSource", "CategoricalSource", "categorical"]


def categorical(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw one index per row of (possibly unnormalised) non-negative weights ``probs: (..., S)``.

    Inverse-CDF sampling in ``probs.dtype`` (use float64 for exactness); returns ``(...)`` int64.
    Entries of zero weight are never drawn (up to a rounding event of probability ~1e-16).

    Example:
        >>> import torch
        >>> p = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]], dtype=torch.float64)
        >>> categorical(p, torch.Generator().manual_seed(0))[0].item()
        1
    """
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[:-1], generator=generator, device=probs.device, dtype=probs.dtype)
    idx = torch.searchsorted(cdf.contiguous(), (u * cdf[..., -1]).unsqueeze(-1).contiguous(), right=True)
    return idx.squeeze(-1).clamp_(max=probs.shape[-1] - 1)


@runtime_checkable
class Source(Protocol):
    """A factorised source :math:`p_0(x) = \\prod_i p_0^i(x^i)` over ``num_states`` ids per position.

    ``probs`` is ``(S,)`` (the same law at every position) or ``(L, S)``; ``sample(shape)`` draws ids.
    """

    num_states: int

    @property
    def probs(self) -> Tensor: ...

    def sample(self, shape: tuple[int, int], generator: torch.Generator | None = None) -> Tensor: ...


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 0:
        raise ValueError(f"a source samples token sequences of shape (B, L), got shape={shape}")
    return shape  # type: ignore[return-value]


@dataclass(frozen=True)
class MaskedSource:
    """Every position is the mask id ``vocab_size`` (absorbing / masked source); ``num_states = vocab_size + 1``.

    Example:
        >>> MaskedSource(4).sample((2, 3))
        tensor([[4, 4, 4],
                [4, 4, 4]])
    """

    vocab_size: int

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ValueError(f"MaskedSource needs vocab_size >= 1, got {self.vocab_size}")

    @property
    def num_states(self) -> int:
        return self.vocab_size + 1

    @property
    def mask_id(self) -> int:
        """The mask token id (one beyond the data vocabulary)."""
        return self.vocab_size

    @property
    def probs(self) -> Tensor:
        """``(vocab_size + 1,)``: one-hot on the mask id."""
        p = torch.zeros(self.num_states, dtype=torch.float64)
        p[self.vocab_size] = 1.0
        return p

    def sample(
        self,
        shape: tuple[int, int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``(B, L)`` of mask ids (the generator is not used: the source is deterministic)."""
        return torch.full(_check_shape(shape), self.vocab_size, dtype=torch.long, device=device)


@dataclass(frozen=True)
class UniformSource:
    """Uniform over the data vocabulary ``0..vocab_size-1`` at every position; ``num_states = vocab_size``.

    Example:
        >>> UniformSource(5).sample((2, 4), torch.Generator().manual_seed(0)).shape
        torch.Size([2, 4])
    """

    vocab_size: int

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ValueError(f"UniformSource needs vocab_size >= 1, got {self.vocab_size}")

    @property
    def num_states(self) -> int:
        return self.vocab_size

    @property
    def probs(self) -> Tensor:
        """``(vocab_size,)`` all equal to ``1 / vocab_size``."""
        return torch.full((self.vocab_size,), 1.0 / self.vocab_size, dtype=torch.float64)

    def sample(
        self,
        shape: tuple[int, int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``(B, L)`` ids drawn uniformly from ``0..vocab_size-1``."""
        return torch.randint(
            0, self.vocab_size, _check_shape(shape), generator=generator, device=device, dtype=torch.long
        )


class CategoricalSource:
    """A general factorised source given by probabilities ``(S,)`` or per position ``(L, S)``.

    ``S`` is the number of states: ``vocab_size`` (a law on the data tokens) or ``vocab_size + 1``
    (the last id being the mask, e.g. a partly masked source). Rows are normalised here.

    Example:
        >>> src = CategoricalSource(torch.tensor([0.5, 0.25, 0.25]))
        >>> src.sample((3, 2), torch.Generator().manual_seed(0)).shape
        torch.Size([3, 2])
    """

    def __init__(self, probs: Tensor) -> None:
        probs = torch.as_tensor(probs, dtype=torch.float64)
        if probs.dim() not in (1, 2) or probs.shape[-1] < 1:
            raise ValueError(
                f"CategoricalSource needs probabilities of shape (S,) or (L, S), got {tuple(probs.shape)}"
            )
        if not torch.isfinite(probs).all() or (probs < 0).any() or (probs.sum(-1) <= 0).any():
            raise ValueError("CategoricalSource probabilities must be finite, >= 0 and not all zero in a row")
        self._probs = probs / probs.sum(-1, keepdim=True)
        self.num_states = int(probs.shape[-1])

    @property
    def probs(self) -> Tensor:
        """``(S,)`` or ``(L, S)``, float64, rows summing to 1."""
        return self._probs

    def sample(
        self,
        shape: tuple[int, int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``(B, L)`` ids drawn independently per position."""
        b, length = _check_shape(shape)
        p = self._probs
        if p.dim() == 2 and p.shape[0] != length:
            raise ValueError(
                f"this source has per-position probabilities for L={p.shape[0]}, asked for L={length}"
            )
        p = p.to(device).expand(length, -1) if p.dim() == 1 else p.to(device)
        return categorical(p.expand(b, length, -1), generator)

    def __repr__(self) -> str:
        return f"CategoricalSource(probs of shape {tuple(self._probs.shape)})"
