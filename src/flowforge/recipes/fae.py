"""FAE recipes: ``digits-fae`` (a feature autoencoder with one attention layer on frozen patch features of
sklearn's 8x8 digits) and ``digits-fae-latent`` (latent flow matching in its latent space).

The "pretrained" feature network of ``digits-fae`` is a :class:`~flowforge.nn.PatchFeatureNet` (16 patch
tokens x 32-d) trained once as a digit classifier on the training split (``feature_steps`` AdamW steps,
seed ``feature_seed``) and then frozen; it is a different network from the shipped digits classifier whose
features the ``fd`` metric uses. ``digits-fae-latent`` names the FAE run it builds on
(``--set fae_run=runs/digits-fae``) and copies the frozen FAE into its own run folder, like
``mnist-latent`` does with ``mnist-ae``. Eval keys: ``recon`` (test MSE on the [0, 1] scale), ``fd``
(reconstructions for ``digits-fae``, latent-flow samples for ``digits-fae-latent``) and ``probe_acc``
(logistic regression on the latent means, train split -> test split).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.continuous import FlowMatching
from flowforge.data import load_digits, quantize
from flowforge.latent import FeatureAutoencoder, LatentModel, latent_stats
from flowforge.nn import MLP, PatchFeatureNet
from flowforge.recipes.common import image_picture
from flowforge.recipes.images import check_images, image_metrics_of, image_reference, load_images, to_unit
from flowforge.recipes.latent import AutoencoderGenerator
from flowforge.recipes.registry import Recipe, register
from flowforge.recipes.run_folder import load_run, run_recipe

__all__ = ["pretrain_classifier", "linear_probe_accuracy", "build_fae", "build_fae_latent"]

_PRETRAINED: dict[tuple, PatchFeatureNet] = {}


def pretrain_classifier(
    net: nn.Module, x: Tensor, y: Tensor, *, steps: int, seed: int, lr: float = 3e-3
) -> nn.Module:
    """Train ``net`` (images -> logits) as a classifier with AdamW (batch 64, one-pixel random shifts), then
    freeze it (eval mode, no gradients). Uses a forked RNG: the caller's random streams are untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        net.train()
        for _ in range(int(steps)):
            i = torch.randint(0, len(x), (64,), generator=g)
            dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
            xb = torch.roll(x[i], shifts=(dy, dx), dims=(2, 3))
            loss = nn.functional.cross_entropy(net(xb), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval().requires_grad_(False)


def linear_probe_accuracy(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor) -> float:
    """Test accuracy of a logistic regression (scikit-learn, standardised inputs) fitted on ``z_train``."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ImportError("probe_acc needs scikit-learn: pip install scikit-learn") from None
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(z_train.flatten(1).double().numpy(), y_train.numpy())
    return float(clf.score(z_test.flatten(1).double().numpy(), y_test.numpy()))


def _digits(split: str) -> tuple[Tensor, Tensor]:
    s = load_digits(split)
    return to_unit(s.x, s.levels), s.y


def _feature_key(config: dict[str, Any]) -> tuple:
    return (
        int(config["patch"]),
        int(config["feature_dim"]),
        int(config["feature_steps"]),
        int(config["feature_seed"]),
    )


def fae_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Training images in [-1, 1]; pretrains (and caches for ``build``) the frozen feature network."""
    if config["dataset"] != "digits":
        raise ValueError(f"digits-fae runs on dataset=digits only, got {config['dataset']!r}")
    x, y = _digits("train")
    key = _feature_key(config)
    if key not in _PRETRAINED:
        with torch.random.fork_rng(devices=[]):  # the run's own random stream is left as it was
            torch.manual_seed(key[3])
            net = PatchFeatureNet(image_size=8, patch=key[0], dim=key[1])
        _PRETRAINED[key] = pretrain_classifier(net, x, y, steps=key[2], seed=key[3])
    xt, yt = _digits("test")
    acc = float((_PRETRAINED[key](xt).argmax(1) == yt).float().mean())
    return x, {"image_shape": [1, 8, 8], "levels": 17, "feature_test_acc": acc}


def build_fae(config: dict[str, Any]) -> FeatureAutoencoder:
    """The FAE of a ``digits-fae`` run; its feature network is the pretrained one when ``data`` made it
    in this process (loading a run then overwrites every weight from the run folder)."""
    key = _feature_key(config)
    copy = PatchFeatureNet(image_size=8, patch=key[0], dim=key[1])
    if key in _PRETRAINED:
        copy.load_state_dict(_PRETRAINED[key].state_dict())
    side = 8 // key[0]
    return FeatureAutoencoder(
        copy,
        num_tokens=side * side,
        feature_dim=key[1],
        latent_dim=int(config["latent_dim"]),
        heads=int(config["heads"]),
        width=int(config["width"]),
        kl_weight=float(config["kl_weight"]),
        pixel_weight=float(config["pixel_weight"]),
    )


def _probe(ae: nn.Module) -> float:
    xtr, ytr = _digits("train")
    xte, yte = _digits("test")
    with torch.no_grad():
        return linear_probe_accuracy(ae.encode(xtr)[0], ytr, ae.encode(xte)[0], yte)


def fae_evaluate(
    model: nn.Module, config: dict[str, Any], data: Callable[[], Tensor], metrics: list[str], **_: Any
) -> dict[str, Any]:
    """``recon`` (test MSE, [0, 1] scale), ``fd`` of test reconstructions, ``probe_acc`` of the latents."""
    ref = check_images(data(), config)
    levels = int(config["levels"])
    with torch.no_grad():
        rec = model(to_unit(ref, levels))
    out: dict[str, Any] = {}
    if "recon" in metrics:
        out["recon"] = float(((rec - to_unit(ref, levels)) / 2).pow(2).mean())
    if "fd" in metrics:
        out.update(image_metrics_of(quantize(rec, levels), ref, config, ["fd"]))
    if "probe_acc" in metrics:
        out["probe_acc"] = _probe(model)
    return out


_COMMON = {
    "dataset": "digits",
    "threads": 0,
    "device": "",
    "grad_clip": 1.0,
    "ema_decay": 0.995,
    "warmup": 0,
    "lr": 1e-3,
}

register(
    Recipe(
        name="digits-fae",
        summary="FAE on digits: frozen 16x32 patch features -> one attention layer -> 6-d latent -> features -> pixels",
        defaults={
            **_COMMON,
            "patch": 2,
            "feature_dim": 32,
            "feature_steps": 600,
            "feature_seed": 0,
            "latent_dim": 6,
            "heads": 4,
            "width": 64,
            "kl_weight": 1e-4,
            "pixel_weight": 1.0,
            "steps": 1500,
            "batch_size": 64,
        },
        build=build_fae,
        data=fae_data,
        generator=lambda model, config: AutoencoderGenerator(model, int(config["levels"])),
        reference=image_reference,
        load_data=load_images,
        evaluate=fae_evaluate,
        metrics=("recon", "fd", "probe_acc"),
        eval_options=lambda config: ("data",),
        picture=image_picture,
        kind="image",
    )
)


def _load_fae(config: dict[str, Any]) -> tuple[FeatureAutoencoder, dict[str, Any]]:
    path = Path(config["fae_run"]).expanduser()
    if run_recipe(path) is None:
        raise FileNotFoundError(
            f"no FAE run in {path}; train one first (flowforge train digits-fae --out {path}) "
            "or point to it with --set fae_run=FOLDER"
        )
    fae, fae_config = load_run(path)
    if not isinstance(fae, FeatureAutoencoder):
        raise ValueError(f"{path} is a {fae_config['recipe']} run, not an FAE; train digits-fae")
    return fae, fae_config


_FAE_KEYS = (
    "patch",
    "feature_dim",
    "feature_steps",
    "feature_seed",
    "latent_dim",
    "heads",
    "width",
    "kl_weight",
    "pixel_weight",
)


def fae_latent_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Training images; records the FAE's architecture and its latents' per-channel shift and scale."""
    fae, fae_config = _load_fae(config)
    x, _ = _digits("train")
    shift, scale = latent_stats(fae, x)
    return x, {
        "fae": {k: fae_config[k] for k in _FAE_KEYS},
        "image_shape": [1, 8, 8],
        "levels": 17,
        "shift": shift.tolist(),
        "scale": scale.tolist(),
    }


def build_fae_latent(config: dict[str, Any]) -> LatentModel:
    """Flow matching (an MLP velocity) on the FAE's standardised ``(latent_dim, 1, 1)`` latents."""
    fae = build_fae({**config, **config["fae"]})
    if run_recipe(Path(config["fae_run"]).expanduser()) is not None:
        fae.load_state_dict(_load_fae(config)[0].state_dict())
    fm = FlowMatching(MLP(dim=fae.latent_shape, width=int(config["width_fm"]), depth=int(config["depth_fm"])))
    return LatentModel(fm, fae, shift=torch.tensor(config["shift"]), scale=torch.tensor(config["scale"]))


class FAELatentGenerator:
    """Latent-flow samples decoded by the FAE, as integer pixels ``(n, 1, 8, 8)``."""

    def __init__(self, model: LatentModel, config: dict[str, Any]) -> None:
        self.model, self.levels = model, int(config["levels"])

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, **opts: Any) -> Tensor:
        x = self.model.generator().sample(n, generator=generator, **opts)
        return quantize(x.clamp(-1, 1), self.levels)


