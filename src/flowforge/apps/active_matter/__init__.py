"""Active matter: stationary scores, probability flows and entropy production of active Ornstein-Uhlenbeck
particles (Boffi & Vanden-Eijnden, "Deep learning probability flows and entropy production rates in active
matter", arXiv:2309.12991; official JAX code nmboffi/active_pflows).

================================================  ==============================  ==========================================
part                                              file                            what it does
================================================  ==============================  ==========================================
:class:`AOUP`, :func:`split_state`                ``aoup.py``                     the system: drift, noise, forces, divergences
:func:`minimum_image`, :func:`wrap`               ``periodic.py``                 periodic box ``[-L, L]^d``
:func:`step`, :func:`simulate_stationary`         ``simulator.py``                exact / EM+OU steps, stationary samples
:func:`stationary_covariance`, :func:`exact_score` ``trap.py``                     linear closed forms: Lyapunov, score, EPR
:func:`increment_dsm_loss`                        ``increment_dsm.py``            DSM on the SDE's increments
:func:`implicit_score_matching_loss`              ``implicit_score_matching.py``  ISM, exact or Hutchinson divergence
:class:`StationaryScore`                          ``stationary_score.py``         a network as the score, with its loss
:func:`probability_flow_velocity`                 ``probability_flow.py``         ``v = b - D s``
:func:`entropy_production`                        ``entropy_production.py``       two EPR estimators, per particle
:func:`equilibrium_score`                         ``equilibrium.py``              exact ``v0 = 0`` score: a baseline
:func:`epr_heat`                                  ``heat_dissipation.py``         score-free EPR, the truth in a box
:func:`spatial_decomposition`                     ``decomposition.py``            EPR density binned by position
:func:`jacobian_diagonal`                         ``jacobian.py``                 exact / Hutchinson Jacobian diagonal
:class:`LangevinSampler`                          ``langevin.py``                 samples from a score (the recipes' sample)
================================================  ==============================  ==========================================

The permutation-equivariant network for interacting particles is :class:`flowforge.nn.ParticleNet`.
"""

from flowforge.apps.active_matter.aoup import AOUP, join_state, split_state
from flowforge.apps.active_matter.decomposition import SpatialMap, spatial_decomposition
from flowforge.apps.active_matter.entropy_production import EntropyProduction, entropy_production
from flowforge.apps.active_matter.equilibrium import equilibrium_score
from flowforge.apps.active_matter.heat_dissipation import epr_heat
from flowforge.apps.active_matter.implicit_score_matching import implicit_score_matching_loss
from flowforge.apps.active_matter.increment_dsm import increment_dsm_loss
from flowforge.apps.active_matter.jacobian import jacobian_diagonal
from flowforge.apps.active_matter.langevin import LangevinSampler
from flowforge.apps.active_matter.periodic import box_half_width, minimum_image, pair_displacements, wrap
from flowforge.apps.active_matter.probability_flow import probability_flow_velocity
from flowforge.apps.active_matter.simulator import (
    Step,
    em_step,
    exact_step,
    exact_transition,
    initial_state,
    simulate_stationary,
    step,
)
from flowforge.apps.active_matter.stationary_score import SCORE_BASELINES, SCORE_LOSSES, StationaryScore
from flowforge.apps.active_matter.trap import (
    drift_matrix,
    epr_closed_form,
    epr_lyapunov,
    epr_split,
    exact_score,
    noise_matrix,
    solve_lyapunov,
    stationary_covariance,
)

__all__ = [
    "AOUP",
    "EntropyProduction",
    "LangevinSampler",
    "SCORE_BASELINES",
    "SCORE_LOSSES",
    "SpatialMap",
    "StationaryScore",
    "Step",
    "box_half_width",
    "drift_matrix",
    "em_step",
    "entropy_production",
    "equilibrium_score",
    "epr_closed_form",
    "epr_heat",
    "epr_lyapunov",
    "epr_split",
    "exact_score",
    "exact_step",
    "exact_transition",
    "implicit_score_matching_loss",
    "increment_dsm_loss",
    "initial_state",
    "jacobian_diagonal",
    "join_state",
    "minimum_image",
    "noise_matrix",
    "pair_displacements",
    "probability_flow_velocity",
    "simulate_stationary",
    "solve_lyapunov",
    "split_state",
    "spatial_decomposition",
    "stationary_covariance",
    "step",
    "wrap",
]
