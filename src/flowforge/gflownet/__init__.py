"""GFlowNets: amortized samplers of compositional objects from a reward (TB, DB, SubTB, FM, ZVar;
replay buffers; hypergrid and bit sequences).

Example:
    >>> import torch
    >>> from flowforge.gflownet import HyperGrid, TrajectoryBalance, exact_metrics
    >>> env = HyperGrid(ndim=2, height=4)
    >>> tb = TrajectoryBalance(env, width=16, depth=1)
    >>> sorted(exact_metrics(tb, env))
    ['jsd', 'l1_mean', 'l1_sum', 'logz_error']
"""

from flowforge.gflownet.envs import BitSequence, Environment, HyperGrid
from flowforge.gflownet.exact import (
    exact_flows,
    exact_metrics,
    jsd,
    l1_mean,
    l1_sum,
    logz_error,
    modes_found,
    terminal_distribution,
)
from flowforge.gflownet.losses import (
    DetailedBalance,
    FlowMatching,
    GFlowNet,
    GFlowNetGenerator,
    LogPartitionVariance,
    PolicyMLP,
    SubTrajectoryBalance,
    Trajectories,
    TrajectoryBalance,
    shared_trunk_policies,
)
from flowforge.gflownet.replay import PrioritizedReplayBuffer, ReplayBuffer

__all__ = [
    "BitSequence",
    "DetailedBalance",
    "Environment",
    "FlowMatching",
    "GFlowNet",
    "GFlowNetGenerator",
    "HyperGrid",
    "LogPartitionVariance",
    "PolicyMLP",
    "PrioritizedReplayBuffer",
    "ReplayBuffer",
    "SubTrajectoryBalance",
    "Trajectories",
    "TrajectoryBalance",
    "exact_flows",
    "exact_metrics",
    "jsd",
    "l1_mean",
    "l1_sum",
    "logz_error",
    "modes_found",
    "shared_trunk_policies",
    "terminal_distribution",
]
