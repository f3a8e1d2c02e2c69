"""Turbulence compression: a pseudo-spectral 2-D Navier-Stokes solver, storage by downsampling, and decoders
(bicubic, spectral, wavelet truncation, an SR-GAN in ZipGAN's spirit, conditional flow matching), with the
metrics that judge them (Nista et al., "Turbulence compression with GANs", arXiv:2412.14150, abstract-inspired).

================================================  =====================  =============================================
part                                              file                   what it does
================================================  =====================  =============================================
:func:`velocity`, :func:`energy`, ...             ``spectral.py``        FFT grid, 2/3 mask, streamfunction, velocity
:class:`KolmogorovForcing`, :class:`RingForcing`  ``forcing.py``         forcings, random initial vorticity
:class:`NavierStokes2D`                           ``navier_stokes.py``   vorticity form, IF-RK4, dealiased
:func:`simulate_snapshots`                        ``dataset.py``         seeded snapshot datasets
:func:`downsample`, :func:`spectral_upsample`     ``compression.py``     storage and the fixed decoders
:func:`wavelet_truncate`                          ``wavelet.py``         DWT truncation (PyWavelets extra)
:class:`SRGAN`                                    ``srgan.py``           SR-GAN decoder, critic as quality score
:class:`FlowSuperResolver`                        ``flow_sr.py``         conditional FM decoder / time interpolator
:func:`energy_spectrum`, :func:`spectrum_error`   ``spectrum.py``        E(k) per shell and its relative error
:func:`gradient_pdf_distance`                     ``gradient_pdf.py``    W1 between velocity-gradient PDFs
:func:`relative_l2`, :func:`spearman`             ``scores.py``          pointwise error, rank correlation
================================================  =====================  =============================================
"""

from flowforge.apps.turbulence.compression import (
    DECODERS,
    bicubic_upsample,
    compression_ratio,
    downsample,
    lowpass,
    spectral_upsample,
)
from flowforge.apps.turbulence.dataset import FORCINGS, simulate_snapshots
from flowforge.apps.turbulence.flow_sr import FlowSuperResolver, make_periodic
from flowforge.apps.turbulence.forcing import KolmogorovForcing, RingForcing, random_vorticity
from flowforge.apps.turbulence.gradient_pdf import gradient_pdf_distance, velocity_gradients
from flowforge.apps.turbulence.navier_stokes import NavierStokes2D
from flowforge.apps.turbulence.scores import relative_l2, spearman
from flowforge.apps.turbulence.spectral import (
    dealias_mask,
    derivative_wavenumbers,
    divergence,
    energy,
    enstrophy,
    spectral_derivative,
    streamfunction_hat,
    velocity,
    vorticity,
    wavenumbers,
)
from flowforge.apps.turbulence.spectrum import energy_spectrum, spectrum_error
from flowforge.apps.turbulence.srgan import SRGAN, Critic, SRGenerator
from flowforge.apps.turbulence.wavelet import wavelet_truncate, wavelets_available

__all__ = [
    "DECODERS",
    "FORCINGS",
    "SRGAN",
    "Critic",
    "FlowSuperResolver",
    "KolmogorovForcing",
    "NavierStokes2D",
    "RingForcing",
    "SRGenerator",
    "bicubic_upsample",
    "compression_ratio",
    "dealias_mask",
    "derivative_wavenumbers",
    "divergence",
    "downsample",
    "energy",
    "energy_spectrum",
    "enstrophy",
    "gradient_pdf_distance",
    "lowpass",
    "make_periodic",
    "random_vorticity",
    "relative_l2",
    "simulate_snapshots",
    "spearman",
    "spectral_derivative",
    "spectral_upsample",
    "spectrum_error",
    "streamfunction_hat",
    "velocity",
    "velocity_gradients",
    "vorticity",
    "wavelet_truncate",
    "wavelets_available",
    "wavenumbers",
]
