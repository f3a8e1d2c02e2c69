"""Normalizing-flow recipes: 2-D densities (``moons-nsf``, ``moons-tarflow``) and images (``digits-tarflow``,
``mnist-tarflow``) measured in bits per dimension.

Images are modelled after uniform dequantisation into ``[-1, 1]`` (TARFlow's set-up for likelihood
models, ``noise_type uniform``), so the reported NLL is an upper bound on the discrete NLL of the
integer images, in nats per image, and ``bpd`` is that bound in bits per pixel.

Hooks: 2-D runs sample in data units; TARFlow runs take ``--method`` (``sequential``/``jacobi``) and
``--guidance``, class-conditional image runs also ``--label``; spline and coupling flows take no
sampling option. ``eval`` of 2-D runs gives ``nll``, ``bpd`` and the sample metrics against fresh toy
points, and ``ess``/``logz`` towards ``--energy``; image runs give ``nll``/``bpd`` on the test split.

Example:
    >>> from flowforge.recipes import get_recipe
    >>> get_recipe("moons-nsf").sample_options({"flow": "nsf"}), get_recipe("moons-tarflow").sample_options({"flow": "tarflow"})
    ((), ('method', 'guidance'))
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.choices import unknown_choice
from flowforge.data import dequantization_log_det, dequantize, quantize
from flowforge.metrics import bits_per_dim
from flowforge.normalizing import MAF, NSF, RealNVP, TARFlow
from flowforge.recipes.common import (
    SAMPLE_METRICS,
    data_space_generator,
    image_picture,
    nll_of,
    sample_metrics,
)
from flowforge.recipes.flows2d import flow_data, toy_reference
from flowforge.recipes.images import N_CLASSES, check_images, image_set, load_images
from flowforge.recipes.registry import Recipe, register

__all__ = [
    "FLOWS",
    "DENSITY_METRICS",
    "build_density_flow",
    "build_image_flow",
    "density_sample_options",
    "density_sample_kwargs",
    "density_evaluate",
    "image_data",
    "image_reference",
    "image_generator",
    "image_evaluate",
    "ImageGenerator",
]

#: Metrics of 2-D density runs; ``ess`` and ``logz`` weight the flow towards ``--energy``.
DENSITY_METRICS: tuple[str, ...] = ("nll", "bpd", *SAMPLE_METRICS, "ess", "logz")

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
        raise unknown_choice("flow", name, ["tarflow", *FLOWS], hint="e.g. --set flow=nsf")
    hidden = (config["hidden"],) * config["hidden_layers"]
    kwargs: dict[str, Any] = {"transforms": config["transforms"], "hidden": hidden}
    if name.startswith("nsf"):
        kwargs.update(bins=config["bins"], bound=config["bound"])
    return FLOWS[name](dim, **kwargs)


def density_sample_options(config: dict[str, Any]) -> tuple[str, ...]:
    """TARFlow runs: ``method`` and ``guidance``; spline, MAF and RealNVP flows: none."""
    return ("method", "guidance") if config.get("flow") == "tarflow" else ()


def density_sample_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    """``sample(...)`` keywords of a density flow: the given ``method``/``guidance`` as they are."""
    return {k: given[k] for k in ("method", "guidance") if k in given}


def density_eval_options(config: dict[str, Any]) -> tuple[str, ...]:
    """``eval`` options of a 2-D density run (``energy``: the target of ``ess``/``logz``)."""
    return ("data", "n", "energy")


def _density_defaults(options: Any) -> tuple[str, ...]:
    base = ("nll", "bpd", *SAMPLE_METRICS)
    return (*base, "ess", "logz") if options.get("energy") else base


def density_evaluate(
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
    """``nll`` (nats per sample, data units), ``bpd``, sample metrics, and ``ess``/``logz`` towards ``energy``."""
    gen = data_space_generator(model, config)
    if {"ess", "logz"} & set(metrics) and energy is None:
        raise ValueError("ess and logz weight the flow towards an energy: add --energy module:function")
    out: dict[str, float] = {}
    if set(metrics) - {"ess", "logz"}:
        x = data().float()
        out.update(sample_metrics(gen, x, metrics, n=n, seed=seed))
        if "nll" in metrics or "bpd" in metrics:
            out["nll"] = nll_of(gen, x, seed=seed)
        if "bpd" in metrics:
            out["bpd"] = bits_per_dim(out["nll"], gen.dim)
    if {"ess", "logz"} & set(metrics):
        from flowforge.data.energies import user_energy
        from flowforge.metrics import boltzmann_metrics

        m = boltzmann_metrics(
            gen, user_energy(energy, dim=gen.dim), n or 20_000, torch.Generator().manual_seed(seed)
        )
        out.update({k: m[k] for k in ("ess", "logz") if k in metrics})
    return out


def _density_recipe(name: str, summary: str, defaults: dict[str, Any]) -> Recipe:
    return Recipe(
        name=name,
        summary=summary,
        defaults=defaults,
        build=build_density_flow,
        data=flow_data,
        generator=data_space_generator,
        sample_options=density_sample_options,
        sample_kwargs=density_sample_kwargs,
        eval_options=density_eval_options,
        reference=toy_reference,
        evaluate=density_evaluate,
        metrics=DENSITY_METRICS,
        default_metrics=_density_defaults,
        kind="normalizing",
    )


register(
    _density_recipe(
        "moons-nsf",
        "neural spline flow (5 autoregressive RQ-spline layers) on two moons, by maximum likelihood",
        {
            **_COMMON_2D,
            "flow": "nsf",
            "transforms": 5,
            "hidden": 64,
            "hidden_layers": 2,
            "bins": 8,
            "bound": 5.0,
        },
    )
)
register(
    _density_recipe(
        "moons-tarflow",
        "TARFlow (causal-transformer affine autoregressive flow) on two moons",
        {**_COMMON_2D, "flow": "tarflow", "blocks": 8, "width": 64, "layers": 2, "head_dim": 32, "sos": True},
    )
)


# -- images --------------------------------------------------------------------------------------


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
        num_classes=N_CLASSES if config["conditional"] else None,
        label_dropout=config["label_dropout"],
        sos=config["starflow"],
        softplus=config["starflow"],
        soft_clip=4.0 if config["starflow"] else None,
        noise_std=0.0,  # the data stream dequantises; the model sees [-1, 1] densities
    )


def image_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """An endless stream of freshly dequantised training images (with labels if ``conditional``)."""
    s = image_set(config, "train")
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
    return image_set(config, "test").x


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


def image_generator(model: nn.Module, config: dict[str, Any]) -> ImageGenerator:
    """The ``generator`` hook of image runs: integer pixels in, integer pixels out."""
    return ImageGenerator(model, int(config["levels"]))


def image_sample_options(config: dict[str, Any]) -> tuple[str, ...]:
    """TARFlow's ``method`` and ``guidance``, and ``label`` (class-conditional runs only)."""
    return ("method", "guidance", "label")


