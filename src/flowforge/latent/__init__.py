"""Latent generative models: a small KL autoencoder and any family's model on its frozen latents.

:class:`KLAutoencoder` (LDM's KL-f4 design, scaled down) gives the latent space; :class:`LatentModel`
trains a :class:`~flowforge.continuous.FlowMatching` (latent flow matching, LFM) or a
:class:`~flowforge.normalizing.TARFlow` (STARFlow) on its standardised latents and decodes samples.
"""

from flowforge.latent.autoencoder import KLAutoencoder, gaussian_kl
from flowforge.latent.latent_model import LatentGenerator, LatentModel, latent_stats

__all__ = ["KLAutoencoder", "gaussian_kl", "LatentModel", "LatentGenerator", "latent_stats"]
