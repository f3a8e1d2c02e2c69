"""EB-GFN recipe ``ising-ebgfn``: learn the couplings of a periodic lattice Ising model from samples, with an
energy-based GFlowNet (Zhang et al. 2022, :class:`~flowforge.gflownet.EBGFN`).

The truth is Zhang et al.'s (after Grathwohl et al. 2021) lattice model :math:`p(\\sigma) \\propto
\\exp(\\sigma^\\top J^\\star \\sigma)`, :math:`J^\\star = \\varsigma A` on a ``side x side`` torus with
``true_coupling`` :math:`\\varsigma = 0.2` (``Ising(J=0.2, beta=2)`` in flowforge's convention). The
training data are ``n_data`` configurations from ``gibbs_sweeps`` sequential Gibbs sweeps of the truth
(``data_sampler=exact``: i.i.d. by enumeration, ``side <= 4``), seeded by ``data_seed``. The model is a
dense :class:`~flowforge.gflownet.IsingEnergy` (all :math:`D^2` couplings free, as in the paper; ``couplings=
lattice`` restricts them to the bonds; ``energy=mlp`` learns a generic MLP energy instead) and a TB
GFlowNet (P_F / P_B heads on one 128 x 2 trunk; ``--set objective=db|subtb|...`` for any other) trained on
:math:`\\log R = -E_\\phi`, with forward trajectories and backward ones from the data (``back_ratio``
0.5) and negatives by one :math:`K = D` back-and-forth Metropolis-Hastings step from each data point
(``negatives=gfn``: forward samples; ``mh_steps``, ``mh_warmup``: the :math:`K` schedule). Adam at lr
1e-3 for the sampler; :math:`J` moves ``energy_lr_scale = 10`` times faster (one optimizer, see
:class:`~flowforge.gflownet.IsingEnergy`); batch 128, 1000 steps, cosine decay.

``flowforge eval RUN`` (no ``--data``): ``rmse`` gives ``rmse_J`` and ``log10_rmse_J`` (the paper's metric,
RMSE over all :math:`D^2` entries of :math:`J` against :math:`J^\\star`); ``kl`` the exact
:math:`KL(\\pi\\|p_\\phi)` and L1 of the learned Boltzmann distribution (enumeration, ``side <= 4``); ``gfn``
(only named, ``side <= 3``) the exact KL / L1 of the GFlowNet sampler against the truth and its L1 to
:math:`p_\\phi`. ``flowforge sample RUN`` draws configurations ``(n, side^2)`` in {0, 1} from the sampler.

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("ising-ebgfn")
    >>> cfg = {**r.defaults, "side": 2, "width": 8, "depth": 1, "n_data": 20, "gibbs_sweeps": 2}
    >>> data, info = r.data(cfg)
    >>> data.shape, info["dim"], type(r.build(cfg)).__name__
    (torch.Size([20, 4]), 4, 'EBGFN')
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from flowforge.core.choices import unknown_choice
from flowforge.data import ising_exact, ising_gibbs
from flowforge.gflownet import (
    EBGFN,
    EnergyEnvironment,
    FlowMatching,
    Ising,
    IsingEnergy,
    MLPEnergy,
    coupling_rmse,
    ising_coupling,
    shared_trunk_policies,
)
from flowforge.recipes.gflownet import objectives
from flowforge.recipes.registry import Recipe, register

__all__ = ["build_ebgfn", "ebgfn_data", "ebgfn_evaluate", "true_ising"]

ENERGIES = ("ising", "mlp")
SAMPLERS = ("gibbs", "exact")
METRICS = ("rmse", "kl", "gfn")


def true_ising(config: dict[str, Any]) -> Ising:
    """The true model: ``Ising(side, J=true_coupling, beta=2)``, i.e. :math:`J^\\star = \\varsigma A`."""
    return Ising(
        side=int(config["side"]),
        J=float(config["true_coupling"]),
        beta=2.0,
        periodic=bool(config["periodic"]),
    )


def ebgfn_data(config: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """``(n_data, side^2)`` long samples of the truth (Gibbs, or exact), seeded by ``data_seed``."""
    truth = true_ising(config)
    J = ising_coupling(truth)
    g = torch.Generator().manual_seed(int(config["data_seed"]))
    kind, n = config["data_sampler"], int(config["n_data"])
    if kind == "gibbs":
        x = ising_gibbs(J, n, sweeps=int(config["gibbs_sweeps"]), generator=g)
    elif kind == "exact":
        x = ising_exact(J, n, generator=g)
    else:
        raise unknown_choice("data_sampler", kind, SAMPLERS)
    return x, {"dim": truth.ndim, "standardizer": None}


def build_ebgfn(config: dict[str, Any]) -> EBGFN:
    """The EB-GFN of a config: energy, :class:`~flowforge.gflownet.EnergyEnvironment`, GFlowNet objective."""
    side = int(config["side"])
    env = Ising(side=side, periodic=bool(config["periodic"]))
    kind = config["energy"]
    if kind == "ising":
        energy: torch.nn.Module = IsingEnergy(
            side,
            periodic=bool(config["periodic"]),
            couplings=str(config["couplings"]),
            init_std=float(config["init_std"]),
            lr_scale=float(config["energy_lr_scale"]),
        )
    elif kind == "mlp":
        energy = MLPEnergy(env.ndim, int(config["energy_width"]), int(config["energy_depth"]))
    else:
        raise unknown_choice("energy", kind, ENERGIES)
    wrapped = EnergyEnvironment(env, energy)
    name, table = config["objective"], objectives()
    if name not in table:
        raise unknown_choice("objective", name, table, hint="write e.g. --set objective=tb")
    cls, extra, fixed = table[name]
    width, depth = int(config["width"]), int(config["depth"])
    uniform_pb = bool(config["uniform_pb"]) or cls is FlowMatching
    pf = pb = None
    if config["shared_trunk"] and depth > 0 and cls is not FlowMatching:
        pf, pb = shared_trunk_policies(wrapped.obs_dim, wrapped.n_actions, width, depth)
        pb = None if uniform_pb else pb
    gfn = cls(
        wrapped,
        pf,
        pb,
        uniform_pb=uniform_pb,
        width=width,
        depth=depth,
        epsilon=float(config["epsilon"]),
        temperature=float(config["temperature"]),
        **{k: config[k] for k in extra if k in config},
        **fixed,
    )
    return EBGFN(
        gfn,
        back_ratio=float(config["back_ratio"]),
        negatives=str(config["negatives"]),
        mh_steps=int(config["mh_steps"]) or None,
        mh_warmup=int(config["mh_warmup"]),
    )


def _reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    """No held-out data is needed: the metrics compare with the known truth."""
    return torch.empty(0, int(config["side"]) ** 2, dtype=torch.long)


def _generator(model: Any, config: dict[str, Any]) -> Any:
    return model.generator()


def ebgfn_evaluate(
    model: Any, config: dict[str, Any], data: Any, metrics: list[str], **_: Any
) -> dict[str, float]:
    """``rmse_J``, ``log10_rmse_J``; exact ``kl_model``, ``l1_model``; with ``gfn``: ``kl_gfn``, ``l1_gfn``,
    ``l1_gfn_model``."""
    truth = true_ising(config)
    out: dict[str, float] = {}
    if "rmse" in metrics:
        if not isinstance(model.energy, IsingEnergy):
            raise ValueError(
                "the rmse metric compares Ising couplings; an energy=mlp run has none (use --metrics kl)"
            )
        r = coupling_rmse(model.energy.J, ising_coupling(truth))
        out["rmse_J"], out["log10_rmse_J"] = r, math.log10(r)
    if "gfn" in metrics and truth.side > 3:
        raise ValueError(
            f"the gfn metric enumerates all 3^D states of the sampler; side={truth.side} is too large (needs side <= 3). "
            "Use --metrics rmse,kl"
        )
    if {"kl", "gfn"} & set(metrics):
        if truth.ndim > 22:
            raise ValueError(
                f"the kl metric enumerates 2^D configurations; side={truth.side} needs side <= 4"
            )
        m = model.exact_metrics(truth, gfn="gfn" in metrics)
        keep = (("kl_model", "l1_model") if "kl" in metrics else ()) + (
            ("kl_gfn", "l1_gfn", "l1_gfn_model") if "gfn" in metrics else ()
        )
        out.update({k: m[k] for k in keep})
    return out


_DEFAULTS: dict[str, Any] = {
    # the truth and its data
    "side": 4,
    "periodic": True,
    "true_coupling": 0.2,
    "n_data": 2000,
    "data_sampler": "gibbs",
    "gibbs_sweeps": 500,
    "data_seed": 0,
    # the energy
    "energy": "ising",
    "couplings": "dense",
    "init_std": 0.01,
    "energy_lr_scale": 10.0,
    "energy_width": 256,
    "energy_depth": 2,
    # the GFlowNet
    "objective": "tb",
    "log_z_lr_scale": 100.0,
    "width": 128,
    "depth": 2,
    "shared_trunk": True,
    "uniform_pb": False,
    "epsilon": 0.0,
    "temperature": 1.0,
    # EB-GFN
    "back_ratio": 0.5,
    "negatives": "mh",
    "mh_steps": 0,  # 0: K = D, every move undone and redone
    "mh_warmup": 0,
    # training
    "steps": 1000,
    "batch_size": 128,
    "lr": 1e-3,
    "schedule": "cosine",
    "warmup": 0,
    "grad_clip": 0.0,
    "ema_decay": 0.0,
    "threads": 1,
}

register(
    Recipe(
        name="ising-ebgfn",
        summary="EB-GFN: learn a 4x4 periodic Ising model's couplings from Gibbs samples; log10 RMSE(J), exact KL",
        defaults=_DEFAULTS,
        build=build_ebgfn,
        data=ebgfn_data,
        generator=_generator,
        reference=_reference,
        evaluate=ebgfn_evaluate,
        metrics=METRICS,
        default_metrics=("rmse", "kl"),
        kind="gflownet",
    )
)
