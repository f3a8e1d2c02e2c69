"""Continuous flows: flow matching, rectified flow, stochastic interpolants, PFGM++, blockwise FM."""

from flowforge.continuous.blockwise import (
    BlockwiseFlowMatching,
    BlockwiseGenerator,
    BlockwiseVelocity,
    SamplingCost,
    SegmentTimes,
)
from flowforge.continuous.flow_matching import FlowMatching
from flowforge.continuous.generator import SOLVERS, FlowGenerator, make_solver
from flowforge.continuous.pfgm import PFGMPP, PFGMGenerator
from flowforge.continuous.symmflow import SymmFlow, SymmFlowGenerator

__all__ = [
    "FlowMatching",
    "FlowGenerator",
    "SOLVERS",
    "make_solver",
    "SymmFlow",
    "SymmFlowGenerator",
    "BlockwiseFlowMatching",
    "BlockwiseGenerator",
    "BlockwiseVelocity",
    "SamplingCost",
    "SegmentTimes",
    "PFGMPP",
    "PFGMGenerator",
]
