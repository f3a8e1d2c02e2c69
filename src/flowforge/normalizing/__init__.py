"""Normalizing flows: bijections with exact log-determinants, TARFlow/STARFlow, Boltzmann generators.

One method a file (DESIGN.md); every name below is importable from ``flowforge.normalizing``. Paths are
relative to the ``flowforge`` package.

=========================================  ========================================================================
file                                       names (method -> file)
=========================================  ========================================================================
``normalizing/flow.py``                    ``Flow``, ``Compose``, ``Affine``, ``StandardNormal``
``core/contracts.py``                      ``Bijection`` (the protocol every layer follows)
``normalizing/splines.py``                 ``rq_spline`` (monotonic rational-quadratic spline)
``normalizing/coupling.py``                ``AffineCoupling``, ``SplineCoupling``, ``soft_clip``, ``LOG_SCALE_BOUND``
``normalizing/autoregressive.py``          ``MaskedAutoregressive``, ``SplineAutoregressive``
``normalizing/neural_autoregressive.py``   ``NeuralAutoregressive``, ``UnconstrainedAutoregressive``, ``clenshaw_curtis``
``normalizing/linear.py``                  ``Permutation``, ``Reverse``, ``RandomPermutation``, ``ActNorm``, ``LULinear``
``normalizing/flows.py``                   ``NSF``, ``MAF``, ``RealNVP``, ``NAF``, ``UNAF`` (named flows, :class:`Flow` subclasses)
``normalizing/tarflow.py``                 ``TARFlow``, ``TARFlowBlock``
``normalizing/video_tarflow.py``           ``VideoTARFlow`` (frame-causal global-local TARFlow, STARFlow-V)
``normalizing/flow_score_denoiser.py``     ``FlowScoreDenoiser`` (causal denoiser on the flow's score, STARFlow-V)
``normalizing/residual.py``                ``ResidualFlow``, ``ResidualBlock``, ``LipSwish`` (i-ResNet / Residual Flows)
``normalizing/cnf.py``                     ``CNF``, ``FFJORD`` (continuous normalizing flows, RNODE regularisers)
``normalizing/glow.py``                    ``Glow``, ``ActNorm2d``, ``InvConv2d``, ``AffineCoupling2d``, ``Squeeze``
``normalizing/equivariant_coupling.py``    ``AugmentedEquivariantFlow``, ``AugmentedFlowGenerator``, ``EquivariantCoupling``
``normalizing/importance.py``              ``importance_sample``, ``ImportanceSamples``, ``effective_sample_size``, ``resample_indices``
``normalizing/smc.py``                     ``smc``, ``SMCResult``
``normalizing/transferable.py``            ``TransferableTARFlow``, ``BoundTransferableFlow`` (Prose's transferable flow)
``normalizing/reverse_kl.py``              ``ReverseKL``
``normalizing/self_improvement.py``        ``SelfImprovement``
``nn/made.py``                             ``MADE`` (the masked conditioner network)
=========================================  ========================================================================
"""

from flowforge.core.contracts import Bijection
from flowforge.nn.made import MADE
from flowforge.normalizing.autoregressive import MaskedAutoregressive, SplineAutoregressive
from flowforge.normalizing.cnf import CNF, FFJORD
from flowforge.normalizing.coupling import LOG_SCALE_BOUND, AffineCoupling, SplineCoupling, soft_clip
from flowforge.normalizing.equivariant_coupling import (
    AugmentedEquivariantFlow,
    AugmentedFlowGenerator,
    EquivariantCoupling,
)
from flowforge.normalizing.flow import Affine, Compose, Flow, StandardNormal
from flowforge.normalizing.flow_score_denoiser import FlowScoreDenoiser
from flowforge.normalizing.flows import MAF, NAF, NSF, UNAF, RealNVP
from flowforge.normalizing.glow import ActNorm2d, AffineCoupling2d, Glow, InvConv2d, Squeeze
from flowforge.normalizing.importance import (
    ImportanceSamples,
    effective_sample_size,
    importance_sample,
    resample_indices,
)
from flowforge.normalizing.linear import ActNorm, LULinear, Permutation, RandomPermutation, Reverse
from flowforge.normalizing.neural_autoregressive import (
    NeuralAutoregressive,
    UnconstrainedAutoregressive,
    clenshaw_curtis,
)
from flowforge.normalizing.residual import LipSwish, ResidualBlock, ResidualFlow
from flowforge.normalizing.reverse_kl import ReverseKL
from flowforge.normalizing.self_improvement import SelfImprovement
from flowforge.normalizing.smc import SMCResult, smc
from flowforge.normalizing.splines import rq_spline
from flowforge.normalizing.tarflow import TARFlow, TARFlowBlock
from flowforge.normalizing.transferable import BoundTransferableFlow, TransferableTARFlow
from flowforge.normalizing.video_tarflow import VideoTARFlow

__all__ = [
    "BoundTransferableFlow",
    "TransferableTARFlow",
    "LOG_SCALE_BOUND",
    "MADE",
    "MAF",
    "NAF",
    "UNAF",
    "NSF",
    "CNF",
    "FFJORD",
    "ActNorm",
    "AugmentedEquivariantFlow",
    "AugmentedFlowGenerator",
    "ActNorm2d",
    "Affine",
    "AffineCoupling",
    "AffineCoupling2d",
    "Bijection",
    "Compose",
    "EquivariantCoupling",
    "Flow",
    "Glow",
    "ImportanceSamples",
    "InvConv2d",
    "LULinear",
    "LipSwish",
    "MaskedAutoregressive",
    "NeuralAutoregressive",
    "UnconstrainedAutoregressive",
    "Permutation",
    "RandomPermutation",
    "RealNVP",
    "ResidualBlock",
    "ResidualFlow",
    "Reverse",
    "ReverseKL",
    "SMCResult",
    "SelfImprovement",
    "SplineAutoregressive",
    "Squeeze",
    "SplineCoupling",
    "StandardNormal",
    "TARFlow",
    "TARFlowBlock",
    "VideoTARFlow",
    "FlowScoreDenoiser",
    "clenshaw_curtis",
    "effective_sample_size",
    "importance_sample",
    "resample_indices",
    "rq_spline",
    "smc",
    "soft_clip",
]
