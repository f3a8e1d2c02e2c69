"""Core: schedules, paths, time samplers, couplings, objectives, solvers, likelihood, guidance.

Depends on torch and numpy only (POT is imported lazily by the OT couplings).
"""

from flowforge.core.dispersive import FeatureTap, dispersive_loss

__all__ = ["FeatureTap", "dispersive_loss"]
