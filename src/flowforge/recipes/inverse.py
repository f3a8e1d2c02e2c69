r"""``flowforge restore``: solve an inverse problem on images with a trained image flow run as the prior.

Names map to objects here (the CLI knows none): operators ``inpaint`` (a half of each image missing, or a
given hole), ``sr4`` (4x4 average pooling), ``blur`` (Gaussian 9x9, std 2, circular); methods ``flair``,
``dps``, ``projection`` (:mod:`flowforge.inverse`). The prior is an image flow-matching run on the linear
path in pixel space (``flowforge train mnist`` / ``digits``; class-conditional runs are used
unconditionally through their null label).

Settings (chosen on 16 MNIST training images, ``benchmarks/inverse.py mnist --tune``): FLAIR 50 steps, data
step ``1 / ||A||^2``, its CRW table from 32 training images, and its regulariser pull capped at 1
(``max_pull``; without it the CRW table of the MNIST prior makes FLAIR diverge near ``t_max``); DPS 20 Euler
steps of the normalised rule with ``zeta = 2 / ||A||``; projection 50 Euler steps.

Latent runs (``flowforge train mnist-latent``: flow matching on a KL autoencoder's standardised latents) work
with ``flair`` and ``dps``: the flow, FLAIR's variational mean and DPS's state live in latent space, the data
term is :math:`\|A D(z) - y\|^2` through the run's decoder :math:`D`, FLAIR starts from :math:`E(A^+ y)` and
calibrates its CRW table on encoded training images. The latent data steps are ``LATENT_LR`` times the pixel
ones (chosen on 8 MNIST training images, ``benchmarks/inverse.py mnist --latent-run ... --tune``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowforge.continuous.flow_matching import FlowMatching
from flowforge.core.choices import unknown_choice
from flowforge.core.masks import half_mask
from flowforge.data.images import quantize
from flowforge.inverse import (
    DPS,
    FLAIR,
    AvgPoolDownsample,
    GaussianBlur,
    Inpaint,
    LinearOperator,
    Projection,
    calibrated_weights,
    check_noise,
    velocity_errors,
)
from flowforge.latent import LatentModel
from flowforge.recipes.images import bin_centres, check_images, image_set
from flowforge.recipes.run_folder import load_run

__all__ = ["OPERATORS", "METHODS", "make_operator", "restore", "restoration_solver"]

#: Operator names of ``flowforge restore --operator`` and their squared spectral norms ``||A||^2``.
OPERATORS: dict[str, float] = {"inpaint": 1.0, "sr4": 1.0 / 16.0, "blur": 1.0}
#: Method names of ``flowforge restore --method``.
METHODS: tuple[str, ...] = ("flair", "dps", "projection")
#: Default steps per method.
STEPS: dict[str, int] = {"flair": 50, "dps": 20, "projection": 50}
#: Latent runs: FLAIR's data lr and DPS's zeta as multiples of the pixel-space settings.
LATENT_LR: dict[str, float] = {"flair": 1.0, "dps": 1.0}


def make_operator(
    name: str, n: int, height: int, width: int, *, hole: Tensor | None = None
) -> LinearOperator:
    """The operator ``name`` for ``n`` images of ``height x width``.

    Args:
        name: ``inpaint``, ``sr4`` or ``blur``.
        hole: ``inpaint`` only: ``(n or 1, 1, H, W)`` bool, True = missing; default the left half.

    Example:
        >>> make_operator("sr4", 2, 28, 28)  # doctest: +ELLIPSIS
        <flowforge.inverse.operators.AvgPoolDownsample object at ...>
    """
    if name not in OPERATORS:
        raise unknown_choice("operator", name, OPERATORS)
    if name == "inpaint":
        if hole is None:
            return Inpaint(half_mask(1, height, width, "left"))
        if hole.dim() != 4 or hole.shape[1] != 1 or tuple(hole.shape[-2:]) != (height, width):
            raise ValueError(
                f"the hole must be (N, 1, {height}, {width}) like the images, got {tuple(hole.shape)}"
            )
        return Inpaint((~hole.bool()).float())
    if hole is not None:
        raise ValueError(f"a mask (hole) applies to --operator inpaint only, not {name}")
    if name == "sr4":
        if height % 4 or width % 4:
            raise ValueError(f"sr4 needs an image size divisible by 4, got {height}x{width}")
        return AvgPoolDownsample(4)
    return GaussianBlur(9, 2.0, boundary="circular")


def _prior(model: Any, config: dict[str, Any]) -> tuple[FlowMatching, dict[str, Tensor], LatentModel | None]:
    """The flow (on pixels, or the inner flow of a latent run), its unconditional condition, the latent model."""
    latent = None
    if isinstance(model, LatentModel):
        if not isinstance(model.inner, FlowMatching):
            raise ValueError(
                f"restore needs a flow-matching prior; this latent run's inner model is {config.get('inner')!r} "
                "(train with --set inner=fm)"
            )
        latent, model = model, model.inner
    if not isinstance(model, FlowMatching) or str(config.get("task", "generate")) != "generate":
        raise ValueError(
            f"restore needs an image flow-matching run that generates images (e.g. flowforge train mnist), "
            f"not a {config['recipe']} run"
        )
    if config.get("conditional"):
        if model.null_label is None or not float(config.get("label_dropout", 0.0)) > 0:
            raise ValueError(
                "this class-conditional run was trained without label dropout, so it has no unconditional "
                "prior; train with --set label_dropout=0.1"
            )
        return model, {"y": torch.tensor([int(model.null_label)])}, latent
    return model, {}, latent


def restoration_solver(
    model: FlowMatching,
    operator: LinearOperator,
    method: str,
    *,
    op_norm2: float,
    noise: float,
    steps: int | None = None,
    cond: dict[str, Tensor] | None = None,
    calibration: Tensor | None = None,
    seed: int = 0,
    latent: LatentModel | None = None,
    max_pull: float | None = 1.0,
) -> Any:
    """The solver ``method`` with this module's settings.

    ``calibration``: FLAIR's CRW images ``(N, C, H, W)`` in ``[-1, 1]`` (encoded for a latent prior);
    ``latent``: the latent run whose inner flow ``model`` is (its ``decode``/``encode`` become :math:`D`/:math:`E`);
    ``max_pull``: FLAIR's regulariser pull cap (None: as published).
    """
    if method not in METHODS:
        raise unknown_choice("method", method, METHODS)
    steps = int(steps or STEPS[method])
    if latent is not None and method == "projection":
        raise ValueError("projection works in pixel space only; use --method flair or dps with a latent run")
    space: dict[str, Any] = {}
    scale = LATENT_LR if latent is not None else {"flair": 1.0, "dps": 1.0}
    if method == "flair":
        if calibration is None:
            raise ValueError("FLAIR needs calibration images for its CRW table")
        if latent is not None:
            calibration = latent.encode(calibration)
            space = {"decoder": latent.decode, "encoder": latent.encode}
        errs = velocity_errors(
            model, calibration, generator=torch.Generator().manual_seed(seed + 1), cond=cond
        )
        return FLAIR(
            model,
            operator,
            sigma=noise,
            steps=steps,
            weights=calibrated_weights(errs),
            data_lr=scale["flair"] / op_norm2,
            max_pull=max_pull,
            cond=cond,
            **space,
        )
    if method == "dps":
        if latent is not None:
            space = {"decoder": latent.decode, "latent_shape": tuple(model.event_shape)}
        return DPS(
            model,
            operator,
            sigma=noise,
            steps=steps,
            zeta=scale["dps"] * 2.0 / op_norm2**0.5,
            cond=cond,
            **space,
        )
    return Projection(model, operator, steps=steps, cond=cond)


def restore(
    run_dir: str | Path,
    image: Tensor,
    *,
    operator: str = "inpaint",
    method: str = "flair",
    noise: float = 0.05,
    seed: int = 0,
    hole: Tensor | None = None,
    steps: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Measure clean integer ``image`` ``(N, C, H, W)`` with ``operator`` and noise, then restore it.

    Returns ``(restored, measured)``, both ``(N, C, H, W)`` uint8; ``measured`` is :math:`A^+ y` (what a
    naive inverse shows). Randomness (the measurement noise, the method's noise) flows from ``seed``.
    """
    noise = check_noise(noise)
    if operator not in OPERATORS:
        raise unknown_choice("operator", operator, OPERATORS)
    if method not in METHODS:
        raise unknown_choice("method", method, METHODS)
    model, config = load_run(run_dir)
    model, cond0, latent = _prior(model, config)
    image = check_images(image, config)
    levels = int(config["levels"])
    x = bin_centres(image, levels)
    n, _, h, w = x.shape
    if hole is not None and hole.shape[0] not in (1, n):
        raise ValueError(f"give one mask or one per image ({n}), got {hole.shape[0]}")
    op = make_operator(operator, n, h, w, hole=hole)
    g = torch.Generator().manual_seed(seed)
    y = op.measure(x, noise, generator=g)
    calibration = None
    if method == "flair":
        s = image_set(config, "train")
        idx = torch.randperm(len(s.x), generator=torch.Generator().manual_seed(seed + 2))[:32]
        calibration = bin_centres(s.x[idx], levels)
    solver = restoration_solver(
        model,
        op,
        method,
        op_norm2=OPERATORS[operator],
        noise=noise,
        steps=steps,
        cond=cond0,
        calibration=calibration,
        seed=seed,
        latent=latent,
    )
    out = solver(y, generator=g)
    return quantize(out.detach().clamp(-1, 1), levels), quantize(op.pseudo_inverse(y).clamp(-1, 1), levels)
