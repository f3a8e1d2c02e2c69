"""Synthetic 3-D scenes for latent flows on a frozen "reconstruction" encoder (issue 15; method inventory row 19).

A synthetic stand-in for "Taming feed-forward reconstruction models as latent encoders for 3D generation":
scenes of a few coloured 3-D Gaussians, a differentiable orthographic renderer to two views, and a
feed-forward reconstruction model (two views -> a 4x4x4 grid of Gaussians) that is trained once and
frozen as the latent encoder; its renderer is the decoder. The latent-space practices themselves
(per-channel standardisation, spatial loss weights, a decoder-space loss) are generic options of
:class:`flowforge.latent.LatentModel`.

=========================================  ======================  ======================================
part                                       file                    what it does
=========================================  ======================  ======================================
:func:`sample_scenes`                      ``scenes.py``           random scenes ``(B, K, 8)``
:func:`render_views`, :func:`column_density`  ``render.py``        two exact pixel-integrated views
:class:`GaussianGridReconstructor`         ``reconstruction.py``   views -> latent grid -> views
:func:`view_features`                      ``features.py``         96-d pooled views, the FD feature space
=========================================  ======================  ======================================
"""

from flowforge.apps.scenes3d.features import view_features
from flowforge.apps.scenes3d.reconstruction import GaussianGridReconstructor
from flowforge.apps.scenes3d.render import SCENE_FIELDS, column_density, render_views, tone_map
from flowforge.apps.scenes3d.scenes import sample_scenes

__all__ = [
    "GaussianGridReconstructor",
    "SCENE_FIELDS",
    "column_density",
    "render_views",
    "sample_scenes",
    "tone_map",
    "view_features",
]
