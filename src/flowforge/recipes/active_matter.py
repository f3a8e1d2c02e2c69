"""``aoup-trap`` and ``aoup-box``: the stationary score and entropy production rate (EPR) of active particles.

::

    flowforge train aoup-trap --out runs/aoup-trap --set v0=2.0
    flowforge eval runs/aoup-trap       # epr_quadratic, epr_divergence, epr_closed_form, rel_err_*, ...
    flowforge train aoup-box --out runs/aoup-box --set n_particles=8 v0=1.0
    flowforge eval runs/aoup-box        # epr_quadratic, epr_divergence, estimator_gap, epr_free, ...

Both simulate stationary states of active Ornstein-Uhlenbeck particles
(:class:`~flowforge.apps.active_matter.AOUP`; Boffi & Vanden-Eijnden, arXiv:2309.12991) as the training
data and learn the stationary score with denoising score matching on the SDE's increments (``loss=dsm``) or
implicit score matching (``loss=ism``). ``aoup-trap``: particles in a harmonic trap, exact transitions, an
MLP; the EPR has the closed form :math:`N d v_0^2\\gamma/(\\varepsilon(A+\\gamma))`. ``aoup-box``:
interacting particles in a periodic box at packing fraction ``phi`` (Euler-Maruyama with exact OU steps,
step ``sim_dt``), a permutation-equivariant :class:`~flowforge.nn.ParticleNet`.

**Eval keys** (``flowforge eval`` JSON): ``epr_quadratic`` (:math:`E[v^\\top D^{-1}v]`) and
``epr_divergence`` (:math:`E[v^\\top D^{-1}b] + E[\\nabla\\cdot v]`) with ``*_se`` standard errors,
``estimator_gap`` (their relative difference), ``epr_x_part``/``epr_g_part``; where a closed form exists
(no interactions): ``epr_closed_form``, ``rel_err_quadratic``, ``rel_err_divergence``, ``epr_exact_score``
(the exact score's estimate on the same samples: the Monte-Carlo noise floor), ``rel_err_exact_score`` and
``score_rel_error`` (:math:`E|s_\\theta - s|^2 / E|s|^2`); ``epr_free``: the EPR the same particles would have
without interactions (:math:`N d v_0^2/\\varepsilon` in a box); ``epr_heat`` (``_se``): the score-free EPR
:math:`E[b^\\top D^{-1}b + \\nabla\\cdot b]` (:func:`~flowforge.apps.active_matter.epr_heat`) on ``heat_samples``
fresh states, the truth the learned estimators are read against in a box. ``baseline=equilibrium`` (the
``aoup-box`` default) lets the network learn only the score's part beyond the exact ``v0 = 0`` score. Fresh
states are simulated for ``eval`` (``eval_samples`` of them, or ``--n``). ``sample`` runs Langevin dynamics on the learned score
(``--steps``, default ``sample_steps``).

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("aoup-trap")
    >>> r.defaults["v0"], r.defaults["loss"], "epr_closed_form" in r.metrics
    (1.0, 'dsm', True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from flowforge.apps.active_matter import (
    AOUP,
    LangevinSampler,
    StationaryScore,
    box_half_width,
    entropy_production,
    epr_closed_form,
    epr_heat,
    exact_score,
    simulate_stationary,
)
from flowforge.nn import MLP, ParticleNet
from flowforge.recipes.registry import Recipe, register

__all__ = ["AOUP_METRICS", "CLOSED_FORM_METRICS", "system_of", "aoup_data", "build_aoup", "aoup_evaluate"]

#: EPR metrics every active-matter run has
BASE_METRICS = (
    "epr_quadratic",
    "epr_quadratic_se",
    "epr_divergence",
    "epr_divergence_se",
    "estimator_gap",
    "epr_x_part",
    "epr_g_part",
    "epr_free",
    "epr_heat",
    "epr_heat_se",
)
#: metrics that need a closed form (no interactions)
CLOSED_FORM_METRICS = (
    "epr_closed_form",
    "rel_err_quadratic",
    "rel_err_divergence",
    "epr_exact_score",
    "rel_err_exact_score",
    "score_rel_error",
)
AOUP_METRICS = BASE_METRICS + CLOSED_FORM_METRICS
_SYSTEM_KEYS = ("n_particles", "dim", "v0", "gamma", "eps", "A", "k", "radius", "beta")


def system_of(config: dict[str, Any]) -> AOUP:
    """The :class:`AOUP` of a config (``phi > 0``: a periodic box at that packing fraction; 0: open plane)."""
    phi = float(config["phi"])
    if phi < 0 or phi >= 1:
        raise ValueError(f"phi is a packing fraction in (0, 1), or 0 for no box (a trap); got phi={phi}")
    box = (
        box_half_width(int(config["n_particles"]), phi, float(config["radius"]), int(config["dim"]))
        if phi
        else None
    )
    return AOUP(**{k: config[k] for k in _SYSTEM_KEYS}, box=box)


def _simulate(config: dict[str, Any], n: int, seed: int) -> Tensor:
    system = system_of(config)
    return simulate_stationary(
        system,
        n,
        dt=float(config["sim_dt"]),
        burn_in=float(config["burn_in"]) or None,
        thin=float(config["thin"]) or None,
        n_chains=int(config["n_chains"]) or None,
        generator=torch.Generator().manual_seed(int(seed)),
        dtype=torch.float64,
    ).float()


def aoup_data(config: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """``n_train`` simulated stationary states ``(n_train, N, 2, d)`` and the box half-width."""
    system = system_of(config)
    if int(config["n_train"]) < 1:
        raise ValueError(
            f"n_train must be >= 1 simulated states, got {config['n_train']}; e.g. n_train=20000"
        )
    x = _simulate(config, int(config["n_train"]), 1_000 + int(config.get("seed", 0)))
    return x, {"box": system.box}


def build_aoup(config: dict[str, Any]) -> StationaryScore:
    """The score model: an MLP on the flattened state (``net=mlp``) or a :class:`ParticleNet` (``net=particle``)."""
    system = system_of(config)
    width, depth = int(config["width"]), int(config["depth"])
    if config["net"] == "mlp":
        net: nn.Module = MLP(system.state_shape, width, depth)
    elif config["net"] == "particle":
        net = ParticleNet(
            system.dim, 2, width, depth, box=system.box, absolute=system.box is None or system.A > 0
        )
    else:
        raise ValueError(f"unknown net {config['net']!r}; write net=mlp or net=particle")
    return StationaryScore(
        net,
        system,
        loss=str(config["loss"]),
        dt=float(config["dsm_dt"]),
        divergence=str(config["divergence"]),
        n_probes=int(config["n_probes"]),
        baseline=str(config.get("baseline", "none")),
    )


def aoup_generator(model: nn.Module, config: dict[str, Any]) -> LangevinSampler:
    """Langevin dynamics on the learned score (float32 states ``(n, N, 2, d)``)."""
    return LangevinSampler(model, model.system, dtype=torch.float32)


def aoup_sample_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        "steps": int(given.get("steps", config["sample_steps"])),
        "step_size": float(config["langevin_step"]),
    }


def aoup_reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    """Fresh simulated stationary states (a different seed from the training data's)."""
    return _simulate(config, n, 50_000 + seed)


def aoup_evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Any,
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **_: Any,
) -> dict[str, Any]:
    """The EPR by both estimators on fresh stationary states, against the closed form where one exists."""
    system: AOUP = model.system
    closed = system.is_linear and system.eps > 0
    asked_closed = [m for m in metrics if m in CLOSED_FORM_METRICS]
    if asked_closed and not closed:
        raise ValueError(
            f"{', '.join(asked_closed)} need a closed form, which exists only without interactions (k=0) and "
            f"with eps > 0; this run has k={system.k}, eps={system.eps}. Ask for --metrics {','.join(BASE_METRICS)}"
        )
    z = aoup_reference(config, int(n or config["eval_samples"]), seed)
    ep = model.entropy_production(
        z,
        divergence=str(config["eval_divergence"]),
        n_probes=8,
        generator=torch.Generator().manual_seed(seed),
    )
    free = AOUP(**{**system.to_dict(), "k": 0.0})
    values: dict[str, Any] = {
        **ep.summary(),
        "epr_free": epr_closed_form(free) if free.is_linear and free.eps > 0 else None,
    }
    if {"epr_heat", "epr_heat_se"} & set(metrics):
        if system.eps > 0:  # the score-free truth, on more fresh states (it is the noisier estimator)
            heat_n = int(config.get("heat_samples", 100_000))
            zh = z.double() if heat_n <= len(z) else _simulate(config, heat_n, 70_000 + seed).double()
            values["epr_heat"], values["epr_heat_se"] = epr_heat(system, zh)
        else:
            values["epr_heat"] = values["epr_heat_se"] = None
    if closed:
        truth = epr_closed_form(system)
        zd = z.double()
        exact = entropy_production(system, zd, lambda s: exact_score(system, s))
        with torch.no_grad():
            was = model.training
            model.eval()
            err = model(z).double() - exact_score(system, zd)
            model.train(was)
        values.update(
            epr_closed_form=truth,
            rel_err_quadratic=ep.quadratic / truth - 1,
            rel_err_divergence=ep.divergence_form / truth - 1,
            epr_exact_score=exact.quadratic,
            rel_err_exact_score=exact.quadratic / truth - 1,
            score_rel_error=float(err.square().sum() / exact_score(system, zd).square().sum()),
        )
    out = {m: values[m] for m in metrics}
    out["eval_samples"] = int(z.shape[0])
    return out


