"""Image flow-matching recipes: ``digits``, ``mnist``, ``mnist-dit``, ``mnist-inpaint``, ``mnist-semantic``.

One recipe family, three tasks: class-conditional generation (UNet or DiT, label dropout for
classifier-free guidance), inpainting as "Flow Matching in Latent Space" does it (Dao et al., 2023: the
masked image and the mask are extra input channels, masks are random at training), and semantic-map
conditioning through SD3's MM-DiT (Esser et al., 2024; a 7x7 "which digit owns this stroke" map, see
:mod:`flowforge.data.semantic`).

Images are trained as uniformly dequantised pixels in ``[-1, 1]``; the run's generator returns
``uint8`` pixels like the datasets. ``eval`` scores samples in the feature space of the classifier the
package ships (:mod:`flowforge.metrics.image_features`): Frechet distance ``fd`` against the test split,
``acc`` (the classifier's accuracy on class-conditional samples), ``pr`` (precision/recall); inpainting
runs add ``known`` (error on the kept pixels) and ``fill_acc``; semantic runs add ``iou``.

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("digits")
    >>> r.sample_options(dict(r.defaults))
    ('solver', 'steps', 'qmc', 'label', 'guidance', 'guidance_schedule')
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowforge.continuous import FlowMatching
from flowforge.core import masks as M
from flowforge.core import time as T
from flowforge.core.choices import unknown_choice
from flowforge.core.guidance import RAAG, ConstantGuidance, IntervalGuidance
from flowforge.data import dequantize, load_array, load_digits, load_mnist, quantize
from flowforge.data.semantic import SEG_CLASSES, semantic_agreement, semantic_map
from flowforge.inverse import ClassPosterior
from flowforge.nn import DiT, MMDiT, UNet
from flowforge.recipes.common import image_picture, sample_grid_monitor
from flowforge.recipes.flows2d import DISTANCES, PATHS, TIME_SAMPLERS
from flowforge.recipes.registry import Recipe, register

__all__ = [
    "N_CLASSES",
    "IMAGE_METRICS",
    "GUIDANCE_SCHEDULES",
    "image_set",
    "to_unit",
    "ImageFlowGenerator",
    "build_image_fm",
    "image_fm_data",
    "image_metrics_of",
    "sample_in_chunks",
]

#: Classes of the image datasets (digits and MNIST: 0..9); label ``N_CLASSES`` is the null label.
N_CLASSES = 10
#: Metrics ``eval`` knows for image flow runs.
IMAGE_METRICS: tuple[str, ...] = ("fd", "acc", "pr", "known", "fill_acc", "iou")

#: Guidance schedules by name: ``--guidance W`` is the constant weight, the weight inside the interval,
#: or RAAG's ``w_max``.
GUIDANCE_SCHEDULES: dict[str, Callable[[float, dict[str, Any]], Any]] = {
    "constant": lambda w, c: ConstantGuidance(w),
    "interval": lambda w, c: IntervalGuidance(w, c["interval_lo"], c["interval_hi"]),
    "raag": lambda w, c: RAAG(w_max=w, alpha=c["raag_alpha"]),
}


def image_set(config: dict[str, Any], split: str):
    """The ``ImageSet`` (uint8 images, labels, levels) of the run's dataset and split."""
    if config["dataset"] == "digits":
        return load_digits(split)
    if config["dataset"] == "mnist":
        return load_mnist(Path(config["data_dir"]).expanduser(), split, download=config["download"])
    raise unknown_choice("image dataset", config["dataset"], ["digits", "mnist"], hint="--set dataset=mnist")


def to_unit(x: Tensor, levels: int) -> Tensor:
    """Integer pixels ``[0, levels)`` to the classifier's ``[-1, 1]`` scale: ``2 x / (levels - 1) - 1``."""
    return x.float() * (2.0 / (levels - 1)) - 1.0


def bin_centres(x: Tensor, levels: int) -> Tensor:
    """Integer pixels to the centres of their dequantisation bins in ``[-1, 1]`` (the model's scale)."""
    return (x.float() + 0.5) * (2.0 / levels) - 1.0


def _ints(text: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in str(text).replace("-", " ").replace(",", " ").split())


