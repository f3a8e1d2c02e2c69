"""Image metrics in the features of a shipped classifier: FD, precision/recall and class accuracy.

FID (Heusel et al., NeurIPS 2017) compares Gaussians fitted to InceptionV3 features, a network trained
on ImageNet photographs that says little about 28x28 digits and needs weights downloaded from
elsewhere. Here the feature space is the penultimate layer of :class:`flowforge.nn.SmallCNN` trained
on the dataset itself (``scripts/train_image_classifier.py``); its weights ship in
``flowforge/metrics/weights/`` as safetensors plus a JSON config with the test accuracy and reference
numbers (FD of held-out real images, FD of a fitted Gaussian). The numbers are comparable between
runs of this library, not with FID values in papers: for those, see :mod:`flowforge.metrics.inception`.

Images are float tensors ``(N, 1, H, W)`` in ``[-1, 1]``; integer pixels ``q`` in ``0..levels-1``
map to ``2 q / (levels - 1) - 1`` (``flowforge.data.dequantize`` is the noisy training-time version).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from torch import Tensor

from flowforge.core.choices import unknown_choice
from flowforge.metrics.frechet import frechet_distance, gaussian_stats, precision_recall
from flowforge.nn.classifier import SmallCNN

__all__ = [
    "CLASSIFIERS",
    "WEIGHTS_DIR",
    "load_classifier",
    "classifier_features",
    "image_metrics",
    "fitted_gaussian_samples",
]

#: Folder of the shipped classifier weights.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

#: sha256 of each shipped ``{name}_classifier.safetensors`` (written by scripts/train_image_classifier.py).
CLASSIFIERS: dict[str, str] = {
    "mnist": "b53b80a6d98ded73ad205d2a79bf7acfb85754c65f627cdacf1d9bf46dac7211",
    "digits": "f3365211c3ac23fa43104fdd9c635de4fbae6276a14a58d83d2822d63a351d7d",
}

METRIC_NAMES = ("fd", "acc", "pr")
_RANGE_SLACK = 0.5  # values beyond [-1.5, 1.5] are an error, smaller overshoots are clipped


def _fix_hint(name: str) -> str:
    return (
        "reinstall flowforge (pip install --force-reinstall flowforge), or in a source checkout restore it "
        f"with `git checkout src/flowforge/metrics/weights/` or re-create it with "
        f"`python scripts/train_image_classifier.py --dataset {name} --out src/flowforge/metrics/weights/` "
        "and put the sha256 it prints into CLASSIFIERS in flowforge/metrics/image_features.py"
    )


def load_classifier(name: str, *, root: str | Path | None = None) -> SmallCNN:
    """The shipped classifier for ``"mnist"`` or ``"digits"``: eval mode, no gradients, on the CPU.

    The safetensors file is checked against its sha256 before loading; a damaged or missing file is an
    error that names the file and how to restore it.

    Args:
        name: ``"mnist"`` (1x28x28) or ``"digits"`` (1x8x8).
        root: folder holding ``{name}_classifier.safetensors`` and ``.json``; default :data:`WEIGHTS_DIR`.

    Example:
        >>> net = load_classifier("digits")
        >>> net(torch.full((1, 1, 8, 8), -1.0)).shape, net.training
        (torch.Size([1, 10]), False)
    """
    if name not in CLASSIFIERS:
        raise unknown_choice("classifier", name, CLASSIFIERS)
    folder = WEIGHTS_DIR if root is None else Path(root)
    weights, config = folder / f"{name}_classifier.safetensors", folder / f"{name}_classifier.json"
    for path in (weights, config):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; {_fix_hint(name)}")
    blob = weights.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != CLASSIFIERS[name]:
        raise ValueError(
            f"{weights} is damaged or not the shipped file (sha256 {digest[:12]}..., expected "
            f"{CLASSIFIERS[name][:12]}...); {_fix_hint(name)}"
        )
    try:
        kwargs = json.loads(config.read_text())["kwargs"]
        net = SmallCNN(**kwargs)
        net.load_state_dict(load_safetensors(blob))
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{config} does not match {weights} ({exc}); {_fix_hint(name)}") from None
    net.eval().requires_grad_(False)
    return net


def _check_images(x: Tensor, net: SmallCNN, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of images (N, C, H, W), got {type(x).__name__}")
    want = (net.in_channels, net.image_size, net.image_size)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        hint = "add the channel axis with x.unsqueeze(1)" if x.ndim == 3 else "reshape to (N, C, H, W)"
        raise ValueError(
            f"{what} must be images (N, {want[0]}, {want[1]}, {want[2]}) for this classifier, "
            f"got {tuple(x.shape)}; {hint}"
        )
    if len(x) == 0:
        raise ValueError(f"{what} is empty: shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(
            f"{what} has dtype {x.dtype}; metrics take float images in [-1, 1]: "
            "write 2 * x.float() / (levels - 1) - 1 for integer pixels"
        )
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise ValueError(f"{what} has NaN or inf values in {bad} of {len(x)} images; drop or fix them first")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - _RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        raise ValueError(
            f"{what} has values in [{lo:.3g}, {hi:.3g}], far outside [-1, 1]; metrics take images in "
            "[-1, 1]: write 2 * x / 255 - 1 for [0, 255] pixels, 2 * x / (levels - 1) - 1 in general"
        )
    return x.clamp(-1.0, 1.0)


@torch.no_grad()
def _features_and_logits(net: SmallCNN, x: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """Features and logits in eval mode (a caller's network gets its train/eval mode back)."""
    was_training = net.training
    net.eval().to(x.device)
    try:
        feats, logits = [], []
        for s in range(0, len(x), batch_size):
            f = net.features(x[s : s + batch_size].float())
            feats.append(f)
            logits.append(net.head(f))
    finally:
        net.train(was_training)
    return torch.cat(feats), torch.cat(logits)


def _resolve(dataset: str | None, classifier: SmallCNN | None) -> SmallCNN:
    if (dataset is None) == (classifier is None):
        raise ValueError(
            "pass exactly one of dataset= (a shipped classifier: 'mnist' or 'digits') and classifier= "
            "(your own SmallCNN)"
        )
    return load_classifier(dataset) if classifier is None else classifier


def classifier_features(
    images: Tensor, *, dataset: str | None = None, classifier: SmallCNN | None = None, batch_size: int = 500
) -> Tensor:
    """Penultimate-layer features ``(N, feature_dim)`` of float images ``(N, C, H, W)`` in ``[-1, 1]``.

    Example:
        >>> classifier_features(torch.zeros(3, 1, 8, 8), dataset="digits").shape
        torch.Size([3, 128])
    """
    net = _resolve(dataset, classifier)
    return _features_and_logits(net, _check_images(images, net, "images"), batch_size)[0]


def image_metrics(
    samples: Tensor,
    reference: Tensor | None,
    *,
    dataset: str | None = None,
    metrics: Sequence[str] = METRIC_NAMES,
    labels: Tensor | None = None,
    batch_size: int = 500,
    k: int = 3,
    classifier: SmallCNN | None = None,
) -> dict[str, float]:
    """FD, class accuracy and precision/recall of generated images in a classifier's features.

    Args:
        samples: generated float images ``(N, C, H, W)`` in ``[-1, 1]`` (overshoots up to 0.5 are
            clipped; larger ones are an error).
        reference: real images, same layout (e.g. the test split, ``2 q / (levels - 1) - 1``); may be
            ``None`` when only ``"acc"`` is asked for.
        dataset: the shipped classifier, ``"mnist"`` or ``"digits"`` (or pass ``classifier=``).
        metrics: any of ``"fd"`` (Frechet distance of the features), ``"acc"`` (share of samples the
            classifier puts in the class they were conditioned on; needs ``labels``) and ``"pr"``
            (precision and recall, Kynkaanniemi et al. 2019, with ``k`` neighbours).
        labels: ``(N,)`` int64 classes the samples were conditioned on, for ``"acc"``.
        batch_size: images per classifier call.
        k: neighbour count of precision/recall.
        classifier: a :class:`~flowforge.nn.SmallCNN` of your own instead of ``dataset`` (run in eval
            mode, moved to the samples' device).

    Returns:
        A dict with the keys asked for: ``"fd"``, ``"acc"``, ``"precision"``, ``"recall"`` (floats).

    Example:
        >>> from flowforge.data import load_digits
        >>> s = load_digits("test")
        >>> x = 2 * s.x.float() / (s.levels - 1) - 1
        >>> m = image_metrics(x[:180], x[180:], dataset="digits", labels=s.y[:180])
        >>> sorted(m), m["acc"] > 0.9
        (['acc', 'fd', 'precision', 'recall'], True)
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    for m in metrics:
        if m not in METRIC_NAMES:
            raise unknown_choice("image metric", m, METRIC_NAMES)
    if not metrics:
        raise ValueError(f"metrics is empty; choose from {', '.join(METRIC_NAMES)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    net = _resolve(dataset, classifier)
    samples = _check_images(samples, net, "samples")
    needs_ref = any(m in ("fd", "pr") for m in metrics)
    if needs_ref and reference is None:
        raise ValueError("'fd' and 'pr' compare with real images: pass reference=<real images (M, C, H, W)>")
    if "acc" in metrics:
        if labels is None:
            raise ValueError(
                "'acc' needs labels=<(N,) classes the samples were conditioned on>; drop 'acc' from metrics "
                "for unconditional samples"
            )
        labels = torch.as_tensor(labels)
        if labels.shape != (len(samples),) or labels.is_floating_point():
            raise ValueError(
                f"labels must be integer classes of shape ({len(samples)},), got {tuple(labels.shape)} "
                f"{labels.dtype}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= net.num_classes):
            raise ValueError(
                f"labels must lie in 0..{net.num_classes - 1}, got values in [{int(labels.min())}, "
                f"{int(labels.max())}]; the null (unconditional) label {net.num_classes} has no class, "
                "so drop 'acc' for those samples"
            )
    feats, logits = _features_and_logits(net, samples, batch_size)
    out: dict[str, float] = {}
    if needs_ref:
        ref_feats = _features_and_logits(net, _check_images(reference, net, "reference"), batch_size)[0]
        ref_feats = ref_feats.to(feats.device)
    if "fd" in metrics:
        if len(samples) < 2 or len(ref_feats) < 2:
            raise ValueError(
                f"'fd' needs at least 2 images on each side, got {len(samples)} and {len(ref_feats)}"
            )
        out["fd"] = frechet_distance(gaussian_stats(feats), gaussian_stats(ref_feats))
    if "acc" in metrics:
        out["acc"] = float((logits.argmax(1).cpu() == labels.cpu()).double().mean())
    if "pr" in metrics:
        out["precision"], out["recall"] = precision_recall(ref_feats, feats, k=k)
    return out


def fitted_gaussian_samples(train_images: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """The baseline "a Gaussian fitted to the training pixels": full covariance, clipped to ``[-1, 1]``.

    Mean and covariance of the ``D = C H W`` pixels are fitted in float64; samples are
    ``mu + C^{1/2} z`` with the symmetric square root (zero-variance pixels stay at their mean).

    Args:
        train_images: float images ``(N, C, H, W)`` in ``[-1, 1]``, ``N >= 2``.
        n: number of samples.
        generator: source of the noise ``z`` (its device decides where ``z`` is drawn).

    Returns:
        ``(n, C, H, W)`` float32 images on the device of ``train_images``.

    Example:
        >>> x = torch.rand(50, 1, 8, 8) * 2 - 1
        >>> g = fitted_gaussian_samples(x, 7, torch.Generator().manual_seed(0))
        >>> g.shape, bool(g.abs().max() <= 1)
        (torch.Size([7, 1, 8, 8]), True)
    """
    if not isinstance(train_images, Tensor) or train_images.ndim != 4 or len(train_images) < 2:
        raise ValueError(
            "train_images must be float images (N, C, H, W) with N >= 2, got "
            f"{tuple(train_images.shape) if isinstance(train_images, Tensor) else type(train_images).__name__}"
        )
    if not train_images.is_floating_point():
        raise TypeError(
            f"train_images has dtype {train_images.dtype}; write 2 * x.float() / (levels - 1) - 1 for integer pixels"
        )
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    mu, cov = gaussian_stats(train_images.flatten(1))
    evals, evecs = torch.linalg.eigh(cov)
    root = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T
    dev = generator.device if generator is not None else torch.device("cpu")
    z = torch.randn(
        n, math.prod(train_images.shape[1:]), generator=generator, device=dev, dtype=torch.float64
    )
    x = mu + z.to(mu.device) @ root
    return x.clamp(-1.0, 1.0).to(torch.float32).reshape(n, *train_images.shape[1:])
