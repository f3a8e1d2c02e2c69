"""Discrete flow matching on token sequences: sources, the mixture path, losses, the CTMC Euler sampler.

Gat et al. 2024, "Discrete Flow Matching" (arXiv:2407.15595), in flowforge's direction (source at
t = 0: mask, uniform or any factorised law; data at t = 1). See :class:`DiscreteFlowMatching`.

==========================  ==================================================================
what                        file
==========================  ==================================================================
the method (loss, ELBO)     ``discrete_flow_matching.py`` (:class:`DiscreteFlowMatching`)
sources                     ``sources.py`` (masked, uniform, any factorised categorical)
mixture path, rates         ``paths.py`` (:class:`MixturePath`, :func:`posterior_to_velocity`)
losses                      ``losses.py`` (cross-entropy, generalised KL)
CTMC Euler + corrector      ``samplers.py`` (:class:`MixtureEuler`, :func:`euler_sample`)
sampling and the ELBO       ``generator.py`` (:class:`DiscreteGenerator`, :func:`bits_per_token`)
==========================  ==================================================================

PPO fine-tuning on a reward lives in :mod:`flowforge.finetune`; molecules, the oracle and the genetic
algorithm in :mod:`flowforge.apps.molecules`.
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
