"""``sprites-starflow-v``: a frame-causal TARFlow (STARFlow-V's global-local layout) on bouncing-sprite videos.

::

    flowforge train sprites-starflow-v --out runs/video            # 8 frames of 8x8, noise 0.1, denoiser on
    flowforge eval runs/video                                      # Jacobi vs sequential, FD with/without denoiser
    flowforge sample runs/video --n 16 --method jacobi --out v.npy

Data: ``n_train`` videos of 1 to ``max_sprites`` bouncing Gaussian sprites
(:func:`~flowforge.apps.video.moving_sprites`, seed ``1000 + seed``), ``frames`` frames of ``size x size``
in ``[-1, 1]``. Model: :class:`~flowforge.normalizing.VideoTARFlow` with ``blocks`` shallow per-frame
blocks (``layers`` deep each, ``patch x patch`` tokens) and one deep block causal over all frames
(``deep_layers``), trained on ``x + noise_std * eps`` together with the causal flow-score denoiser
(``denoiser_width``; 0 turns it off).

**Eval keys** (``eval_samples`` videos from base noise of seed ``--seed``; held-out videos: ``n_test`` with
seed ``50_000``, the control a fresh draw with seed ``60_000 + seed``):

* on the first ``decode_batch`` noises (a small batch, as when streaming one video; Jacobi all frames at
  once, tolerance ``jacobi_tol``): ``jacobi_max_abs_diff``: max ``|x_jacobi - x_sequential|`` over all
  pixels (before denoising);
  ``sequential_seconds`` / ``jacobi_seconds`` (wall, this process's threads) and ``jacobi_speedup``;
  ``sequential_passes`` / ``jacobi_passes``: transformer calls (all blocks); ``jacobi_iters_deep``: the
  deep block's fixed-point iterations (its sequential count is ``frames * tokens``); ``float32_floor``:
  max ``|x_sequential - x_sequential_float64|`` (float32 rounding along the autoregressive chain; Jacobi
  cannot match sequential decoding more closely than this).
* on all ``eval_samples`` videos (decoded sequentially): ``fd_frames_{raw,tweedie,learned,control}``:
  Frechet distance of frames in fixed random-conv features (:func:`~flowforge.apps.video.frame_fd`) between the held-out videos and: raw samples, samples after
  Tweedie with the flow's own score, after the learned causal denoiser, and a fresh draw of true videos
  (the noise floor); ``fd_pairs_*`` the same on consecutive frame pairs (motion);
  ``learned`` is ``None`` without a denoiser.
* ``nll``: held-out NLL of the noisy test videos in nats a dimension.

``sprites-latent-starflow-v`` is the same flow on the latents of a per-frame
:class:`~flowforge.latent.KLAutoencoder` (:class:`~flowforge.apps.video.LatentVideoFlow`: ``latent_channels``
channels at ``size/2 x size/2``, widths ``ae_channels``): its first ``ae_steps`` steps train the
autoencoder, the rest the flow on the frozen, standardised latents (``ema_decay`` 0.99 so that the
averaged autoencoder catches up with the frozen one). Jacobi, passes, ``float32_floor`` and ``nll`` are in
latent units (its NLL is not comparable with the pixel recipe's); the FDs are of decoded frames, with
``fd_*_recon`` (the held-out videos through the autoencoder: the floor of a latent model) and
``recon_mse``.

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("sprites-starflow-v")
    >>> r.defaults["frames"], r.defaults["size"], "jacobi_max_abs_diff" in r.metrics
    (8, 8, True)
    >>> lat = get_recipe("sprites-latent-starflow-v")
    >>> lat.defaults["latent_channels"], lat.defaults["ae_steps"], "fd_frames_recon" in lat.metrics
    (4, 500, True)
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.apps.video import LatentVideoFlow, frame_fd, moving_sprites, pair_fd
from flowforge.normalizing import VideoTARFlow
from flowforge.recipes.registry import Recipe, register

__all__ = [
    "LATENT_VIDEO_METRICS",
    "VIDEO_METRICS",
    "build_latent_video_flow",
    "build_video_flow",
    "video_data",
    "video_reference",
    "video_evaluate",
]

_DENOISERS = ("raw", "tweedie", "learned", "control")
VIDEO_METRICS = (
    "jacobi_max_abs_diff",
    "sequential_seconds",
    "jacobi_seconds",
    "jacobi_speedup",
    "sequential_passes",
    "jacobi_passes",
    "jacobi_iters_deep",
    "float32_floor",
    *(f"fd_frames_{k}" for k in _DENOISERS),
    *(f"fd_pairs_{k}" for k in _DENOISERS),
    "nll",
)
LATENT_VIDEO_METRICS = (*VIDEO_METRICS, "recon_mse", "fd_frames_recon", "fd_pairs_recon")


def _videos(config: dict[str, Any], n: int, seed: int) -> Tensor:
    return moving_sprites(
        n,
        frames=int(config["frames"]),
        size=int(config["size"]),
        max_sprites=int(config["max_sprites"]),
        radius=float(config["radius"]),
        speed=(float(config["speed_lo"]), float(config["speed_hi"])),
        seed=seed,
    )


def video_data(config: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """``n_train`` training videos ``(N, F, 1, size, size)`` (seed ``1000 + seed``)."""
    return _videos(config, int(config["n_train"]), 1_000 + int(config.get("seed", 0))), {}


def video_reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    """The ``n_test`` held-out videos (seed 50_000; ``n`` and ``seed`` are ignored: a fixed test set)."""
    return _videos(config, int(config["n_test"]), 50_000)


def build_video_flow(config: dict[str, Any]) -> VideoTARFlow:
    """A :class:`VideoTARFlow` on ``(frames, 1, size, size)`` videos from a flat config."""
    size = int(config["size"])
    return VideoTARFlow(
        int(config["frames"]),
        (1, size, size),
        patch=int(config["patch"]),
        blocks=int(config["blocks"]),
        width=int(config["width"]),
        layers=int(config["layers"]),
        deep_layers=int(config["deep_layers"]),
        head_dim=int(config["head_dim"]),
        noise_std=float(config["noise_std"]),
        denoiser_width=int(config["denoiser_width"]),
        denoiser_layers=int(config["denoiser_layers"]),
        denoiser_batch=int(config["denoiser_batch"]) or None,
    )


def build_latent_video_flow(config: dict[str, Any]) -> LatentVideoFlow:
    """A :class:`~flowforge.apps.video.LatentVideoFlow` (autoencoder phase, then the latent flow) from a flat config."""
    if not 0 <= int(config["ae_steps"]) < int(config["steps"]):
        raise ValueError(
            f"ae_steps={config['ae_steps']} must be below steps={config['steps']} (the flow trains after the "
            "autoencoder); e.g. --set ae_steps=500 with --steps 1500"
        )
    return LatentVideoFlow(
        int(config["frames"]),
        int(config["size"]),
        latent_channels=int(config["latent_channels"]),
        ae_channels=tuple(int(c) for c in str(config["ae_channels"]).split("-")),
        ae_res_blocks=int(config["ae_res_blocks"]),
        kl_weight=float(config["kl_weight"]),
        ae_steps=int(config["ae_steps"]),
        patch=int(config["patch"]),
        blocks=int(config["blocks"]),
        width=int(config["width"]),
        layers=int(config["layers"]),
        deep_layers=int(config["deep_layers"]),
        head_dim=int(config["head_dim"]),
        noise_std=float(config["noise_std"]),
        denoiser_width=int(config["denoiser_width"]),
        denoiser_layers=int(config["denoiser_layers"]),
        denoiser_batch=int(config["denoiser_batch"]) or None,
    )


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def video_evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Any,
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **_: Any,
) -> dict[str, Any]:
    """Jacobi against sequential decoding and FD with and without the denoisers (module docstring).

    A :class:`~flowforge.apps.video.LatentVideoFlow` is evaluated on its latent flow (Jacobi, passes,
    float32 floor, NLL: all in latent units) and its decoded samples (FD); it adds ``recon_mse`` (the
    autoencoder's mean squared error on the held-out videos) and ``fd_{frames,pairs}_recon`` (FD of those
    reconstructions: what the latent flow can reach at best).
    """
    model.eval()
    latent = isinstance(model, LatentVideoFlow)
    flow: VideoTARFlow = model.flow if latent else model

    def decode(u: Tensor) -> Tensor:
        with torch.no_grad():
            return model.decode(u) if latent else u

    n = int(n or config["eval_samples"])
    test = data()
    z = flow.base.sample(n, torch.Generator().manual_seed(seed))
    tol, zd = float(config["jacobi_tol"]), z[: int(config["decode_batch"])]
    seq_stats: dict[str, Any] = {}
    jac_stats: dict[str, Any] = {}
    with torch.no_grad():
        (x_seq, _), t_seq = _timed(lambda: flow.inverse(zd, method="sequential", stats=seq_stats))
        (x_jac, _), t_jac = _timed(lambda: flow.inverse(zd, method="jacobi", jacobi_tol=tol, stats=jac_stats))
        x = flow.inverse(z, method="sequential")[0]  # the FD samples (the faster method on a CPU)
    samples = {
        "raw": decode(x),
        "tweedie": decode(flow.apply_denoiser(x, "tweedie")) if flow.noise_std > 0 else None,
        "learned": decode(flow.apply_denoiser(x, "learned")) if flow.denoiser is not None else None,
        "control": _videos(config, n, 60_000 + seed),
    }
    values: dict[str, Any] = {
        "jacobi_max_abs_diff": float((x_jac - x_seq).abs().max()),
        "sequential_seconds": t_seq,
        "jacobi_seconds": t_jac,
        "jacobi_speedup": t_seq / max(t_jac, 1e-12),
        "sequential_passes": int(seq_stats["transformer_calls"]),
        "jacobi_passes": int(jac_stats["transformer_calls"]),
        "jacobi_iters_deep": int(jac_stats["jacobi_iters"][0]),
        "float32_floor": None,
    }
    if "float32_floor" in metrics and z.dtype == torch.float32:
        with torch.no_grad():
            x64 = copy.deepcopy(flow).double().inverse(zd.double(), method="sequential")[0]
        values["float32_floor"] = float((x_seq.double() - x64).abs().max())
    if latent:
        with torch.no_grad():
            test_u = model.encode(test)
            samples["recon"] = model.decode(test_u)
        values["recon_mse"] = float((samples["recon"] - test).square().mean())
    else:
        test_u = test
    for key, v in samples.items():
        values[f"fd_frames_{key}"] = None if v is None else frame_fd(v, test)
        values[f"fd_pairs_{key}"] = None if v is None else pair_fd(v, test)
    if "nll" in metrics:
        g = torch.Generator().manual_seed(seed + 1)
        noisy = test_u + flow.noise_std * torch.randn(test_u.shape, generator=g)
        with torch.no_grad():
            values["nll"] = float(-(flow.log_prob(noisy) / noisy[0].numel()).mean())
    out = {m: values.get(m) for m in metrics}
    out["eval_samples"] = n
    return out


_DEFAULTS: dict[str, Any] = {
    "frames": 8,
    "size": 8,
    "max_sprites": 2,
    "radius": 0.8,
    "speed_lo": 0.5,
    "speed_hi": 1.5,
    "n_train": 20_000,
    "n_test": 512,
    "patch": 2,
    "blocks": 2,
    "width": 48,
    "layers": 1,
    "deep_layers": 2,
    "head_dim": 24,
    "noise_std": 0.1,
    "denoiser_width": 64,
    "denoiser_layers": 2,
    "denoiser_batch": 16,
    "steps": 1500,
    "batch_size": 64,
    "lr": 2e-3,
    "warmup": 100,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "threads": 1,
    "eval_samples": 512,
    "jacobi_tol": 1e-12,
    "decode_batch": 8,
    "method": "jacobi",
}

_LATENT_DEFAULTS: dict[str, Any] = {
    **_DEFAULTS,
    "latent_channels": 4,  # 4x4x4 latents in 2x2 patches: 4 tokens of 16 a frame (2 channels: worse FD)
    "ae_channels": "16-32",
    "ae_res_blocks": 0,
    "kl_weight": 1e-4,
    "ae_steps": 500,
    "steps": 2000,
    "ema_decay": 0.99,
}


def _video_sample_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    """``sample`` keywords: the decoding ``method`` (given or the run's) and its Jacobi tolerance."""
    return {"method": given.get("method", config["method"]), "jacobi_tol": float(config["jacobi_tol"])}


for _name, _summary, _defaults, _build, _metrics in (
    (
        "sprites-starflow-v",
        "frame-causal TARFlow (STARFlow-V global-local, Jacobi, flow-score denoiser) on sprite videos",
        _DEFAULTS,
        build_video_flow,
        VIDEO_METRICS,
    ),
    (
        "sprites-latent-starflow-v",
        "frame-causal TARFlow on per-frame KL-autoencoder latents of sprite videos (STARFlow-V latent)",
        _LATENT_DEFAULTS,
        build_latent_video_flow,
        LATENT_VIDEO_METRICS,
    ),
):
    register(
        Recipe(
            name=_name,
            summary=_summary,
            defaults=_defaults,
            build=_build,
            data=video_data,
            generator=lambda model, config: model.eval(),
            sample_options=lambda config: ("method",),
            sample_kwargs=_video_sample_kwargs,
            eval_options=lambda config: ("n",),
            reference=video_reference,
            evaluate=video_evaluate,
            metrics=_metrics,
            picture=lambda samples, config: samples.flatten(0, 1)[:, 0],
            kind="normalizing",
        )
    )
