"""Image datasets as integer tensors: MNIST (IDX files, downloaded when missing) and sklearn's digits.

Images come back as ``uint8`` tensors ``(N, 1, H, W)`` with their number of intensity ``levels``; models
see them through :func:`dequantize` (uniform dequantisation into ``[-1, 1]``), whose log-determinant
:func:`dequantization_log_det` turns a model's density into nats on the integer pixel scale and so
into bits per dimension.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from flowforge.core.choices import suggest

__all__ = [
    "ImageSet",
    "load_mnist",
    "load_digits",
    "dequantize",
    "quantize",
    "dequantization_log_det",
    "MNIST_FILES",
]

#: File name and md5 of the *uncompressed* IDX file, per (split, part).
MNIST_FILES: dict[tuple[str, str], tuple[str, str]] = {
    ("train", "images"): ("train-images-idx3-ubyte.gz", "6bbc9ace898e44ae57da46a324031adb"),
    ("train", "labels"): ("train-labels-idx1-ubyte.gz", "a25bea736e30d166cdddb491f175f624"),
    ("test", "images"): ("t10k-images-idx3-ubyte.gz", "2646ac647ad5339dbf082846283269ea"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte.gz", "27ae3e4e09519cfbb04c329615203637"),
}
_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


class ImageSet(NamedTuple):
    """Integer images ``x: (N, C, H, W) uint8`` with values in ``[0, levels)`` and labels ``y: (N,)``."""

    x: Tensor
    y: Tensor
    levels: int


def _read_idx(path: Path, md5: str | None) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ValueError(
            f"{path} is not a readable gzip file ({exc}); delete it and load again to re-download"
        ) from None
    if md5 is not None and hashlib.md5(raw).hexdigest() != md5:
        raise ValueError(f"{path} is damaged (md5 mismatch); delete it and load again to re-download")
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise ValueError(f"{path} is not an unsigned-byte IDX file; delete it and load again to re-download")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise ValueError(
            f"{path} is truncated: header says {shape}, found {data.size} bytes; delete it and load again"
        )
    return data.reshape(shape)


def _fetch(name: str, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    errors = []
    for mirror in _MNIST_MIRRORS:
        tmp = root / (name + ".part")
        try:
            with urllib.request.urlopen(mirror + name, timeout=60) as r:
                tmp.write_bytes(r.read())
            tmp.replace(root / name)
            return root / name
        except OSError as e:  # URLError is an OSError
            errors.append(f"{mirror}: {e}")
            tmp.unlink(missing_ok=True)
    raise FileNotFoundError(
        f"could not download {name} ({'; '.join(errors)}); put the four MNIST .gz files in {root} "
        "or pass root=<folder that has them>"
    )


def load_mnist(root: str | os.PathLike, split: str = "train", *, download: bool = True) -> ImageSet:
    """MNIST from the four canonical IDX files in ``root`` (``.gz`` or uncompressed), md5-checked.

    Missing files are downloaded into ``root`` when ``download`` is true.

    Args:
        root: folder holding ``train-images-idx3-ubyte.gz`` etc.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).

    Returns:
        ``ImageSet(x: (N, 1, 28, 28) uint8, y: (N,) int64, levels=256)``.
    """
    if split not in ("train", "test"):
        raise ValueError(
            f"split must be 'train' or 'test', got {split!r}{suggest(split, ('train', 'test'))}; write split='train'"
        )
    root = Path(root).expanduser()
    parts = {}
    for part in ("images", "labels"):
        name, md5 = MNIST_FILES[(split, part)]
        path = root / name
        if not path.is_file() and (root / name[:-3]).is_file():
            path = root / name[:-3]
        if not path.is_file():
            if not download:
                raise FileNotFoundError(
                    f"{root / name} not found; put the MNIST files there (the four .gz files), or allow the download "
                    "(download=True; CLI: --set download=true)"
                )
            path = _fetch(name, root)
        parts[part] = _read_idx(path, md5)
    x = torch.from_numpy(parts["images"].copy()).unsqueeze(1)
    y = torch.from_numpy(parts["labels"].astype(np.int64))
    if len(x) != len(y):
        raise ValueError(
            f"MNIST {split} in {root}: {len(x)} images but {len(y)} labels; delete both files and load again"
        )
    return ImageSet(x, y, 256)


def load_digits(split: str = "all", *, test_fraction: float = 0.2, seed: int = 0) -> ImageSet:
    """scikit-learn's 8x8 digits (1,797 images, 17 grey levels 0..16), shipped with the package.

    Args:
        split: ``"all"``, or ``"train"`` / ``"test"`` from a fixed shuffled split.

    Example:
        >>> s = load_digits("test")
        >>> s.x.shape, s.x.dtype, s.levels
        (torch.Size([359, 1, 8, 8]), torch.uint8, 17)
    """
    try:
        from sklearn.datasets import load_digits as _sk
    except ImportError:
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    d = _sk()
    x = torch.from_numpy(d.images.astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    if split == "all":
        return ImageSet(x, y, 17)
    if split not in ("train", "test"):
        raise ValueError(
            f"split must be 'all', 'train' or 'test', got {split!r}{suggest(split, ('all', 'train', 'test'))}; "
            "write split='train'"
        )
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(x))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return ImageSet(x[idx], y[idx], 17)


def dequantize(x: Tensor, levels: int, *, generator: torch.Generator | None = None) -> Tensor:
    r"""Uniform dequantisation of integer images into ``[-1, 1]``: :math:`2 (x + u) / L - 1`, :math:`u \sim U[0,1)`.

    Example:
        >>> x = torch.tensor([[0, 255]], dtype=torch.uint8)
        >>> y = dequantize(x, 256, generator=torch.Generator().manual_seed(0))
        >>> bool((y >= -1).all() and (y <= 1).all())
        True
    """
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return (x.float() + u) * (2.0 / levels) - 1.0


def quantize(y: Tensor, levels: int) -> Tensor:
    """Inverse of :func:`dequantize` up to the noise: ``[-1, 1]`` to integers in ``[0, levels)`` (uint8)."""
    return ((y + 1.0) * (levels / 2.0)).floor().clamp(0, levels - 1).to(torch.uint8)


def dequantization_log_det(dim: int, levels: int) -> float:
    """``log|det|`` of the map from pixel units ``[0, L)^D`` to the model's ``[-1, 1]^D``: ``D log(2/L)``.

    ``log p_pixels(x + u) = log p_model(y) + D log(2/L)``; the negative of its mean over ``u`` bounds
    the discrete NLL, and divided by ``D ln 2`` gives bits per dimension.

    Example:
        >>> round(dequantization_log_det(784, 256) / 784, 4)
        -4.852
    """
    return dim * math.log(2.0 / levels)
