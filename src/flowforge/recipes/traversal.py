"""``blobs-traversal``: latent traversals as potential flows on a blob decoder with known factors.

::

    flowforge train blobs-traversal --out runs/trav-pf                          # wave-equation potentials
    flowforge train blobs-traversal --out runs/trav-lin --set method=linear     # learned linear directions
    flowforge eval runs/trav-pf      # purity, factor_gap, coverage, ... and the PCA / random / oracle rows

The decoder (:class:`~flowforge.apps.traversal.BlobDecoder`) renders one Gaussian blob (x, y, size,
brightness) on a ``size x size`` image from a latent code mixed by a fixed random rotation and two
coupling layers of strength ``bend`` (seed ``decoder_seed``); the factors of any code are analytic. The
training data are latent codes drawn from the decoder's code distribution. ``method=potential``:
:class:`~flowforge.apps.traversal.PotentialFlowTraversal` (Song et al., ICML 2023: K potentials, the
wave-equation residual with a Hutchinson (``laplacian=hutchinson``) or exact Laplacian, the initial
condition, gradient-flow steps, the pair classifier and the JVP change term); ``method=linear``:
:class:`~flowforge.apps.traversal.LinearTraversal` with the same classifier, change term, step cap
``max_step``, steps and optimiser.

**Eval keys** (``flowforge eval`` JSON), on ``eval_samples`` fresh codes: ``purity`` (share of each
traversal's factor change in its main factor, averaged), ``factor_gap`` (mutual-information-gap-like:
mean over factors of the top-two share gap), ``coverage``, ``step_norm``, ``factor_change``,
``accuracy`` (the pair classifier's) and the same ``purity_*``/``factor_gap_*`` for the untrained
references with the same step length and count: ``pca`` (principal axes of the codes), ``random``
(random directions: the noise floor) and ``oracle`` (steps along one true factor: the ceiling).
``sample`` returns traversal images ``(n, K, T + 1, 1, size, size)`` (``--out grid.png``: one row a
traversal, its first 8 frames).

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("blobs-traversal")
    >>> r.defaults["method"], r.defaults["num_traversals"], "purity_pca" in r.metrics
    ('potential', 4, True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from flowforge.apps.traversal import (
    BlobDecoder,
    FactorOracle,
    FixedDirections,
    LinearTraversal,
    PotentialFlowTraversal,
    TraversalModel,
    evaluate_traversals,
    pca_directions,
    random_directions,
)
from flowforge.core.choices import unknown_choice
from flowforge.recipes.registry import Recipe, register

__all__ = ["TRAVERSAL_METRICS", "build_traversal", "decoder_of", "traversal_evaluate"]

METHODS = ("potential", "linear")
REFERENCES = ("pca", "random", "oracle")
TRAVERSAL_METRICS = (
    "purity",
    "factor_gap",
    "coverage",
    "step_norm",
    "factor_change",
    "accuracy",
    *(f"{key}_{ref}" for ref in REFERENCES for key in ("purity", "factor_gap")),
)


def decoder_of(config: dict[str, Any]) -> BlobDecoder:
    """The fixed :class:`BlobDecoder` of a config (``size``, ``bend``, ``decoder_seed``)."""
    return BlobDecoder(int(config["size"]), float(config["bend"]), seed=int(config["decoder_seed"]))


def traversal_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A sampler of latent codes ``(batch_size, 4)`` from the decoder's code distribution."""
    decoder = decoder_of(config)

    def draw(batch_size: int, generator: torch.Generator) -> Tensor:
        return decoder.sample_codes(batch_size, generator=generator)

    return draw, {}


def build_traversal(config: dict[str, Any]) -> TraversalModel:
    """:class:`PotentialFlowTraversal` (``method=potential``) or :class:`LinearTraversal` (``method=linear``)."""
    decoder = decoder_of(config)
    common = {
        "steps": int(config["traverse_steps"]),
        "max_step": float(config["max_step"]),
        "classifier_width": int(config["classifier_width"]),
        "cls_weight": float(config["cls_weight"]),
        "jvp_weight": float(config["jvp_weight"]),
    }
    k = int(config["num_traversals"])
    if config["method"] == "potential":
        return PotentialFlowTraversal(
            decoder,
            decoder.latent_dim,
            k,
            width=int(config["width"]),
            depth=int(config["depth"]),
            c_init=float(config["c_init"]),
            laplacian=str(config["laplacian"]),
            n_probes=int(config["n_probes"]),
            pde_weight=float(config["pde_weight"]),
            ic_weight=float(config["ic_weight"]),
            **common,
        )
    if config["method"] == "linear":
        return LinearTraversal(decoder, decoder.latent_dim, k, **common)
    raise unknown_choice("method", config["method"], METHODS, hint="e.g. --set method=linear")


