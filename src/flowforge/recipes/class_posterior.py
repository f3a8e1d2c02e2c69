r"""``mnist-class-posterior``: the class half of two-stage inpainting, ``p_phi(y | kept pixels, mask)``.

A :class:`~flowforge.inverse.ClassPosterior` (a :class:`~flowforge.nn.SmallCNN` on the same two extra
channels the inpainting UNet sees) trained by cross-entropy on training images under random masks. A
class-conditional inpainting run (``flowforge train mnist-inpaint --set conditional=true``) draws its class
from it with ``--set class_from=RUN`` (:func:`flowforge.recipes.images.inpaint_cond`): ``y ~ p(y | kept)``,
then the fill ``~ p(hole | kept, y)``. ``flowforge eval RUN`` scores it on test images with a random half
hidden (the sides of the inpainting evaluation): ``acc`` (its most likely class), ``p_true``
(``E[p(y_true | kept)]``, the class accuracy of a two-stage sampler whose fills always show their class)
and ``nll``.

Example:
    >>> from flowforge.recipes import get_recipe
    >>> get_recipe("mnist-class-posterior").defaults["mask_kinds"]
    'half-half-box-strokes'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowforge.core import masks as M
from flowforge.data import dequantize
from flowforge.inverse import ClassPosterior
from flowforge.nn import SmallCNN
from flowforge.recipes.images import N_CLASSES, bin_centres, image_set, mask_kinds
from flowforge.recipes.registry import Recipe, register

__all__ = ["build_class_posterior", "class_posterior_data", "class_posterior_evaluate"]


def build_class_posterior(config: dict[str, Any]) -> ClassPosterior:
    """A ``SmallCNN`` on ``C + 1`` channels (kept pixels and mask) as ``p(y | extra)``."""
    c, h = int(config["image_shape"][0]), int(config["image_shape"][1])
    net = SmallCNN(in_channels=c + 1, image_size=h, width=int(config["width"]), feature_dim=256)
    return ClassPosterior(net, N_CLASSES)


def class_posterior_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Dequantised training images under random masks of ``mask_kinds``: ``{"extra", "y"}`` batches."""
    s = image_set(config, "train")
    kinds = mask_kinds(config)

    def stream(batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        idx = torch.randint(0, len(s.x), (batch_size,), generator=generator)
        xb = dequantize(s.x[idx], s.levels, generator=generator)
        mask = M.random_masks(batch_size, xb.shape[-2], xb.shape[-1], generator=generator, kinds=kinds)
        return {"extra": M.inpaint_extra(xb, mask), "y": s.y[idx]}

    return stream, {"image_shape": list(s.x.shape[1:]), "levels": s.levels, "n_train": len(s.x)}


class _NoSamples:
    """A class-posterior run classifies; it has nothing to sample."""

    def sample(self, n: int, **kwargs: Any) -> Tensor:
        raise ValueError(
            "a mnist-class-posterior run classifies and does not generate; use it to draw the class of a "
            "class-conditional inpainting run: --set class_from=RUN"
        )


def class_posterior_evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Callable[[], Tensor],
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """``acc``, ``p_true``, ``nll`` on the first ``n`` test images, a random side of each hidden (drawn from
    ``Generator().manual_seed(seed)`` first, as the inpainting evaluation does)."""
    s = image_set(config, "test")
    n = min(int(n or config["eval_n"]), len(s.x))
    if n < 1:
        raise ValueError(
            f"nothing to evaluate: the run's eval_n is {config['eval_n']}; pass --n 10000 (test images to score)"
        )
    x, y = s.x[:n], s.y[:n]
    g = torch.Generator().manual_seed(seed)
    sides = torch.randint(0, 4, (n,), generator=g)
    mask = torch.cat([M.half_mask(1, x.shape[-2], x.shape[-1], M.SIDES[int(k)]) for k in sides])
    model.eval()
    with torch.no_grad():
        logits = torch.cat(
            [
                model(M.inpaint_extra(bin_centres(xc, s.levels), mc))
                for xc, mc in zip(x.split(1000), mask.split(1000), strict=True)
            ]
        )
    p = logits.softmax(-1)
    res = {
        "acc": float((p.argmax(-1) == y).float().mean()),
        "p_true": float(p.gather(1, y[:, None]).mean()),
        "nll": float(F.cross_entropy(logits, y)),
        "n": n,
    }
    return {k: v for k, v in res.items() if k in metrics or k == "n"}


register(
    Recipe(
        name="mnist-class-posterior",
        summary="p(y | kept pixels, mask) for two-stage (class, then fill) inpainting; a SmallCNN classifier",
        defaults={
            "dataset": "mnist",
            "data_dir": "~/.cache/flowforge/mnist",
            "download": True,
            "mask_kinds": "half-half-box-strokes",
            "width": 32,
            "steps": 3000,
            "batch_size": 128,
            "lr": 1e-3,
            "warmup": 100,
            "grad_clip": 1.0,
            "ema_decay": 0.999,
            "threads": 0,
            "device": "",
            "eval_n": 10_000,
        },
        build=build_class_posterior,
        data=class_posterior_data,
        generator=lambda model, config: _NoSamples(),
        evaluate=class_posterior_evaluate,
        metrics=("acc", "p_true", "nll"),
        eval_options=lambda config: ("n",),
        kind="image",
    )
)
