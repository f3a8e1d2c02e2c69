"""Continuous flows: flow matching, rectified flow, stochastic interpolants, PFGM++, blockwise FM,
Riemannian flow matching,
equivariant flow matching for particle systems."""

from flowforge.continuous.blockwise import (
    BlockwiseFlowMatching,
    BlockwiseGenerator,
    BlockwiseVelocity,
    SamplingCost,
    SegmentTimes,
)
from flowforge.continuous.equivariant_flow_matching import EquivariantFlowGenerator, EquivariantFlowMatching
from flowforge.continuous.flow_matching import FlowMatching
from flowforge.continuous.generator import SOLVERS, FlowGenerator, make_solver
from flowforge.continuous.meanflow import MeanFlow, MeanFlowGenerator, MeanFlowTimes
from flowforge.continuous.pfgm import PFGMPP, PFGMGenerator
from flowforge.continuous.riemannian_flow_matching import (
    RiemannianFlowMatching,
    RiemannianGenerator,
    TangentProjection,
)
from flowforge.continuous.symmflow import SymmFlow, SymmFlowGenerator
from flowforge.continuous.twinflow import TwinFlow, TwinFlowGenerator

__all__ = [
    "FlowMatching",
    "EquivariantFlowMatching",
    "EquivariantFlowGenerator",
    "FlowGenerator",
    "SOLVERS",
    "make_solver",
    "SymmFlow",
    "SymmFlowGenerator",
    "TwinFlow",
    "TwinFlowGenerator",
    "MeanFlow",
    "MeanFlowGenerator",
    "MeanFlowTimes",
    "BlockwiseFlowMatching",
    "BlockwiseGenerator",
    "BlockwiseVelocity",
    "SamplingCost",
    "SegmentTimes",
    "PFGMPP",
    "PFGMGenerator",
    "RiemannianFlowMatching",
    "RiemannianGenerator",
    "TangentProjection",
]
