"""GFlowNets: amortized samplers of compositional objects from a reward, one method a file.

========================================  ============================================
name                                      file
========================================  ============================================
:class:`Trajectories`                     ``gflownet/trajectories.py``
:func:`rollout`                           ``gflownet/sampler.py``
:func:`backward_rollout`                  ``gflownet/sampler.py``
:class:`GFlowNet`                         ``gflownet/base.py``
:class:`GFlowNetGenerator`                ``gflownet/base.py``
:class:`StateFlowGFlowNet`                ``gflownet/state_flow.py``
:class:`TrajectoryBalance`                ``gflownet/trajectory_balance.py``
:class:`DetailedBalance`                  ``gflownet/detailed_balance.py``
:class:`SubTrajectoryBalance`             ``gflownet/subtrajectory_balance.py``
:class:`FlowMatching`                     ``gflownet/edge_flow_matching.py``
:class:`LogPartitionVariance`             ``gflownet/log_partition_variance.py``
:class:`OrderPreservingTB`                ``gflownet/order_preserving.py``
:class:`OutcomeConditionedGFlowNet`       ``gflownet/outcome.py``
:class:`OutcomeGenerator`                 ``gflownet/outcome.py``
:class:`AmortizedConversion`              ``gflownet/outcome.py``
:class:`OutcomeFineTuning`                ``gflownet/outcome.py``
:class:`LocalSearch`                      ``gflownet/local_search.py``
:class:`EBGFN`                            ``gflownet/energy_based.py``
:class:`IsingEnergy`                      ``gflownet/energies.py``
:class:`MLPEnergy`                        ``gflownet/energies.py``
:class:`EnergyEnvironment`                ``gflownet/envs/energy_env.py``
:class:`ReplayBuffer`                     ``gflownet/replay.py``
:class:`PrioritizedReplayBuffer`          ``gflownet/replay.py``
:func:`exact_metrics`                     ``gflownet/exact.py``
:class:`Environment`                      ``core/contracts.py``
:class:`HyperGrid`                        ``gflownet/envs/hypergrid.py``
:class:`BitSequence`                      ``gflownet/envs/bitseq.py``
:class:`NonAutoregressiveBitSequence`     ``gflownet/envs/bitseq.py``
:class:`SetGeneration`                    ``gflownet/envs/sets.py``
:class:`TopKTracker`                      ``gflownet/envs/sets.py``
:class:`Ising`                            ``gflownet/envs/ising.py``
:class:`MultiObjectiveHyperGrid`          ``gflownet/envs/multiobjective.py``
:func:`pareto_front`                      ``gflownet/envs/multiobjective.py``
:class:`PolicyMLP`                        ``nn/policy.py``
:func:`shared_trunk_policies`             ``nn/policy.py``
========================================  ============================================

Every objective class has ``key`` (its name in the recipes, e.g. ``"tb"``) and ``options`` (the
constructor keywords a recipe may set). A new objective is one file plus one export line here.

Example:
    >>> import torch
    >>> from flowforge.gflownet import HyperGrid, TrajectoryBalance, exact_metrics
    >>> env = HyperGrid(ndim=2, height=4)
    >>> tb = TrajectoryBalance(env, width=16, depth=1)
    >>> sorted(exact_metrics(tb, env))
    ['jsd', 'l1_mean', 'l1_sum', 'logz_error']
"""

from flowforge.core.contracts import Environment
from flowforge.gflownet.base import GFlowNet, GFlowNetGenerator
from flowforge.gflownet.detailed_balance import DetailedBalance
from flowforge.gflownet.edge_flow_matching import FlowMatching
from flowforge.gflownet.energies import (
    IsingEnergy,
    MLPEnergy,
    check_binary,
    ising_coupling,
    lattice_adjacency,
)
from flowforge.gflownet.energy_based import EBGFN, binary_states, coupling_rmse, kl_l1
from flowforge.gflownet.envs import (
    OBJECTIVE_FUNCTIONS,
    BitSequence,
    EnergyEnvironment,
    HyperGrid,
    Ising,
    MultiObjectiveHyperGrid,
    NonAutoregressiveBitSequence,
    SetGeneration,
    TopKTracker,
    dirichlet_preferences,
    fl_gfn_energies,
    pareto_front,
    pareto_share,
)
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
from flowforge.gflownet.local_search import LocalSearch
from flowforge.gflownet.log_partition_variance import LogPartitionVariance
from flowforge.gflownet.order_preserving import OrderPreservingTB
from flowforge.gflownet.outcome import (
    AmortizedConversion,
    OutcomeConditionedGFlowNet,
    OutcomeFineTuning,
    OutcomeGenerator,
    complete_states,
    distill_policy,
    exact_conversion,
    exact_log_z,
)
from flowforge.gflownet.replay import PrioritizedReplayBuffer, ReplayBuffer
from flowforge.gflownet.sampler import backward_rollout, rollout
from flowforge.gflownet.state_flow import StateFlowGFlowNet
from flowforge.gflownet.subtrajectory_balance import SubTrajectoryBalance
from flowforge.gflownet.trajectories import Trajectories
from flowforge.gflownet.trajectory_balance import TrajectoryBalance
from flowforge.nn.policy import PolicyMLP, shared_trunk_policies

__all__ = [
    "EBGFN",
    "EnergyEnvironment",
    "IsingEnergy",
    "MLPEnergy",
    "binary_states",
    "check_binary",
    "coupling_rmse",
    "ising_coupling",
    "kl_l1",
    "lattice_adjacency",
    "AmortizedConversion",
    "OutcomeConditionedGFlowNet",
    "OutcomeFineTuning",
    "OutcomeGenerator",
    "complete_states",
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
    "LocalSearch",
    "LogPartitionVariance",
    "NonAutoregressiveBitSequence",
    "PolicyMLP",
    "PrioritizedReplayBuffer",
    "ReplayBuffer",
    "SetGeneration",
    "StateFlowGFlowNet",
    "SubTrajectoryBalance",
    "TopKTracker",
    "Trajectories",
    "TrajectoryBalance",
    "backward_rollout",
    "exact_flows",
    "exact_metrics",
    "fl_gfn_energies",
    "jsd",
    "l1_mean",
    "l1_sum",
    "logz_error",
    "modes_found",
    "rollout",
    "shared_trunk_policies",
    "terminal_distribution",
]
