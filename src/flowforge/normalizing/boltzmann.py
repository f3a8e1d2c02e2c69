"""Compatibility module: the Boltzmann-generator parts now live one method a file.

:mod:`~flowforge.normalizing.importance`, :mod:`~flowforge.normalizing.smc`,
:mod:`~flowforge.normalizing.reverse_kl`, :mod:`~flowforge.normalizing.self_improvement`; new code imports
from :mod:`flowforge.normalizing`.
"""

from flowforge.normalizing.importance import (
    ImportanceSamples,
    effective_sample_size,
    importance_sample,
    resample_indices,
)
from flowforge.normalizing.reverse_kl import ReverseKL
from flowforge.normalizing.self_improvement import SelfImprovement
from flowforge.normalizing.smc import SMCResult, smc

__all__ = [
    "ImportanceSamples",
    "ReverseKL",
    "SMCResult",
    "SelfImprovement",
    "effective_sample_size",
    "importance_sample",
    "resample_indices",
    "smc",
]
