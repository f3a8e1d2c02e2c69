"""Latent generative models: autoencoders and any family's model on their frozen latents.

:class:`KLAutoencoder` (LDM's KL-f4 design, scaled down) and :class:`FeatureAutoencoder` (FAE: frozen
patch features, one attention layer, feature and pixel decoders) give latent spaces; :class:`LatentModel`
trains a :class:`~flowforge.continuous.FlowMatching` (latent flow matching, LFM) or a
:class:`~flowforge.normalizing.TARFlow` (STARFlow) on their standardised latents and decodes samples,
optionally with spatial loss weights and a decoder-space loss (:func:`latent_flow_matching_loss`);
:class:`LatentStandardizer` measures per-channel (or global, robust) standardisations.
"""

from flowforge.latent.autoencoder import KLAutoencoder, gaussian_kl
from flowforge.latent.feature_autoencoder import FeatureAutoencoder
from flowforge.latent.latent_flow_loss import latent_flow_matching_loss, normalise_weights
from flowforge.latent.latent_model import LatentGenerator, LatentModel, latent_stats
from flowforge.latent.standardizer import LatentStandardizer

__all__ = [
    "KLAutoencoder",
    "gaussian_kl",
    "FeatureAutoencoder",
    "LatentModel",
    "LatentGenerator",
    "LatentStandardizer",
    "latent_flow_matching_loss",
    "latent_stats",
    "normalise_weights",
]