def fae_latent_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    """``solver`` and ``steps`` (defaults: the run's ``solver``, ``sample_steps``)."""
    return {
        "solver": given.get("solver", config["solver"]),
        "steps": int(given.get("steps", config["sample_steps"])),
    }


def fae_latent_evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Callable[[], Tensor],
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """``fd`` of ``n`` decoded latent-flow samples against the test images; ``probe_acc`` of the FAE latents."""
    out: dict[str, Any] = {}
    n = int(n or config["eval_n"])
    if "fd" in metrics:
        gen = FAELatentGenerator(model, config)
        x = gen.sample(
            n, generator=torch.Generator().manual_seed(seed), **fae_latent_kwargs(config, options, n)
        )
        out.update(image_metrics_of(x, check_images(data(), config), config, ["fd"]), n=n)
    if "probe_acc" in metrics:
        out["probe_acc"] = _probe(model.autoencoder)
    return out


register(
    Recipe(
        name="digits-fae-latent",
        summary="latent flow matching on a digits-fae run's 6-d FAE latents (MLP velocity)",
        defaults={
            **_COMMON,
            "fae_run": "runs/digits-fae",
            "width_fm": 128,
            "depth_fm": 3,
            "steps": 2000,
            "batch_size": 128,
            "ema_decay": 0.999,
            "solver": "heun",
            "sample_steps": 20,
            "eval_n": 1438,
        },
        build=build_fae_latent,
        data=fae_latent_data,
        generator=FAELatentGenerator,
        sample_options=lambda config: ("solver", "steps"),
        sample_kwargs=fae_latent_kwargs,
        eval_options=lambda config: ("data", "n", "solver", "steps"),
        reference=image_reference,
        load_data=load_images,
        evaluate=fae_latent_evaluate,
        metrics=("fd", "probe_acc"),
        picture=image_picture,
        kind="image",
    )
)
