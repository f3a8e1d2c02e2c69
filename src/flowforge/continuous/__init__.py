"""Continuous flows: flow matching, rectified flow, stochastic interpolants."""

from flowforge.continuous.flow_matching import FlowMatching
from flowforge.continuous.generator import SOLVERS, FlowGenerator, make_solver
from flowforge.continuous.meanflow import MeanFlow, MeanFlowGenerator, MeanFlowTimes
from flowforge.continuous.symmflow import SymmFlow, SymmFlowGenerator
from flowforge.continuous.twinflow import TwinFlow, TwinFlowGenerator

__all__ = [
    "FlowMatching",
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
]
