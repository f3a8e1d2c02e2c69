"""Compatibility module: the bijections now live one method a file (see :mod:`flowforge.normalizing`).

Kept because ``flowforge.normalizing.bijections`` was public (``ff.normalizing.bijections.AffineCoupling``);
new code imports from :mod:`flowforge.normalizing` (or the module named in its table).
"""

from flowforge.nn.made import MADE
from flowforge.normalizing.autoregressive import MaskedAutoregressive, SplineAutoregressive
from flowforge.normalizing.coupling import LOG_SCALE_BOUND, AffineCoupling, SplineCoupling, soft_clip
from flowforge.normalizing.flows import MAF, NSF, RealNVP
from flowforge.normalizing.linear import ActNorm, LULinear, Permutation, RandomPermutation, Reverse
from flowforge.normalizing.splines import rq_spline

__all__ = [
    "LOG_SCALE_BOUND",
    "MADE",
    "MAF",
    "NSF",
    "ActNorm",
    "AffineCoupling",
    "LULinear",
    "MaskedAutoregressive",
    "Permutation",
    "RandomPermutation",
    "RealNVP",
    "Reverse",
    "SplineAutoregressive",
    "SplineCoupling",
    "rq_spline",
    "soft_clip",
]
