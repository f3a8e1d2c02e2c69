"""Sample-quality metrics between point clouds ``x: (N, D)`` and ``y: (M, D)``; likelihoods; ESS and log Z.

Every metric returns a Python ``float``, computed in float64 without gradients. The one exception is
:func:`sliced_wasserstein_loss`, a differentiable 0-dim tensor estimate of ``SW_p^p`` meant as a loss.

Image metrics (:func:`image_metrics`: FD, precision/recall and accuracy in a shipped classifier's
features; :func:`fid`: FID with user-supplied InceptionV3 weights) take float images in ``[-1, 1]``.

Molecule metrics (:func:`molecule_metrics`: validity, uniqueness, novelty, internal diversity, QED, SA,
FCD) take SMILES strings; :func:`expression_metrics` and :func:`sequence_metrics` take plain strings.

Layer: ``metrics`` imports torch, numpy, ``flowforge.core`` / ``flowforge.nn`` and ``flowforge.data``
only; POT is imported lazily by :func:`wasserstein2`, RDKit and fcd-torch by the molecule metrics.
"""

from flowforge.metrics.boltzmann import boltzmann_metrics, energy_w2, ess, log_z_error, wasserstein_1d
from flowforge.metrics.frechet import frechet_distance, gaussian_stats, precision_recall, trace_sqrt_product
from flowforge.metrics.image_features import (
    classifier_features,
    fitted_gaussian_samples,
    image_metrics,
    load_classifier,
)
from flowforge.metrics.inception import fid, inception_features
from flowforge.metrics.kernels import energy_distance, mmd
from flowforge.metrics.likelihood import bits_per_dim, nll
from flowforge.metrics.molecules import (
    MOLECULE_METRICS,
    chemnet_features,
    fcd,
    internal_diversity,
    molecule_metrics,
    novelty,
    qed,
    quality,
    sa_score,
    uniqueness,
    validity,
)
from flowforge.metrics.ot import wasserstein2
from flowforge.metrics.sequences import bracket_metrics, expression_metrics, sequence_metrics
from flowforge.metrics.sliced import sliced_wasserstein, sliced_wasserstein_loss
from flowforge.metrics.straightness import straightness

__all__ = [
    "bits_per_dim",
    "boltzmann_metrics",
    "energy_w2",
    "ess",
    "log_z_error",
    "wasserstein_1d",
    "energy_distance",
    "mmd",
    "nll",
    "sliced_wasserstein",
    "sliced_wasserstein_loss",
    "straightness",
    "wasserstein2",
    "frechet_distance",
    "gaussian_stats",
    "precision_recall",
    "trace_sqrt_product",
    "classifier_features",
    "fitted_gaussian_samples",
    "image_metrics",
    "load_classifier",
    "fid",
    "inception_features",
    "MOLECULE_METRICS",
    "chemnet_features",
    "fcd",
    "internal_diversity",
    "molecule_metrics",
    "novelty",
    "qed",
    "quality",
    "sa_score",
    "uniqueness",
    "validity",
    "bracket_metrics",
    "expression_metrics",
    "sequence_metrics",
]