def _task(config: dict[str, Any]) -> str:
    return str(config.get("task", "generate"))


def build_image_net(config: dict[str, Any], *, two_times: bool = False) -> nn.Module:
    """The network of an image flow run: ``unet``, ``dit`` or ``mmdit`` (semantic maps); ``two_times``:
    a UNet or DiT that also takes a start time ``r`` (flow-map models such as MeanFlow)."""
    c, h = int(config["image_shape"][0]), int(config["image_shape"][1])
    classes = N_CLASSES if config["conditional"] else None
    extra = c + 1 if _task(config) == "inpaint" else 0
    kind = config["net"]
    if kind == "unet":
        return UNet(
            in_channels=c,
            channels=config["channels"],
            mults=_ints(config["mults"]),
            blocks=config["blocks"],
            attention=_ints(config["attention"]),
            heads=config["heads"],
            num_classes=classes,
            extra_channels=extra,
            dropout=config["dropout"],
            two_times=two_times,
        )
    if kind == "dit":
        return DiT(
            image_size=h,
            in_channels=c,
            patch=config["patch"],
            width=config["width"],
            depth=config["depth"],
            heads=config["heads"],
            num_classes=classes,
            extra_channels=extra,
            two_times=two_times,
        )
    if kind == "mmdit":
        if two_times:
            raise ValueError("the MM-DiT takes one time; flow-map recipes use --set net=unet or net=dit")
        return MMDiT(
            image_size=h,
            in_channels=c,
            patch=config["patch"],
            width=config["width"],
            depth=config["depth"],
            heads=config["heads"],
            seg_classes=SEG_CLASSES,
            seg_size=config["seg_size"],
        )
    raise unknown_choice("net", kind, ["unet", "dit", "mmdit"], hint="--set net=unet")


def build_image_fm(config: dict[str, Any]) -> FlowMatching:
    """Flow matching on ``(C, H, W)`` images from a flat config."""
    time = TIME_SAMPLERS[config["time"]](config) if config["time"] in TIME_SAMPLERS else None
    if time is None:
        raise unknown_choice("time", config["time"], TIME_SAMPLERS, hint="--set time=uniform")
    if config["time_shift"] != 1.0:
        time = T.Shifted(time, config["time_shift"])
    if config["path"] not in PATHS:
        raise unknown_choice("path", config["path"], PATHS, hint="--set path=linear")
    semantic = _task(config) == "semantic"
    model = FlowMatching(
        build_image_net(config),
        path=PATHS[config["path"]](config),
        time=time,
        prediction=config["prediction"],
        distance=DISTANCES[config["loss"]](config),
        label_dropout=config["label_dropout"] if config["conditional"] and not semantic else 0.0,
        event_shape=tuple(config["image_shape"]),
    )
    init = Path(str(config.get("init_from") or "")).expanduser()
    # a fine-tuning run starts from another run's EMA weights; once it has checkpoints they win, so a
    # missing init folder only matters at the start of training (checked in image_fm_data)
    if config.get("init_from") and (init / "config.json").is_file():
        from flowforge.recipes.run_folder import load_run

        start, _ = load_run(init)
        state = start.state_dict()
        try:
            if "net.label.weight" in model.state_dict() and "net.label.weight" not in state:
                # an unconditional run grows a class embedding: zero rows add nothing to the time
                # embedding, so the fine-tune starts from exactly the unconditional model
                state["net.label.weight"] = torch.zeros_like(model.state_dict()["net.label.weight"])
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(
                f"init_from={init}: its network does not fit this run's ({str(e).splitlines()[0]}); "
                "give a run of the same recipe with the same net settings (channels, mults, attention, ...)"
            ) from None
    return model


def mask_kinds(config: dict[str, Any]) -> tuple[str, ...]:
    """``mask_kinds`` such as ``box-half-strokes`` (equal shares) or ``half-half-box-strokes``."""
    kinds = tuple(str(config.get("mask_kinds", "box-half-strokes")).split("-"))
    bad = [k for k in kinds if k not in M.KINDS]
    if bad:
        raise ValueError(
            f"mask_kinds={config['mask_kinds']!r}: unknown kind {bad[0]!r}; join kinds of {M.KINDS} with '-', "
            "repeats weight them, e.g. --set mask_kinds=half-half-box-strokes"
        )
    return kinds


