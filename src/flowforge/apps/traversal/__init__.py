"""Latent traversals as potential flows on a decoder with known factors (Song et al., ICML 2023).

=========================================  ======================  ==============================================
part                                       file                    what it does
=========================================  ======================  ==============================================
:func:`render_blobs`, :class:`BlobDecoder`  ``blobs.py``            blob renderer; ``G(z)`` with analytic factors
:class:`PairClassifier`                    ``classifier.py``       identifies ``k`` from ``(G(z_t), G(z_t+1))``
:class:`TraversalModel`                    ``base.py``             shared step loop, CE + JVP change objective
:class:`PotentialFlowTraversal`            ``potential_flow.py``   wave-equation potentials, gradient-flow steps
:class:`LinearTraversal`                   ``linear.py``           learned global directions (baseline)
:func:`pca_directions`, :class:`FactorOracle`  ``directions.py``   PCA / random / oracle traversals
:func:`evaluate_traversals`                ``purity.py``           purity, factor gap, coverage
=========================================  ======================  ==============================================
"""

from flowforge.apps.traversal.base import TraversalModel, cap_norm
from flowforge.apps.traversal.blobs import FACTOR_NAMES, BlobDecoder, render_blobs
from flowforge.apps.traversal.classifier import PairClassifier
from flowforge.apps.traversal.directions import (
    FactorOracle,
    FixedDirections,
    pca_directions,
    random_directions,
)
from flowforge.apps.traversal.linear import LinearTraversal
from flowforge.apps.traversal.potential_flow import PotentialFlowTraversal
from flowforge.apps.traversal.purity import (
    evaluate_traversals,
    factor_changes,
    factor_gap,
    factor_shares,
    traversal_purity,
)

__all__ = [
    "FACTOR_NAMES",
    "BlobDecoder",
    "FactorOracle",
    "FixedDirections",
    "LinearTraversal",
    "PairClassifier",
    "PotentialFlowTraversal",
    "TraversalModel",
    "cap_norm",
    "evaluate_traversals",
    "factor_changes",
    "factor_gap",
    "factor_shares",
    "pca_directions",
    "random_directions",
    "render_blobs",
    "traversal_purity",
]
