"""Causal video flows (STARFlow-V's ideas on toy data): bouncing-sprite videos and their metrics.

==========================================  ========================  ===============================================
part                                        file                      what it does
==========================================  ========================  ===============================================
:func:`moving_sprites`                      ``sprites.py``            seeded videos of bouncing Gaussian sprites
:func:`sprite_trajectories`                 ``sprites.py``            the sprites' centres and visibility
:func:`frame_fd`, :func:`pair_fd`           ``features.py``           FD of frames / frame pairs, random-conv features
:class:`RandomConvFeatures`                 ``features.py``           the fixed, seeded feature network
:class:`LatentVideoFlow`                    ``latent_video_flow.py``  the causal flow on per-frame autoencoder latents
==========================================  ========================  ===============================================

The model is :class:`flowforge.normalizing.VideoTARFlow` (frame-causal global-local TARFlow with Jacobi
sampling across frames and the flow-score-matching denoiser); the recipes are ``sprites-starflow-v`` (pixels) and
``sprites-latent-starflow-v`` (:class:`LatentVideoFlow`).
"""

from flowforge.apps.video.features import RandomConvFeatures, frame_fd, pair_fd
from flowforge.apps.video.latent_video_flow import LatentVideoFlow
from flowforge.apps.video.sprites import moving_sprites, sprite_trajectories

__all__ = [
    "LatentVideoFlow",
    "RandomConvFeatures",
    "frame_fd",
    "pair_fd",
    "moving_sprites",
    "sprite_trajectories",
]
