"""Normalizing flows: bijections with exact log-determinants, TARFlow/STARFlow, Boltzmann generators."""

from flowforge.normalizing.flow import Bijection, Compose, Flow, StandardNormal, split_batch

__all__ = ["Bijection", "Compose", "Flow", "StandardNormal", "split_batch"]
