"""Language-queried audio separation in FlowSep's style (Yuan et al. 2024, arXiv:2409.07614), on toy data.

====================================================  ==================  ==========================================
part                                                  file                what it does
====================================================  ==================  ==========================================
:func:`make_source`, :func:`make_mixtures`            ``sources.py``      harmonic stacks, chirps, noise bursts, mixes
:class:`QueryTokenizer`, :class:`BagOfWords`          ``queries.py``      class / caption queries, learned embedding
:func:`stft`, :func:`istft`, :func:`griffin_lim`      ``spectral.py``     log-magnitude features, phase, Griffin-Lim
:func:`si_sdr`, :func:`si_sdr_improvement`            ``si_sdr.py``       the metric
:class:`LatentFlowSeparator`                          ``latent_flow.py``  latent rectified flow on [mixture, query]
:class:`RatioMaskSeparator`, :func:`ideal_ratio_mask` ``ratio_mask.py``   the mask-regression baseline, the oracle
====================================================  ==================  ==========================================
"""

from flowforge.apps.audio.latent_flow import (
    SPEC_SIZE,
    LatentFlowSeparator,
    spectrogram_features,
    unpack_batch,
)
from flowforge.apps.audio.queries import CAPTIONS, QUERY_TYPES, BagOfWords, QueryTokenizer, random_queries
from flowforge.apps.audio.ratio_mask import RatioMaskSeparator, ideal_ratio_mask, oracle_separation
from flowforge.apps.audio.si_sdr import si_sdr, si_sdr_improvement
from flowforge.apps.audio.sources import CLIP_LENGTH, SAMPLE_RATE, SOURCE_CLASSES, make_mixtures, make_source
from flowforge.apps.audio.spectral import (
    HOP,
    N_FFT,
    feature_magnitude,
    griffin_lim,
    istft,
    log_features,
    stft,
    with_phase,
)

__all__ = [
    "CAPTIONS",
    "CLIP_LENGTH",
    "HOP",
    "N_FFT",
    "QUERY_TYPES",
    "SAMPLE_RATE",
    "SOURCE_CLASSES",
    "SPEC_SIZE",
    "BagOfWords",
    "LatentFlowSeparator",
    "QueryTokenizer",
    "RatioMaskSeparator",
    "feature_magnitude",
    "griffin_lim",
    "ideal_ratio_mask",
    "istft",
    "log_features",
    "make_mixtures",
    "make_source",
    "oracle_separation",
    "random_queries",
    "si_sdr",
    "si_sdr_improvement",
    "spectrogram_features",
    "stft",
    "unpack_batch",
    "with_phase",
]
