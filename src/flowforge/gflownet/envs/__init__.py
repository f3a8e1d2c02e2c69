"""Discrete GFlowNet environments, one a file; each satisfies :class:`flowforge.core.contracts.Environment`.

========================================  ==========================
environment                               file
========================================  ==========================
:class:`HyperGrid`                        ``envs/hypergrid.py``
:class:`BitSequence`                      ``envs/bitseq.py``
:class:`NonAutoregressiveBitSequence`     ``envs/bitseq.py``
:class:`SetGeneration`                    ``envs/sets.py``
:class:`Ising`                            ``envs/ising.py``
:class:`MultiObjectiveHyperGrid`          ``envs/multiobjective.py``
:class:`EnergyEnvironment`                ``envs/energy_env.py`` (wraps any env; reward from an energy)
========================================  ==========================

Example:
    >>> from flowforge.core.contracts import Environment
    >>> isinstance(HyperGrid(ndim=2, height=4), Environment)
    True
"""

from flowforge.core.contracts import Environment
from flowforge.gflownet.envs.bitseq import BitSequence, NonAutoregressiveBitSequence
from flowforge.gflownet.envs.energy_env import EnergyEnvironment
from flowforge.gflownet.envs.hypergrid import HyperGrid
from flowforge.gflownet.envs.ising import Ising
from flowforge.gflownet.envs.multiobjective import (
    OBJECTIVE_FUNCTIONS,
    MultiObjectiveHyperGrid,
    dirichlet_preferences,
    pareto_front,
    pareto_share,
)
from flowforge.gflownet.envs.sets import SetGeneration, TopKTracker, fl_gfn_energies

__all__ = [
    "OBJECTIVE_FUNCTIONS",
    "BitSequence",
    "EnergyEnvironment",
    "Environment",
    "HyperGrid",
    "Ising",
    "MultiObjectiveHyperGrid",
    "NonAutoregressiveBitSequence",
    "SetGeneration",
    "TopKTracker",
    "dirichlet_preferences",
    "fl_gfn_energies",
    "pareto_front",
    "pareto_share",
]
