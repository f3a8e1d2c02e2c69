"""Continuous flows: flow matching, rectified flow, stochastic interpolants."""

from flowforge.continuous.flow_matching import FlowMatching, split_batch
from flowforge.continuous.generator import SOLVERS, FlowGenerator, make_solver, standard_normal_log_prob

__all__ = [
    "FlowMatching",
    "FlowGenerator",
    "SOLVERS",
    "make_solver",
    "split_batch",
    "standard_normal_log_prob",
]