def image_fm_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """An endless stream of freshly dequantised training images with what the task conditions on.

    ``generate``: ``(x, y)`` (class-conditional) or ``x``; ``inpaint``: ``{"x", "extra"}`` with a random
    mask a batch (:func:`flowforge.core.masks.random_masks`), replaced by the all-hole mask with
    probability ``context_dropout`` (so that the fill can be guided towards the kept pixels);
    ``semantic``: ``{"x", "seg"}``, the map dropped to the null map with probability ``label_dropout``
    (guidance).
    """
    s = image_set(config, "train")
    x, y, levels = s.x, s.y, s.levels
    task = _task(config)
    seg = semantic_map(x, y, int(config["seg_size"]), levels=levels) if task == "semantic" else None
    drop_context = float(config.get("context_dropout", 0.0))
    kinds = mask_kinds(config) if task == "inpaint" else M.KINDS
    if (
        config.get("init_from")
        and not (Path(str(config["init_from"])).expanduser() / "config.json").is_file()
    ):
        raise FileNotFoundError(
            f"init_from={config['init_from']}: no run folder there (no config.json); give the folder of a "
            "trained run of this recipe, e.g. --set init_from=runs/mnist-inpaint"
        )

    def stream(batch_size: int, generator: torch.Generator) -> Any:
        idx = torch.randint(0, len(x), (batch_size,), generator=generator)
        xb = dequantize(x[idx], levels, generator=generator)
        if task == "inpaint":
            mask = M.random_masks(batch_size, xb.shape[-2], xb.shape[-1], generator=generator, kinds=kinds)
            if drop_context > 0:  # "nothing known" (all-zero extra channels): the null of context guidance
                drop = torch.rand(batch_size, generator=generator) < drop_context
                mask = torch.where(drop[:, None, None, None], torch.zeros_like(mask), mask)
            out = {"x": xb, "extra": M.inpaint_extra(xb, mask)}
            return {**out, "y": y[idx]} if config["conditional"] else out
        if task == "semantic":
            sb = seg[idx]
            drop = torch.rand(batch_size, generator=generator) < config["label_dropout"]
            return {"x": xb, "seg": torch.where(drop[:, None, None], torch.full_like(sb, SEG_CLASSES), sb)}
        return (xb, y[idx]) if config["conditional"] else xb

    return stream, {"image_shape": list(x.shape[1:]), "levels": levels, "n_train": len(x)}


