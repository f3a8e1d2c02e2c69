r"""Snapshot datasets of forced or decaying 2-D turbulence from :class:`NavierStokes2D`.

:func:`simulate_snapshots` runs ``flows`` independent flows from seeded random initial vorticity
(:func:`~flowforge.apps.turbulence.forcing.random_vorticity`), discards ``burn_in`` time units (forced
runs reach a statistically steady state) and keeps ``snapshots`` fields ``every`` time units apart:
vorticity ``(flows, snapshots, n, n)``; the velocity follows from the streamfunction
(:func:`~flowforge.apps.turbulence.spectral.velocity`). Different ``seed`` values give independent
held-out flows.

Example:
    >>> w = simulate_snapshots(2, 32, nu=1e-2, snapshots=3, every=0.2, burn_in=0.2, dt=0.02, seed=0)
    >>> w.shape
    torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowforge.apps.turbulence.forcing import KolmogorovForcing, RingForcing, random_vorticity
from flowforge.apps.turbulence.navier_stokes import NavierStokes2D

__all__ = ["simulate_snapshots", "FORCINGS"]

#: forcing names (``none``: decaying turbulence)
FORCINGS = ("kolmogorov", "ring", "none")


def simulate_snapshots(
    flows: int,
    n: int,
    *,
    nu: float,
    snapshots: int,
    every: float,
    burn_in: float,
    dt: float = 0.02,
    forcing: str = "kolmogorov",
    forcing_k: int = 4,
    amplitude: float = 1.0,
    drag: float = 0.1,
    k_peak: float = 4.0,
    energy: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Vorticity snapshots ``(flows, snapshots, n, n)`` of seeded runs (see the module docstring)."""
    if forcing not in FORCINGS:
        raise ValueError(f"unknown forcing {forcing!r}; write one of {FORCINGS}")
    f = {
        "kolmogorov": KolmogorovForcing(amplitude, forcing_k),
        "ring": RingForcing(amplitude, float(forcing_k), seed=seed),
        "none": None,
    }[forcing]
    ns = NavierStokes2D(n, nu, forcing=f, drag=drag if f is not None else 0.0, dtype=dtype)
    g = torch.Generator().manual_seed(int(seed))
    w0 = random_vorticity(flows, n, k_peak=k_peak, energy=energy, generator=g, dtype=dtype)
    return ns.trajectory(w0, snapshots=snapshots, every=every, dt=dt, burn_in=burn_in)
