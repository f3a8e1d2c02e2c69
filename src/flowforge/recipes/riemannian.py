"""Riemannian flow-matching recipes: ``sphere-vmf`` (S^2) and ``torus-aldp`` (the flat torus T^2).

``sphere-vmf``: the 6-cluster von Mises-Fisher mixture on the globe
(:func:`~flowforge.data.earth_like_vmf_mixture`), fresh exact samples every batch, uniform source on S^2.
``torus-aldp``: the backbone dihedrals (phi, psi) of alanine dipeptide from a cached 300 K MD trajectory
(:func:`~flowforge.data.aldp_dihedrals`, OpenMM; the Amber files from ``--set data_dir=...`` or
``$FLOWFORGE_ALDP_DIR``), uniform source on T^2, the MLP fed ``[cos, sin]`` of the angles.

Both train :class:`~flowforge.continuous.RiemannianFlowMatching` (geodesic path, kappa(t) = t, uniform t)
and sample with a projected ODE solver (``--solver``, ``--steps``). ``eval`` metrics:

- ``nll``: test NLL in nats (density w.r.t. the Riemannian volume; RK4 with ``eval_steps`` steps, exact
  Riemannian divergence), with its controls: ``nll_floor`` (the exact mixture density, sphere) or
  ``nll_histogram`` (a 36 x 36 histogram of the training angles, torus), and ``nll_uniform``;
- ``mmd``: MMD (unbiased, RBF kernels on the chordal embedding: the points themselves on S^2,
  ``[cos, sin]`` of the angles on T^2) between samples and test points, with ``mmd_control``: a fresh
  draw of the truth against the same test points (torus: another MD trajectory, whose basin
  populations differ from the test trajectory's; and ``mmd_train``: the training frames themselves);
- ``off_manifold``: ``max |projx(x) - x|`` of the samples (0 up to rounding).

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("sphere-vmf")
    >>> r.sample_kwargs(dict(r.defaults), {"steps": 8}, 10), r.default_metrics_for({})
    ({'solver': 'midpoint', 'steps': 8}, ('nll', 'mmd', 'off_manifold'))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowforge.continuous import RiemannianFlowMatching
from flowforge.core.choices import unknown_choice
from flowforge.core.manifolds import FlatTorus, Manifold, Sphere
from flowforge.data import aldp_dihedrals, earth_like_vmf_mixture, load_array
from flowforge.metrics import mmd
from flowforge.nn import MLP, PeriodicInput
from flowforge.recipes.registry import Recipe, register

__all__ = ["RIEMANNIAN_METRICS", "build_riemannian", "histogram_nll"]

#: Metrics ``flowforge eval`` computes for Riemannian runs.
RIEMANNIAN_METRICS: tuple[str, ...] = ("nll", "mmd", "off_manifold")


_MANIFOLDS: dict[str, Callable[[], Manifold]] = {"sphere": lambda: Sphere(2), "torus": lambda: FlatTorus(2)}


def _manifold(config: dict[str, Any]) -> Manifold:
    if config["manifold"] not in _MANIFOLDS:
        raise unknown_choice("manifold", config["manifold"], _MANIFOLDS)
    return _MANIFOLDS[config["manifold"]]()


def build_riemannian(config: dict[str, Any]) -> RiemannianFlowMatching:
    """An MLP Riemannian flow-matching model (``[cos, sin]`` input features on the torus)."""
    m = _manifold(config)
    d = m.event_shape[0]
    if config["manifold"] == "torus":
        net: Any = PeriodicInput(
            MLP(2 * d, config["width"], config["depth"], out_dim=d, time_freqs=config["time_freqs"])
        )
    else:
        net = MLP(d, config["width"], config["depth"], time_freqs=config["time_freqs"])
    return RiemannianFlowMatching(net, m)


def _vmf_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    mix = earth_like_vmf_mixture()

    def stream(batch_size: int, generator: torch.Generator) -> Tensor:
        return mix.sample(batch_size, generator=generator)

    return stream, {"dim": 3}


def _aldp_dir(config: dict[str, Any]) -> str | None:
    return config["data_dir"] or None


def _aldp_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    x = aldp_dihedrals(int(config["n_train"]), seed=int(config["md_seed"]), path=_aldp_dir(config))
    return x.contiguous(), {"dim": 2}


def _vmf_reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    return earth_like_vmf_mixture().sample(n, seed=20_000 + seed)


def _aldp_reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    """Test angles: another MD trajectory (MD seed ``md_seed + seed``, ``seed >= 1``)."""
    return aldp_dihedrals(n, seed=int(config["md_seed"]) + max(int(seed), 1), path=_aldp_dir(config))


def _load(path: str, config: dict[str, Any]) -> Tensor:
    x = load_array(path).float()
    m = _manifold(config)
    if config["manifold"] == "torus" and x.dim() == 2 and x.shape[1] == 2:
        x = m.projx(x)  # angles in radians, any range
    m.check_point(x, name=f"--data {path}")
    return x


def histogram_nll(train: Tensor, test: Tensor, bins: int = 36, pseudo: float = 0.5) -> float:
    """NLL (nats) of ``test`` angles ``(N, 2)`` under a ``bins x bins`` histogram density of ``train`` on T^2.

    Each cell gets ``count + pseudo`` (add-``pseudo`` smoothing); density = mass / cell area.

    Example:
        >>> import torch, math
        >>> x = 2 * math.pi * torch.rand(10_000, 2, generator=torch.Generator().manual_seed(0))
        >>> abs(histogram_nll(x, x[:1000], bins=4) - 2 * math.log(2 * math.pi)) < 0.01
        True
    """
    w = 2 * math.pi / bins

    def cell(a: Tensor) -> Tensor:
        i = (a / w).floor().long().clamp(0, bins - 1)
        return i[:, 0] * bins + i[:, 1]

    counts = torch.bincount(cell(train), minlength=bins * bins).double() + pseudo
    log_dens = (counts / counts.sum()).log() - math.log(w * w)
    return float(-log_dens[cell(test)].mean())


def _embed(x: Tensor, config: dict[str, Any]) -> Tensor:
    return torch.cat([torch.cos(x), torch.sin(x)], dim=1) if config["manifold"] == "torus" else x


def _lon_lat(samples: Any, config: dict[str, Any]) -> Any:
    """The ``picture`` hook of ``sphere-vmf``: points on S^2 as (longitude, latitude) in degrees."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3:
        return samples
    lon = np.degrees(np.arctan2(x[:, 1], x[:, 0]))
    lat = np.degrees(np.arcsin(np.clip(x[:, 2] / np.linalg.norm(x, axis=1), -1.0, 1.0)))
    return np.stack([lon, lat], axis=1)