class ImageFlowGenerator:
    """A flow-matching run on images, speaking integer pixels: ``sample`` returns ``uint8`` images.

    ``decode`` (latent runs) maps the flow's samples to images in ``[-1, 1]``.

    ``sample(n, cond=..., guidance=w, schedule=...)`` integrates the (guided) velocity from noise at
    t=0 and quantises; ``nfe`` holds the number of network calls per sample of the last call (a guided
    call evaluates the conditional and the unconditional branch in one batched call: counted once).
    """

    def __init__(
        self, fm: FlowMatching, levels: int, key: str = "y", decode: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        self.fm, self.levels, self.key, self.decode = fm, int(levels), key, decode
        self.nfe = 0

    def sample_unit(
        self,
        n: int,
        *,
        cond: dict[str, Tensor] | None = None,
        guidance: float | None = None,
        schedule: Any = None,
        **opts: Any,
    ) -> Tensor:
        """``(n, C, H, W)`` float samples in ``[-1, 1]`` (clamped), before quantisation."""
        guide = schedule if schedule is not None else guidance
        if guide is not None and not cond:
            raise ValueError("guidance needs a condition: pass --label C (or cond={'y': labels})")
        null = {"seg": getattr(self.fm.net, "null_seg", None), "extra": 0.0}.get(self.key)
        gen = self.fm.generator(guide, key=self.key, null=null) if guide is not None else self.fm.generator()
        calls = [0]
        field = gen.field

        def counted(x: Tensor, t: Tensor, **c: Tensor) -> Tensor:
            calls[0] += 1
            return field(x, t, **c)

        gen.field = counted
        x = gen.sample(n, cond=cond, **opts)
        self.nfe = calls[0]
        if self.decode is not None:  # a latent model: decode the latents to images
            x = self.decode(x)
        return x.clamp(-1.0, 1.0)

    def sample(self, n: int, **opts: Any) -> Tensor:
        """``(n, C, H, W)`` ``uint8`` images."""
        return quantize(self.sample_unit(n, **opts), self.levels)


#: what guidance of an inpainting run pushes towards: the kept pixels, or the class (conditional runs)
GUIDE_ON = ("context", "class")


def _inpaint_guide_key(config: dict[str, Any]) -> str:
    on = str(config.get("guide_on", "context"))
    if on not in GUIDE_ON:
        raise unknown_choice("guide_on", on, GUIDE_ON, hint="--set guide_on=class")
    if on == "class" and not config.get("conditional"):
        raise ValueError(
            "guide_on=class needs a class-conditional inpainting run: train it with --set conditional=true "
            "and inpaint with --class-from RUN (a mnist-class-posterior run)"
        )
    return "y" if on == "class" else "extra"


def image_fm_generator(model: nn.Module, config: dict[str, Any]) -> ImageFlowGenerator:
    """The ``generator`` hook of image flow runs (inpainting runs guide on ``guide_on``)."""
    task = _task(config)
    key = _inpaint_guide_key(config) if task == "inpaint" else {"semantic": "seg"}.get(task, "y")
    return ImageFlowGenerator(model, int(config["levels"]), key)


def image_fm_sample_options(config: dict[str, Any]) -> tuple[str, ...]:
    """Solver, steps and source noise; ``label``/``guidance`` for class-conditional and semantic runs."""
    base = ("solver", "steps", "qmc")
    if _task(config) == "inpaint":  # guidance towards the kept pixels (needs context_dropout > 0)
        return (*base, "guidance", "guidance_schedule")
    if config.get("conditional") or _task(config) == "semantic":
        return (*base, "label", "guidance", "guidance_schedule")
    return base


def _guide(config: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    w = given.get("guidance", config.get("guidance", 1.0))
    name = given.get("guidance_schedule", config.get("guidance_schedule", "constant"))
    if name not in GUIDANCE_SCHEDULES:
        raise unknown_choice("guidance schedule", name, GUIDANCE_SCHEDULES, hint="--guidance-schedule raag")
    if name == "constant" and float(w) == 1.0:
        return {}
    return {"schedule": GUIDANCE_SCHEDULES[name](float(w), config)}


def _balanced_labels(n: int, label: int | None) -> Tensor:
    if label is None:
        return torch.arange(n) % N_CLASSES
    if not 0 <= int(label) < N_CLASSES:
        raise ValueError(f"--label must be a class in 0..{N_CLASSES - 1}, got {label}")
    return torch.full((n,), int(label), dtype=torch.long)


def _test_maps(config: dict[str, Any], n: int, label: int | None) -> tuple[Tensor, Tensor]:
    """Semantic maps of the first ``n`` test images (of class ``label`` when given), cycled; and labels."""
    s = image_set(config, "test")
    x, y = s.x, s.y
    if label is not None:
        keep = y == int(label)
        x, y = x[keep], y[keep]
    idx = torch.arange(n) % len(x)
    return semantic_map(x[idx], y[idx], int(config["seg_size"]), levels=s.levels), y[idx]


def image_fm_sample_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    """``sample(...)`` keywords from the CLI options and the run's defaults.

    Class-conditional runs draw classes 0..9 in turn unless ``--label C``; semantic runs take the maps
    of the first ``n`` test images (of class C with ``--label C``).
    """
    out: dict[str, Any] = {
        "solver": given.get("solver", config.get("solver", "heun")),
        "steps": int(given.get("steps", config.get("sample_steps", 20))),
        "qmc": bool(given.get("qmc", False)),
    }
    task = _task(config)
    if task == "semantic":
        out["cond"] = {"seg": _test_maps(config, n, given.get("label"))[0]}
        out.update(_guide(config, given))
    elif (
        task == "inpaint"
    ):  # the condition (kept pixels, and a class for conditional runs) comes with each call
        guide = _guide(config, given)
        if (
            guide
            and _inpaint_guide_key(config) == "extra"
            and not float(config.get("context_dropout", 0.0)) > 0
        ):
            raise ValueError(
                "guidance of an inpainting run needs a model trained with context dropout: "
                "flowforge train mnist-inpaint --set context_dropout=0.1"
            )
        out.update(guide)
    elif config.get("conditional"):
        out["cond"] = {"y": _balanced_labels(n, given.get("label"))}
        out.update(_guide(config, given))
    return out


def image_fm_eval_options(config: dict[str, Any]) -> tuple[str, ...]:
    """``eval`` takes held-out images (``--data``), the sample count and the sampling options."""
    return ("data", "n", *image_fm_sample_options(config))


def image_reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    """The test split's images, ``(N, C, H, W)`` uint8 (all of them; ``n`` is ignored)."""
    return image_set(config, "test").x


def load_images(path: str, config: dict[str, Any]) -> Tensor:
    """Images for ``eval --data``: ``.npy`` as ``flowforge sample`` writes it, ``(N, C, H, W)``, or any array."""
    if str(path).endswith(".npy"):
        return torch.from_numpy(np.load(path, allow_pickle=False))
    return load_array(path)


def check_images(x: Tensor, config: dict[str, Any]) -> Tensor:
    """Integer images of the run's shape, ``(N, C, H, W)`` uint8; anything else gets a clear error."""
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
    if (
        not torch.isfinite(xf).all()
        or not torch.equal(xf, xf.round())
        or xf.min() < 0
        or xf.max() > levels - 1
    ):
        raise ValueError(
            f"images must be integers in [0, {levels - 1}] (raw pixels, as `flowforge sample --out x.npy` "
            f"writes them); got values in [{float(xf.nan_to_num().min()):g}, {float(xf.nan_to_num().max()):g}]"
        )
    return x.to(torch.uint8)


def image_metrics_of(
    samples: Tensor,
    reference: Tensor,
    config: dict[str, Any],
    metrics: list[str],
    labels: Tensor | None = None,
) -> dict[str, Any]:
    """``fd``/``acc``/``pr`` of ``uint8`` samples against ``uint8`` reference images, in classifier features."""
    from flowforge.metrics.image_features import image_metrics

    asked = tuple(m for m in ("fd", "acc", "pr") if m in metrics)
    if not asked:
        return {}
    levels = int(config["levels"])
    res = image_metrics(
        to_unit(samples, levels),
        to_unit(reference, levels),
        dataset=config["dataset"],
        metrics=asked,
        labels=labels,
    )
    return {k: float(v) for k, v in res.items()}


def inpaint_cond(
    config: dict[str, Any], known: Tensor, mask: Tensor, generator: torch.Generator
) -> dict[str, Tensor]:
    """What the fill is conditioned on: the kept pixels and the mask (``extra``), and for a class-conditional
    run (``conditional=true``) a class ``y``: drawn from the class-posterior run ``class_from``
    (:class:`~flowforge.inverse.ClassPosterior`, ``y ~ p(y | kept)^(1/class_temperature)``: two-stage
    posterior sampling), or the null label when no ``class_from`` is given (the unconditional fill)."""
    extra = M.inpaint_extra(known, mask)
    if not config.get("conditional"):
        return {"extra": extra}
    source = str(config.get("class_from") or "")
    if not source:
        return {"extra": extra, "y": torch.full((len(extra),), N_CLASSES, dtype=torch.long)}
    from flowforge.recipes.run_folder import load_run

    folder = Path(source).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"class_from={source}: no run folder there; train one with flowforge train mnist-class-posterior "
            "--out runs/mnist-class-posterior and pass --set class_from=runs/mnist-class-posterior"
        )
    post, post_config = load_run(folder)
    if not isinstance(post, ClassPosterior):
        raise ValueError(
            f"class_from={source} is a {post_config.get('recipe')!r} run; give a mnist-class-posterior run"
        )
    post.eval()
    y = post.sample(extra, generator=generator, temperature=float(config.get("class_temperature", 1.0)))
    return {"extra": extra, "y": y}


def _inpaint_eval(
    gen: ImageFlowGenerator, config: dict[str, Any], x: Tensor, y: Tensor, n: int, seed: int, **kw: Any
) -> dict[str, Any]:
    """Fill 50% holes (a random side of each test image) and score the fills."""
    from flowforge.metrics.image_features import load_classifier

    g = torch.Generator().manual_seed(seed)
    x, y = x[:n], y[:n]
    levels = int(config["levels"])
    known = bin_centres(x, levels)
    sides = torch.randint(0, 4, (len(x),), generator=g)
    mask = torch.cat(
        [M.half_mask(1, x.shape[-2], x.shape[-1], ("left", "right", "top", "bottom")[int(s)]) for s in sides]
    )
    raw = torch.cat(
        [
            gen.sample_unit(len(kc), cond=inpaint_cond(config, kc, mc, g), generator=g, **kw)
            for kc, mc in zip(known.split(500), mask.split(500), strict=True)
        ]
    )
    filled = _requantize(raw, x, mask, levels)
    # errors on the pixel scale [0, 1]: the model's own output on the kept pixels, and the result's
    err = ((raw - known).abs() * mask).sum() / mask.sum().clamp_min(1) / 2.0
    kept = ((filled.float() - x.float()).abs() * mask).amax() / (levels - 1)
    clf = load_classifier(config["dataset"])
    with torch.no_grad():
        pred = torch.cat([clf(c).argmax(-1) for c in to_unit(filled, levels).split(500)])
    return {
        "known_raw": float(err),
        "known": float(kept),
        "fill_acc": float((pred == y).float().mean()),
        "hole_fraction": float(1 - mask.mean()),
    }


def sample_in_chunks(
    gen: Any,
    n: int,
    cond: dict[str, Tensor] | None,
    generator: torch.Generator,
    chunk: int = 500,
    **kwargs: Any,
) -> Tensor:
    """``n`` samples of ``gen`` in chunks of ``chunk`` (conditions sliced alike), one random stream."""
    parts = []
    for i in range(0, n, chunk):
        c = None if cond is None else {k: v[i : i + chunk] for k, v in cond.items()}
        parts.append(gen.sample(min(chunk, n - i), cond=c, generator=generator, **kwargs))
    return torch.cat(parts)


def score_image_samples(
    gen: Any,
    config: dict[str, Any],
    data: Callable[[], Tensor],
    metrics: list[str],
    kwargs: dict[str, Any],
    *,
    n: int,
    seed: int,
) -> dict[str, Any]:
    """Draw ``n`` samples with ``gen.sample(..., **kwargs)`` (i.i.d. noise, ``kwargs["cond"]`` in chunks)
    and score them (``fd``/``acc``/``pr``) against the test split: the shared evaluation of the
    few-step image recipes."""
    if "acc" in metrics and not config.get("conditional"):
        raise ValueError("acc needs a class-conditional run (train with --set conditional=true)")
    kwargs = dict(kwargs)
    cond = kwargs.pop("cond", None)
    x = sample_in_chunks(gen, n, cond, torch.Generator().manual_seed(seed), **kwargs)
    labels = cond["y"] if cond is not None and "acc" in metrics else None
    out = image_metrics_of(x, check_images(data(), config), config, metrics, labels=labels)
    return {**out, "n": n, "source_noise": "iid"}


def image_fm_evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Callable[[], Tensor],
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Sample-based image metrics of a run against the test split (or ``--data`` images).

    Samples use i.i.d. noise unless ``--qmc``; class-conditional runs draw classes in turn (or
    ``--label``) with the run's guidance; the result records solver, steps, NFE and guidance.
    """
    gen = image_fm_generator(model, config)
    task = _task(config)
    n = int(n or config.get("eval_n", 5000))
    kwargs = image_fm_sample_kwargs(config, options, n)
    out: dict[str, Any] = {}
    if task == "inpaint":
        if set(metrics) - {"known", "fill_acc"}:
            raise ValueError(
                "inpainting runs are scored on 50% holes in test images: --metrics known,fill_acc"
            )
        s = image_set(config, "test")
        return _inpaint_eval(gen, config, s.x, s.y, n, seed, **kwargs)
    if set(metrics) & {"known", "fill_acc"}:
        raise ValueError("known and fill_acc score inpainting runs (mnist-inpaint)")
    if "acc" in metrics and not (config.get("conditional") or task == "semantic"):
        raise ValueError("acc needs a class-conditional run (train with --set conditional=true)")
    if "iou" in metrics and task != "semantic":
        raise ValueError("iou scores semantic-map runs (mnist-semantic)")
    g = torch.Generator().manual_seed(seed)
    cond = kwargs.pop("cond", None)
    x = sample_in_chunks(gen, n, cond, g, **kwargs)
    labels = None
    if task == "semantic":
        seg = cond["seg"]
        labels = _test_maps(config, n, options.get("label"))[1]
        if "iou" in metrics:
            out.update(
                {k: float(v) for k, v in semantic_agreement(to_unit(x, int(config["levels"])), seg).items()}
            )
    elif cond is not None:
        labels = cond["y"]
    ref = check_images(data(), config)
    out.update(image_metrics_of(x, ref, config, metrics, labels=labels if "acc" in metrics else None))
    sched = kwargs.get("schedule")
    out.update(
        n=n,
        source_noise="qmc" if kwargs["qmc"] else "iid",
        solver=kwargs["solver"],
        steps=kwargs["steps"],
        nfe=gen.nfe,
        guidance=float(options.get("guidance", config.get("guidance", 1.0))) if sched is not None else 1.0,
        guidance_schedule=options.get("guidance_schedule", config.get("guidance_schedule", "constant"))
        if sched is not None
        else "none",
    )
    return out


def image_fm_inpaint(
    model: nn.Module, config: dict[str, Any], image: Tensor, hole: Tensor, *, seed: int = 0, **options: Any
) -> Tensor:
    """Fill the ``hole`` pixels of integer ``image`` ``(N, C, H, W)``; ``hole: (N, 1, H, W)`` bool.

    The network sees the kept pixels and the mask (extra channels); the kept pixels are pasted back
    into the result, so they come out exactly as given. Returns ``(N, C, H, W)`` uint8.
    """
    if _task(config) != "inpaint":
        raise ValueError(
            f"run of recipe {config['recipe']!r} does not inpaint; train one with flowforge train mnist-inpaint"
        )
    image = check_images(image, config)
    if hole.shape != (image.shape[0], 1, *image.shape[2:]):
        raise ValueError(
            f"the mask has shape {tuple(hole.shape)}; it must cover the image: (H, W) = {tuple(image.shape[2:])}"
        )
    gen = image_fm_generator(model, config)
    kwargs = image_fm_sample_kwargs(config, options, len(image))
    known = bin_centres(image, int(config["levels"]))
    mask = (~hole).float()
    g = torch.Generator().manual_seed(seed)
    raw = gen.sample_unit(len(image), cond=inpaint_cond(config, known, mask, g), generator=g, **kwargs)
    return _requantize(raw, image, mask, int(config["levels"]))


def _requantize(x: Tensor, image: Tensor, mask: Tensor, levels: int) -> Tensor:
    """Generated pixels rounded to integers; kept pixels copied from the input bit for bit."""
    gen = quantize(x, levels)
    return torch.where(mask.bool().expand_as(image), image, gen)


def sampled_image_recipe(
    name: str,
    summary: str,
    defaults: dict[str, Any],
    *,
    build: Callable[[dict[str, Any]], nn.Module],
    generator: Callable[[nn.Module, dict[str, Any]], Any],
    sample_options: Callable[[dict[str, Any]], tuple[str, ...]],
    sample_kwargs: Callable[[dict[str, Any], dict[str, Any], int], dict[str, Any]],
    evaluate: Callable[..., dict[str, Any]],
    data: Callable[[dict[str, Any]], tuple[Any, dict[str, Any]]] = image_fm_data,
    default_metrics: tuple[str, ...] = ("fd", "acc", "pr"),
) -> Recipe:
    """A recipe of another image method (MeanFlow, TwinFlow, blockwise FM, PFGM++) on this family's data,
    test split, metrics (``fd``, ``acc``, ``pr``) and sample grids; the method brings its own hooks."""
    return Recipe(
        name=name,
        summary=summary,
        defaults=defaults,
        build=build,
        data=data,
        generator=generator,
        sample_options=sample_options,
        sample_kwargs=sample_kwargs,
        eval_options=lambda config: ("data", "n", *sample_options(config)),
        reference=image_reference,
        load_data=load_images,
        evaluate=evaluate,
        metrics=("fd", "acc", "pr"),
        default_metrics=default_metrics,
        monitor=sample_grid_monitor,
        picture=image_picture,
        kind="image",
    )


def image_fm_recipe(
    name: str, summary: str, defaults: dict[str, Any], default_metrics: tuple[str, ...]
) -> Recipe:
    """A registered image flow recipe with this family's hooks."""
    return Recipe(
        name=name,
        summary=summary,
        defaults=defaults,
        build=build_image_fm,
        data=image_fm_data,
        generator=image_fm_generator,
        sample_options=image_fm_sample_options,
        sample_kwargs=image_fm_sample_kwargs,
        eval_options=image_fm_eval_options,
        reference=image_reference,
        load_data=load_images,
        evaluate=image_fm_evaluate,
        metrics=IMAGE_METRICS,
        default_metrics=default_metrics,
        inpaint=image_fm_inpaint if defaults.get("task") == "inpaint" else None,
        monitor=sample_grid_monitor,
        picture=image_picture,
        kind="image",
    )


#: What every image flow recipe shares (``flowforge train mnist --set key=value`` changes one).
IMAGE_FM_DEFAULTS: dict[str, Any] = {
    "dataset": "mnist",
    "data_dir": "~/.cache/flowforge/mnist",
    "download": True,
    "task": "generate",
    "net": "unet",
    "channels": 16,
    "mults": "1-2-4",
    "blocks": 2,
    "attention": "2",
    "heads": 4,
    "dropout": 0.0,
    "patch": 4,
    "width": 128,
    "depth": 6,
    "seg_size": 7,
    "conditional": True,
    "label_dropout": 0.1,
    "path": "linear",
    "gamma_a": 1.0,
    "time": "uniform",
    "time_shift": 1.0,
    "prediction": "velocity",
    "loss": "mse",
    "steps": 2000,
    "batch_size": 64,
    "lr": 1e-3,
    "warmup": 200,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "threads": 0,
    "device": "",
    "solver": "euler",
    "sample_steps": 8,
    "guidance": 1.0,
    "guidance_schedule": "constant",
    "raag_alpha": 12.0,
    "interval_lo": 0.2,
    "interval_hi": 0.8,
    "eval_n": 5000,
    "sample_every": 1000,
}

register(
    image_fm_recipe(
        "digits",
        "class-conditional flow matching on sklearn's 8x8 digits (small UNet); no download, CPU minutes",
        {
            **IMAGE_FM_DEFAULTS,
            "dataset": "digits",
            "channels": 32,
            "mults": "1-2",
            "attention": "1",
            "steps": 1500,
            "batch_size": 128,
            "eval_n": 2000,
        },
        ("fd", "acc", "pr"),
    )
)
register(
    image_fm_recipe(
        "mnist",
        "class-conditional flow matching on MNIST 28x28 (ADM-style UNet, label dropout for CFG)",
        dict(IMAGE_FM_DEFAULTS),
        ("fd", "acc", "pr"),
    )
)
register(
    image_fm_recipe(
        "mnist-dit",
        "class-conditional flow matching on MNIST with a DiT (patch 4, adaLN-zero)",
        {**IMAGE_FM_DEFAULTS, "net": "dit", "width": 96, "depth": 4, "patch": 4, "steps": 10_000},
        ("fd", "acc", "pr"),
    )
)
register(
    image_fm_recipe(
        "mnist-inpaint",
        "MNIST inpainting flow (masked image + mask as extra UNet channels, random masks; LFM-style)",
        {
            **IMAGE_FM_DEFAULTS,
            "task": "inpaint",
            "conditional": False,
            "context_dropout": 0.1,
            "mask_kinds": "box-half-strokes",
            "init_from": "",
            "class_from": "",
            "class_temperature": 1.0,
            "guide_on": "context",
        },
        ("known", "fill_acc"),
    )
)
register(
    image_fm_recipe(
        "mnist-semantic",
        "MNIST from a 7x7 semantic map (which digit owns each stroke cell) through an MM-DiT",
        {**IMAGE_FM_DEFAULTS, "task": "semantic", "net": "mmdit", "width": 128, "depth": 4, "patch": 4},
        ("fd", "acc", "iou"),
    )
)
