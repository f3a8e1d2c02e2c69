"""``mnist-blockwise``, ``digits-blockwise``: class-conditional blockwise flow matching on images.

Blockwise flow matching (Park et al., 2025, arXiv 2510.21167; :mod:`flowforge.continuous.blockwise`)
cuts time into ``K`` equal segments (``--set segments=K``, default 4) and gives each its own UNet; one
sampling step costs one small network. Each segment UNet is the image recipes' UNet
(:func:`~flowforge.recipes.images.build_image_net`) at half the channels (``channels`` is the width of
ONE segment net): parameters grow with the square of the width, so ``K = 4`` nets of 8 channels hold
1.04 M parameters against the 1.03 M of the ``mnist`` recipe's one 16-channel UNet (digits: 4 x 16
channels against one 32-channel UNet), and one evaluation costs a quarter of its FLOPs.

Data, labels, label dropout (0.1), training budget (steps, batch, lr, EMA) and metrics are the ``mnist``
/ ``digits`` recipes'. Sampling: ``--steps S`` solver steps in all, ``S / K`` on a uniform grid of each
segment with that segment's network only, so ``S`` must be a multiple of ``K`` (an NFE below ``K``
is not possible); Euler by default (``--solver``). ``eval`` reports ``nfe`` (network calls per sample,
all segments) and ``nfe_flops``: the calls weighted by each segment net's FLOPs relative to one call of
the single-net recipe's UNet (``reference_channels``: 16 for MNIST, 32 for digits), i.e. the cost in
teacher evaluations.

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("digits-blockwise")
    >>> r.sample_options(dict(r.defaults)), r.defaults["segments"], r.defaults["sample_steps"]
    (('solver', 'steps', 'label'), 4, 8)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.continuous import BlockwiseFlowMatching
from flowforge.core.choices import unknown_choice
from flowforge.data import quantize
from flowforge.nn.flops import flops_per_eval
from flowforge.recipes.images import (
    IMAGE_FM_DEFAULTS,
    N_CLASSES,
    _balanced_labels,
    build_image_net,
    sampled_image_recipe,
    score_image_samples,
)
from flowforge.recipes.registry import register

__all__ = ["build_image_blockwise", "BlockwiseImages", "FIXED_STEP_SOLVERS", "segment_count"]

#: ODE solvers with a fixed number of steps (what ``--steps`` counts).
FIXED_STEP_SOLVERS = ("euler", "midpoint", "heun", "rk4")


def segment_count(config: dict[str, Any]) -> int:
    """``K``, the run's number of segments, checked (an integer >= 1)."""
    k = config["segments"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"segments must be an integer K >= 1 (time segments, one UNet each), got {k!r}; "
                         "write e.g. --set segments=4")  # fmt: skip
    return k


