"""Energy-based training of a flow by the reverse KL divergence (Noé, Olsson, Köhler & Wu, Science 2019)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowforge.normalizing.flow import Flow
from flowforge.normalizing.importance import (
    EnergyFn,
    _check_log_q,
    _energy_values,
    _request,
    _usable_generator,
)

__all__ = ["ReverseKL"]


class _LogProb(nn.Module):
    """``forward = flow.log_prob`` (so that ``torch.func.functional_call`` can swap the parameters)."""

    def __init__(self, flow: Any) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor) -> Tensor:
        return self.flow.log_prob(x)


class ReverseKL(nn.Module):
    r"""Energy-based training by the reverse KL (Noé et al., 2019), reparameterised through the flow:

    .. math::

        \mathcal L(\theta) = \mathbb E_{x \sim q_\theta}\big[\log q_\theta(x) + E(x)\big]
        = \mathrm{KL}(q_\theta \,\|\, \pi) - \log Z \ \ge -\log Z.

    Mode-seeking: it needs no samples of the target but can miss modes. Samples with a non-finite
    :math:`\log q + E` are left out of the mean. ``loss(batch)`` takes the trainer's ``BatchRequest``
    (``data=None``) or a batch size. The energy is not a sub-module (not trained, not checkpointed).

    With ``stick_the_landing=True`` (Roeder, Wu & Duvenaud, 2017) :math:`\log q_\theta(x)` is evaluated
    at the sample with the parameters detached, dropping the score term
    :math:`\partial_\theta \log q_\theta(x)` whose expectation is zero: same expected gradient, and
    every per-sample gradient vanishes when :math:`q = \pi` (costs one more forward pass of the flow).

    Args:
        flow: a :class:`~flowforge.normalizing.flow.Flow` (``sample_and_log_prob`` with gradients).
        energy: ``E(x) -> (B,)`` in kT, differentiable in ``x``.
        stick_the_landing: use the path-derivative gradient estimator.

    Example:
        >>> import math
        >>> from flowforge.normalizing.linear import ActNorm
        >>> obj = ReverseKL(Flow([ActNorm(2)], event_shape=(2,)), lambda x: 0.5 * x.square().sum(-1))
        >>> loss = obj.loss(256)  # q = pi = N(0, I): the loss is -log Z = -log(2 pi) exactly
        >>> abs(loss.item() + math.log(2 * math.pi)) < 1e-5
        True
    """

    makes_own_batches: ClassVar[bool] = True
    """Draws its own samples: the trainer passes a ``BatchRequest(size, generator, device)`` as the batch."""

    def __init__(self, flow: Flow, energy: EnergyFn, *, stick_the_landing: bool = False) -> None:
        super().__init__()
        self.flow = flow
        self.__dict__["energy"] = energy  # outside the module tree on purpose
        self.stick_the_landing = bool(stick_the_landing)

    def loss(self, batch: Any) -> Tensor:
        n, gen, _ = _request(batch)
        x, log_q = self.flow.sample_and_log_prob(n, generator=_usable_generator(gen, self.flow))
        _check_log_q(log_q, x)
        if self.stick_the_landing:
            frozen = {k: v.detach() for k, v in self.flow.named_parameters()}
            log_q = torch.func.functional_call(
                _LogProb(self.flow), {f"flow.{k}": v for k, v in frozen.items()}, (x,)
            )
        v = log_q + _energy_values(self.energy, x)
        ok = torch.isfinite(v)
        if not bool(ok.any()):
            raise ValueError(
                "every sample of the batch has a non-finite log q + E; check the energy and the flow"
            )
        return v[ok].mean() if not bool(ok.all()) else v.mean()

    def generator(self) -> Flow:
        return self.flow

    def sample(self, n: int, **kw: Any) -> Tensor:
        return self.flow.sample(n, **kw)

    def log_prob(self, x: Tensor, **kw: Any) -> Tensor:
        return self.flow.log_prob(x, **kw)
