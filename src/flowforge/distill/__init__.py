"""Teacher-student methods built on the continuous flows: few-step and one-step generation.

=========================================  ====================  ===========================================
method                                     file                  what it trains
=========================================  ====================  ===========================================
:class:`Reflow` (2-rectified flow++)       ``reflow.py``         a straighter flow on the teacher's pairs
:func:`generate_pairs`, :func:`load_pairs` ``reflow.py``         the teacher's (noise, data) pairs on disk
:class:`VelocityRefiner` (FlowTurbo)       ``turbo.py``          a light net for the velocity's offset
:class:`FreeFlow` (data-free flow map)     ``freeflow.py``       a flow map from prior samples only
=========================================  ====================  ===========================================

Layer: ``distill`` may import ``core``, ``nn`` and ``continuous``.
"""

from flowforge.distill.freeflow import FreeFlow, FreeFlowGenerator
from flowforge.distill.reflow import Reflow, generate_pairs, load_pairs, pairs_metadata
from flowforge.distill.turbo import TurboGenerator, VelocityRefiner, default_schedule

__all__ = [
    "Reflow",
    "generate_pairs",
    "load_pairs",
    "pairs_metadata",
    "VelocityRefiner",
    "TurboGenerator",
    "default_schedule",
    "FreeFlow",
    "FreeFlowGenerator",
]
