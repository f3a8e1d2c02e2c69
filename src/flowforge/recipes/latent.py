"""Latent recipes: ``mnist-ae`` (a small KL autoencoder), ``mnist-latent`` (flow matching on its codes, as in
"Flow Matching in Latent Space", Dao et al. 2023) and ``mnist-latent-starflow`` (TARFlow in the same latent
space, the STARFlow recipe of Gu et al. 2025 without the decoder fine-tuning).

A latent run names the autoencoder run it builds on (``--set ae_run=runs/mnist-ae``); the frozen
autoencoder's weights are copied into the latent run, so the latent run folder is self-contained. Latents
are standardised per channel by their statistics on the training images before the flow sees them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.choices import unknown_choice
from flowforge.data import dequantize, quantize
from flowforge.latent import KLAutoencoder, LatentModel, latent_stats
from flowforge.normalizing import TARFlow
from flowforge.recipes.common import image_picture, sample_grid_monitor
from flowforge.recipes.images import (
    N_CLASSES,
    ImageFlowGenerator,
    _balanced_labels,
    _guide,
    build_image_fm,
    check_images,
    image_fm_data,
    image_metrics_of,
    image_reference,
    image_set,
    load_images,
    sample_in_chunks,
    to_unit,
)
from flowforge.recipes.registry import Recipe, register
from flowforge.recipes.run_folder import load_run, run_recipe

__all__ = ["build_autoencoder", "build_latent", "LatentImageGenerator"]


def build_autoencoder(config: dict[str, Any]) -> KLAutoencoder:
    """The KL autoencoder of an ``mnist-ae`` run (or the one a latent run holds)."""
    c, h = int(config["image_shape"][0]), int(config["image_shape"][1])
    return KLAutoencoder(
        in_channels=c,
        image_size=h,
        latent_channels=config["latent_channels"],
        channels=tuple(int(v) for v in str(config["ae_channels"]).split("-")),
        kl_weight=config["kl_weight"],
        recon=config["recon"],
        res_blocks=1,
    )


def ae_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Dequantised training images (no labels) for the autoencoder."""
    return image_fm_data({**config, "conditional": False})


class AutoencoderGenerator:
    """An autoencoder run as a generator: decodes standard-normal latents (a VAE prior sample).

    With the small KL weight of latent-diffusion autoencoders the codes are far from N(0, I), so these
    samples are poor; the autoencoder is meant as the latent space of ``mnist-latent``.
    """

    def __init__(self, ae: KLAutoencoder, levels: int) -> None:
        self.ae, self.levels = ae, levels

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, **_: Any) -> Tensor:
        z = torch.randn((n, *self.ae.latent_shape), generator=generator)
        return quantize(self.ae.decode(z).clamp(-1, 1), self.levels)


def ae_evaluate(
    model: nn.Module, config: dict[str, Any], data: Callable[[], Tensor], metrics: list[str], **_: Any
) -> dict[str, Any]:
    """``recon``: mean squared error of test reconstructions on the ``[0, 1]`` pixel scale; ``fd``: FD of
    the reconstructions against the test images (the floor of any model in this latent space)."""
    ref = check_images(data(), config)
    levels = int(config["levels"])
    with torch.no_grad():
        rec = torch.cat([model.decode(model.encode(to_unit(c, levels))[0]) for c in ref.split(500)])
    out: dict[str, Any] = {}
    if "recon" in metrics:
        out["recon"] = float(((rec.clamp(-1, 1) - to_unit(ref, levels)) / 2).pow(2).mean())
    out.update(
        image_metrics_of(quantize(rec.clamp(-1, 1), levels), ref, config, [m for m in metrics if m == "fd"])
    )
    return out


def _load_ae(config: dict[str, Any]) -> tuple[KLAutoencoder, dict[str, Any]]:
    path = Path(config["ae_run"]).expanduser()
    if run_recipe(path) is None:
        raise FileNotFoundError(
            f"no autoencoder run in {path}; train one first (flowforge train mnist-ae --out {path}) "
            "or point to it with --set ae_run=FOLDER"
        )
    ae, ae_config = load_run(path)
    if not isinstance(ae, KLAutoencoder):
        raise ValueError(f"{path} is a {ae_config['recipe']} run, not an autoencoder; train mnist-ae")
    return ae, ae_config


_AE_KEYS = ("latent_channels", "ae_channels", "kl_weight", "recon", "image_shape")