def _sample_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        "solver": given.get("solver", config.get("solver", "midpoint")),
        "steps": int(given.get("steps", config.get("sample_steps", 64))),
    }


def _evaluate(
    model: Any,
    config: dict[str, Any],
    data: Callable[[], Tensor],
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    m = _manifold(config)
    gen = model.generator()
    x = data().float()
    m.check_point(x, name="the test data")
    out: dict[str, Any] = {}
    kwargs = _sample_kwargs(config, options, 0)
    if "mmd" in metrics or "off_manifold" in metrics:
        k = min(n or 5000, 5000, len(x))
        y = gen.sample(k, generator=torch.Generator().manual_seed(seed), **kwargs)
        out.update(solver=kwargs["solver"], steps=kwargs["steps"])
        if "off_manifold" in metrics:
            out["off_manifold"] = float(m.off_manifold(y))
        if "mmd" in metrics:
            out["mmd"] = float(mmd(_embed(y, config), _embed(x[:k], config)))
            if config["manifold"] == "sphere":
                fresh = earth_like_vmf_mixture().sample(k, seed=30_000 + seed)
            else:  # another MD trajectory than the test one (which is reference(..., seed + 1))
                fresh = _aldp_reference(config, k, seed + 2)
                train = aldp_dihedrals(
                    int(config["n_train"]), seed=int(config["md_seed"]), path=_aldp_dir(config)
                )
                pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:k]
                out["mmd_train"] = float(mmd(_embed(train[pick], config), _embed(x[:k], config)))
            out["mmd_control"] = float(mmd(_embed(fresh, config), _embed(x[:k], config)))
    if "nll" in metrics:
        pts = x[: int(config["nll_points"])]
        lp = gen.log_prob(pts, solver="rk4", steps=int(config["eval_steps"]))
        out["nll"] = float(-lp.mean())
        out["nll_uniform"] = m.log_volume
        if config["manifold"] == "sphere":
            out["nll_floor"] = float(-earth_like_vmf_mixture().log_prob(pts.double()).mean())
        else:
            train = aldp_dihedrals(
                int(config["n_train"]), seed=int(config["md_seed"]), path=_aldp_dir(config)
            )
            out["nll_histogram"] = histogram_nll(train, pts)
    return out


_COMMON: dict[str, Any] = {
    "width": 256,
    "depth": 4,
    "time_freqs": 0,
    "steps": 8_000,
    "batch_size": 256,
    "lr": 1e-3,
    "warmup": 200,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "threads": 1,
    "solver": "midpoint",
    "sample_steps": 64,
    "eval_steps": 40,
    "nll_points": 2000,
}

register(
    Recipe(
        name="sphere-vmf",
        summary="Riemannian flow matching on S^2: a 6-cluster von Mises-Fisher mixture (exact density as NLL floor)",
        defaults={**_COMMON, "manifold": "sphere"},
        build=build_riemannian,
        data=_vmf_data,
        generator=lambda model, config: model.generator(),
        sample_options=lambda config: ("solver", "steps"),
        sample_kwargs=_sample_kwargs,
        eval_options=lambda config: ("data", "n", "solver", "steps"),
        reference=_vmf_reference,
        load_data=_load,
        evaluate=_evaluate,
        metrics=RIEMANNIAN_METRICS,
        default_metrics=RIEMANNIAN_METRICS,
        picture=_lon_lat,
        kind="continuous",
    )
)

register(
    Recipe(
        name="torus-aldp",
        summary="Riemannian flow matching on the torus: alanine-dipeptide (phi, psi) from MD (OpenMM; data_dir)",
        defaults={**_COMMON, "manifold": "torus", "data_dir": "", "n_train": 50_000, "md_seed": 0},
        build=build_riemannian,
        data=_aldp_data,
        generator=lambda model, config: model.generator(),
        sample_options=lambda config: ("solver", "steps"),
        sample_kwargs=_sample_kwargs,
        eval_options=lambda config: ("data", "n", "solver", "steps"),
        reference=_aldp_reference,
        load_data=_load,
        evaluate=_evaluate,
        metrics=RIEMANNIAN_METRICS,
        default_metrics=RIEMANNIAN_METRICS,
        kind="continuous",
    )
)
