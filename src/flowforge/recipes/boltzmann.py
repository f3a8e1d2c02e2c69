"""Boltzmann-generator recipes: a normalizing flow as a proposal for a target energy ``E(x)`` in kT.

``gmm40-bg``, ``manywell-bg``, ``dw4-bg``, ``lj13-bg`` and ``aldp-bg`` (and any user energy through
``energy=module:function``). ``objective`` picks the training signal:

- ``ml``: maximum likelihood on reference samples (exact samplers for GMM-40 and many-well, our cached
  MCMC runs for DW-4 / LJ-13, our cached MD for alanine dipeptide, modelled in internal coordinates:
  ``flowforge.data.aldp.AlanineDipeptideInternal``);
- ``kl``: the reverse KL ``E_q[log q + E]`` (needs no samples; mode-seeking);
- ``self-improve``: Prose's importance-weighted self-improvement, starting from the weights of the run
  folder ``init_from``.

The flow sees standardised coordinates; the run's energy is evaluated in data units, so ``ess`` and
``logz`` from ``flowforge eval`` refer to the target as defined.

Hooks: the run's generator samples in data units; TARFlow proposals (``flow=tarflow``) take ``--method``
and ``--guidance``; ``eval`` takes ``--energy`` (another target for the same proposal), ``--data`` and
``--n``, and needs held-out samples only for ``nll``/``bpd``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.choices import unknown_choice
from flowforge.data import Standardizer
from flowforge.data.energies import GMM40, DoubleWell4, Energy, LennardJones13, ManyWell, user_energy
from flowforge.metrics import bits_per_dim
from flowforge.metrics.boltzmann import boltzmann_metrics
from flowforge.normalizing import ReverseKL, SelfImprovement
from flowforge.recipes.common import data_space_generator, nll_of
from flowforge.recipes.normalizing import build_density_flow, density_sample_kwargs, density_sample_options
from flowforge.recipes.registry import Recipe, register
from flowforge.recipes.run_folder import read_config

__all__ = [
    "ENERGIES",
    "make_energy",
    "build_boltzmann",
    "boltzmann_data",
    "boltzmann_evaluate",
    "ComGaussian",
]


class ComGaussian(Energy):
    r"""A translation-invariant energy made normalisable: :math:`E(x) + \tfrac N2 \lVert \bar x \rVert^2`.

    The centre of geometry :math:`\bar x` of ``N`` particles gets the density :math:`N(0, I/N)`, so a flow
    with a standard normal base can model all ``N d`` coordinates (Prose's CoM adjustment, as a target);
    :meth:`reference_samples` re-draws the centre of the inner energy's samples accordingly.
    """

    def __init__(self, inner: Energy, n_particles: int, spatial_dim: int = 3) -> None:
        super().__init__(inner.dim)
        self.inner, self.n, self.d = inner, int(n_particles), int(spatial_dim)

    def _center(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], self.n, self.d).mean(1)

    def energy(self, x: Tensor) -> Tensor:
        return self.inner.energy(x) + 0.5 * self.n * self._center(x).square().sum(1)

    def reference_samples(self, n: int, seed: int = 0, cache_dir: Any = None, **kw: Any) -> Tensor:
        x = self.inner.reference_samples(n, seed=seed, cache_dir=cache_dir, **kw)
        g = torch.Generator().manual_seed(10_000 + seed)
        c = torch.randn(len(x), 1, self.d, generator=g, dtype=x.dtype) / math.sqrt(self.n)
        p = x.reshape(len(x), self.n, self.d)
        return (p - p.mean(1, keepdim=True) + c).reshape(len(x), -1)


def _aldp(config: dict[str, Any]) -> Energy:
    """Alanine dipeptide over 60 internal coordinates (frame + Z-matrix; Cartesian gave ESS ≈ 0)."""
    from flowforge.data.aldp import AlanineDipeptideInternal

    path = config["data_dir"] or None
    return AlanineDipeptideInternal(path, platform=config["platform"])


#: Energies known by name; anything with a ``:`` is loaded with :func:`user_energy`.
ENERGIES: dict[str, Any] = {
    "gmm40": lambda c: GMM40(),
    "manywell": lambda c: ManyWell(dim=c["dim"] or 32),
    "dw4": lambda c: DoubleWell4(),
    "lj13": lambda c: LennardJones13(),
    "aldp": _aldp,
}


def make_energy(config: dict[str, Any], override: str | None = None) -> Energy:
    """The target energy of a config (or of ``override``, a ``module:function`` spec)."""
    name = override or config["energy"]
    if ":" in name:
        return user_energy(name, dim=config.get("dim") or None)
    if name not in ENERGIES:
        raise unknown_choice(
            "energy", name, ENERGIES, hint="or write module:function (--energy FILE.py:energy)"
        )
    return ENERGIES[name](config)


class _StandardisedEnergy(nn.Module):
    """``E(std^{-1}(z))``: the target seen in the flow's standardised coordinates (constant Jacobian dropped)."""

    def __init__(self, energy: Energy, std: Standardizer | None) -> None:
        super().__init__()
        self.__dict__["energy"] = energy
        self.std = std

    def forward(self, z: Tensor) -> Tensor:
        x = self.std.inverse(z) if self.std is not None else z
        return self.energy(x.to(torch.get_default_dtype()) if x.dtype != z.dtype else x).to(z.dtype)


def build_boltzmann(config: dict[str, Any]) -> nn.Module:
    """The flow, wrapped in its training objective (``ml``: the flow itself)."""
    flow = build_density_flow(config)
    objective = config["objective"]
    if objective == "ml":
        return flow
    std = Standardizer.from_dict(config["standardizer"]) if config.get("standardizer") else None
    energy = _StandardisedEnergy(make_energy(config), std)
    if objective == "kl":
        return ReverseKL(flow, energy)
    if objective == "self-improve":
        init = Path(config["init_from"]).expanduser() if config["init_from"] else None
        if init is not None and (init / "config.json").is_file():
            from flowforge.train import Run

            Run(init).load_into(flow, ema=True)
        return SelfImprovement(
            flow,
            energy,
            teacher_weight=config["teacher_weight"],
            buffer_size=config["buffer_size"],
            refresh_every=config["refresh_every"],
        )
    raise unknown_choice("objective", objective, ["ml", "kl", "self-improve"])


def boltzmann_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Reference samples (standardised) for ``ml``; nothing for ``kl`` / ``self-improve`` (the flow samples)."""
    energy = make_energy(config)
    updates: dict[str, Any] = {"dim": energy.dim}
    if config["objective"] == "self-improve":
        init = Path(config["init_from"]).expanduser() if config["init_from"] else None
        if init is None or not (init / "config.json").is_file():
            raise FileNotFoundError(
                f"objective=self-improve starts from a trained run: --set init_from=RUN_DIR (got {config['init_from']!r})"
            )
        init_cfg = read_config(init)
        arch = ("flow", "transforms", "hidden", "hidden_layers", "bins", "bound", "blocks", "width", "layers",
                "token_dim", "head_dim", "energy")  # fmt: skip
        for k in arch:
            if k in init_cfg and init_cfg[k] != config.get(k):
                raise ValueError(
                    f"init_from run has {k}={init_cfg[k]!r} but this config has {config.get(k)!r}"
                )
        updates["standardizer"] = init_cfg.get("standardizer")
        return None, updates
    if config["objective"] == "kl":
        updates["standardizer"] = None
        return None, updates
    x = energy.reference_samples(config["n_train"], seed=0).float()
    std = Standardizer.fit(x) if config["standardize"] else None
    updates["standardizer"] = std.to_dict() if std else None
    return (std.forward(x) if std else x).contiguous(), updates


def boltzmann_reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    """Held-out samples of the target (a different seed from the training samples)."""
    return make_energy(config).reference_samples(min(n, config["n_test"]), seed=1).float()


def boltzmann_eval_options(config: dict[str, Any]) -> tuple[str, ...]:
    """``eval`` options of a Boltzmann generator: held-out ``data``, ``n`` samples, another ``energy``."""
    return ("data", "n", "energy")


def boltzmann_evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Any,
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    energy: str | None = None,
    **_: Any,
) -> dict[str, float]:
    """``ess``, ``logz`` (+ ``logz_error`` when log Z is known) by importance sampling, ``nll``/``bpd`` on the data."""
    gen = data_space_generator(model, config)
    out: dict[str, float] = {}
    if "nll" in metrics or "bpd" in metrics:
        with torch.no_grad():
            out["nll"] = nll_of(gen, data(), seed=seed)
        if "bpd" in metrics:
            out["bpd"] = bits_per_dim(out["nll"], gen.dim)
    if {"ess", "logz"} & set(metrics):
        target = make_energy(config, override=energy)
        if target.dim != gen.dim:
            raise ValueError(f"the energy takes (B, {target.dim}) points but the run samples (B, {gen.dim})")
        out |= importance_keys(gen, target, metrics, n or config["eval_samples"], seed, batch_size=2048)
    return out


def importance_keys(
    gen: Any, target: Energy, metrics: list[str], n: int, seed: int, *, batch_size: int
) -> dict[str, float]:
    """The asked-for ``ess`` / ``logz`` (+ ``logz_error`` where log Z is known) of ``n`` proposals of ``gen``."""
    m = boltzmann_metrics(gen, target, n, torch.Generator().manual_seed(seed), batch_size=batch_size)
    out = {k: m[k] for k in ("ess", "logz") if k in metrics}
    if "logz" in metrics and "logz_error" in m:
        out["logz_error"] = m["logz_error"]
    return out


_BG_COMMON: dict[str, Any] = {
    "energy": "",
    "dim": 0,
    "objective": "ml",
    "flow": "nsf",
    "transforms": 6,
    "hidden": 128,
    "hidden_layers": 2,
    "bins": 8,
    "bound": 5.0,
    "token_dim": 1,
    "blocks": 6,
    "width": 64,
    "layers": 2,
    "head_dim": 32,
    "standardize": True,
    "n_train": 50_000,
    "n_test": 10_000,
    "eval_samples": 20_000,
    "init_from": "",
    "teacher_weight": 1.0,
    "buffer_size": 20_000,
    "refresh_every": 200,
    "data_dir": "",
    "platform": "Reference",
    "steps": 5000,
    "batch_size": 256,
    "lr": 1e-3,
    "warmup": 200,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "threads": 1,
}

_BG = {
    "gmm40-bg": ("GMM-40 in 2-D (FAB/DEM means), exact training samples", {"energy": "gmm40"}),
    "manywell-bg": (
        "many-well 32-D (2^16 modes), exact training samples, known log Z",
        {"energy": "manywell", "dim": 32, "transforms": 8, "flow": "nsf-coupling"},
    ),
    "dw4-bg": (
        "DW-4: 4 particles in 2-D, double-well pair potential, MCMC reference",
        {"energy": "dw4", "flow": "nsf-coupling"},
    ),
    "lj13-bg": (
        "LJ-13: 13 Lennard-Jones particles in 3-D (unique pairs), MCMC reference (flow=tarflow: atom tokens)",
        {"energy": "lj13", "flow": "nsf-coupling", "token_dim": 3, "n_train": 10_000, "n_test": 5_000},
    ),
    "aldp-bg": (
        "alanine dipeptide in vacuum, 60 internal coordinates (OpenMM, Amber; pip install 'flowforge[aldp]'), MD reference",
        {
            # 60 internal coordinates (AlanineDipeptideInternal); RealNVP 8 x (64, 64) was the best of
            # benchmarks/aldp_is.py (ESS/N 8.5 %); its MD runs (50k / 20k frames, stride 100) share the cache
            "energy": "aldp",
            "flow": "realnvp",
            "transforms": 8,
            "hidden": 64,
            "hidden_layers": 2,
            "n_train": 50_000,
            "n_test": 20_000,
            "steps": 4000,
            "eval_samples": 50_000,
        },
    ),
}
_BG["bg"] = (
    "your energy: --energy module:function --set dim=D (reverse KL, coupling splines)",
    {"objective": "kl", "flow": "nsf-coupling", "standardize": False},
)
for _name, (_summary, _over) in _BG.items():
    register(
        Recipe(
            name=_name,
            summary="Boltzmann generator: " + _summary,
            defaults={**_BG_COMMON, **_over},
            build=build_boltzmann,
            data=boltzmann_data,
            generator=data_space_generator,
            sample_options=density_sample_options,
            sample_kwargs=density_sample_kwargs,
            eval_options=boltzmann_eval_options,
            reference=boltzmann_reference,
            evaluate=boltzmann_evaluate,
            metrics=("ess", "logz", "nll", "bpd"),
            kind="boltzmann",
        )
    )
