"""``gaussians3d-latent``: latent flow matching on the latents of a frozen feed-forward 3-D reconstruction
model, with the three latent-space practices of "Taming feed-forward reconstruction models as latent
encoders for 3D generation" as options (synthetic stand-in; see :mod:`flowforge.apps.scenes3d`).

Data: ``n_train`` scenes of ``gaussians`` coloured 3-D Gaussians (seed ``data_seed``) rendered to two
``image_size`` views. The :class:`~flowforge.apps.scenes3d.GaussianGridReconstructor` (views -> 8x4x4x4
grid of Gaussians, its renderer as decoder) is trained once in the ``data`` step (``rec_steps``, seed
``rec_seed``), frozen, and saved in the run. Options: ``standardize`` = ``channel`` (per-channel shift and
scale), ``global`` (one number for all channels, Stable Diffusion style) or ``none``; ``spatial_weights``
(loss weight ``weight_floor + opacity`` per latent cell); ``decoder_loss`` (weight of the rendering-space
loss, 0: off). Eval keys: ``fd`` (rendered views of samples against held-out scenes, in the 96-d pooled
view features of :func:`~flowforge.apps.scenes3d.view_features`), ``fd_control`` (a fresh draw of true
scenes against the same held-out scenes), ``recon_fd`` (the frozen encoder's reconstructions).

Defaults follow ``benchmarks/latent_practices.py`` (16x16 views, 800 reconstructor steps, 1,000 flow steps,
seeds 0 and 1; FD of 2,000 samples, fresh-draw control 0.016, reconstruction floor 0.38): one global
shift/scale gives FD 65 / 69, per-channel standardisation 0.78 / 0.84, adding the decoder-space loss to it
0.57 / 0.61, adding opacity weights to it 1.12 / 1.19 (on top of the global standardisation 69 / 75). So
``standardize=channel`` and ``decoder_loss=1`` are on and ``spatial_weights`` is off by default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.apps.scenes3d import GaussianGridReconstructor, render_views, sample_scenes, view_features
from flowforge.continuous import FlowMatching
from flowforge.core.choices import unknown_choice
from flowforge.latent import LatentModel, LatentStandardizer
from flowforge.metrics import frechet_distance
from flowforge.nn import MLP
from flowforge.recipes.registry import Recipe, register

__all__ = ["build_gaussians3d", "scene_views"]

_PRETRAINED: dict[tuple, GaussianGridReconstructor] = {}
_STANDARDIZE = ("channel", "global", "none")


def scene_views(config: dict[str, Any], n: int, seed: int) -> Tensor:
    """``n`` true scenes of the run's kind, rendered: ``(n, 2, 3, H, H)`` in ``[-1, 1]``."""
    g = torch.Generator().manual_seed(seed)
    return render_views(sample_scenes(n, int(config["gaussians"]), generator=g), int(config["image_size"]))


def _rec_key(config: dict[str, Any]) -> tuple:
    keys = ("image_size", "gaussians", "n_train", "data_seed", "rec_width", "rec_steps", "rec_lr", "rec_seed")
    return tuple(config[k] for k in keys)


def _new_rec(config: dict[str, Any]) -> GaussianGridReconstructor:
    return GaussianGridReconstructor(image_size=int(config["image_size"]), width=int(config["rec_width"]))


def _pretrain_rec(config: dict[str, Any], views: Tensor) -> GaussianGridReconstructor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config["rec_seed"]))
        rec = _new_rec(config)
        g = torch.Generator().manual_seed(int(config["rec_seed"]))
        opt = torch.optim.AdamW(rec.parameters(), lr=float(config["rec_lr"]), weight_decay=0.0)
        for _ in range(int(config["rec_steps"])):
            loss = rec.loss(views[torch.randint(0, len(views), (64,), generator=g)])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return rec.eval().requires_grad_(False)


def gaussians3d_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Rendered training scenes; trains (once, cached for ``build``) the frozen reconstructor and records
    the latents' standardisation (``shift``, ``scale``) in the config."""
    if config["standardize"] not in _STANDARDIZE:
        raise unknown_choice(
            "standardize", config["standardize"], _STANDARDIZE, hint="--set standardize=channel"
        )
    views = scene_views(config, int(config["n_train"]), int(config["data_seed"]))
    key = _rec_key(config)
    if key not in _PRETRAINED:
        _PRETRAINED[key] = _pretrain_rec(config, views)
    rec = _PRETRAINED[key]
    with torch.no_grad():
        u = torch.cat([rec.encode(v)[0] for v in views.split(500)])
    st = LatentStandardizer(rec.latent_channels, per_channel=config["standardize"] == "channel")
    if config["standardize"] != "none":
        st.fit(u)
    return views, {
        "shift": st.shift.tolist(),
        "scale": st.scale.tolist(),
        "latent_shape": list(rec.latent_shape),
    }


