"""Continuous flows: flow matching, rectified flow, stochastic interpolants."""

from flowforge.continuous.flow_matching import FlowMatching
from flowforge.continuous.generator import SOLVERS, FlowGenerator, make_solver

__all__ = [
    "FlowMatching",
    "FlowGenerator",
    "SOLVERS",
    "make_solver",
]
