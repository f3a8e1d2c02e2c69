r"""FID with the standard weights: pool3 features (2048-d) of the TensorFlow-ported InceptionV3.

This is the network of pytorch-fid (M. Seitzer), ported from the TensorFlow graph that Heusel et al.
(NeurIPS 2017) used for FID, with its quirks: average pools that leave the zero padding out of the
mean (``count_include_pad=False``) and a max pool in the last block's pool branch. Its module and
parameter names match the weights file ``pt_inception-2015-12-05-6726825d.pth``, so FID computed here
equals pytorch-fid's on the same images up to float round-off (and to the 8-bit rounding that saving
images as PNG files applies, which :func:`inception_features` imitates by default).

The weights are **never downloaded** here. :func:`inception_features` looks for them at, in order:
the ``weights=`` argument, ``$FLOWFORGE_INCEPTION_WEIGHTS``, torch's hub cache
(``torch.hub.get_dir()/checkpoints/``, where pytorch-fid stores them) and
``~/.cache/flowforge/``. Get the file from :data:`FID_WEIGHTS_URL` (about 95 MB). A ``.pth`` file is
read with ``torch.load(weights_only=True)``, which restores tensors and never runs code from the file;
a ``.safetensors`` conversion of the same state dict works too.

Images are float tensors ``(N, C, H, W)`` in ``[-1, 1]``, ``C`` 1 (grey, repeated to RGB) or 3, any
size (bilinearly resized to 299x299, as pytorch-fid does).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.metrics.frechet import Stats, frechet_distance, gaussian_stats

__all__ = [
    "FIDInceptionV3",
    "FID_WEIGHTS_NAME",
    "FID_WEIGHTS_URL",
    "find_inception_weights",
    "inception_features",
    "fid",
]

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_NAME
_SHA256_PREFIX = "6726825d"  # torch.hub convention: the file name carries the start of its sha256
_ENV = "FLOWFORGE_INCEPTION_WEIGHTS"
_CACHE: dict[tuple[str, str], FIDInceptionV3] = {}


class _Conv(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, TensorFlow's), ReLU."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1, padding=0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: Tensor) -> Tensor:
    # TensorFlow's average pool leaves the padded zeros out of the mean
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _MixedA(nn.Module):
    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(c_in, 64, 1)
        self.branch5x5_1 = _Conv(c_in, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(c_in, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class _ReduceB(nn.Module):
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = _Conv(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(c_in, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedC(nn.Module):
    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(c_in, 192, 1)
        self.branch7x7_1 = _Conv(c_in, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(c_in, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class _ReduceD(nn.Module):
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = _Conv(c_in, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(c_in, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedE(nn.Module):
    def __init__(self, c_in: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _Conv(c_in, 320, 1)
        self.branch3x3_1 = _Conv(c_in, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(c_in, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        # the FID graph's last block max-pools here (other InceptionV3 ports average)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(a),
                self.branch3x3_2b(a),
                self.branch3x3dbl_3a(d),
                self.branch3x3dbl_3b(d),
                self.branch_pool(pooled),
            ],
            1,
        )


class FIDInceptionV3(nn.Module):
    """InceptionV3 up to the pool3 layer, as in TensorFlow's FID graph (Szegedy et al., CVPR 2016).

    Takes ``x: (B, 3, 299, 299)`` in ``[-1, 1]`` and returns ``(B, 2048)``. Built with random
    weights; :func:`inception_features` loads the real ones. Parameter names follow pytorch-fid's file
    (its ``fc.*`` classifier entries are not used).

    Example:
        >>> net = FIDInceptionV3()
        >>> "Mixed_7c.branch_pool.bn.running_var" in net.state_dict()
        True
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _MixedA(192, 32)
        self.Mixed_5c = _MixedA(256, 64)
        self.Mixed_5d = _MixedA(288, 64)
        self.Mixed_6a = _ReduceB(288)
        self.Mixed_6b = _MixedC(768, 128)
        self.Mixed_6c = _MixedC(768, 160)
        self.Mixed_6d = _MixedC(768, 160)
        self.Mixed_6e = _MixedC(768, 192)
        self.Mixed_7a = _ReduceD(768)
        self.Mixed_7b = _MixedE(1280, max_pool=False)
        self.Mixed_7c = _MixedE(2048, max_pool=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))


def _candidates() -> list[Path]:
    out = []
    if os.environ.get(_ENV):
        out.append(Path(os.environ[_ENV]).expanduser())
    out.append(Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME)
    out.append(Path("~/.cache/flowforge").expanduser() / FID_WEIGHTS_NAME)
    return out


