"""Pieces the point-cloud recipe families share: a generator in data units and sample-based metrics.

No recipe is registered here; :mod:`~flowforge.recipes.flows2d`, :mod:`~flowforge.recipes.normalizing`
and :mod:`~flowforge.recipes.boltzmann` build their hooks from these.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.data import Standardizer
from flowforge.metrics import energy_distance, mmd, nll, sliced_wasserstein, wasserstein2

__all__ = [
    "SAMPLE_METRICS",
    "DataSpaceGenerator",
    "data_space_generator",
    "check_points",
    "sample_metrics",
    "nll_of",
    "sample_grid_monitor",
    "image_picture",
]

#: Metrics that compare model samples with data points.
SAMPLE_METRICS: tuple[str, ...] = ("swd", "w2", "mmd", "energy")


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
        check_points(x, self.dim)
        if self.std is None:
            return self.inner.log_prob(x, **opts)
        return self.inner.log_prob(self.std.forward(x), **opts) + self.std.log_det(x)


def data_space_generator(model: nn.Module, config: dict[str, Any]) -> DataSpaceGenerator:
    """The ``generator`` hook of point-cloud recipes: ``model.generator()`` in data units."""
    std = Standardizer.from_dict(config["standardizer"]) if config.get("standardizer") else None
    return DataSpaceGenerator(model.generator(), std, int(config["dim"]))


def check_points(x: Tensor, dim: int) -> None:
    """Refuse data that is not ``(N, dim)``."""
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(
            f"data has shape {tuple(x.shape)} but the run was trained on (N, {dim}); pass an (N, {dim}) array"
        )


def sample_metrics(
    gen: Any,
    x: Tensor,
    metrics: Sequence[str],
    *,
    n: int | None,
    seed: int,
    w2_points: int = 2000,
    **sample_kwargs: Any,
) -> dict[str, float]:
    """``swd``, ``w2``, ``mmd``, ``energy`` (those asked for) between ``n`` samples of ``gen`` and ``x``."""
    asked = [m for m in metrics if m in SAMPLE_METRICS]
    if not asked:
        return {}
    check_points(x, gen.dim)
    g = torch.Generator().manual_seed(seed)
    y = gen.sample(n or min(len(x), 10_000), generator=g, **sample_kwargs)
    out: dict[str, float] = {}
    if "swd" in asked:
        out["swd"] = sliced_wasserstein(
            y, x, n_projections=1000, generator=torch.Generator().manual_seed(seed)
        )
    if "w2" in asked:
        k = min(w2_points, len(x), len(y))
        out["w2"] = wasserstein2(y[:k], x[torch.randperm(len(x), generator=g)[:k]])
    if "mmd" in asked:
        out["mmd"] = mmd(y[:5000], x[:5000])
    if "energy" in asked:
        out["energy"] = energy_distance(y[:5000], x[:5000])
    return {k: float(v) for k, v in out.items()}


def nll_of(gen: Any, x: Tensor, *, seed: int, points: int = 2000) -> float:
    """Mean NLL (nats per sample) of at most ``points`` rows of ``x``, drawn with ``seed``."""
    check_points(x, gen.dim)
    pts = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:points]]
    return float(nll(gen, pts.float()))


def image_picture(samples: Any, config: dict[str, Any]) -> Any:
    """The ``picture`` hook of image recipes: integer pixels ``(N, C, H, W)`` with the run's ``levels``
    grey levels as floats in ``[-1, 1]`` (what an image grid shows); other arrays unchanged."""
    if getattr(samples, "ndim", 0) != 4 or not config.get("levels"):
        return samples
    return samples.astype("float32") * (2.0 / (int(config["levels"]) - 1)) - 1.0


def sample_grid_monitor(config: dict[str, Any], run_dir: Path) -> Any:
    """The ``monitor`` hook of image recipes: every ``sample_every`` steps (and at the last step) write a
    grid of 64 samples of the EMA weights to ``run_dir/samples/step_XXXXXXX.png`` (inpainting recipes:
    64 test images with their right half filled in).

    Samples come from a copy of the model and a fixed ``torch.Generator`` (seed 0), so the grids of two
    steps are comparable and the training trajectory is untouched.
    """
    from flowforge.data.png import save_image_grid
    from flowforge.recipes.registry import get_recipe

    every = int(config.get("sample_every", 0))
    if every <= 0:
        return None
    recipe = get_recipe(config["recipe"])
    levels = int(config.get("levels", 256))
    shadow: list[nn.Module] = []

    def callback(step: int, trainer: Any) -> None:
        last = step == trainer.train_config.steps
        if (step % every and not last) or not trainer.dist.is_main:
            return
        if not shadow:
            shadow.append(copy.deepcopy(trainer.model))
        model = shadow[0]
        (
            trainer.ema.copy_to
            if trainer.ema is not None
            else lambda m: m.load_state_dict(trainer.model.state_dict())
        )(model)
        model.eval()
        with torch.no_grad():
            if (
                recipe.inpaint is not None and recipe.reference is not None
            ):  # fill the right half of test images
                x = recipe.reference(config, 64, 0)[:64]
                hole = torch.zeros(len(x), 1, *x.shape[-2:], dtype=torch.bool)
                hole[..., x.shape[-1] // 2 :] = True
                x = recipe.inpaint(model, config, x, hole, seed=0)
            else:
                kwargs = recipe.sample_kwargs(config, {}, 64)
                x = recipe.generator(model, config).sample(
                    64, generator=torch.Generator().manual_seed(0), **kwargs
                )
        save_image_grid(
            x.float() * (2.0 / (levels - 1)) - 1.0,
            Path(run_dir) / "samples" / f"step_{step:07d}.png",
            nrow=8,
            scale=max(1, 64 // x.shape[-1]),
        )

    return callback
