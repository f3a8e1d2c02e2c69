r"""Per-position training losses of discrete flow matching on the mixture path.

Notation: :math:`q = p_{1|t}(\cdot \mid x_t)` the network's posterior (softmax of its logits),
:math:`J_t = \dot\kappa_t / (1 - \kappa_t)`, :math:`\delta = 1[x_t^i = x_1^i]`.

- :func:`token_cross_entropy`: :math:`-\log q(x_1^i)` (Meta flow_matching's text example uses it on
  every position; InVirtuoGen, Kaech et al. 2025, arXiv:2509.26405, trains on all positions,
  "refinement, not completion").
- :func:`generalized_kl`: the generalised KL of Meta flow_matching's ``MixturePathGeneralizedKL``
  (Gat et al. 2024, arXiv:2407.15595; Shaul et al. 2024),

  .. math:: \ell_i = J_t\,\big[(\delta - q(x_t^i)) - (1 - \delta) \log q(x_1^i)\big] \ge 0,

  the Bregman divergence of :math:`u \log u` between the conditional rates :math:`J_t\delta_{x_1}` and
  the model rates :math:`J_t(q - \delta_{x_t})`. With ``t ~ U(0, 1)``,
  :math:`E_t E_{x_t \sim p_t(\cdot|x_1)} \sum_i \ell_i \ge -\log p_1^\theta(x_1)` for the continuous-time
  model chain, for any factorised source (both chains start from :math:`p_0`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["token_cross_entropy", "generalized_kl"]


def _gather(values: Tensor, index: Tensor) -> Tensor:
    """``values: (B, L, V)`` at ``index: (B, L)``; indices ``>= V`` (the mask id) read as ``-inf``."""
    v = values.shape[-1]
    inside = index < v
    got = values.gather(-1, index.clamp(max=v - 1).unsqueeze(-1)).squeeze(-1)
    return torch.where(inside, got, torch.full_like(got, -torch.inf))


def token_cross_entropy(logits: Tensor, x1: Tensor) -> Tensor:
    r"""Per-position cross-entropy :math:`-\log p_{1|t}(x_1^i \mid x_t)`.

    Args:
        logits: posterior logits ``(B, L, V)``.
        x1: data tokens ``(B, L)`` in ``0..V-1``.

    Returns:
        ``(B, L)`` non-negative losses.

    Example:
        >>> import torch
        >>> token_cross_entropy(torch.zeros(1, 2, 4), torch.tensor([[0, 3]]))
        tensor([[1.3863, 1.3863]])
    """
    return -torch.log_softmax(logits, dim=-1).gather(-1, x1.unsqueeze(-1)).squeeze(-1)


def generalized_kl(logits: Tensor, x1: Tensor, x_t: Tensor, jump: Tensor) -> Tensor:
    r"""Per-position generalised KL :math:`\ell_i` of the mixture path (see the module docstring).

    Args:
        logits: posterior logits ``(B, L, V)``.
        x1: data tokens ``(B, L)`` in ``0..V-1``.
        x_t: path tokens ``(B, L)`` (may hold the mask id ``V``, where :math:`q(x_t^i) = 0`).
        jump: :math:`J_t = \dot\kappa_t/(1-\kappa_t)`, ``(B,)``.

    Returns:
        ``(B, L)`` non-negative losses; their sum over positions, averaged over ``t ~ U(0, 1)`` and
        ``x_t ~ p_t(. | x1)``, is the negative ELBO of ``x1`` in nats.

    Example:
        >>> import torch
        >>> logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
        >>> generalized_kl(logits, torch.tensor([[1]]), torch.tensor([[3]]), torch.tensor([2.0]))
        tensor([[2.7726]])
    """
    log_q = torch.log_softmax(logits, dim=-1)
    log_q_x1 = log_q.gather(-1, x1.unsqueeze(-1)).squeeze(-1)
    q_xt = _gather(log_q, x_t).exp()
    same = x_t == x1
    # torch.where, not (1 - delta) * log q, so a certain token (log q = -inf elsewhere) gives no NaN
    inner = torch.where(same, 1.0 - q_xt, -q_xt - log_q_x1)
    return jump.to(inner.dtype)[:, None] * inner
