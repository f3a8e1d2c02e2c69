"""Normalizing flows: bijections with exact log-determinants, TARFlow/STARFlow, Boltzmann generators."""

from flowforge.normalizing import bijections
from flowforge.normalizing.bijections import MAF, NSF, RealNVP
from flowforge.normalizing.flow import Bijection, Compose, Flow, StandardNormal, split_batch
from flowforge.normalizing.tarflow import TARFlow, TARFlowBlock

__all__ = [
    "Bijection",
    "Compose",
    "Flow",
    "MAF",
    "NSF",
    "RealNVP",
    "StandardNormal",
    "TARFlow",
    "TARFlowBlock",
    "bijections",
    "split_batch",
]