def image_sample_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    """``method``/``guidance`` as given; ``label`` becomes ``cond={"y": (n,) labels}``."""
    out = {k: given[k] for k in ("method", "guidance") if k in given}
    if "label" in given:
        label = given["label"]
        if not config.get("conditional"):
            raise ValueError("--label needs a class-conditional run: train with --set conditional=true")
        if not 0 <= label < N_CLASSES:
            raise ValueError(f"--label must be a class in 0..{N_CLASSES - 1}, got {label}")
        out["cond"] = {"y": torch.full((n,), int(label), dtype=torch.long)}
    return out


def image_eval_options(config: dict[str, Any]) -> tuple[str, ...]:
    """``eval`` of an image run takes held-out images (``--data``) and nothing else."""
    return ("data",)


def image_evaluate(
    model: nn.Module, config: dict[str, Any], data: Any, metrics: list[str], *, seed: int = 0, **_: Any
) -> dict[str, float]:
    """``nll`` (nats per image, dequantised bound) and ``bpd`` of integer images under a run.

    A class-conditional run is scored with the null label, i.e. as the unconditional model that its
    label dropout trains (``p(x)``, comparable with unconditional runs), not as ``p(x | y)``.
    """
    x = check_images(data(), config)
    gen = image_generator(model, config)
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


def _image_recipe(name: str, summary: str, defaults: dict[str, Any]) -> Recipe:
    return Recipe(
        name=name,
        summary=summary,
        defaults=defaults,
        build=build_image_flow,
        data=image_data,
        generator=image_generator,
        sample_options=image_sample_options,
        sample_kwargs=image_sample_kwargs,
        eval_options=image_eval_options,
        reference=image_reference,
        load_data=load_images,
        evaluate=image_evaluate,
        metrics=("nll", "bpd"),
        picture=image_picture,
        kind="image",
    )


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
    _image_recipe(
        "digits-tarflow",
        "TARFlow on sklearn's 8x8 digits (patch 2, 16 tokens), bits per dimension",
        {
            **_IMAGE_COMMON,
            "dataset": "digits",
            "patch": 2,
            "blocks": 4,
            "width": 64,
            "layers": "2",
            "steps": 4000,
            "batch_size": 128,
        },
    )
)
register(
    _image_recipe(
        "mnist-tarflow",
        "TARFlow on MNIST 28x28 (patch 4, 49 tokens, 4 blocks x 4 layers, width 128), bits per dim",
        {
            **_IMAGE_COMMON,
            "dataset": "mnist",
            "patch": 4,
            "blocks": 4,
            "width": 128,
            "layers": "4",
            "steps": 20_000,
            "batch_size": 256,
        },
    )
)