def find_inception_weights(weights: str | os.PathLike | None = None) -> Path:
    """The weights file to use: ``weights`` if given, else the first of the default places that exists.

    Raises:
        FileNotFoundError: naming the places looked at and where to get the file.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"InceptionV3 weights not found at {path}; download {FID_WEIGHTS_URL} and pass its path"
            )
        return path
    places = _candidates()
    for path in places:
        if path.is_file():
            return path
    raise FileNotFoundError(
        "FID needs the InceptionV3 weights of pytorch-fid, which flowforge never downloads; looked at "
        + ", ".join(str(p) for p in places)
        + f". Download {FID_WEIGHTS_URL} (about 95 MB) into {places[-1].parent}/, or set ${_ENV}, or pass "
        "weights=<path>. For a metric that needs no download, use flowforge.metrics.image_metrics "
        "(classifier features shipped with flowforge)."
    )


def _load(path: Path, check_hash: bool) -> FIDInceptionV3:
    if check_hash and path.suffix != ".safetensors":
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(_SHA256_PREFIX):
            raise ValueError(
                f"{path} is not pytorch-fid's {FID_WEIGHTS_NAME} (sha256 starts {digest[:8]}, expected "
                f"{_SHA256_PREFIX}); download it again from {FID_WEIGHTS_URL}, or pass check_hash=False "
                "for a converted copy of the same weights"
            )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        # weights_only=True: the unpickler rebuilds tensors only and never runs code from the file
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    with torch.device("meta"):  # no random initialisation of 22M parameters that are overwritten anyway
        net = FIDInceptionV3()
    for k in net.state_dict():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros((), dtype=torch.long)  # older state dicts lack these counters
    missing, unexpected = net.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(
            f"{path} is not an InceptionV3 state dict in pytorch-fid's layout: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}; use {FID_WEIGHTS_URL}"
        )
    return net.eval().requires_grad_(False)


def _model(weights: str | os.PathLike | None, device: torch.device, check_hash: bool) -> FIDInceptionV3:
    path = find_inception_weights(weights).resolve()
    key = (f"{path}:{path.stat().st_mtime_ns}", str(device))
    if key not in _CACHE:
        _CACHE.clear()  # one network (about 90 MB) kept at a time
        _CACHE[key] = _load(path, check_hash).to(device)
    return _CACHE[key]


def _prepare(images: Tensor, what: str) -> Tensor:
    if (
        not isinstance(images, Tensor)
        or images.ndim != 4
        or images.shape[1] not in (1, 3)
        or len(images) == 0
    ):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{what} must be images (N, 1 or 3, H, W) as a float tensor, got {shape}")
    if not images.is_floating_point():
        raise TypeError(f"{what} has dtype {images.dtype}; pass floats in [-1, 1]: 2 * x.float() / 255 - 1")
    if not torch.isfinite(images).all():
        raise ValueError(f"{what} has NaN or inf values; drop or fix those images first")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.5 or hi > 1.5:
        raise ValueError(
            f"{what} has values in [{lo:.3g}, {hi:.3g}], far outside [-1, 1]; write 2 * x / 255 - 1 for [0, 255] pixels"
        )
    return images.clamp(-1.0, 1.0)


@torch.no_grad()
def inception_features(
    images: Tensor,
    weights: str | os.PathLike | None = None,
    *,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    quantize: bool = True,
    check_hash: bool = True,
) -> Tensor:
    """Pool3 features ``(N, 2048)`` of float images ``(N, C, H, W)`` in ``[-1, 1]`` (``C`` 1 or 3).

    Grey images are repeated to three channels; every image is bilinearly resized to 299x299
    (``align_corners=False``, as pytorch-fid).

    Args:
        images: float images in ``[-1, 1]`` (overshoots up to 0.5 are clipped).
        weights: path of the weights; ``None`` looks in the default places (module docstring).
        batch_size: images per network call.
        device: where the network runs; default the images' device.
        quantize: round to 256 levels first, like images saved as 8-bit PNGs for pytorch-fid.
        check_hash: check a ``.pth`` file's sha256 against the ``6726825d`` in its official name.

    Raises:
        FileNotFoundError: when no weights are found (the message says where to get them).
    """
    images = _prepare(images, "images")
    dev = torch.device(device) if device is not None else images.device
    net = _model(weights, dev, check_hash)
    out = []
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size].to(dev, torch.float32)
        if quantize:
            x = torch.round((x + 1) * 127.5) / 127.5 - 1
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        out.append(net(x))
    return torch.cat(out)


def fid(
    samples: Tensor,
    reference: Tensor | Stats,
    *,
    weights: str | os.PathLike | None = None,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    quantize: bool = True,
    check_hash: bool = True,
) -> float:
    """Frechet Inception Distance (Heusel et al., NeurIPS 2017) between generated and real images.

    Args:
        samples: generated float images ``(N, C, H, W)`` in ``[-1, 1]``.
        reference: real images in the same layout, or precomputed ``(mu, cov)`` pool3 statistics
            (e.g. ``mu`` and ``sigma`` of a pytorch-fid ``.npz``, as tensors).
        weights, batch_size, device, quantize, check_hash: as in :func:`inception_features`.

    Returns:
        FID as a float (pytorch-fid's number for the same images and weights).
    """
    opts = {
        "weights": weights,
        "batch_size": batch_size,
        "device": device,
        "quantize": quantize,
        "check_hash": check_hash,
    }
    fake = gaussian_stats(inception_features(samples, **opts))
    real = (
        reference
        if isinstance(reference, (tuple, list))
        else gaussian_stats(inception_features(reference, **opts))
    )
    return frechet_distance(fake, real)
