"""``audio-sep`` / ``audio-sep-mask``: language-queried separation of procedural 8 kHz sounds (FlowSep's idea).

::

    flowforge train audio-sep --out runs/sep            # latent rectified flow on [mixture latent, query]
    flowforge train audio-sep-mask --out runs/sep-mask  # ratio-mask regressor of about the same size
    flowforge eval runs/sep      # si_sdr / si_sdri by query type, mixture floor, IRM oracle, time per clip

Training data are ``n_train`` two-source mixtures (:func:`~flowforge.apps.audio.make_mixtures`, seed
``1000 + seed``: a harmonic stack, a rising chirp or a noise burst against one of the other classes at a
target-to-interferer ratio in ``[-tir_db, tir_db]`` dB), each with one query asking for its target: the class
token or a caption (``"rising chirp"``, ``"hiss"``, ...) with probability 1/2 each. ``audio-sep`` is a
:class:`~flowforge.apps.audio.LatentFlowSeparator` (the first ``ae_steps`` steps train its spectrogram
autoencoder, by default with the energy-weighted loss ``ae_weighting=energy``, the rest the latent flow);
``audio-sep-mask`` a :class:`~flowforge.apps.audio.RatioMaskSeparator`.
Both resynthesise with the mixture's phase (``--set phase=griffin-lim`` for Griffin-Lim). Flow runs sample
with ``solver`` / ``sample_steps``; ``draws=K`` averages the magnitudes of K draws and ``clamp=true`` caps the
estimate at the mixture's magnitude (sampling options, they can be changed with ``--set`` at train time).

**Eval keys**, on ``eval_n`` held-out mixtures (seed ``50000 + eval seed``), each separated once with a class
query and once with a caption query: ``si_sdr`` / ``si_sdri`` (dB, mean over both query types),
``si_sdr_class``, ``si_sdri_class``, ``si_sdr_caption``, ``si_sdri_caption``; the floor ``si_sdr_mixture``
(the mixture itself as the estimate; its ``si_sdri`` is 0), the oracle ``si_sdr_oracle`` / ``si_sdri_oracle``
(ideal ratio mask with the mixture's phase), ``si_sdri_autoencoder`` (flow runs: the true target through the
autoencoder, the ceiling of a latent method; ``None`` for mask runs), ``seconds_per_clip`` (separation
wall time, one thread as configured) and ``params``. ``sample`` separates held-out mixtures with class queries
(``--steps``: flow steps).

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("audio-sep")
    >>> r.defaults["method"], "si_sdri_caption" in r.metrics, get_recipe("audio-sep-mask").defaults["method"]
    ('flow', True, 'mask')
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.apps.audio import (
    QUERY_TYPES,
    LatentFlowSeparator,
    RatioMaskSeparator,
    make_mixtures,
    oracle_separation,
    random_queries,
    si_sdr,
)
from flowforge.recipes.registry import Recipe, register

__all__ = ["AUDIO_METRICS", "audio_data", "build_separator", "audio_evaluate", "AudioSeparator"]

AUDIO_METRICS = (
    "si_sdr",
    "si_sdri",
    *(f"{k}_{q}" for q in QUERY_TYPES for k in ("si_sdr", "si_sdri")),
    "si_sdr_mixture",
    "si_sdr_oracle",
    "si_sdri_oracle",
    "si_sdri_autoencoder",
    "seconds_per_clip",
    "params",
)


def _check(config: dict[str, Any]) -> None:
    if config["method"] not in ("flow", "mask"):
        raise ValueError(f"unknown method {config['method']!r}; write --set method=flow or method=mask")
    if config["phase"] not in ("mixture", "griffin-lim"):
        raise ValueError(f"unknown phase {config['phase']!r}; write --set phase=mixture or phase=griffin-lim")
    if config["method"] == "flow" and not 0 <= int(config["ae_steps"]) < int(config["steps"]):
        raise ValueError(
            f"ae_steps={config['ae_steps']} must be below steps={config['steps']} (the flow trains after the "
            "autoencoder); e.g. --set ae_steps=500 with --steps 1500"
        )


def audio_data(config: dict[str, Any]) -> tuple[tuple[Tensor, Tensor, Tensor], dict[str, Any]]:
    """``(source (N, L), mixture (N, L), query ids (N, W))`` training triples (queries: class or caption)."""
    _check(config)
    seed = 1_000 + int(config.get("seed", 0))
    d = make_mixtures(int(config["n_train"]), seed=seed, tir_db=float(config["tir_db"]))
    q = random_queries(d["target_class"], "mixed", generator=torch.Generator().manual_seed(seed))
    return (d["source"], d["mixture"], q), {}


def build_separator(config: dict[str, Any]) -> nn.Module:
    """A :class:`LatentFlowSeparator` (``method=flow``) or a :class:`RatioMaskSeparator` (``method=mask``)."""
    _check(config)
    if config["method"] == "mask":
        return RatioMaskSeparator(
            channels=int(config["mask_channels"]),
            blocks=int(config["mask_blocks"]),
            query_dim=int(config["query_dim"]),
            patch=4,
        )
    return LatentFlowSeparator(
        ae_steps=int(config["ae_steps"]),
        latent_channels=int(config["latent_channels"]),
        ae_res_blocks=int(config["ae_res_blocks"]),
        ae_weighting=str(config["ae_weighting"]),
        channels=int(config["channels"]),
        query_dim=int(config["query_dim"]),
    )


def _mixtures(config: dict[str, Any], n: int, seed: int) -> dict[str, Tensor]:
    return make_mixtures(n, seed=50_000 + seed, tir_db=float(config["tir_db"]))


class AudioSeparator:
    """A trained separator as a Generator: ``sample(n)`` separates ``n`` held-out mixtures (class queries)."""

    def __init__(self, model: nn.Module, config: dict[str, Any]) -> None:
        self.model, self.config = model, config

    def separate(
        self, mixture: Tensor, query_ids: Tensor, *, steps: int = 8, generator: torch.Generator | None = None
    ) -> Tensor:
        """Separated waveforms ``(B, L)``."""
        opts = {"phase": self.config["phase"]}
        if isinstance(self.model, LatentFlowSeparator):
            opts.update(
                steps=steps,
                solver=self.config["solver"],
                generator=generator,
                draws=int(self.config["draws"]),
                clamp=bool(self.config["clamp"]),
            )
        return self.model.separate(mixture, query_ids, **opts)

    def sample(self, n: int, *, generator: torch.Generator | None = None, steps: int = 8) -> Tensor:
        """Separated held-out clips ``(n, L)``."""
        d = _mixtures(self.config, n, 0)
        q = random_queries(d["target_class"], "class", generator=torch.Generator().manual_seed(0))
        return self.separate(d["mixture"], q, steps=steps, generator=generator)


def audio_generator(model: nn.Module, config: dict[str, Any]) -> AudioSeparator:
    return AudioSeparator(model.eval(), config)


def audio_evaluate(
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
    """SI-SDR / SI-SDRi by query type, with the mixture floor and the IRM oracle (see the module docstring)."""
    model.eval()
    d = _mixtures(config, int(n or config["eval_n"]), seed)
    src, mix = d["source"], d["mixture"]
    floor = si_sdr(mix, src)
    values: dict[str, Any] = {"si_sdr_mixture": float(floor.mean())}
    oracle = si_sdr(oracle_separation(src, d["interferer"]), src)
    values.update(si_sdr_oracle=float(oracle.mean()), si_sdri_oracle=float((oracle - floor).mean()))
    values["si_sdri_autoencoder"] = None
    if isinstance(model, LatentFlowSeparator):
        values["si_sdri_autoencoder"] = float((si_sdr(model.autoencoded(src, mix), src) - floor).mean())
    sep = AudioSeparator(model, config)
    g = torch.Generator().manual_seed(seed)
    every: list[Tensor] = []
    seconds = 0.0
    for kind in QUERY_TYPES:
        q = random_queries(d["target_class"], kind, generator=torch.Generator().manual_seed(seed + 1))
        start = time.perf_counter()
        est = sep.separate(mix, q, steps=int(steps or config["sample_steps"]), generator=g)
        seconds += time.perf_counter() - start
        s = si_sdr(est, src)
        values[f"si_sdr_{kind}"], values[f"si_sdri_{kind}"] = float(s.mean()), float((s - floor).mean())
        every.append(s - floor)
    both = torch.cat(every)
    values["si_sdri"] = float(both.mean())
    values["si_sdr"] = values["si_sdri"] + values["si_sdr_mixture"]
    values["seconds_per_clip"] = seconds / (len(QUERY_TYPES) * src.shape[0])
    values["params"] = sum(p.numel() for p in model.parameters())
    out = {m: values.get(m) for m in metrics}
    out["eval_clips"] = int(src.shape[0])
    return out


_DEFAULTS: dict[str, Any] = {
    "method": "flow",
    "n_train": 2000,
    "tir_db": 5.0,
    "ae_steps": 500,
    "latent_channels": 4,
    "ae_res_blocks": 0,
    "ae_weighting": "energy",
    "channels": 16,
    "mask_channels": 16,
    "mask_blocks": 2,
    "query_dim": 16,
    "phase": "mixture",
    "solver": "euler",
    "draws": 1,
    "clamp": False,
    "steps": 1500,
    "batch_size": 16,
    "lr": 2e-3,
    "warmup": 50,
    "grad_clip": 1.0,
    "ema_decay": 0.99,
    "threads": 1,
    "eval_n": 200,
    "sample_steps": 8,
}


def _recipe(name: str, summary: str, method: str) -> Recipe:
    return Recipe(
        name=name,
        summary=summary,
        defaults={**_DEFAULTS, "method": method},
        build=build_separator,
        data=audio_data,
        generator=audio_generator,
        sample_options=lambda config: ("steps",),
        sample_kwargs=lambda config, given, n: {"steps": int(given.get("steps", config["sample_steps"]))},
        eval_options=lambda config: ("n", "steps"),
        evaluate=audio_evaluate,
        metrics=AUDIO_METRICS,
        kind="application",
    )


register(
    _recipe(
        "audio-sep",
        "language-queried separation of 8 kHz toy sounds: latent rectified flow on [mixture, query] (FlowSep)",
        "flow",
    )
)
register(
    _recipe(
        "audio-sep-mask",
        "language-queried separation of 8 kHz toy sounds: ratio-mask regressor baseline of the same size",
        "mask",
    )
)
