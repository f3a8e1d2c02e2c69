"""``mnist-symmflow`` and ``digits-symmflow``: symmetrical flow matching (Caetano et al., 2025).

One UNet on the joint state (image, label code as constant channels): the image flows noise -> data while
the label code flows data -> noise, so integrating forward generates an image of a class and one
backward step from a real image classifies it. ``eval`` reports both: ``fd``/``acc``/``pr`` of the
generations and ``cls_acc``, the one-step classification accuracy on the test split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.continuous import SymmFlow
from flowforge.core.time import Uniform, WithEndpoint
from flowforge.data import quantize
from flowforge.nn import UNet
from flowforge.recipes.common import image_picture, sample_grid_monitor
from flowforge.recipes.images import (
    IMAGE_FM_DEFAULTS,
    N_CLASSES,
    _balanced_labels,
    _ints,
    bin_centres,
    check_images,
    image_fm_data,
    image_metrics_of,
    image_reference,
    image_set,
    load_images,
    sample_in_chunks,
)
from flowforge.recipes.registry import Recipe, register

__all__ = ["build_symmflow", "SymmFlowImages"]


def build_symmflow(config: dict[str, Any]) -> SymmFlow:
    """A SymmFlow whose UNet carries the image and ``K = 10`` label-code channels in and out."""
    c = int(config["image_shape"][0])
    k = N_CLASSES if config["code"] == "onehot" else 1
    net = UNet(
        in_channels=c + k,
        out_channels=c + k,
        channels=config["channels"],
        mults=_ints(config["mults"]),
        blocks=config["blocks"],
        attention=_ints(config["attention"]),
        heads=config["heads"],
        dropout=config["dropout"],
    )
    return SymmFlow(
        net,
        tuple(config["image_shape"]),
        N_CLASSES,
        code=config["code"],
        label_scale=config["label_scale"],
        label_noise=config["label_noise"],
        image_weight=config["image_weight"],
        time=WithEndpoint(Uniform(), 1.0, float(config.get("classify_fraction", 0.0))),
    )


class SymmFlowImages:
    """A SymmFlow run speaking integer pixels: ``sample`` returns ``uint8`` images, ``classify`` labels."""

    def __init__(self, flow: SymmFlow, levels: int) -> None:
        self.flow, self.levels = flow, int(levels)

    def sample(self, n: int, *, cond: dict[str, Tensor] | None = None, **opts: Any) -> Tensor:
        """``(n, C, H, W)`` uint8 images of the classes ``cond["y"]`` (uniform classes when omitted)."""
        opts.pop("qmc", None)
        x = self.flow.generator().sample(n, cond=cond, **opts)
        return quantize(x.clamp(-1, 1), self.levels)

    def classify(self, images: Tensor, *, generator: torch.Generator | None = None, steps: int = 1) -> Tensor:
        """Predicted labels ``(N,)`` of integer images ``(N, C, H, W)`` by ``steps`` backward steps."""
        with torch.no_grad():
            return torch.cat(
                [
                    self.flow.classify(bin_centres(c, self.levels), generator=generator, steps=steps).argmax(
                        1
                    )
                    for c in images.split(500)
                ]
            )


def symmflow_generator(model: nn.Module, config: dict[str, Any]) -> SymmFlowImages:
    """The ``generator`` hook of SymmFlow runs."""
    return SymmFlowImages(model, int(config["levels"]))


def symmflow_sample_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    """Solver and steps; classes 0..9 in turn unless ``--label C``."""
    return {
        "solver": given.get("solver", config.get("solver", "heun")),
        "steps": int(given.get("steps", config.get("sample_steps", 10))),
        "cond": {"y": _balanced_labels(n, given.get("label"))},
    }


def symmflow_evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Callable[[], Tensor],
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Generation metrics (``fd``, ``acc``, ``pr``) and ``cls_acc`` (one backward step on the test split)."""
    gen = symmflow_generator(model, config)
    n = int(n or config.get("eval_n", 5000))
    out: dict[str, Any] = {}
    g = torch.Generator().manual_seed(seed)
    if "cls_acc" in metrics:
        test = image_set(config, "test")
        pred = gen.classify(test.x, generator=g, steps=int(config["classify_steps"]))
        out["cls_acc"] = float((pred == test.y).float().mean())
        out["classify_steps"] = int(config["classify_steps"])
    rest = [m for m in metrics if m != "cls_acc"]
    if rest:
        kwargs = symmflow_sample_kwargs(config, options, n)
        labels = kwargs.pop("cond")["y"]
        x = sample_in_chunks(gen, n, {"y": labels}, g, **kwargs)
        ref = check_images(data(), config)
        out.update(image_metrics_of(x, ref, config, rest, labels=labels if "acc" in rest else None))
        out.update(n=n, solver=kwargs["solver"], steps=kwargs["steps"])
    return out


def _symmflow_recipe(name: str, summary: str, defaults: dict[str, Any]) -> Recipe:
    return Recipe(
        name=name,
        summary=summary,
        defaults=defaults,
        build=build_symmflow,
        data=image_fm_data,
        generator=symmflow_generator,
        sample_options=lambda config: ("solver", "steps", "label"),
        sample_kwargs=symmflow_sample_kwargs,
        eval_options=lambda config: ("data", "n", "solver", "steps"),
        reference=image_reference,
        load_data=load_images,
        evaluate=symmflow_evaluate,
        metrics=("fd", "acc", "pr", "cls_acc"),
        monitor=sample_grid_monitor,
        picture=image_picture,
        kind="image",
    )


_SYMM = {
    **{k: v for k, v in IMAGE_FM_DEFAULTS.items() if k not in ("net", "patch", "width", "depth", "seg_size")},
    "label_dropout": 0.0,
    "code": "onehot",
    "label_scale": 2.0,
    "label_noise": 0.0,
    "image_weight": 0.7,
    "classify_steps": 1,
    "classify_fraction": 0.0,
}
for _key in ("guidance", "guidance_schedule", "raag_alpha", "interval_lo", "interval_hi", "path", "gamma_a"):
    _SYMM.pop(_key)  # SymmFlow has its own path, time sampler and loss, and no guidance
for _key in ("time", "time_shift", "prediction", "loss"):
    _SYMM.pop(_key)

register(
    _symmflow_recipe(
        "mnist-symmflow",
        "SymmFlow on MNIST: one UNet generates digits of a class and classifies digits in one step",
        {**_SYMM, "channels": 32},  # 16 channels did not learn to classify (0.19; BENCHMARKS 12.6)
    )
)
register(
    _symmflow_recipe(
        "digits-symmflow",
        "SymmFlow on sklearn's 8x8 digits (generation and one-step classification)",
        {
            **_SYMM,
            "dataset": "digits",
            "channels": 32,  # at 16 channels (GroupNorm over 2 channels a group) it does not learn to classify
            "mults": "1-2",
            "attention": "1",
            "steps": 1500,
            "batch_size": 128,
            "eval_n": 2000,
        },
    )
)