class TraversalImages:
    """A trained traversal model as a Generator: ``sample(n)`` -> images ``(n, K, T + 1, *image)``."""

    def __init__(self, model: TraversalModel) -> None:
        self.model = model

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, **_: Any) -> Tensor:
        decoder = self.model.decoder
        z = decoder.sample_codes(n, generator=generator)
        paths = [self.model.traverse(k, z) for k in range(self.model.num_traversals)]
        path = torch.stack(paths, dim=1)  # (n, K, T + 1, D)
        images = decoder(path.reshape(-1, path.shape[-1]))
        return images.reshape(*path.shape[:3], *images.shape[1:])


def traversal_picture(samples: Any, config: dict[str, Any]) -> Any:
    """The first 8 frames of every traversal as ``(n K 8, 1, H, W)`` images in ``[-1, 1]``: one row a traversal."""
    frames = samples[:, :, :8]
    return frames.reshape(-1, *frames.shape[3:]) * 2 - 1


def traversal_generator(model: nn.Module, config: dict[str, Any]) -> TraversalImages:
    return TraversalImages(model)


def traversal_evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Any,
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **_: Any,
) -> dict[str, Any]:
    """Purity and factor gap of the trained traversals and of the PCA / random / oracle references."""
    decoder: BlobDecoder = model.decoder
    steps, eps, k = model.steps, float(config["max_step"]), model.num_traversals
    codes = decoder.sample_codes(
        int(n or config["eval_samples"]), generator=torch.Generator().manual_seed(10_000 + seed)
    )
    was = model.training
    model.eval()
    res = evaluate_traversals(model, decoder.factors, codes)
    values: dict[str, Any] = dict(res)
    values["accuracy"] = model.pair_accuracy(codes)
    model.train(was)
    fit = decoder.sample_codes(4096, generator=torch.Generator().manual_seed(20_000 + seed))
    refs = {
        "pca": FixedDirections(pca_directions(fit, min(k, decoder.latent_dim)), steps, eps),
        "random": FixedDirections(
            random_directions(k, decoder.latent_dim, generator=torch.Generator().manual_seed(30_000 + seed)),
            steps,
            eps,
        ),
        "oracle": FactorOracle(decoder, steps, eps),
    }
    for name, ref in refs.items():
        if any(m.endswith(f"_{name}") for m in metrics):
            r = evaluate_traversals(ref, decoder.factors, codes)
            values[f"purity_{name}"], values[f"factor_gap_{name}"] = r["purity"], r["factor_gap"]
    out = {m: values[m] for m in metrics}
    out["shares"] = res["shares"]
    out["eval_samples"] = int(codes.shape[0])
    return out


DEFAULTS: dict[str, Any] = {
    "size": 16,
    "bend": 1.0,
    "decoder_seed": 0,
    "method": "potential",
    "num_traversals": 4,
    "traverse_steps": 8,
    "max_step": 0.3,
    "width": 64,
    "depth": 2,
    "classifier_width": 128,
    "c_init": 1.0,
    "laplacian": "hutchinson",
    "n_probes": 1,
    "pde_weight": 1.0,
    "ic_weight": 1.0,
    "cls_weight": 1.0,
    "jvp_weight": 1.0,
    "steps": 600,
    "batch_size": 128,
    "lr": 1e-3,
    "warmup": 0,
    "grad_clip": 1.0,
    "ema_decay": 0.99,
    "threads": 1,
    "eval_samples": 512,
}

register(
    Recipe(
        name="blobs-traversal",
        summary="latent traversals as wave-equation potential flows (or linear directions) on a blob decoder",
        defaults=DEFAULTS,
        build=build_traversal,
        data=traversal_data,
        generator=traversal_generator,
        eval_options=lambda config: ("n",),
        evaluate=traversal_evaluate,
        metrics=TRAVERSAL_METRICS,
        default_metrics=TRAVERSAL_METRICS,
        picture=traversal_picture,
        kind="application",
    )
)
