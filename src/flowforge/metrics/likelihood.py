"""Negative log-likelihood and bits per dimension from any model with ``log_prob``."""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = ["nll", "bits_per_dim"]


class HasLogProb(Protocol):
    def log_prob(self, x: Tensor, **opts: Any) -> Tensor: ...


def nll(model: HasLogProb, x: Tensor, *, batch_size: int = 1024, **opts: Any) -> float:
    """Mean negative log-likelihood in nats per sample, ``-E[log p(x)]``, over ``x: (N, *event)``.

    Args:
        model: anything with ``log_prob(x) -> (B,)`` (a :class:`~flowforge.continuous.FlowGenerator`, ...).
        x: the evaluation points.
        batch_size: points per ``log_prob`` call.
        opts: passed to ``log_prob`` (solver, divergence estimator, ...).
    """
    if x.shape[0] == 0:
        raise ValueError("nll needs at least one point")
    total = 0.0
    for chunk in torch.split(x, batch_size):
        total += float(model.log_prob(chunk, **opts).detach().double().sum())
    return -total / x.shape[0]


def bits_per_dim(nll_nats: float, dim: int, *, log_scale: float = 0.0) -> float:
    r"""Convert an NLL in nats per sample to bits per dimension, :math:`(\mathrm{NLL} + \log s)/(D \ln 2)`.

    Args:
        nll_nats: NLL of the data as the model saw it, nats per sample.
        dim: number of dimensions ``D`` of one sample.
        log_scale: :math:`\log|\det|` of the map from the reported data to the model's inputs, per
            sample (e.g. ``D * log(256)`` for 8-bit images the model saw in ``[0, 1]``, so that the
            result is in bits per 8-bit dimension, the images literature's convention).

    Example:
        >>> round(bits_per_dim(math.log(2) * 10, 10), 6)
        1.0
    """
    if dim < 1:
        raise ValueError(f"bits_per_dim needs dim >= 1, got {dim}")
    return (nll_nats + log_scale) / (dim * math.log(2))
