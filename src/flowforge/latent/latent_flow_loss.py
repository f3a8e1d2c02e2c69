r"""Latent flow matching with spatial loss weights and a decoder-space loss (two latent-space practices of
"Taming feed-forward reconstruction models as latent encoders for 3D generation"; the third, per-channel
standardisation, is :class:`~flowforge.latent.LatentStandardizer`).

For standardised latents :math:`z_1: (B, C, *grid)`, noise :math:`z_0`, :math:`t \sim p(t)` and the
path :math:`z_t = \alpha_t z_1 + \sigma_t z_0` of a :class:`~flowforge.continuous.FlowMatching` model
with network prediction :math:`\hat u`,

.. math::

    \mathcal L = \mathbb E\Big[\frac{1}{C\,|G|}\sum_{c, g} \bar w_g\,(\hat u - u)_{c,g}^2\Big]
      + \lambda\, \mathbb E\big[\operatorname{mean}\,(\phi(D(\hat z_1)) - \phi(D(z_1)))^2\big],
    \qquad \bar w_g = \frac{w_g}{\tfrac{1}{|G|}\sum_{g'} w_{g'}},

where :math:`w_g \ge 0` is an importance per latent position (e.g. the opacity of a latent cell),
normalised to mean 1 per sample so that uniform weights give exactly the plain flow-matching loss;
:math:`\hat z_1` is the data prediction converted from :math:`\hat u` at :math:`(z_t, t)`, :math:`D`
the frozen decoder (the renderer for 3-D latents) and :math:`\phi` an optional feature map (a
perceptual substitute; identity by default). The decoder-space term is zero when the prediction is
exact.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flowforge.continuous.flow_matching import FlowMatching
from flowforge.core.couplings import Independent
from flowforge.core.guidance import drop_labels
from flowforge.core.objectives import SquaredError, regression_target
from flowforge.core.paths import convert

__all__ = ["latent_flow_matching_loss", "normalise_weights"]


def normalise_weights(weight: Tensor, batch: int) -> Tensor:
    """Spatial weights ``(B, *grid)`` scaled to mean 1 per sample; an error for negative or all-zero rows.

    Example:
        >>> normalise_weights(torch.tensor([[1.0, 3.0]]), 1)
        tensor([[0.5000, 1.5000]])
    """
    if weight.dim() < 2 or weight.shape[0] != batch:
        raise ValueError(f"spatial weights must be (B={batch}, *grid), got {tuple(weight.shape)}")
    if bool((weight < 0).any()) or not bool(torch.isfinite(weight).all()):
        raise ValueError("spatial weights must be finite and >= 0 (e.g. opacities in [0, 1])")
    mean = weight.flatten(1).mean(1)
    if bool((mean <= 0).any()):
        raise ValueError("a sample's spatial weights are all zero; add a floor, e.g. 0.1 + opacity")
    return weight / mean.view((-1,) + (1,) * (weight.dim() - 1))


def latent_flow_matching_loss(
    fm: FlowMatching,
    z1: Tensor,
    cond: dict[str, Tensor] | None = None,
    *,
    weight: Tensor | None = None,
    decode: Callable[[Tensor], Tensor] | None = None,
    decoder_weight: float = 0.0,
    features: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """The loss above for a flow-matching model on latents ``z1: (B, C, *grid)``; a scalar.

    Draws noise and times exactly as :meth:`FlowMatching.loss` does (torch's global generator), so
    ``weight=None`` (or all ones) and ``decoder_weight=0`` reproduce it bit for bit under the same seed.

    Args:
        fm: a :class:`~flowforge.continuous.FlowMatching` with the squared-error distance, no time
            weighting and independent coupling.
        z1: standardised latents ``(B, C, *grid)``.
        cond: the network's conditions (``y`` gets the model's label dropout).
        weight: importance per latent position ``(B, *grid)``, >= 0; ``None``: uniform.
        decode: standardised latents -> decoder space (differentiable); needed when ``decoder_weight > 0``.
        decoder_weight: :math:`\\lambda` of the decoder-space term.
        features: :math:`\\phi` applied to decoded outputs; ``None``: identity.

    Example:
        >>> from flowforge.nn import MLP
        >>> fm = FlowMatching(MLP(dim=(2, 3, 3), width=16, depth=1))
        >>> z = torch.randn(4, 2, 3, 3)
        >>> loss = latent_flow_matching_loss(fm, z, weight=torch.rand(4, 3, 3) + 0.1,
        ...                                  decode=lambda z: z.sum(1), decoder_weight=0.5)
        >>> loss.ndim
        0
    """
    if not isinstance(fm, FlowMatching):
        raise TypeError(
            f"spatial weights and a decoder-space loss need a FlowMatching inner model, got {type(fm).__name__}"
        )
    if not isinstance(fm.distance, SquaredError) or fm.weighting is not None:
        raise ValueError(
            "latent_flow_matching_loss supports the squared-error distance without time weighting"
        )
    if not isinstance(fm.coupling, Independent):
        raise ValueError("latent_flow_matching_loss supports the independent coupling only")
    if decoder_weight < 0:
        raise ValueError(f"decoder_weight must be >= 0, got {decoder_weight}")
    if decoder_weight > 0 and decode is None:
        raise ValueError("decoder_weight > 0 needs decode= (standardised latents -> decoder space)")
    if z1.dim() < 2:
        raise ValueError(f"latents must be (B, C, *grid), got {tuple(z1.shape)}")
    cond = dict(cond or {})
    b = z1.shape[0]
    if fm.event_shape is None:
        fm.event_shape = tuple(z1.shape[1:])
    z0 = torch.randn_like(z1)
    t = fm.time(b, device=z1.device, dtype=z1.dtype)
    lo, hi = fm.t_range
    if lo > 0.0 or hi < 1.0:
        t = t.clamp(lo, hi)
    ps = fm.path.sample(z0, z1, t)
    if fm.label_dropout > 0 and "y" in cond:
        cond["y"] = drop_labels(cond["y"], fm.label_dropout, fm.null_label)
    pred = fm.net(ps.x_t, t, **cond)
    sigma = fm.path.effective_schedule(t).sigma if fm.prediction == "score" and ps.z is None else None
    sq = (pred - regression_target(ps, fm.prediction, sigma)).square()
    if weight is None:
        loss = sq.mean()
    else:
        w = normalise_weights(weight.to(sq.dtype), b)
        if tuple(w.shape[1:]) != tuple(sq.shape[2:]):
            raise ValueError(
                f"spatial weights {tuple(weight.shape)} do not match the latent grid {tuple(sq.shape[2:])}; "
                "give one weight per latent position (B, *grid)"
            )
        loss = (sq * w.unsqueeze(1)).mean()
    if decoder_weight > 0:
        assert decode is not None
        if fm.prediction == "denoiser":
            raise ValueError("a decoder-space loss needs a velocity, x1, x0 or score prediction")
        z1_hat = convert(pred, ps.x_t, t, fm.path, src=fm.prediction, dst="x1")
        phi = features if features is not None else (lambda v: v)
        with torch.no_grad():
            ref = phi(decode(z1))
        loss = loss + decoder_weight * (phi(decode(z1_hat)) - ref).square().mean()
    return loss
