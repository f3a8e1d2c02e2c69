"""flowforge: flow-based generative models under one roof.

Submodules and the main names are imported lazily on first use, so ``import flowforge.core`` stays
light.

Example:
    >>> import flowforge as ff
    >>> x = ff.data.toy2d("moons", n=512, seed=0)
    >>> fm = ff.FlowMatching(ff.nn.MLP(dim=2, width=32, depth=2), path=ff.AffinePath(ff.schedules.Linear()),
    ...                      time=ff.time.LogitNormal())
    >>> fm.loss(x).ndim
    0
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_MODULES = {
    "data": "flowforge.data",
    "metrics": "flowforge.metrics",
    "nn": "flowforge.nn",
    "recipes": "flowforge.recipes",
    "continuous": "flowforge.continuous",
    "normalizing": "flowforge.normalizing",
    "gflownet": "flowforge.gflownet",
    "discrete": "flowforge.discrete",
    "latent": "flowforge.latent",
    "distill": "flowforge.distill",
    "inverse": "flowforge.inverse",
    "energies": "flowforge.data.energies",
    "mcmc": "flowforge.core.mcmc",
    "couplings": "flowforge.core.couplings",
    "guidance": "flowforge.core.guidance",
    "likelihood": "flowforge.core.likelihood",
    "objectives": "flowforge.core.objectives",
    "paths": "flowforge.core.paths",
    "schedules": "flowforge.core.schedules",
    "solvers": "flowforge.core.solvers",
    "time": "flowforge.core.time",
    "dispersive": "flowforge.core.dispersive",
    "manifolds": "flowforge.core.manifolds",
}
_NAMES = {
    "FlowMatching": "flowforge.continuous",
    "FlowGenerator": "flowforge.continuous",
    "SymmFlow": "flowforge.continuous",
    "TwinFlow": "flowforge.continuous",
    "FreeFlow": "flowforge.distill",
    "MeanFlow": "flowforge.continuous",
    "PFGMPP": "flowforge.continuous",
    "BlockwiseFlowMatching": "flowforge.continuous",
    "RiemannianFlowMatching": "flowforge.continuous",
    "DiscreteFlowMatching": "flowforge.discrete",
    "AffinePath": "flowforge.core.paths",
    "StochasticInterpolant": "flowforge.core.paths",
    "Flow": "flowforge.normalizing",
    "TARFlow": "flowforge.normalizing",
    "NSF": "flowforge.normalizing",
    "LatentModel": "flowforge.latent",
    "KLAutoencoder": "flowforge.latent",
    "Run": "flowforge.train",
    "train": "flowforge.train",
}

__all__ = sorted([*_MODULES, *_NAMES])


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'flowforge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
