"""Datasets: 2-D toy distributions and user arrays (loading, checking, standardising).

Layer: ``data`` imports torch, numpy and ``flowforge.core`` / ``flowforge.nn`` only.
"""

from flowforge.data.arrays import SUPPORTED_EXTENSIONS, Standardizer, check_finite, load_array
from flowforge.data.toy2d import TOY2D_NAMES, toy2d

__all__ = ["SUPPORTED_EXTENSIONS", "TOY2D_NAMES", "Standardizer", "check_finite", "load_array", "toy2d"]