def _check_steps(steps: int, k: int, flag: str = "--steps ") -> int:
    """Total solver steps ``S``: a positive multiple of ``K`` (``S / K`` in every segment)."""
    if steps < k or steps % k:
        lo = max(k, (steps // k) * k)
        raise ValueError(
            f"{flag}{steps} does not split over segments={k}: blockwise sampling takes the same number "
            f"of steps in every segment, so the steps must be a multiple of {k} (an NFE below {k} is not "
            f"possible); write e.g. {flag}{lo} or {flag}{lo + k}"
        )
    return steps


def build_image_blockwise(config: dict[str, Any]) -> BlockwiseFlowMatching:
    """``K`` segment UNets (``channels`` each) trained jointly on a stratified batch, label dropout."""
    k = segment_count(config)
    _check_steps(int(config["sample_steps"]), k, "--set sample_steps=")
    cfg = {"net": "unet", **config}
    return BlockwiseFlowMatching.uniform(
        k,
        lambda i: build_image_net(cfg),
        label_dropout=float(config["label_dropout"]) if config["conditional"] else 0.0,
        null_label=N_CLASSES if config["conditional"] else None,  # the UNets' null class
        event_shape=tuple(config["image_shape"]),
    )


class BlockwiseImages:
    """A blockwise run speaking integer pixels: ``sample`` returns ``uint8`` images.

    After a call, ``nfe`` is the number of network calls per sample (all segments), ``nfe_per_segment``
    the calls of each segment, and ``flops_per_sample`` the FLOPs of one sample (each segment's calls
    times its network's FLOPs per evaluation, :func:`flowforge.nn.flops.flops_per_eval`).
    """

    def __init__(self, model: BlockwiseFlowMatching, levels: int) -> None:
        self.model, self.levels = model, int(levels)
        self.nfe, self.nfe_per_segment, self.flops_per_sample = 0, (), 0.0

    def sample_unit(self, n: int, *, steps: int = 8, solver: str = "euler", **opts: Any) -> Tensor:
        """``(n, C, H, W)`` float samples in ``[-1, 1]`` (clamped); ``steps`` solver steps in all.

        ``opts``: ``cond={"y": labels}``, ``generator``, ``x0`` (start from this noise).
        """
        k = self.model.velocity_net.num_segments
        _check_steps(int(steps), k)
        if solver not in FIXED_STEP_SOLVERS:
            raise unknown_choice("solver", solver, FIXED_STEP_SOLVERS, hint="--solver euler")
        x, cost = self.model.generator().sample(
            n, steps=int(steps) // k, solver=solver, return_cost=True, **opts
        )
        self.nfe_per_segment = cost.nfe
        self.nfe, self.flops_per_sample = sum(cost.nfe), cost.flops_per_sample
        return x.clamp(-1.0, 1.0)

    def sample(self, n: int, **opts: Any) -> Tensor:
        """``(n, C, H, W)`` ``uint8`` images."""
        return quantize(self.sample_unit(n, **opts), self.levels)


def blockwise_generator(model: nn.Module, config: dict[str, Any]) -> BlockwiseImages:
    """The ``generator`` hook."""
    return BlockwiseImages(model, int(config["levels"]))  # type: ignore[arg-type]


def _sample_options(config: dict[str, Any]) -> tuple[str, ...]:
    return ("solver", "steps", "label") if config.get("conditional") else ("solver", "steps")


def _sample_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    """Solver and total steps (default the run's); classes 0..9 in turn unless ``--label C``."""
    out: dict[str, Any] = {
        "solver": given.get("solver", config["solver"]),
        "steps": _check_steps(int(given.get("steps", config["sample_steps"])), segment_count(config)),
    }
    if config.get("conditional"):
        out["cond"] = {"y": _balanced_labels(n, given.get("label"))}
    return out


def reference_flops(config: dict[str, Any]) -> float:
    """FLOPs of one evaluation (per sample) of the single-net recipe's UNet (``reference_channels``)."""
    net = build_image_net({**config, "net": "unet", "channels": int(config["reference_channels"])})
    x = torch.zeros(1, *config["image_shape"])
    cond = {"y": torch.zeros(1, dtype=torch.long)} if config["conditional"] else {}
    return flops_per_eval(net, x, torch.zeros(1), **cond)


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
    """``fd``/``acc``/``pr`` of ``n`` samples (i.i.d. noise, classes in turn) against the test split, with
    ``nfe`` and ``nfe_flops`` (cost in evaluations of the single-net recipe's UNet)."""
    gen = blockwise_generator(model, config)
    n = int(n or config.get("eval_n", 5000))
    kwargs = _sample_kwargs(config, options, n)
    out = score_image_samples(gen, config, data, metrics, kwargs, n=n, seed=seed)
    params = sum(p.numel() for p in model.parameters())
    ref = build_image_net({**config, "net": "unet", "channels": int(config["reference_channels"])})
    return {
        **out,
        "solver": kwargs["solver"],
        "steps": kwargs["steps"],
        "segments": segment_count(config),
        "nfe": gen.nfe,
        "nfe_per_segment": list(gen.nfe_per_segment),
        "nfe_flops": gen.flops_per_sample / reference_flops(config),
        "params": params,
        "reference_params": sum(p.numel() for p in ref.parameters()),
    }


_DROP = ("task", "net", "patch", "width", "depth", "seg_size", "path", "gamma_a", "time", "time_shift")
_DROP += ("prediction", "loss", "guidance", "guidance_schedule", "raag_alpha", "interval_lo", "interval_hi")
_COMMON = {k: v for k, v in IMAGE_FM_DEFAULTS.items() if k not in _DROP}
_COMMON["segments"] = 4

_SETS: dict[str, dict[str, Any]] = {
    # K = 4 UNets of 8 channels: 4 x 261,193 = 1,044,772 parameters against mnist's 1,034,641
    "mnist": {"channels": 8, "reference_channels": 16},
    # the digits recipe's layout and budget (8x8 images); 4 x 16 channels against one 32-channel UNet
    "digits": {
        "dataset": "digits",
        "channels": 16,
        "reference_channels": 32,
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
            f"{_name}-blockwise",
            f"blockwise flow matching on {_name}: K=4 time segments, one small UNet each "
            "(together the single UNet's parameters); Euler, steps a multiple of K",
            {**_COMMON, **_set},
            build=build_image_blockwise,
            generator=blockwise_generator,
            sample_options=_sample_options,
            sample_kwargs=_sample_kwargs,
            evaluate=_evaluate,
        )
    )
