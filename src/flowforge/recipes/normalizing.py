"""Normalizing-flow recipes: 2-D densities (``moons-nsf``, ``moons-tarflow``) and images (``digits-tarflow``,
``mnist-tarflow``) measured in bits per dimension.

Images are modelled after uniform dequantisation into ``[-1, 1]`` (TARFlow's set-up for likelihood
models, ``noise_type uniform``), so the reported NLL is an upper bound on the discrete NLL of the
integer images, in nats per image, and ``bpd`` is that bound in bits per pixel.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.data import dequantization_log_det, dequantize, load_digits, load_mnist, quantize
from flowforge.metrics import bits_per_dim
from flowforge.normalizing import MAF, NSF, RealNVP, TARFlow
from flowforge.recipes.flows2d import flow_data, toy_reference
from flowforge.recipes.registry import Recipe, register

__all__ = [
    "FLOWS",
    "build_density_flow",
    "build_image_flow",
    "image_data",
    "image_reference",
    "ImageGenerator",
]

_COMMON_2D: dict[str, Any] = {
    "dataset": "moons",
    "noise": None,
    "data_file": "",
    "standardize": True,
    "steps": 5000,
    "batch_size": 256,
    "lr": 1e-3,
    "warmup": 200,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "threads": 1,
}


def _nsf_coupling(dim: int, **kwargs: Any) -> nn.Module:
    return NSF(dim, coupling=True, **kwargs)


#: Vector flows by name (``nsf``: autoregressive splines, one pass for density, D for sampling;
#: ``nsf-coupling``: coupling splines, one pass both ways).
FLOWS: dict[str, Any] = {"nsf": NSF, "nsf-coupling": _nsf_coupling, "maf": MAF, "realnvp": RealNVP}


def build_density_flow(config: dict[str, Any]) -> nn.Module:
    """A vector flow from a flat config: ``flow`` is ``tarflow`` or one of :data:`FLOWS`."""
    dim, name = int(config["dim"]), config["flow"]
    if name == "tarflow":
        return TARFlow(
            dim=dim,
            token_dim=config.get("token_dim", 1),
            blocks=config["blocks"],
            width=config["width"],
            layers=config["layers"],
            head_dim=config["head_dim"],
            sos=config.get("sos", True),
            noise_std=0.0,
        )
    if name not in FLOWS:
        raise ValueError(f"unknown flow {name!r}; choose one of tarflow, {', '.join(FLOWS)}")
    hidden = (config["hidden"],) * config["hidden_layers"]
    kwargs: dict[str, Any] = {"transforms": config["transforms"], "hidden": hidden}
    if name.startswith("nsf"):
        kwargs.update(bins=config["bins"], bound=config["bound"])
    return FLOWS[name](dim, **kwargs)


register(
    Recipe(
        name="moons-nsf",
        summary="neural spline flow (5 autoregressive RQ-spline layers) on two moons, by maximum likelihood",
        defaults={
            **_COMMON_2D,
            "flow": "nsf",
            "transforms": 5,
            "hidden": 64,
            "hidden_layers": 2,
            "bins": 8,
            "bound": 5.0,
        },
        build=build_density_flow,
        data=flow_data,
        kind="normalizing",
        reference=toy_reference,
        metrics=("nll", "bpd", "swd", "w2", "mmd", "energy", "ess", "logz"),
    )
)
register(
    Recipe(
        name="moons-tarflow",
        summary="TARFlow (causal-transformer affine autoregressive flow) on two moons",
        defaults={
            **_COMMON_2D,
            "flow": "tarflow",
            "blocks": 8,
            "width": 64,
            "layers": 2,
            "head_dim": 32,
            "sos": True,
        },
        build=build_density_flow,
        data=flow_data,
        kind="normalizing",
        reference=toy_reference,
        metrics=("nll", "bpd", "swd", "w2", "mmd", "energy", "ess", "logz"),
    )
)


# -- images --------------------------------------------------------------------------------------


def _images(config: dict[str, Any], split: str):
    if config["dataset"] == "digits":
        return load_digits(split)
    if config["dataset"] == "mnist":
        return load_mnist(Path(config["data_dir"]).expanduser(), split, download=config["download"])
    raise ValueError(f"unknown image dataset {config['dataset']!r}; choose digits or mnist")


def build_image_flow(config: dict[str, Any]) -> TARFlow:
    """A TARFlow on ``(C, H, W)`` images from a flat config."""
    # one depth for every block, or STARFlow's deep-shallow layout from the CLI: --set layers=2-2-2-8
    depths = [int(v) for v in str(config["layers"]).replace("-", " ").split()]
    layers: int | list[int] = depths[0] if len(depths) == 1 else depths
    return TARFlow(
        image_shape=tuple(config["image_shape"]),
        patch=config["patch"],
        blocks=config["blocks"],
        width=config["width"],
        layers=layers,
        head_dim=config["head_dim"],
        num_classes=10 if config["conditional"] else None,
        label_dropout=config["label_dropout"],
        sos=config["starflow"],
        softplus=config["starflow"],
        soft_clip=4.0 if config["starflow"] else None,
        noise_std=0.0,  # the data stream dequantises; the model sees [-1, 1] densities
    )


def image_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """An endless stream of freshly dequantised training images (with labels if ``conditional``)."""
    s = _images(config, "train")
    x, y, levels = s.x, s.y, s.levels

    def stream(batch_size: int, generator: torch.Generator) -> Any:
        idx = torch.randint(0, len(x), (batch_size,), generator=generator)
        xb = dequantize(x[idx], levels, generator=generator)
        return (xb, y[idx]) if config["conditional"] else xb

    return stream, {
        "image_shape": list(x.shape[1:]),
        "levels": levels,
        "dim": int(math.prod(x.shape[1:])),
        "n_train": len(x),
    }


def image_reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    """The recipe's test images, ``(N, C, H, W)`` integers (all of them: ``n`` is ignored)."""
    return _images(config, "test").x


