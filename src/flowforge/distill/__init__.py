"""Teacher-student distillation of continuous flows into few-step samplers."""

from flowforge.distill.freeflow import FreeFlow, FreeFlowGenerator

__all__ = ["FreeFlow", "FreeFlowGenerator"]
