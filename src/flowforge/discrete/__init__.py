"""Discrete flow matching on token sequences: sources, the mixture path, losses, the CTMC Euler sampler.

Gat et al. 2024, "Discrete Flow Matching" (arXiv:2407.15595), in flowforge's direction (source at
t = 0: mask, uniform or any factorised law; data at t = 1). See :class:`DiscreteFlowMatching`.
"""

from flowforge.discrete.discrete_flow_matching import LOSSES, DiscreteFlowMatching
from flowforge.discrete.generator import DiscreteGenerator, bits_per_token
from flowforge.discrete.losses import generalized_kl, token_cross_entropy
from flowforge.discrete.paths import MixturePath, MixturePathSample, posterior_to_velocity
from flowforge.discrete.samplers import MixtureEuler, euler_sample
from flowforge.discrete.sources import CategoricalSource, MaskedSource, Source, UniformSource, categorical

__all__ = [
    "DiscreteFlowMatching",
    "LOSSES",
    "DiscreteGenerator",
    "bits_per_token",
    "generalized_kl",
    "token_cross_entropy",
    "MixturePath",
    "MixturePathSample",
    "posterior_to_velocity",
    "MixtureEuler",
    "euler_sample",
    "Source",
    "MaskedSource",
    "UniformSource",
    "CategoricalSource",
    "categorical",
]
