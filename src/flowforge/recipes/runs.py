"""Train a recipe into a run folder, and rebuild, sample and evaluate a run folder.

This is what the CLI calls; the API and the CLI read the same folder, so they never drift apart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowforge.data import Standardizer, check_finite, load_array
from flowforge.metrics import energy_distance, mmd, nll, sliced_wasserstein, wasserstein2
from flowforge.recipes.registry import get_recipe, resolve_config
from flowforge.train import Run, train

__all__ = ["METRICS", "train_recipe", "load_run", "DataSpaceGenerator", "evaluate"]

#: Metrics ``flowforge eval`` knows; ``nll`` needs a model with ``log_prob``.
METRICS: tuple[str, ...] = ("swd", "w2", "mmd", "energy", "nll")

#: Training keys passed to the trainer rather than to the model.
TRAIN_KEYS = ("batch_size", "lr", "warmup", "grad_clip", "ema_decay", "schedule")


def train_recipe(
    name: str,
    *,
    overrides: dict[str, Any] | None = None,
    data_file: str | None = None,
    out: str | Path | None = None,
    steps: int | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
) -> Run:
    """Train recipe ``name`` (with ``overrides``) and return its :class:`~flowforge.train.Run`."""
    recipe = get_recipe(name)
    overrides = dict(overrides or {})
    if steps is not None:
        overrides["steps"] = steps
    if data_file:
        if "data_file" not in recipe.defaults:
            raise ValueError(f"recipe {name!r} does not train on a user's file; drop --data")
        if not Path(data_file).is_file():
            raise FileNotFoundError(
                f"--data {data_file}: no such file; give a .npy, .npz, .pt or .csv of shape (N, D)"
            )
        overrides["data_file"] = str(Path(data_file).resolve())
    config = resolve_config(recipe, overrides)
    config["seed"] = seed
    _set_threads(config)
    data, updates = recipe.data(config)
    config.update(updates)
    model = recipe.build(config)
    out = Path(out) if out is not None else Path("runs") / name
    return train(
        model,
        data,
        steps=int(config["steps"]),
        out=out,
        seed=seed,
        resume=resume,
        progress=progress,
        config=config,
        device=config.get("device") or None,
        **{k: config[k] for k in TRAIN_KEYS if k in config},
    )


def _set_threads(config: dict[str, Any]) -> None:
    # small MLPs run faster on one thread here (measured; BENCHMARKS.md); 0 keeps torch's default
    if int(config.get("threads", 0)) > 0:
        torch.set_num_threads(int(config["threads"]))


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a flowforge run folder (no config.json); train one with flowforge train RECIPE --out {run_dir}"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the run folder is damaged") from None


def load_run(run_dir: str | Path, *, ema: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a run folder and load its (EMA) weights; returns ``(model, config)``."""
    run_dir = Path(run_dir)
    config = _read_config(run_dir)
    _set_threads(config)
    model = get_recipe(config["recipe"]).build(config)
    Run(run_dir).load_into(model, ema=ema)
    model.eval()
    return model, config