def latent_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Training images (with labels for class-conditional runs) and the autoencoder the flow builds on.

    Records the autoencoder's architecture, its latent shape and the latents' per-channel shift and
    scale (on 10,000 training images) in the run's config.
    """
    ae, ae_config = _load_ae(config)
    if ae_config["dataset"] != config["dataset"]:
        raise ValueError(
            f"the autoencoder in {config['ae_run']} was trained on {ae_config['dataset']}, this run is on "
            f"{config['dataset']}; train an autoencoder on {config['dataset']}"
        )
    stream, updates = image_fm_data({**config, "task": "generate"})
    s = image_set(config, "train")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(s.x), generator=g)[:10_000]
    shift, scale = latent_stats(ae, dequantize(s.x[idx], s.levels, generator=g))
    updates.update(
        ae={k: ae_config[k] for k in _AE_KEYS},
        latent_shape=list(ae.latent_shape),
        shift=shift.tolist(),
        scale=scale.tolist(),
    )
    return stream, updates


def build_latent(config: dict[str, Any]) -> LatentModel:
    """A latent model: flow matching (``inner=fm``) or TARFlow (``inner=tarflow``) on the AE's latents."""
    ae = build_autoencoder({**config, **config["ae"]})
    if run_recipe(Path(config["ae_run"]).expanduser()) is not None:
        # training starts from the trained autoencoder; a saved latent run then carries its own copy
        # (loading the run overwrites these weights, so a moved ae_run folder does not matter)
        ae.load_state_dict(_load_ae(config)[0].state_dict())
    lat = tuple(config["latent_shape"])
    if config["inner"] == "fm":
        inner: nn.Module = build_image_fm({**config, "image_shape": list(lat), "task": "generate"})
    elif config["inner"] == "tarflow":
        depths = [int(v) for v in str(config["layers"]).replace("-", " ").split()]
        inner = TARFlow(
            image_shape=lat,
            patch=config["patch"],
            blocks=config["blocks"],
            width=config["width"],
            layers=depths[0] if len(depths) == 1 else depths,
            head_dim=config["head_dim"],
            num_classes=N_CLASSES if config["conditional"] else None,
            label_dropout=config["label_dropout"],
            sos=True,
            softplus=True,
            soft_clip=4.0,
            noise_std=config["noise_std"],
        )
    else:
        raise unknown_choice("inner", config["inner"], ["fm", "tarflow"], hint="--set inner=fm")
    return LatentModel(inner, ae, shift=torch.tensor(config["shift"]), scale=torch.tensor(config["scale"]))


class LatentImageGenerator:
    """A latent run speaking integer pixels: sample latents, decode, quantise."""

    def __init__(self, model: LatentModel, config: dict[str, Any]) -> None:
        self.model, self.config, self.levels = model, config, int(config["levels"])
        self.fm = (
            ImageFlowGenerator(model.inner, self.levels, decode=model.decode)
            if config["inner"] == "fm"
            else None
        )
        self.nfe = 0

    def sample_unit(self, n: int, **opts: Any) -> Tensor:
        """``(n, C, H, W)`` images in ``[-1, 1]``."""
        if self.fm is not None:
            x = self.fm.sample_unit(n, **opts)
            self.nfe = self.fm.nfe
            return x
        for flow_only in ("solver", "steps", "qmc", "schedule"):  # TARFlow samples token by token
            opts.pop(flow_only, None)
        z = self.model.inner.sample(n, **opts)
        self.nfe = 0
        return self.model.decode(z).clamp(-1.0, 1.0)

    def sample(self, n: int, **opts: Any) -> Tensor:
        """``(n, C, H, W)`` ``uint8`` images."""
        return quantize(self.sample_unit(n, **opts), self.levels)


def latent_generator(model: nn.Module, config: dict[str, Any]) -> LatentImageGenerator:
    """The ``generator`` hook of latent runs."""
    return LatentImageGenerator(model, config)


def latent_sample_options(config: dict[str, Any]) -> tuple[str, ...]:
    """Flow matching: solver, steps, noise, and label/guidance (conditional); TARFlow: method, label, guidance."""
    if config["inner"] == "tarflow":
        return ("method", "label", "guidance") if config["conditional"] else ("method",)
    base = ("solver", "steps", "qmc")
    return (*base, "label", "guidance", "guidance_schedule") if config["conditional"] else base


def latent_sample_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    """``sample(...)`` keywords: classes 0..9 in turn (or ``--label``) for class-conditional runs."""
    out: dict[str, Any] = {}
    if config["inner"] == "tarflow":
        out.update({k: given[k] for k in ("method", "guidance") if k in given})
    else:
        out.update(
            solver=given.get("solver", config.get("solver", "heun")),
            steps=int(given.get("steps", config.get("sample_steps", 10))),
            qmc=bool(given.get("qmc", False)),
        )
        if config["conditional"]:
            out.update(_guide(config, given))
    if config["conditional"]:
        out["cond"] = {"y": _balanced_labels(n, given.get("label"))}
    return out


