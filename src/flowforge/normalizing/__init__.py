"""Normalizing flows: bijections with exact log-determinants, TARFlow/STARFlow, Boltzmann generators."""

from flowforge.normalizing import bijections
from flowforge.normalizing.bijections import MAF, NSF, RealNVP
from flowforge.normalizing.boltzmann import (
    ImportanceSamples,
    ReverseKL,
    SelfImprovement,
    SMCResult,
    effective_sample_size,
    importance_sample,
    smc,
)
from flowforge.normalizing.flow import Affine, Bijection, Compose, Flow, StandardNormal
from flowforge.normalizing.tarflow import TARFlow, TARFlowBlock

__all__ = [
    "Affine",
    "Bijection",
    "Compose",
    "Flow",
    "ImportanceSamples",
    "MAF",
    "NSF",
    "RealNVP",
    "ReverseKL",
    "SMCResult",
    "SelfImprovement",
    "StandardNormal",
    "TARFlow",
    "TARFlowBlock",
    "bijections",
    "effective_sample_size",
    "importance_sample",
    "smc",
]
