"""``mnist-meanflow``, ``digits-meanflow``, ``mnist-twinflow``, ``digits-twinflow``: one-step image models
trained from scratch (no teacher).

MeanFlow (Geng et al., 2025, arXiv 2505.13447) and TwinFlow (arXiv 2512.05150) on a class-conditional
UNet with a second time input (``UNet(two_times=True)``: it embeds the gap ``t - r``). They share the
image recipes' data (dequantised pixels in ``[-1, 1]``, labels), metrics (``fd``, ``acc``, ``pr`` in the
features of the classifier the package ships) and sample grids; ``flowforge sample RUN --steps K`` jumps
``K`` times (default 1), classes in turn unless ``--label C``. Guidance lives in training only (MeanFlow's
``omega``/``kappa``, TwinFlow's ``enhance``): sampling costs one network call a jump.

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("digits-meanflow")
    >>> r.sample_options(dict(r.defaults)), r.defaults["sample_steps"]
    (('steps', 'label'), 1)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from flowforge.continuous import MeanFlow, TwinFlow
from flowforge.core.choices import unknown_choice
from flowforge.core.objectives import SquaredError
from flowforge.data import quantize
from flowforge.recipes.images import (
    IMAGE_FM_DEFAULTS,
    _balanced_labels,
    build_image_net,
    sampled_image_recipe,
    score_image_samples,
)
from flowforge.recipes.one_step2d import meanflow_times
from flowforge.recipes.registry import register

__all__ = ["build_image_meanflow", "build_image_twinflow", "JumpImages"]


def _unet(config: dict[str, Any]) -> nn.Module:
    return build_image_net({"net": "unet", **config}, two_times=True)


def _label_dropout(config: dict[str, Any]) -> float:
    return float(config["label_dropout"]) if config["conditional"] else 0.0


def build_image_meanflow(config: dict[str, Any]) -> MeanFlow:
    """MeanFlow on a two-time UNet: logit-normal times, a ``diagonal`` share of ``r = t`` rows, the
    adaptive weight ``1/(l + c)^p``, optional training guidance ``omega``/``kappa``."""
    return MeanFlow(
        _unet(config),
        times=meanflow_times(config),
        p=config["adaptive_p"],
        c=config["adaptive_c"],
        label_dropout=_label_dropout(config),
        omega=config["omega"],
        kappa=config["kappa"],
        event_shape=tuple(config["image_shape"]),
    )


#: TwinFlow's distances by name: ``mse`` (the official MNIST tutorial's L2), ``barron`` (its default).
TWIN_DISTANCES: dict[str, Callable[[], Any]] = {"mse": SquaredError, "barron": lambda: None}


def _twin_distance(config: dict[str, Any]) -> Any:
    if config["loss"] not in TWIN_DISTANCES:
        raise unknown_choice("loss", config["loss"], TWIN_DISTANCES, hint="--set loss=mse")
    return TWIN_DISTANCES[config["loss"]]()


def build_image_twinflow(config: dict[str, Any]) -> TwinFlow:
    """TwinFlow on a two-time UNet with the official MNIST tutorial's L2 distance and ``enhance``."""
    return TwinFlow(
        _unet(config),
        enhance=config["enhance"],
        distance=_twin_distance(config),
        label_dropout=_label_dropout(config),
        event_shape=tuple(config["image_shape"]),
    )


class JumpImages:
    """A jump-sampled image run speaking integer pixels: ``sample`` returns ``uint8`` images.

    ``nfe`` is the number of network calls per sample of the last call (one a jump).
    """

    def __init__(self, model: nn.Module, levels: int) -> None:
        self.model, self.levels = model, int(levels)
        self.nfe = 0

    def sample(self, n: int, *, steps: int = 1, **opts: Any) -> Tensor:
        """``(n, C, H, W)`` uint8 images after ``steps`` jumps (``cond={"y": labels}`` for classes)."""
        x = self.model.generator().sample(n, steps=int(steps), **opts)
        self.nfe = int(steps)
        return quantize(x.clamp(-1.0, 1.0), self.levels)


def jump_generator(model: nn.Module, config: dict[str, Any]) -> JumpImages:
    """The ``generator`` hook."""
    return JumpImages(model, int(config["levels"]))


def _sample_options(config: dict[str, Any]) -> tuple[str, ...]:
    return ("steps", "label") if config.get("conditional") else ("steps",)


def _sample_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    """Jumps (``--steps``, default the run's ``sample_steps``); classes 0..9 in turn unless ``--label C``."""
    steps = int(given.get("steps", config.get("sample_steps", 1)))
    if steps < 1:
        raise ValueError(f"--steps must be >= 1 (network calls a sample), got {steps}")
    out: dict[str, Any] = {"steps": steps}
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
    """``fd``/``acc``/``pr`` of ``n`` samples (i.i.d. noise, classes in turn) against the test split."""
    gen = jump_generator(model, config)
    n = int(n or config.get("eval_n", 5000))
    kwargs = _sample_kwargs(config, options, n)
    out = score_image_samples(gen, config, data, metrics, kwargs, n=n, seed=seed)
    return {**out, "steps": kwargs["steps"], "nfe": gen.nfe}


_COMMON = {
    k: v
    for k, v in IMAGE_FM_DEFAULTS.items()
    if k
    not in (
        "task",
        "net",
        "patch",
        "width",
        "depth",
        "seg_size",
        "path",
        "gamma_a",
        "time",
        "time_shift",
        "prediction",
        "solver",
        "guidance",
        "guidance_schedule",
        "raag_alpha",
        "interval_lo",
        "interval_hi",
    )
}
_COMMON["sample_steps"] = 1
_COMMON["label_dropout"] = 0.0  # guidance, if any, is folded into training (set it with omega/enhance)

_METHODS: dict[str, tuple[Callable[[dict[str, Any]], nn.Module], dict[str, Any], str]] = {
    "meanflow": (
        build_image_meanflow,
        # the paper's ImageNet sampler in our direction (logit-normal(0.4, 1)), 75% r = t, p = 1, c = 1e-2
        {
            "time": "logit-normal",
            "time_loc": 0.4,
            "time_scale": 1.0,
            "diagonal": 0.75,
            "adaptive_p": 1.0,
            "adaptive_c": 1e-2,
            "omega": 1.0,
            "kappa": 0.0,
        },
        "MeanFlow (average velocity by the MeanFlow identity, JVP) on {name}; 1-step sampling",
    ),
    "twinflow": (
        build_image_twinflow,
        {"enhance": 0.0, "loss": "mse"},
        "TwinFlow (one net, real and fake branches, no teacher) on {name}; 1-step sampling",
    ),
}
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

for _method, (_build, _extra, _summary) in _METHODS.items():
    for _name, _set in _SETS.items():
        register(
            sampled_image_recipe(
                f"{_name}-{_method}",
                _summary.format(name=_name),
                {**_COMMON, **_extra, **_set},
                build=_build,
                generator=jump_generator,
                sample_options=_sample_options,
                sample_kwargs=_sample_kwargs,
                evaluate=_evaluate,
                default_metrics=("fd", "acc"),
            )
        )