def build_gaussians3d(config: dict[str, Any]) -> LatentModel:
    """Flow matching (MLP velocity on the 512-d grid) on the frozen reconstructor's standardised latents."""
    rec = _new_rec(config)
    key = _rec_key(config)
    if key in _PRETRAINED:
        rec.load_state_dict(_PRETRAINED[key].state_dict())
    floor = float(config["weight_floor"])
    if floor < 0:
        raise ValueError(f"weight_floor must be >= 0, got {floor}")
    fm = FlowMatching(MLP(dim=rec.latent_shape, width=int(config["width"]), depth=int(config["depth"])))
    return LatentModel(
        fm,
        rec,
        shift=torch.tensor(config["shift"]),
        scale=torch.tensor(config["scale"]),
        spatial_weight=(lambda u: floor + rec.occupancy(u)) if config["spatial_weights"] else None,
        decoder_loss=float(config["decoder_loss"]),
    )


class SceneGenerator:
    """Latent-flow samples rendered by the frozen reconstructor's renderer: views ``(n, 2, 3, H, H)``."""

    def __init__(self, model: LatentModel, config: dict[str, Any]) -> None:
        self.model, self.config = model, config

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, **opts: Any) -> Tensor:
        return self.model.generator().sample(n, generator=generator, **opts)


def scene_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    """``solver`` and ``steps`` (defaults: the run's ``solver``, ``sample_steps``)."""
    return {
        "solver": given.get("solver", config["solver"]),
        "steps": int(given.get("steps", config["sample_steps"])),
    }


def gaussians3d_evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Callable[[], Tensor],
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """``fd``, ``fd_control`` and ``recon_fd`` in pooled view features (see the module docstring)."""
    n = int(n or config["eval_n"])
    ref = data()
    if ref.dim() != 5 or tuple(ref.shape[1:3]) != (2, 3):
        raise ValueError(f"reference views must be (N, 2, 3, H, H), got {tuple(ref.shape)}")
    f_ref = view_features(ref)
    out: dict[str, Any] = {"n": n}
    if "fd" in metrics:
        x = SceneGenerator(model, config).sample(
            n, generator=torch.Generator().manual_seed(seed), **scene_kwargs(config, options, n)
        )
        out["fd"] = frechet_distance(view_features(x), f_ref)
    if "fd_control" in metrics:
        out["fd_control"] = frechet_distance(view_features(scene_views(config, n, 2 + seed)), f_ref)
    if "recon_fd" in metrics:
        with torch.no_grad():
            out["recon_fd"] = frechet_distance(view_features(model.autoencoder(ref)), f_ref)
    return out


register(
    Recipe(
        name="gaussians3d-latent",
        summary="latent FM on a frozen 2-view 3-D reconstructor's Gaussian grid (standardise/weights/decoder loss)",
        defaults={
            "threads": 0,
            "device": "",
            "grad_clip": 1.0,
            "image_size": 16,
            "gaussians": 3,
            "n_train": 4000,
            "data_seed": 0,
            "rec_width": 24,
            "rec_steps": 800,
            "rec_lr": 2e-3,
            "rec_seed": 0,
            "standardize": "channel",
            "spatial_weights": False,  # measured: worse in every setting (benchmarks/latent_practices.py)
            "weight_floor": 0.1,
            "decoder_loss": 1.0,
            "width": 256,
            "depth": 3,
            "steps": 1000,
            "batch_size": 128,
            "lr": 1e-3,
            "warmup": 0,
            "ema_decay": 0.999,
            "solver": "heun",
            "sample_steps": 20,
            "eval_n": 2000,
        },
        build=build_gaussians3d,
        data=gaussians3d_data,
        generator=SceneGenerator,
        sample_options=lambda config: ("solver", "steps"),
        sample_kwargs=scene_kwargs,
        eval_options=lambda config: ("n", "solver", "steps"),
        reference=lambda config, n, seed: scene_views(config, int(config["eval_n"]), 1),
        evaluate=gaussians3d_evaluate,
        metrics=("fd", "fd_control", "recon_fd"),
        kind="continuous",
    )
)
