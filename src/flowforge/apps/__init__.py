"""Science and application parts built on the families, data and metrics: one folder an application.

- :mod:`flowforge.apps.audio`: language-queried separation of procedural 8 kHz sounds (FlowSep's latent
  rectified flow on [mixture, query] against a ratio-mask regressor), SI-SDR.
- :mod:`flowforge.apps.molecules`: property optimisation of molecules with a discrete flow (InVirtuoGen's
  genetic algorithm + PPO), PMO-style oracle budgets and top-10 AUC.
- :mod:`flowforge.apps.scenes3d`: synthetic scenes of 3-D Gaussians, a differentiable two-view renderer and a frozen
  feed-forward "reconstruction" encoder whose latent grid a latent flow learns (3-D latent practices).
- :mod:`flowforge.apps.turbulence`: a pseudo-spectral 2-D Navier-Stokes solver, storage of turbulent fields
  by downsampling and their decoders (bicubic, spectral, wavelet, SR-GAN, conditional flow matching).
- :mod:`flowforge.apps.traversal`: latent traversals as wave-equation potential flows (Song et al., ICML 2023)
  on a blob decoder with known factors, against linear / PCA directions, scored by traversal purity.
- :mod:`flowforge.apps.video`: bouncing-sprite videos and Frechet distances of frames and frame pairs, for the
  frame-causal :class:`~flowforge.normalizing.VideoTARFlow` (STARFlow-V on toy data).

Layer: ``apps`` may import ``core``, ``nn``, the families, ``data`` and ``metrics``.
"""