def latent_eval_options(config: dict[str, Any]) -> tuple[str, ...]:
    """``eval`` takes held-out images, the sample count and the sampling options."""
    return ("data", "n", *latent_sample_options(config))


def latent_evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Callable[[], Tensor],
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """``fd``/``acc``/``pr`` of decoded samples against the test split; records the sampling settings."""
    gen = latent_generator(model, config)
    n = int(n or config.get("eval_n", 5000))
    if "acc" in metrics and not config["conditional"]:
        raise ValueError("acc needs a class-conditional run (train with --set conditional=true)")
    kwargs = latent_sample_kwargs(config, options, n)
    cond = kwargs.pop("cond", None)
    g = torch.Generator().manual_seed(seed)
    x = sample_in_chunks(gen, n, cond, g, **kwargs)
    ref = check_images(data(), config)
    labels = cond["y"] if cond is not None and "acc" in metrics else None
    out = image_metrics_of(x, ref, config, metrics, labels=labels)
    out.update(n=n, nfe=gen.nfe, **{k: v for k, v in kwargs.items() if k in ("solver", "steps", "method")})
    return out


_COMMON = {
    "dataset": "mnist",
    "data_dir": "~/.cache/flowforge/mnist",
    "download": True,
    "threads": 0,
    "device": "",
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "sample_every": 1000,
}

register(
    Recipe(
        name="mnist-ae",
        summary="small KL autoencoder on MNIST (28x28 -> 4x7x7 latents), the latent space of mnist-latent",
        defaults={
            **_COMMON,
            "latent_channels": 4,
            "ae_channels": "16-32",
            "kl_weight": 1e-4,
            "recon": "l1",
            "steps": 1500,
            "batch_size": 64,
            "lr": 1e-3,
            "warmup": 100,
        },
        build=build_autoencoder,
        data=ae_data,
        generator=lambda model, config: AutoencoderGenerator(model, int(config["levels"])),
        sample_options=lambda config: (),
        reference=image_reference,
        load_data=load_images,
        evaluate=ae_evaluate,
        metrics=("recon", "fd"),
        eval_options=lambda config: ("data",),
        monitor=sample_grid_monitor,
        picture=image_picture,
        kind="image",
    )
)

_LATENT = {
    **_COMMON,
    "ae_run": "runs/mnist-ae",
    "conditional": True,
    "label_dropout": 0.1,
    "steps": 6000,
    "batch_size": 128,
    "lr": 1e-3,
    "warmup": 200,
    "eval_n": 5000,
}


def _latent_recipe(name: str, summary: str, defaults: dict[str, Any]) -> Recipe:
    return Recipe(
        name=name,
        summary=summary,
        defaults=defaults,
        build=build_latent,
        data=latent_data,
        generator=latent_generator,
        sample_options=latent_sample_options,
        sample_kwargs=latent_sample_kwargs,
        eval_options=latent_eval_options,
        reference=image_reference,
        load_data=load_images,
        evaluate=latent_evaluate,
        metrics=("fd", "acc", "pr"),
        monitor=sample_grid_monitor,
        picture=image_picture,
        kind="image",
    )


register(
    _latent_recipe(
        "mnist-latent",
        "class-conditional flow matching on mnist-ae latents (UNet on 4x7x7, or --set net=dit; LFM-style)",
        {
            **_LATENT,
            "inner": "fm",
            "steps": 2000,
            "net": "unet",  # FD 5.8 at 4 Euler steps where the DiT (width 128, depth 6) reached 45 (BENCHMARKS 12.3)
            "patch": 1,
            "width": 128,
            "depth": 6,
            "heads": 4,
            "channels": 64,
            "mults": "1",
            "blocks": 2,
            "attention": "0",
            "dropout": 0.0,
            "seg_size": 7,
            "path": "linear",
            "gamma_a": 1.0,
            "time": "uniform",
            "time_shift": 1.0,
            "prediction": "velocity",
            "loss": "mse",
            "solver": "euler",
            "sample_steps": 4,
            "guidance": 1.0,
            "guidance_schedule": "constant",
            "raag_alpha": 12.0,
            "interval_lo": 0.2,
            "interval_hi": 0.8,
        },
    )
)
register(
    _latent_recipe(
        "mnist-latent-starflow",
        "latent STARFlow: a class-conditional TARFlow on mnist-ae latents (49 tokens, deep-shallow)",
        {
            **_LATENT,
            "inner": "tarflow",
            "patch": 1,
            "blocks": 4,
            "width": 128,
            "layers": "4-2-2-2",
            "head_dim": 32,
            "noise_std": 0.05,
        },
    )
)