class DataSpaceGenerator:
    """A generator that speaks the data's own units: undoes the recipe's standardisation.

    ``sample`` maps model samples back with ``std.inverse``; ``log_prob`` adds the standardisation's
    log-determinant, :math:`\\log p_x(x) = \\log p_z(z) + \\log|\\det \\partial z / \\partial x|`.
    """

    def __init__(self, inner: Any, standardizer: Standardizer | None, dim: int) -> None:
        self.inner, self.std, self.dim = inner, standardizer, dim

    def sample(self, n: int, **opts: Any) -> Tensor:
        """``(n, dim)`` samples in data units."""
        x = self.inner.sample(n, **opts)
        return self.std.inverse(x) if self.std is not None else x

    def sample_and_log_prob(self, n: int, **opts: Any) -> tuple[Tensor, Tensor]:
        """``(n, dim)`` samples in data units and their log-density ``(n,)`` (normalizing flows)."""
        z, log_q = self.inner.sample_and_log_prob(n, **opts)
        if self.std is None:
            return z, log_q
        x = self.std.inverse(z)
        return x, log_q + self.std.log_det(x)

    def log_prob(self, x: Tensor, **opts: Any) -> Tensor:
        """``(B,)`` log-density of data points in data units (nats)."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"data has shape {tuple(x.shape)} but the run was trained on (N, {self.dim})")
        if self.std is None:
            return self.inner.log_prob(x, **opts)
        return self.inner.log_prob(self.std.forward(x), **opts) + self.std.log_det(x)


def generator(run_dir: str | Path) -> Any:
    """The EMA model of a run folder as a :class:`DataSpaceGenerator` (images: integer pixels)."""
    model, config = load_run(run_dir)
    if config.get("levels"):
        from flowforge.recipes.normalizing import ImageGenerator

        return ImageGenerator(model, int(config["levels"]))
    std = Standardizer.from_dict(config["standardizer"]) if config.get("standardizer") else None
    return DataSpaceGenerator(model.generator(), std, int(config["dim"]))


def evaluate(
    run_dir: str | Path,
    data: str | Path | Tensor | None = None,
    metrics: Sequence[str] = ("swd", "mmd", "energy"),
    *,
    n_samples: int | None = None,
    seed: int = 0,
    solver: str | None = None,
    steps: int | None = None,
    qmc: bool | None = None,
    nll_points: int = 2000,
    w2_points: int = 2000,
    energy: str | None = None,
) -> dict[str, float]:
    """Evaluate a run folder against ``data`` (a file or a tensor; default: the recipe's held-out data).

    Sample-based metrics (``swd``, ``w2``, ``mmd``, ``energy``) compare the run's samples with the data
    in data units; ``nll`` is the mean negative log-likelihood in nats per sample of (at most
    ``nll_points`` of) the data as given, undoing any standardisation. Image and Boltzmann recipes add
    ``bpd``, ``ess`` and ``logz`` (see their modules). Samples use the recipe's solver, steps and ``qmc``
    unless given; ``energy`` (``"module:function"``) replaces a Boltzmann recipe's target energy.
    """
    run_dir = Path(run_dir)
    config = _read_config(run_dir)
    recipe = get_recipe(config["recipe"])
    valid = recipe.metrics or METRICS
    bad = [m for m in metrics if m not in valid]
    if bad:
        raise ValueError(
            f"unknown metric(s) {', '.join(bad)} for recipe {recipe.name!r}; valid metrics: {', '.join(valid)}"
        )
    if not metrics:
        raise ValueError(f"no metrics asked for; write e.g. --metrics {','.join(valid)}")
    if energy is not None and recipe.kind not in ("boltzmann", "normalizing"):
        raise ValueError(
            f"--energy applies to normalizing-flow and Boltzmann-generator recipes, not {recipe.name!r}"
        )
    if {"ess", "logz"} & set(metrics) and recipe.kind == "normalizing" and energy is None:
        raise ValueError("ess and logz weight the flow towards an energy: add --energy module:function")
    needs_data = recipe.kind != "boltzmann" or bool(set(metrics) - {"ess", "logz"})
    if data is None and not needs_data:  # importance weights need only the energy
        x = torch.empty(0, int(config["dim"]))
    elif data is None:
        if recipe.reference is None:
            raise ValueError(f"recipe {recipe.name!r} has no held-out data of its own; pass --data FILE")
        x = recipe.reference(config, n_samples or 10_000, seed + 1)
    elif isinstance(data, Tensor):
        x = data
    elif recipe.kind == "image" and str(data).endswith(".npy"):  # (N, C, H, W) as `flowforge sample` writes
        x = torch.from_numpy(np.load(data, allow_pickle=False))
    else:
        x = load_array(data)
        check_finite(x, what=str(data))
    if recipe.evaluate is not None:
        out = recipe.evaluate(
            run_dir,
            config,
            x,
            list(metrics),
            n_samples=n_samples,
            seed=seed,
            energy=energy,
            nll_points=nll_points,
        )
    else:
        out = _evaluate_samples(
            run_dir, config, x.float(), metrics, n_samples, seed, solver, steps, qmc, nll_points, w2_points
        )
        if {"ess", "logz"} & set(metrics):
            from flowforge.data.energies import user_energy
            from flowforge.metrics import boltzmann_metrics

            gen = generator(run_dir)
            m = boltzmann_metrics(
                gen,
                user_energy(energy, dim=gen.dim),
                n_samples or 20_000,
                torch.Generator().manual_seed(seed),
            )
            out.update({k: m[k] for k in ("ess", "logz") if k in metrics})
    if "bpd" in metrics and "bpd" not in out:
        out["bpd"] = out["nll"] / (int(config["dim"]) * math.log(2))
    return {k: (float(v) if math.isfinite(float(v)) else float("nan")) for k, v in out.items()}


def _evaluate_samples(
    run_dir: Path,
    config: dict[str, Any],
    x: Tensor,
    metrics: Sequence[str],
    n_samples: int | None,
    seed: int,
    solver: str | None,
    steps: int | None,
    qmc: bool | None,
    nll_points: int,
    w2_points: int,
) -> dict[str, float]:
    gen = generator(run_dir)
    if x.dim() != 2 or x.shape[1] != gen.dim:
        raise ValueError(f"data has shape {tuple(x.shape)} but the run was trained on (N, {gen.dim})")
    g = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    sample_metrics = [m for m in metrics if m in ("swd", "w2", "mmd", "energy")]
    if sample_metrics:
        n = n_samples or min(len(x), 10_000)
        y = gen.sample(
            n,
            generator=g,
            solver=solver or config.get("solver", "heun"),
            steps=steps or config.get("sample_steps", 25),
            qmc=config.get("qmc", False) if qmc is None else qmc,
        )
        if "swd" in metrics:
            out["swd"] = sliced_wasserstein(
                y, x, n_projections=1000, generator=torch.Generator().manual_seed(seed)
            )
        if "w2" in metrics:
            k = min(w2_points, len(x), len(y))
            out["w2"] = wasserstein2(y[:k], x[torch.randperm(len(x), generator=g)[:k]])
        if "mmd" in metrics:
            out["mmd"] = mmd(y[:5000], x[:5000])
        if "energy" in metrics:
            out["energy"] = energy_distance(y[:5000], x[:5000])
    if "nll" in metrics or "bpd" in metrics:  # its own generator: the same points whatever else is asked
        pts = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:nll_points]]
        out["nll"] = nll(gen, pts)
    return out
