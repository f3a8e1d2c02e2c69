"""``turbulence-sr``: decode stored (downsampled) 2-D turbulence with a conditional flow or an SR-GAN.

::

    flowforge train turbulence-sr --out runs/turb                      # flow matching, compression 16
    flowforge train turbulence-sr --out runs/turb-gan --set decoder=gan factor=8
    flowforge eval runs/turb        # rel_l2, spectrum_error, grad_pdf_w1 (+ _bicubic, _spectral baselines)

Training data are vorticity snapshots of forced Kolmogorov flow on an ``n x n`` periodic grid from the
pseudo-spectral solver :class:`~flowforge.apps.turbulence.NavierStokes2D` (``flows`` runs, ``snapshots`` each,
``every`` time units apart after ``burn_in``; seed = the run's seed). A field is stored as its
``factor x factor`` box averages (compression ``factor**2``). ``decoder=flow``: a
:class:`~flowforge.apps.turbulence.FlowSuperResolver` (flow matching, a UNet with the upsampled stored field
as ``extra`` channels); ``decoder=gan``: an :class:`~flowforge.apps.turbulence.SRGAN` (ZipGAN's idea,
abstract-inspired). ``frames=3`` (flow only) trains temporal interpolation: the middle of three snapshots
from the two stored ends.

**Eval keys**, on held-out flows simulated with another seed (``eval_flows x eval_snapshots`` fields):
``rel_l2`` (mean per-field relative L2), ``spectrum_error`` (mean over shells ``1..n//3`` of the per-shell
relative energy-spectrum error), ``spectrum_error_k{1,2,4,8,16}``, ``grad_pdf_w1`` (W1 between the
standardised velocity-gradient PDFs), the same three for the fixed decoders (``*_bicubic``, ``*_spectral``;
for ``frames=3``: ``*_linear``, linear in time of the spectrally decoded ends), ``compression``, and
``critic_spearman`` (metrics that do not apply to a run are ``None``; GAN runs: Spearman's rho between the critic's score and the true error over the
decoded fields of all decoders; ``None`` for flow runs). ``sample`` decodes held-out fields
(``--steps``: flow steps).

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("turbulence-sr")
    >>> r.defaults["factor"], r.defaults["decoder"], "grad_pdf_w1" in r.metrics
    (4, 'flow', True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from flowforge.apps.turbulence import (
    SRGAN,
    FlowSuperResolver,
    bicubic_upsample,
    compression_ratio,
    downsample,
    gradient_pdf_distance,
    relative_l2,
    simulate_snapshots,
    spearman,
    spectral_upsample,
    spectrum_error,
)
from flowforge.recipes.registry import Recipe, register

__all__ = [
    "TURBULENCE_METRICS",
    "TurbulenceDecoder",
    "turbulence_data",
    "build_turbulence",
    "turbulence_evaluate",
]

SHELLS = (1, 2, 4, 8, 16)
TURBULENCE_METRICS = (
    "rel_l2",
    "spectrum_error",
    *(f"spectrum_error_k{k}" for k in SHELLS),
    "grad_pdf_w1",
    "rel_l2_bicubic",
    "spectrum_error_bicubic",
    "grad_pdf_w1_bicubic",
    "rel_l2_spectral",
    "spectrum_error_spectral",
    "grad_pdf_w1_spectral",
    "rel_l2_linear",
    "spectrum_error_linear",
    "grad_pdf_w1_linear",
    "compression",
    "critic_spearman",
)
_SIM_KEYS = ("nu", "dt", "forcing", "forcing_k", "amplitude", "drag")


def _simulate(config: dict[str, Any], flows: int, snapshots: int, seed: int) -> Tensor:
    """Snapshots ``(flows, snapshots, n, n)`` (float32)."""
    return simulate_snapshots(
        flows,
        int(config["n"]),
        snapshots=snapshots,
        every=float(config["every"]),
        burn_in=float(config["burn_in"]),
        seed=seed,
        **{k: config[k] for k in _SIM_KEYS},
    ).float()


def _frames(w: Tensor, frames: int) -> Tensor:
    """``(F, S, n, n)`` trajectories as training items ``(N, frames, n, n)`` (consecutive triples for 3)."""
    if frames == 1:
        return w.reshape(-1, 1, *w.shape[-2:])
    if w.shape[1] < 3:
        raise ValueError(f"frames=3 needs >= 3 snapshots a flow, got {w.shape[1]}; e.g. --set snapshots=40")
    return torch.stack([w[:, i : i + 3] for i in range(w.shape[1] - 2)], 1).reshape(-1, 3, *w.shape[-2:])


def _check(config: dict[str, Any]) -> None:
    if config["decoder"] not in ("flow", "gan"):
        raise ValueError(f"unknown decoder {config['decoder']!r}; write --set decoder=flow or decoder=gan")
    if int(config["frames"]) not in (1, 3):
        raise ValueError(f"frames must be 1 (super-resolution) or 3 (interpolation), got {config['frames']}")
    if int(config["frames"]) == 3 and config["decoder"] != "flow":
        raise ValueError("temporal interpolation (frames=3) is a flow decoder; write --set decoder=flow")
    n, f = int(config["n"]), int(config["factor"])
    if f < 2 or n % f:
        raise ValueError(f"factor must be >= 2 and divide n={n}, got factor={f}; e.g. --set factor=4")


def turbulence_data(config: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """Training items ``(N, frames, n, n)`` and the field / residual scales the decoders work in."""
    _check(config)
    w = _simulate(config, int(config["flows"]), int(config["snapshots"]), 1_000 + int(config.get("seed", 0)))
    x = _frames(w, int(config["frames"]))
    scale, f = float(w.std()), int(config["factor"])
    ends = x if x.shape[1] == 1 else x[:, [0, 2]]
    base = spectral_upsample(downsample(ends / scale, f), f).mean(1, keepdim=True)
    mid = x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1] / scale
    return x, {"scale": scale, "residual_scale": float((mid - base).std())}


def build_turbulence(config: dict[str, Any]) -> nn.Module:
    """A :class:`FlowSuperResolver` (``decoder=flow``) or an :class:`SRGAN` (``decoder=gan``)."""
    _check(config)
    f, scale = int(config["factor"]), float(config.get("scale", 1.0))
    if config["decoder"] == "gan":
        return SRGAN(f, scale=scale, adv_weight=float(config["adv_weight"]), channels=int(config["channels"]))
    return FlowSuperResolver(
        f,
        int(config["n"]),
        frames=int(config["frames"]),
        scale=scale,
        residual_scale=float(config.get("residual_scale", 1.0)),
        patch=int(config["patch"]),
        channels=int(config["channels"]),
    )


class TurbulenceDecoder:
    """A trained decoder as a Generator: ``sample(n)`` decodes ``n`` held-out stored fields (or ``low=``)."""

    def __init__(self, model: nn.Module, config: dict[str, Any]) -> None:
        self.model, self.config = model, config

    def decode(self, low: Tensor, *, steps: int = 8, generator: torch.Generator | None = None) -> Tensor:
        """Full fields ``(B, 1, n, n)`` from stored ones ``(B, K, m, m)``."""
        if isinstance(self.model, SRGAN):
            return self.model.decode(low)
        return self.model.decode(low, steps=steps, generator=generator)

    def sample(
        self, n: int, *, generator: torch.Generator | None = None, steps: int = 8, low: Tensor | None = None
    ) -> Tensor:
        """Decoded held-out fields ``(n, 1, n_grid, n_grid)``."""
        if low is None:
            x = turbulence_reference(self.config, n, 0)
            low = downsample(x if x.shape[1] == 1 else x[:, [0, 2]], int(self.config["factor"]))
        return self.decode(low, steps=steps, generator=generator)


def turbulence_generator(model: nn.Module, config: dict[str, Any]) -> TurbulenceDecoder:
    return TurbulenceDecoder(model.eval(), config)


def turbulence_reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    """``n`` held-out items ``(n, frames, n_grid, n_grid)`` from flows simulated with another seed."""
    per = int(config["eval_snapshots"])
    flows = max(1, -(-n // max(1, per - (2 if int(config["frames"]) == 3 else 0))))
    w = _simulate(config, flows, per, 50_000 + seed)
    return _frames(w, int(config["frames"]))[:n]


def _scores(pred: Tensor, true: Tensor, suffix: str = "") -> dict[str, float]:
    se = spectrum_error(pred[:, 0], true[:, 0])
    out = {
        f"rel_l2{suffix}": float(relative_l2(pred, true).mean()),
        f"spectrum_error{suffix}": float(se.mean()),
        f"grad_pdf_w1{suffix}": float(gradient_pdf_distance(pred[:, 0], true[:, 0])),
    }
    if not suffix:
        out.update({f"spectrum_error_k{k}": float(se[k - 1]) for k in SHELLS if k <= len(se)})
    return out


def turbulence_evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Any,
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    steps: int | None = None,
    **_: Any,
) -> dict[str, Any]:
    """The decoder's and the fixed decoders' metrics on held-out flows (see the module docstring)."""
    model.eval()
    f, frames = int(config["factor"]), int(config["frames"])
    x = turbulence_reference(config, int(n or config["eval_flows"] * config["eval_snapshots"]), seed)
    true = x[:, frames // 2 : frames // 2 + 1]
    low = downsample(x if frames == 1 else x[:, [0, 2]], f)
    dec = TurbulenceDecoder(model, config)
    g = torch.Generator().manual_seed(seed)
    pred = dec.decode(low, steps=int(steps or config["sample_steps"]), generator=g)
    values: dict[str, Any] = {**_scores(pred, true), "compression": compression_ratio(f)}
    fixed = {"spectral": spectral_upsample(low, f).mean(1, keepdim=True)}
    if frames == 1:
        fixed["bicubic"] = bicubic_upsample(low, f)
    else:
        fixed["linear"] = fixed.pop("spectral")
    for name, p in fixed.items():
        values.update(_scores(p, true, f"_{name}"))
    values["critic_spearman"] = None
    if isinstance(model, SRGAN):
        pool = [pred, *fixed.values()]
        scores = torch.cat([model.score(p) for p in pool])
        errs = torch.cat([relative_l2(p, true) for p in pool])
        values["critic_spearman"] = float(spearman(scores, errs))
    out = {m: values.get(m) for m in metrics}
    out["eval_fields"] = int(true.shape[0])
    return out


_DEFAULTS: dict[str, Any] = {
    "n": 64,
    "nu": 2e-3,
    "dt": 0.02,
    "forcing": "kolmogorov",
    "forcing_k": 4,
    "amplitude": 1.0,
    "drag": 0.1,
    "flows": 8,
    "snapshots": 40,
    "every": 0.5,
    "burn_in": 30.0,
    "factor": 4,
    "frames": 1,
    "decoder": "flow",
    "channels": 32,
    "patch": 4,
    "adv_weight": 0.01,
    "steps": 800,
    "batch_size": 16,
    "lr": 2e-3,
    "warmup": 50,
    "grad_clip": 1.0,
    "ema_decay": 0.995,
    "threads": 1,
    "eval_flows": 4,
    "eval_snapshots": 8,
    "sample_steps": 8,
}

register(
    Recipe(
        name="turbulence-sr",
        summary="decode stored (downsampled) 2-D turbulence: conditional flow matching or SR-GAN (ZipGAN's idea)",
        defaults=_DEFAULTS,
        build=build_turbulence,
        data=turbulence_data,
        generator=turbulence_generator,
        sample_options=lambda config: ("steps",),
        sample_kwargs=lambda config, given, n: {"steps": int(given.get("steps", config["sample_steps"]))},
        eval_options=lambda config: ("n", "steps"),
        reference=turbulence_reference,
        evaluate=turbulence_evaluate,
        metrics=TURBULENCE_METRICS,
        picture=lambda samples, config: samples[:, 0],
        kind="science",
    )
)
