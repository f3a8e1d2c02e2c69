"""Causal video flows (STARFlow-V's ideas on toy data): bouncing-sprite videos and their metrics.

==========================================  ================  ===============================================
part                                        file              what it does
==========================================  ================  ===============================================
:func:`moving_sprites`                      ``sprites.py``    seeded videos of bouncing Gaussian sprites
:func:`sprite_trajectories`                 ``sprites.py``    the sprites' centres and visibility
:func:`frame_fd`, :func:`pair_fd`           ``features.py``   FD of frames / frame pairs, random-conv features
:class:`RandomConvFeatures`                 ``features.py``   the fixed, seeded feature network
==========================================  ================  ===============================================

The model is :class:`flowforge.normalizing.VideoTARFlow` (frame-causal global-local TARFlow with Jacobi
sampling across frames and the flow-score-matching denoiser); the recipe is ``sprites-starflow-v``.
"""

from flowforge.apps.video.features import RandomConvFeatures, frame_fd, pair_fd
from flowforge.apps.video.sprites import moving_sprites, sprite_trajectories

__all__ = ["RandomConvFeatures", "frame_fd", "pair_fd", "moving_sprites", "sprite_trajectories"]
