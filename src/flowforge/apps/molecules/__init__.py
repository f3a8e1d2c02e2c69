"""Molecular property optimisation with a discrete flow (Kaech et al. 2025, InVirtuoGen, arXiv:2509.26405).

=========================================  =====================  ==========================================
part                                       file                   what it does
=========================================  =====================  ==========================================
:class:`Oracle`, :func:`load_reward`       ``oracle.py``          counted, cached reward calls on molecules
:func:`top_k_auc`, :func:`top_k_mean`      ``oracle.py``          PMO's top-10 AUC and top-10 mean
:class:`CrossoverPrompter`                 ``genetic.py``         top-10 vocabulary, rank-weighted parents
:func:`brics_crossover`, :func:`mutate`    ``genetic.py``         RDKit crossover and mutation operators
:func:`encode_prompts`                     ``genetic.py``         offspring SMILES as the flow's ``x0``
:func:`optimize`, :class:`History`         ``optimization.py``    the GA (+ PPO) loop, or plain sampling
=========================================  =====================  ==========================================

RDKit is imported inside the functions that need it (``pip install 'flowforge[molecules]'``).
"""

from flowforge.apps.molecules.genetic import CrossoverPrompter, brics_crossover, encode_prompts, mutate
from flowforge.apps.molecules.optimization import MODES, History, optimize
from flowforge.apps.molecules.oracle import Oracle, OracleResult, load_reward, top_k_auc, top_k_mean

__all__ = [
    "CrossoverPrompter",
    "History",
    "MODES",
    "Oracle",
    "OracleResult",
    "brics_crossover",
    "encode_prompts",
    "load_reward",
    "mutate",
    "optimize",
    "top_k_auc",
    "top_k_mean",
]