class ImageGenerator:
    """A TARFlow on dequantised images, speaking integer pixels: ``sample`` returns ``uint8`` images."""

    def __init__(self, flow: TARFlow, levels: int) -> None:
        self.flow, self.levels = flow, levels
        self.dim = int(math.prod(flow.event_shape))

    def sample(self, n: int, **opts: Any) -> Tensor:
        """``(n, C, H, W)`` ``uint8`` images."""
        return quantize(self.flow.sample(n, **opts), self.levels)

    def log_prob(self, x: Tensor, *, generator: torch.Generator | None = None, **cond: Tensor) -> Tensor:
        """Dequantised log-density on the pixel scale, ``(B,)``: a lower bound of ``log P(x)``."""
        y = dequantize(x, self.levels, generator=generator)
        return self.flow.log_prob(y, **cond) + dequantization_log_det(self.dim, self.levels)


def _as_images(x: Tensor, config: dict[str, Any]) -> Tensor:
    shape, levels = tuple(config["image_shape"]), int(config["levels"])
    if x.dim() == 2 and x.shape[1] == math.prod(shape):
        x = x.reshape(len(x), *shape)
    elif x.dim() == 3 and shape[0] == 1:
        x = x.unsqueeze(1)
    if tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"images of shape {tuple(x.shape)} do not match the run's {shape}; give (N, {shape})"
        )
    xf = x.double()
    if not torch.equal(xf, xf.round()) or xf.min() < 0 or xf.max() > levels - 1:
        raise ValueError(
            f"eval images must be integers in [0, {levels - 1}] (the raw pixels); got values in "
            f"[{float(xf.min()):g}, {float(xf.max()):g}]"
        )
    return x.to(torch.uint8)


def image_evaluate(
    run_dir: Path, config: dict[str, Any], x: Tensor, metrics: list[str], *, seed: int = 0, **_: Any
) -> dict[str, float]:
    """``nll`` (nats per image, dequantised bound) and ``bpd`` of integer images under a run.

    A class-conditional run is scored with the null label, i.e. as the unconditional model that its
    label dropout trains (``p(x)``, comparable with unconditional runs), not as ``p(x | y)``.
    """
    from flowforge.recipes.runs import load_run

    flow, config = load_run(run_dir)
    x = _as_images(x, config)
    gen = ImageGenerator(flow, int(config["levels"]))
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for chunk in torch.split(x, 500):
            total += float(gen.log_prob(chunk, generator=g).double().sum())
    nll = -total / len(x)
    out = {}
    if "nll" in metrics:
        out["nll"] = nll
    if "bpd" in metrics:
        out["bpd"] = bits_per_dim(nll, gen.dim)
    return out


_IMAGE_COMMON: dict[str, Any] = {
    "data_dir": "~/.cache/flowforge/mnist",
    "download": True,
    "conditional": False,
    "label_dropout": 0.1,
    "starflow": False,
    "head_dim": 32,
    "lr": 1e-3,
    "warmup": 200,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "threads": 1,
    "device": "",
}
register(
    Recipe(
        name="digits-tarflow",
        summary="TARFlow on sklearn's 8x8 digits (patch 2, 16 tokens), bits per dimension",
        defaults={
            **_IMAGE_COMMON,
            "dataset": "digits",
            "patch": 2,
            "blocks": 4,
            "width": 64,
            "layers": "2",
            "steps": 4000,
            "batch_size": 128,
        },
        build=build_image_flow,
        data=image_data,
        kind="image",
        reference=image_reference,
        evaluate=image_evaluate,
        metrics=("nll", "bpd"),
    )
)
register(
    Recipe(
        name="mnist-tarflow",
        summary="TARFlow on MNIST 28x28 (patch 4, 49 tokens, 4 blocks x 4 layers, width 128), bits per dim",
        defaults={
            **_IMAGE_COMMON,
            "dataset": "mnist",
            "patch": 4,
            "blocks": 4,
            "width": 128,
            "layers": "4",
            "steps": 20_000,
            "batch_size": 256,
        },
        build=build_image_flow,
        data=image_data,
        kind="image",
        reference=image_reference,
        evaluate=image_evaluate,
        metrics=("nll", "bpd"),
    )
)
