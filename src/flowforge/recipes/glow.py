"""Glow recipe on images: ``digits-glow`` (Kingma & Dhariwal, 2018), measured in bits per dimension.

The set-up of ``digits-tarflow`` (:mod:`flowforge.recipes.normalizing`) with a
:class:`~flowforge.normalizing.Glow` in place of the TARFlow: the training stream dequantises the
integer images uniformly into ``[-1, 1]``, so ``eval`` reports on the test split an upper bound of
the discrete NLL in nats per image (``nll``) and in bits per pixel (``bpd``). Glow has no sampling
options; ``flowforge sample`` returns ``uint8`` images. ``--set flow_levels=L flow_steps=K hidden=H`` sizes
the model (``steps`` is the number of training steps and ``levels`` the
dataset's grey levels, set from the data).

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("digits-glow")
    >>> r.metrics, r.sample_options({})
    (('nll', 'bpd'), ())
"""

from __future__ import annotations

from typing import Any

from flowforge.normalizing import Glow
from flowforge.recipes.common import image_picture
from flowforge.recipes.images import load_images
from flowforge.recipes.normalizing import (
    image_data,
    image_eval_options,
    image_evaluate,
    image_generator,
    image_reference,
)
from flowforge.recipes.registry import Recipe, register

__all__ = ["build_glow"]


def build_glow(config: dict[str, Any]) -> Glow:
    """A :class:`~flowforge.normalizing.Glow` on ``(C, H, W)`` images from a flat config."""
    if config["conditional"]:
        raise ValueError(
            "digits-glow is unconditional; drop --set conditional=true (digits-tarflow takes it)"
        )
    return Glow(
        image_shape=tuple(config["image_shape"]),
        levels=config["flow_levels"],
        steps=config["flow_steps"],
        hidden=config["hidden"],
    )


register(
    Recipe(
        name="digits-glow",
        summary="Glow on sklearn's 8x8 digits (2 levels x 8 steps, hidden 64), bits per dimension",
        defaults={
            "dataset": "digits",
            "data_dir": "~/.cache/flowforge/mnist",
            "download": True,
            "conditional": False,
            "flow_levels": 2,
            "flow_steps": 8,
            "hidden": 64,
            "lr": 1e-3,
            "warmup": 200,
            "grad_clip": 1.0,
            "ema_decay": 0.999,
            "threads": 1,
            "device": "",
            "steps": 4000,
            "batch_size": 128,
        },
        build=build_glow,
        data=image_data,
        generator=image_generator,
        eval_options=image_eval_options,
        reference=image_reference,
        load_data=load_images,
        evaluate=image_evaluate,
        metrics=("nll", "bpd"),
        picture=image_picture,
        kind="image",
    )
)
