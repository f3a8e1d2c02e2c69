"""Science and application parts built on the families, data and metrics: one folder an application.

- :mod:`flowforge.apps.molecules`: property optimisation of molecules with a discrete flow (InVirtuoGen's
  genetic algorithm + PPO), PMO-style oracle budgets and top-10 AUC.
- :mod:`flowforge.apps.turbulence`: a pseudo-spectral 2-D Navier-Stokes solver, storage of turbulent fields
  by downsampling and their decoders (bicubic, spectral, wavelet, SR-GAN, conditional flow matching).
- :mod:`flowforge.apps.video`: bouncing-sprite videos and Frechet distances of frames and frame pairs, for the
  frame-causal :class:`~flowforge.normalizing.VideoTARFlow` (STARFlow-V on toy data).

Layer: ``apps`` may import ``core``, ``nn``, the families, ``data`` and ``metrics``.
"""
