"""Equivariant augmented coupling-flow Boltzmann generators: ``dw4-eqcoupling`` and ``lj13-eqcoupling`` (issue 14).

An :class:`~flowforge.normalizing.AugmentedEquivariantFlow` (E(n)-equivariant affine coupling layers on
particles plus one auxiliary copy each, EGNN conditioners; Midgley et al. 2023) trained by maximum
likelihood on the same cached MCMC reference samples as the ``-ecnf`` and ``-bg`` recipes. The run's
generator is extended to all ``N*d`` coordinates with a standard normal on the unit-norm centre of mass
(``com="gaussian"``), so ``flowforge eval`` gives ``ess``, ``logz`` against the same ``com="gaussian"``
energies as ``dw4-bg`` / ``dw4-ecnf``, with **joint** importance weights
``log w = -E(x) + log pi(a|x) - log q(x, a)`` (unbiased for Z; the ESS is that of the augmented proposal),
and ``nll`` on held-out reference samples from the IS estimate of ``log q(x)`` over ``n_aug`` auxiliary
draws. No ODE: sampling and densities cost one pass through the layers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.choices import unknown_choice
from flowforge.data.energies import DoubleWell4, Energy, LennardJones13
from flowforge.normalizing import AugmentedEquivariantFlow, AugmentedFlowGenerator
from flowforge.recipes.boltzmann import importance_keys
from flowforge.recipes.registry import Recipe, register

__all__ = ["build_eq_coupling", "eq_coupling_evaluate", "eq_coupling_generator"]

_ENERGIES = {"dw4": DoubleWell4, "lj13": LennardJones13}


def _energy(config: dict[str, Any]) -> Energy:
    name = config["energy"]
    if name not in _ENERGIES:
        raise unknown_choice("energy", name, _ENERGIES, hint="the eqcoupling recipes model particle systems")
    return _ENERGIES[name]()


def build_eq_coupling(config: dict[str, Any]) -> nn.Module:
    """The augmented equivariant coupling flow of a config."""
    e = _energy(config)
    return AugmentedEquivariantFlow(
        e.n_particles,
        e.spatial_dim,
        blocks=config["blocks"],
        width=config["width"],
        depth=config["depth"],
        scale=config["scale"],
        aug_scale=config["aug_scale"],
        log_scale_bound=config["log_scale_bound"],
    )


def eq_coupling_data(config: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """Reference samples ``(n_train, N*d)`` (seed 0); the model centres them."""
    e = _energy(config)
    return e.reference_samples(config["n_train"], seed=0).float().contiguous(), {"dim": e.dim}


def eq_coupling_reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    """Held-out reference samples (seed 1)."""
    return _energy(config).reference_samples(min(n, config["n_test"]), seed=1).float()


def eq_coupling_generator(model: nn.Module, config: dict[str, Any]) -> AugmentedFlowGenerator:
    """The ``generator`` hook: the flow over all ``N*d`` coordinates (Gaussian centre of mass)."""
    return model.generator(com="gaussian", n_aug=int(config["n_aug"]))


def eq_coupling_eval_options(config: dict[str, Any]) -> tuple[str, ...]:
    """``eval`` options: held-out ``data``, ``n`` proposals, ``n_aug`` auxiliary draws for the NLL."""
    return ("data", "n", "n_aug")


def eq_coupling_evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Any,
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    n_aug: int | None = None,
    **_: Any,
) -> dict[str, float]:
    """``ess``, ``logz`` (+ ``logz_error`` when log Z is known) by joint IS; ``nll`` (nats, IS over ``a``)."""
    gen = eq_coupling_generator(model, config)
    if n_aug is not None:
        gen = model.generator(com="gaussian", n_aug=int(n_aug))
    out: dict[str, float] = {}
    if "nll" in metrics:
        x = data()
        if x.dim() != 2 or x.shape[1] != gen.dim:
            raise ValueError(
                f"data has shape {tuple(x.shape)} but the run models (N, {gen.dim}) configurations"
            )
        g = torch.Generator().manual_seed(seed)
        pts = x[torch.randperm(len(x), generator=g)[: config["nll_points"]]]
        p = next(model.parameters())
        out["nll"] = float(-gen.log_prob(pts.to(p), generator=g).mean())
    if {"ess", "logz"} & set(metrics):
        with torch.no_grad():
            out |= importance_keys(
                gen, _energy(config), metrics, n or config["eval_samples"], seed, batch_size=2000
            )
    return out


_COMMON: dict[str, Any] = {
    "energy": "",
    "dim": 0,
    "blocks": 3,  # 3 x (x|a, a|x) layers, 1-layer EGNNs: the benchmarked set-up (RESULTS-eq_coupling.md)
    "width": 32,
    "depth": 1,
    "scale": 1.0,
    "aug_scale": 0.5,
    "log_scale_bound": 3.0,
    "n_aug": 20,
    "n_train": 50_000,
    "n_test": 10_000,
    "eval_samples": 20_000,
    "nll_points": 1000,
    "steps": 3000,
    "batch_size": 256,
    "lr": 1e-3,
    "warmup": 0,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "threads": 1,
}

_RECIPES = {
    "dw4-eqcoupling": (
        "DW-4, augmented E(n)-equivariant coupling flow (EGNN conditioners), ML on MCMC samples, joint IS",
        {"energy": "dw4", "scale": 4.0},
    ),
    "lj13-eqcoupling": (
        "LJ-13 (unique pairs), augmented E(n)-equivariant coupling flow, ML on MCMC samples, joint IS",
        {"energy": "lj13", "n_train": 10_000, "n_test": 5_000, "steps": 1500, "batch_size": 128,
         "nll_points": 500},
    ),
}  # fmt: skip

for _name, (_summary, _over) in _RECIPES.items():
    register(
        Recipe(
            name=_name,
            summary="Equivariant coupling Boltzmann generator: " + _summary,
            defaults={**_COMMON, **_over},
            build=build_eq_coupling,
            data=eq_coupling_data,
            generator=eq_coupling_generator,
            eval_options=eq_coupling_eval_options,
            reference=eq_coupling_reference,
            evaluate=eq_coupling_evaluate,
            metrics=("ess", "logz", "nll"),
            kind="boltzmann",
        )
    )
