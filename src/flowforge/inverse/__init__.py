"""Inverse problems with flow priors: measurement operators and posterior samplers (one method a file).

==========================================  ===================  ==============================================
method                                      file                 what it does
==========================================  ===================  ==============================================
:class:`Inpaint`, :class:`AvgPoolDownsample`, ``operators.py``   linear :math:`y = A x + \\sigma n` with
:class:`GaussianBlur`, :class:`MatrixOperator`,                  adjoints and pseudo-inverses
:class:`FunctionOperator`
:class:`DPS`                                ``dps.py``           guided sampling with the DPS likelihood
:class:`Projection`                         ``projection.py``    replace the measured part along the ODE
:class:`FLAIR`, :func:`velocity_errors`,    ``flair.py``         variational posterior with a flow prior,
:func:`calibrated_weights`                                       CRW and DTA (Erbach et al., 2025)
:class:`ClassPosterior`                     ``class_posterior.py`` p(y | measurement) for two-stage sampling
==========================================  ===================  ==============================================

Exact posteriors for tests: :class:`flowforge.core.gaussian_mixture.GaussianMixture`.
Layer: ``inverse`` may import ``core``, ``nn`` and ``continuous``.
"""

from flowforge.inverse.class_posterior import ClassPosterior
from flowforge.inverse.common import prior_field
from flowforge.inverse.dps import DPS
from flowforge.inverse.flair import FLAIR, calibrated_weights, velocity_errors
from flowforge.inverse.operators import (
    AvgPoolDownsample,
    FunctionOperator,
    GaussianBlur,
    Inpaint,
    LinearOperator,
    MatrixOperator,
    check_adjoint,
    check_noise,
    gaussian_kernel,
)
from flowforge.inverse.projection import Projection

__all__ = [
    "AvgPoolDownsample",
    "ClassPosterior",
    "DPS",
    "FLAIR",
    "FunctionOperator",
    "GaussianBlur",
    "Inpaint",
    "LinearOperator",
    "MatrixOperator",
    "Projection",
    "calibrated_weights",
    "check_adjoint",
    "check_noise",
    "gaussian_kernel",
    "prior_field",
    "velocity_errors",
]
