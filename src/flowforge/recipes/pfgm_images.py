r"""``mnist-pfgm``, ``digits-pfgm``: class-conditional PFGM++ on images.

PFGM++ (Xu et al., 2023, arXiv 2302.04265; :mod:`flowforge.continuous.pfgm`): EDM's preconditioned
denoiser (Karras et al., 2022) around the image recipes' class-conditional UNet
(:func:`~flowforge.recipes.images.build_image_net`, the ``mnist``/``digits`` layout), trained under the
PFGM++ kernel with ``D`` augmented dimensions (``--set D=16``, the default, is the value of the 2-D
few-step benchmark ``benchmarks/few_step.py``; ``--set D=inf`` is EDM) and EDM's
:math:`\ln\sigma \sim N(-1.2, 1.2^2)`, weighting and :math:`\sigma_d = 0.5`.

Time: flowforge runs from noise (t=0) to data (t=1); PFGM++ and EDM count noise by
:math:`\sigma = (1 - t)/t` (:math:`r = \sigma\sqrt{D}`). ``--steps N`` takes the ``N`` intervals of EDM's
:math:`\rho = 7` grid from ``sigma_max`` (EDM's 80 for images in ``[-1, 1]``) to ``sigma_min = 0.002``
and 0, integrated by ``--solver`` (Euler by default: ``N`` denoiser calls; Heun: ``2N - 1``, the last
interval into :math:`\sigma = 0` being one Euler step) from the Student-t prior. Data, labels, label
dropout (0.1, no guidance at sampling), budget (steps, batch, lr, EMA) and metrics (``fd``, ``acc``,
``pr``) are the ``mnist``/``digits`` recipes'; ``eval`` reports ``nfe`` (denoiser calls per sample).

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("mnist-pfgm")
    >>> r.sample_options(dict(r.defaults)), r.defaults["D"], r.defaults["solver"]
    (('solver', 'steps', 'label'), 16.0, 'euler')
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.continuous import PFGMPP
from flowforge.continuous.pfgm import NET_TIMES, ODES
from flowforge.core.choices import unknown_choice
from flowforge.core.time import LogitNormal
from flowforge.data import quantize
from flowforge.recipes.images import (
    IMAGE_FM_DEFAULTS,
    N_CLASSES,
    _balanced_labels,
    build_image_net,
    image_fm_data,
    sampled_image_recipe,
    score_image_samples,
)
from flowforge.recipes.registry import register

__all__ = ["build_image_pfgm", "image_pfgm_data", "PFGMImages"]

#: ODE solvers with a fixed number of steps (what ``--steps`` counts).
FIXED_STEP_SOLVERS = ("euler", "midpoint", "heun", "rk4")


def _dims(config: dict[str, Any]) -> float:
    d = float(config["D"])
    if math.isnan(d) or not d > 0:
        raise ValueError(
            f"D (PFGM++'s augmented dimensions) must be > 0, got {config['D']!r}; write e.g. --set D=16 "
            "(heavier tails for small D; --set D=inf is EDM)"
        )
    return d


def build_image_pfgm(config: dict[str, Any]) -> PFGMPP:
    """PFGM++ with EDM preconditioning around a class-conditional UNet, from a flat config."""
    d = _dims(config)
    if config["net_time"] not in NET_TIMES:
        raise unknown_choice("net_time", config["net_time"], NET_TIMES, hint="--set net_time=log_sigma")
    if config["ode"] not in ODES:
        raise unknown_choice("ode", config["ode"], ODES, hint="--set ode=sigma")
    if not config["p_std"] > 0:
        raise ValueError(
            f"p_std must be > 0 (EDM's P_std), got {config['p_std']}; write e.g. --set p_std=1.2"
        )
    clip = float(config["beta_clip"])
    return PFGMPP(
        build_image_net({**config, "net": "unet"}),
        D=d,
        sigma_data=float(config["sigma_data"]),
        # ln sigma ~ N(P_mean, P_std^2) is logit t ~ N(-P_mean, P_std^2), as t = 1 / (1 + sigma)
        time=LogitNormal(loc=-float(config["p_mean"]), scale=float(config["p_std"])),
        net_time=config["net_time"],
        sigma_min=float(config["sigma_min"]),
        sigma_max=float(config["sigma_max"]),
        rho=float(config["rho"]),
        beta_clip=clip if clip > 0 else None,
        event_shape=tuple(config["image_shape"]),
    )


def image_pfgm_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The image recipes' stream (dequantised pixels, labels), each label replaced by the null class
    ``N_CLASSES`` with probability ``label_dropout`` (drawn from the stream's generator)."""
    stream, updates = image_fm_data(config)
    p = float(config["label_dropout"]) if config["conditional"] else 0.0
    if not 0.0 <= p < 1.0:
        raise ValueError(f"label_dropout must lie in [0, 1), got {p}; write e.g. --set label_dropout=0.1")
    if p == 0.0:
        return stream, updates

    def dropped(batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = stream(batch_size, generator)
        drop = torch.rand(batch_size, generator=generator) < p
        return x, torch.where(drop, torch.full_like(y, N_CLASSES), y)

    return dropped, updates


class PFGMImages:
    """A PFGM++ run speaking integer pixels: ``sample`` returns ``uint8`` images.

    ``nfe`` is the number of denoiser (network) calls per sample of the last call.
    """

    def __init__(self, model: PFGMPP, levels: int, ode: str = "sigma") -> None:
        self.model, self.levels, self.ode = model, int(levels), ode
        self.nfe = 0

    def sample_unit(self, n: int, *, steps: int = 8, solver: str = "euler", **opts: Any) -> Tensor:
        """``(n, C, H, W)`` float samples in ``[-1, 1]`` (clamped), ``steps`` intervals of the EDM grid.

        ``opts``: ``cond={"y": labels}``, ``generator``, ``x0`` (unit-scale prior draws), ``dtype``.
        """
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise ValueError(f"--steps must be an integer >= 1 (intervals of the EDM grid), got {steps!r}")
        if solver not in FIXED_STEP_SOLVERS:
            raise unknown_choice("solver", solver, FIXED_STEP_SOLVERS, hint="--solver euler")
        gen = self.model.generator()
        calls = [0]
        denoiser = gen.denoiser

        def counted(x: Tensor, sigma: Tensor, **c: Tensor) -> Tensor:
            calls[0] += 1
            return denoiser(x, sigma, **c)

        gen.denoiser = counted
        x = gen.sample(n, steps=int(steps), solver=solver, ode=self.ode, **opts)
        self.nfe = calls[0]
        return x.clamp(-1.0, 1.0)

    def sample(self, n: int, **opts: Any) -> Tensor:
        """``(n, C, H, W)`` ``uint8`` images."""
        return quantize(self.sample_unit(n, **opts), self.levels)


def pfgm_generator(model: nn.Module, config: dict[str, Any]) -> PFGMImages:
    """The ``generator`` hook."""
    return PFGMImages(model, int(config["levels"]), str(config["ode"]))  # type: ignore[arg-type]


def _sample_options(config: dict[str, Any]) -> tuple[str, ...]:
    return ("solver", "steps", "label") if config.get("conditional") else ("solver", "steps")


def _sample_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    """Solver and EDM-grid steps (default the run's); classes 0..9 in turn unless ``--label C``."""
    out: dict[str, Any] = {
        "solver": given.get("solver", config["solver"]),
        "steps": int(given.get("steps", config["sample_steps"])),
    }
    if config.get("conditional"):
        out["cond"] = {"y": _balanced_labels(n, given.get("label"))}
    return out


def _evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Callable[[], Tensor],
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """``fd``/``acc``/``pr`` of ``n`` samples (i.i.d. prior draws, classes in turn) against the test split."""
    gen = pfgm_generator(model, config)
    n = int(n or config.get("eval_n", 5000))
    kwargs = _sample_kwargs(config, options, n)
    out = score_image_samples(gen, config, data, metrics, kwargs, n=n, seed=seed)
    return {
        **out,
        "solver": kwargs["solver"],
        "steps": kwargs["steps"],
        "nfe": gen.nfe,
        "D": float(config["D"]),
    }


_DROP = ("task", "net", "patch", "width", "depth", "seg_size", "path", "gamma_a", "time", "time_shift")
_DROP += ("prediction", "loss", "guidance", "guidance_schedule", "raag_alpha", "interval_lo", "interval_hi")
_COMMON = {k: v for k, v in IMAGE_FM_DEFAULTS.items() if k not in _DROP}
_COMMON.update(
    {
        "D": 16.0,  # benchmarks/few_step.py's PFGM_D_MAIN
        "sigma_data": 0.5,  # EDM's, for pixels in [-1, 1]
        "sigma_min": 0.002,
        "sigma_max": 80.0,  # EDM's for images (the 2-D benchmark's 20 is for standardised 2-D data)
        "rho": 7.0,
        "p_mean": -1.2,
        "p_std": 1.2,
        "net_time": "log_sigma",  # EDM's c_noise = ln(sigma) / 4
        "beta_clip": 0.0,  # 0: the exact kernel; the official code clips R_1 to [1e-3, 1 - 1e-3]
        "ode": "sigma",  # EDM's ODE in sigma; "t": the flowforge velocity (same Euler steps)
    }
)

_SETS: dict[str, dict[str, Any]] = {
    "mnist": {},
    # the digits recipe's layout and budget (8x8 images)
    "digits": {
        "dataset": "digits",
        "channels": 32,
        "mults": "1-2",
        "attention": "1",
        "steps": 1500,
        "batch_size": 128,
        "eval_n": 2000,
    },
}

for _name, _set in _SETS.items():
    register(
        sampled_image_recipe(
            f"{_name}-pfgm",
            f"PFGM++ (D=16, EDM preconditioning) on {_name} with the image recipes' UNet; "
            "Euler or Heun on EDM's grid",
            {**_COMMON, **_set},
            build=build_image_pfgm,
            data=image_pfgm_data,
            generator=pfgm_generator,
            sample_options=_sample_options,
            sample_kwargs=_sample_kwargs,
            evaluate=_evaluate,
        )
    )