_COMMON: dict[str, Any] = {
    "n_particles": 1,
    "dim": 2,
    "v0": 1.0,
    "gamma": 1.0,
    "eps": 0.1,
    "A": 1.0,
    "k": 0.0,
    "radius": 1.0,
    "beta": 7.5,
    "phi": 0.0,
    "sim_dt": 1e-3,
    "burn_in": 0.0,
    "thin": 0.0,
    "n_chains": 0,
    "n_train": 20_000,
    "net": "mlp",
    "width": 64,
    "depth": 2,
    "loss": "dsm",
    "dsm_dt": 0.1,
    "divergence": "hutchinson",
    "n_probes": 1,
    "baseline": "none",
    "heat_samples": 100_000,
    "steps": 2_000,
    "batch_size": 256,
    "lr": 1e-3,
    "warmup": 50,
    "grad_clip": 1.0,
    "ema_decay": 0.99,
    "threads": 1,
    "eval_samples": 20_000,
    "eval_divergence": "exact",
    "sample_steps": 500,
    "langevin_step": 0.01,
}

_BOX = {
    **_COMMON,
    "n_particles": 8,
    "A": 0.0,
    "k": 2.5,
    "phi": 0.5,
    "sim_dt": 1e-2,
    "burn_in": 10.0,
    "thin": 0.5,
    "n_chains": 512,
    "n_train": 8192,
    "net": "particle",
    "width": 32,
    "dsm_dt": 1e-2,
    "baseline": "equilibrium",
    "steps": 1_000,
    "batch_size": 128,
    "lr": 2e-3,
    "eval_samples": 2048,
    "langevin_step": 1e-3,
}


for _name, _defaults, _summary, _metrics in (
    (
        "aoup-trap",
        _COMMON,
        "stationary score + entropy production of active OU particles in a harmonic trap (closed-form EPR)",
        AOUP_METRICS,
    ),
    (
        "aoup-box",
        _BOX,
        "stationary score + entropy production of interacting active OU particles in a periodic box",
        BASE_METRICS,
    ),
):
    register(
        Recipe(
            name=_name,
            summary=_summary,
            defaults=_defaults,
            build=build_aoup,
            data=aoup_data,
            generator=aoup_generator,
            sample_options=lambda config: ("steps",),
            sample_kwargs=aoup_sample_kwargs,
            eval_options=lambda config: ("n",),
            reference=aoup_reference,
            evaluate=aoup_evaluate,
            metrics=AOUP_METRICS,
            default_metrics=_metrics,
            picture=lambda samples, config: samples[:, :, 0].reshape(-1, samples.shape[-1]),
            kind="science",
        )
    )
