"""GFlowNets: amortized samplers of compositional objects from a reward (TB, DB, SubTB, FM, ZVar,
forward-looking DB/SubTB; replay buffers; hypergrid, bit sequences, sets, Ising).

Example:
    >>> import torch
    >>> from flowforge.gflownet import HyperGrid, TrajectoryBalance, exact_metrics
    >>> env = HyperGrid(ndim=2, height=4)
    >>> tb = TrajectoryBalance(env, width=16, depth=1)
    >>> sorted(exact_metrics(tb, env))
    ['jsd', 'l1_mean', 'l1_sum', 'logz_error']
"""

from flowforge.gflownet.envs import BitSequence, Environment, HyperGrid, Ising, NonAutoregressiveBitSequence
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
from flowforge.gflownet.multiobjective import (
    OBJECTIVE_FUNCTIONS,
    MultiObjectiveHyperGrid,
    OrderPreservingTB,
    dirichlet_preferences,
    pareto_front,
    pareto_share,
)
from flowforge.gflownet.outcome import (
    AmortizedConversion,
    OutcomeConditionedGFlowNet,
    OutcomeFineTuning,
    OutcomeGenerator,
    distill_policy,
    exact_conversion,
    exact_log_z,
)
from flowforge.gflownet.replay import PrioritizedReplayBuffer, ReplayBuffer
from flowforge.gflownet.sets import SetGeneration, TopKTracker, fl_gfn_energies

__all__ = [
    "AmortizedConversion",
    "OutcomeConditionedGFlowNet",
    "OutcomeFineTuning",
    "OutcomeGenerator",
    "distill_policy",
    "exact_conversion",
    "exact_log_z",
    "OBJECTIVE_FUNCTIONS",
    "MultiObjectiveHyperGrid",
    "OrderPreservingTB",
    "dirichlet_preferences",
    "pareto_front",
    "pareto_share",
    "BitSequence",
    "DetailedBalance",
    "Environment",
    "FlowMatching",
    "GFlowNet",
    "GFlowNetGenerator",
    "HyperGrid",
    "Ising",
    "LogPartitionVariance",
    "NonAutoregressiveBitSequence",
    "PolicyMLP",
    "PrioritizedReplayBuffer",
    "ReplayBuffer",
    "SetGeneration",
    "SubTrajectoryBalance",
    "TopKTracker",
    "Trajectories",
    "TrajectoryBalance",
    "exact_flows",
    "exact_metrics",
    "fl_gfn_energies",
    "jsd",
    "l1_mean",
    "l1_sum",
    "logz_error",
    "modes_found",
    "shared_trunk_policies",
    "terminal_distribution",
]
