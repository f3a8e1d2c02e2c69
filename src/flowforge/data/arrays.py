"""Loading user arrays, checking them, and standardising them with a tracked change of variables."""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["PICKLE_EXTENSIONS", "SUPPORTED_EXTENSIONS", "Standardizer", "check_finite", "load_array"]

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".npy", ".npz", ".safetensors", ".csv")
"""File extensions :func:`load_array` reads."""

#: Extensions of pickles, which :func:`load_array` refuses without opening (unpickling can run code).
PICKLE_EXTENSIONS: tuple[str, ...] = (".pt", ".pth", ".pkl", ".pickle", ".joblib", ".ckpt", ".bin")

_PREFERRED_KEYS = ("x", "data", "arr_0")

#: How to write each format, for the "what to write instead" half of the messages.
_HOW = {
    ".npy": "np.save(path, x.astype(np.float32))",
    ".npz": "np.savez(path, x=x.astype(np.float32))",
    ".safetensors": "safetensors.torch.save_file({'x': x.float().contiguous()}, path)",
    ".csv": "one row per sample of comma-separated numbers, e.g. np.savetxt(path, x, delimiter=',')",
}
_SAVE_INSTEAD = (
    "save the array with numpy.save (x.npy: np.save('x.npy', x.numpy())) or safetensors "
    "(x.safetensors: safetensors.torch.save_file({'x': x}, 'x.safetensors'))"
)
_F32_MAX = float(np.finfo(np.float32).max)


def _pick_key(keys: list[str], path: Path, kind: str) -> str:
    """The single key of a ``.npz`` / ``.safetensors`` file, or the preferred one among several."""
    how = _HOW[path.suffix.lower()]
    if len(keys) == 0:
        raise ValueError(f"{path} holds no arrays (an empty {kind}); save one (N, D) array in it: {how}")
    if len(keys) == 1:
        return keys[0]
    for key in _PREFERRED_KEYS:
        if key in keys:
            return key
    raise ValueError(
        f"{path} holds several arrays {sorted(keys)} and none is named {' / '.join(_PREFERRED_KEYS)}; "
        f"keep one array in the file or save the data under the key 'x': {how}"
    )


def _read_csv(path: Path) -> np.ndarray:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [ln for ln in fh.read().splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file (not UTF-8); write {_HOW['.csv']}") from None
    if not lines:
        raise ValueError(f"{path} is empty; write one row per sample with comma-separated numbers")
    skip = 0
    try:
        [float(v) for v in lines[0].split(",")]
    except ValueError:
        skip = 1  # the first row is a header
    body = lines[skip:]
    if not body:
        raise ValueError(
            f"{path} holds only a header row {lines[0][:80]!r} and no data rows; add one row of "
            "comma-separated numbers per sample below it"
        )
    rows = []
    width = None
    for i, line in enumerate(body, start=skip + 1):
        fields = line.split(",")
        try:
            rows.append([float(v) for v in fields])
        except ValueError:
            raise ValueError(
                f"{path} line {i} is not numeric: {line[:80]!r}; the CSV must hold numbers only "
                "(one optional header row)"
            ) from None
        if width is None:
            width = len(fields)
        elif len(fields) != width:
            raise ValueError(
                f"{path} line {i} has {len(fields)} columns but the first data row has {width}; "
                "every row needs the same number of values"
            )
    return np.asarray(rows, dtype=np.float64)


def _read_npy(path: Path) -> np.ndarray:
    header: tuple[Any, ...] | None = None
    with open(path, "rb") as fh:
        magic = fh.read(6)
        if magic[:2] == b"PK":
            raise ValueError(f"{path} is a zip (.npz) archive, not a .npy file; rename it to .npz")
        if magic != b"\x93NUMPY":
            raise ValueError(f"{path} is not a .npy file (no NUMPY header); write it with {_HOW['.npy']}")
        fh.seek(0)
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                header = np.lib.format.read_array_header_2_0(fh)
        except (ValueError, EOFError, OSError) as exc:
            raise ValueError(
                f"{path} has a damaged .npy header ({exc}); write it again with {_HOW['.npy']}"
            ) from None
    if header is not None and header[2].hasobject:
        raise ValueError(
            f"{path} holds Python objects (dtype {header[2]}) that only pickle can load, and flowforge never "
            f"unpickles data files; save numbers instead: {_HOW['.npy']}"
        )
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        promise = f" (its header promises shape {header[0]} of {header[2]})" if header is not None else ""
        raise ValueError(
            f"{path} is truncated or damaged{promise}: {str(exc).splitlines()[0]}; write it again with "
            f"{_HOW['.npy']}"
        ) from None


def _read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive[_pick_key(list(archive.files), path, ".npz archive")]
    except ValueError as exc:
        if "pickle" not in str(exc):
            raise
        raise ValueError(
            f"{path} holds Python objects that only pickle can load, and flowforge never unpickles data "
            f"files; save numbers instead: {_HOW['.npz']}"
        ) from None
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ValueError(
            f"{path} is not a readable .npz archive ({exc}); write it again with {_HOW['.npz']}"
        ) from None


def _read_safetensors(path: Path) -> Tensor:
    try:
        from safetensors import safe_open
    except ImportError:
        raise ValueError(
            f"reading {path} needs the safetensors package; pip install 'flowforge[safetensors]' (or "
            "safetensors), or save the array with numpy.save instead"
        ) from None
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.get_tensor(_pick_key(list(fh.keys()), path, ".safetensors file"))
    except ValueError:
        raise
    except Exception as exc:  # safetensors_rust.SafetensorError and I/O errors
        raise ValueError(
            f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]}); write it with "
            f"{_HOW['.safetensors']}"
        ) from None


def _to_tensor(obj: np.ndarray | Tensor, path: Path) -> Tensor:
    kind = obj.dtype.kind if isinstance(obj, np.ndarray) else None
    if isinstance(obj, Tensor):
        if obj.is_complex():
            kind = "c"
        elif obj.dtype == torch.bool:
            kind = "b"
        else:
            kind = "f" if obj.is_floating_point() else "i"
    if kind == "c":
        raise ValueError(
            f"{path} holds complex numbers (dtype {obj.dtype}), not real ones; save the real and imaginary "
            "parts as separate columns, e.g. np.concatenate([x.real, x.imag], axis=1)"
        )
    if kind == "b":
        raise ValueError(
            f"{path} holds booleans (dtype {obj.dtype}), which a continuous flow cannot model; if 0/1 values "
            "are what you mean, save them as numbers: x.astype(np.float32)"
        )
    if kind not in ("i", "u", "f"):
        raise ValueError(
            f"{path} holds non-numeric data (dtype {obj.dtype}); save a float array, e.g. {_HOW['.npy']}"
        )
    if isinstance(obj, Tensor):
        wide = obj.detach().to("cpu", torch.float64)
    else:
        wide = torch.from_numpy(np.asarray(obj, dtype=np.float64))
    big = torch.isfinite(wide) & (wide.abs() > _F32_MAX)  # nan / inf: check_finite names them
    if bool(big.any()):
        i = int(torch.nonzero(big.any(dim=1))[0, 0])
        top = float(wide[big].abs().max())
        raise ValueError(
            f"{path} holds values up to {top:.3g} (first in row {i}), beyond float32's range of "
            f"{_F32_MAX:.3g}; rescale the data (e.g. divide by {10 ** math.ceil(math.log10(top)):.0e}) or "
            "take its logarithm before saving"
        )
    return wide.to(torch.float32)


def load_array(path: str | os.PathLike[str]) -> Tensor:
    """Read an ``(N, D)`` data array from disk as a float32 tensor, never unpickling anything.

    Formats (chosen by extension, see :data:`SUPPORTED_EXTENSIONS`):

    - ``.npy``: one array (``allow_pickle=False``; object arrays are refused).
    - ``.npz``: the single array in the archive, else the one under ``x``, ``data`` or ``arr_0``.
    - ``.safetensors``: the single tensor in the file, else the one under ``x``, ``data`` or ``arr_0``
      (needs the ``safetensors`` package).
    - ``.csv``: comma-separated numbers, one sample per row; a first row that does not parse as numbers
      is taken as a header and skipped.

    Pickles (``.pt`` / ``.pth`` from ``torch.save``, ``.pkl``, see :data:`PICKLE_EXTENSIONS`) are refused
    without being opened, since unpickling runs code from the file: save with ``numpy.save`` or
    ``safetensors`` instead.

    Args:
        path: file to read.

    Returns:
        Tensor of shape ``(N, D)``, dtype float32, on the CPU. Integers are converted.

    Raises:
        FileNotFoundError: the file does not exist (the message names the path).
        ValueError: unsupported extension, a pickle, a directory, an empty, truncated or damaged file, a
            1-D or >2-D array, non-numeric, complex or boolean content, values beyond float32's range, or
            an ambiguous archive; each message says what to write instead.

    Example:
        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as d:
        ...     np.save(f"{d}/x.npy", np.zeros((5, 3)))
        ...     load_array(f"{d}/x.npy").shape
        torch.Size([5, 3])
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext in PICKLE_EXTENSIONS:
        raise ValueError(
            f"{path} is a pickle ({ext}, e.g. from torch.save), and flowforge never unpickles data files "
            f"(unpickling runs code from the file); {_SAVE_INSTEAD}"
        )
    if ext not in SUPPORTED_EXTENSIONS:
        raise ValueError(
            f"cannot read {path}: unsupported extension {ext or '(none)'!r}; "
            f"save it as one of {', '.join(SUPPORTED_EXTENSIONS)} (e.g. np.save('x.npy', x))"
        )
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a data file; give the path of one {ext} file in it")
    if not path.is_file():
        raise FileNotFoundError(
            f"data file not found: {path} (resolved to {path.resolve()}); check the path and the current folder"
        )
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes); write the data with {_HOW[ext]}")

    obj: np.ndarray | Tensor
    if ext == ".npy":
        obj = _read_npy(path)
    elif ext == ".npz":
        obj = _read_npz(path)
    elif ext == ".safetensors":
        obj = _read_safetensors(path)
    else:
        obj = _read_csv(path)

    shape = tuple(obj.shape)
    if len(shape) == 1:
        raise ValueError(
            f"{path} holds a 1-D array of shape {shape}; expected (N, D). For N scalar samples "
            "save x.reshape(-1, 1), i.e. shape (N, 1)"
        )
    if len(shape) != 2:
        raise ValueError(
            f"{path} holds an array of shape {shape}; expected (N, D). Flatten each sample, "
            "e.g. x.reshape(len(x), -1)"
        )
    if 0 in shape:
        raise ValueError(f"{path} holds an empty array of shape {shape}; expected (N, D) with N, D >= 1")
    return _to_tensor(obj, path).contiguous()


def check_finite(x: Tensor, what: str = "data") -> Tensor:
    """Raise if any entry of ``x`` is NaN or infinite, naming the first offending row.

    Args:
        x: tensor of shape ``(N, *event)`` (a 0-dim tensor counts as one row).
        what: what to call ``x`` in the message.

    Returns:
        ``x`` itself, unchanged, so the call can be chained.

    Raises:
        ValueError: e.g. ``"data row 17 holds nan: [0.1, nan]; remove or impute it"``.

    Example:
        >>> check_finite(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: data row 1 holds nan: [nan, 2.0]; remove or impute it ...
    """
    if not (x.is_floating_point() or x.is_complex()):
        return x
    rows = x.reshape(1, -1) if x.ndim == 0 else x.reshape(x.shape[0], -1)
    bad = ~torch.isfinite(rows).all(dim=1)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        row = rows[i]
        kinds = []
        if bool(torch.isnan(row).any()):
            kinds.append("nan")
        if bool(torch.isinf(row).any()):
            kinds.append("inf")
        values = row[:8].tolist()
        shown = "[" + ", ".join(repr(v) for v in values) + (", ...]" if row.numel() > 8 else "]")
        raise ValueError(
            f"{what} row {i} holds {' and '.join(kinds)}: {shown}; remove or impute it "
            "(e.g. x = x[torch.isfinite(x).all(1)])"
        )
    return x


@dataclass(frozen=True, eq=False)
class Standardizer:
    r"""Per-feature affine standardisation ``z = (x - mean) / std`` with its log-determinant.

    A model trained on ``z`` reports densities of ``z``; the density of the data as given follows from
    the change of variables :math:`\log p_x(x) = \log p_z(z) + \log|\det \partial z/\partial x|`, where
    :math:`\log|\det \partial z/\partial x| = -\sum_j \log \mathrm{std}_j` (:meth:`log_det`).

    Attributes:
        mean: tensor of shape ``(*event)``.
        std: tensor of shape ``(*event)``, strictly positive.

    Example:
        >>> x = torch.randn(100, 3) * 4.0 + 1.0
        >>> s = Standardizer.fit(x)
        >>> torch.allclose(s.inverse(s.forward(x)), x, atol=1e-5)
        True
        >>> s2 = Standardizer.from_dict(s.to_dict())
        >>> torch.equal(s2.mean, s.mean) and torch.equal(s2.std, s.std)
        True
    """

    mean: Tensor
    std: Tensor

    def __post_init__(self) -> None:
        if self.mean.shape != self.std.shape:
            raise ValueError(
                f"Standardizer mean and std need the same shape, got {tuple(self.mean.shape)} and "
                f"{tuple(self.std.shape)}"
            )
        if not bool((self.std > 0).all()):
            raise ValueError("Standardizer std must be > 0 everywhere; use 1.0 for constant features")

    @classmethod
    def fit(cls, x: Tensor, *, eps: float = 1e-12) -> Standardizer:
        """Fit mean and (population, ``1/N``) std over the first axis.

        Args:
            x: data of shape ``(N, *event)``, ``N >= 1``, finite.
            eps: features whose std is ``<= eps`` (constant features) get std 1, so they are only
                centred.

        Returns:
            A :class:`Standardizer` with ``mean`` and ``std`` of shape ``(*event)`` and ``x``'s dtype.
        """
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"Standardizer.fit needs data of shape (N, D) with N >= 1, got {tuple(x.shape)}")
        if not x.is_floating_point():
            x = x.float()
        check_finite(x)
        # moments in float64: squares of float32 data beyond ~1e19 would overflow to inf
        wide = x.detach().double()
        mean = wide.mean(dim=0)
        std = wide.std(dim=0, correction=0)
        std = torch.where(std > eps, std, torch.ones_like(std))
        if not bool(torch.isfinite(std.to(x.dtype)).all()):
            raise ValueError(
                f"Standardizer.fit: the data's spread ({float(std.max()):.3g}) overflows {x.dtype}; rescale "
                "the data (e.g. divide by its largest absolute value) before fitting"
            )
        return cls(mean=mean.to(x.dtype), std=std.to(x.dtype))

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Map data to standardised coordinates: ``(x - mean) / std``; ``x`` of shape ``(N, *event)``."""
        mean, std = self._params(x)
        return (x - mean) / std

    __call__ = forward

    def inverse(self, z: Tensor) -> Tensor:
        """Map standardised coordinates back to data: ``z * std + mean``; ``z`` of shape ``(N, *event)``."""
        mean, std = self._params(z)
        return z * std + mean

    def log_det(self, x: Tensor) -> Tensor:
        r"""Per-sample log-determinant of the forward map, :math:`-\sum_j \log \mathrm{std}_j`.

        Add it to the model's ``log p_z(forward(x))`` to get ``log p_x(x)`` on the data as given
        (equivalently, subtract it from the NLL in z-space).

        Args:
            x: data of shape ``(N, *event)`` (only its batch size, dtype and device are used).

        Returns:
            Tensor of shape ``(N,)``, the same value in every entry.
        """
        _, std = self._params(x)
        return (-torch.log(std).sum()).expand(x.shape[0]).clone()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"mean": nested list, "std": nested list}``."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, dtype: torch.dtype = torch.float32) -> Standardizer:
        """Rebuild from :meth:`to_dict` output (e.g. after ``json.load``)."""
        missing = [k for k in ("mean", "std") if k not in d]
        if missing:
            raise ValueError(f"Standardizer.from_dict needs keys 'mean' and 'std'; missing {missing}")
        return cls(mean=torch.tensor(d["mean"], dtype=dtype), std=torch.tensor(d["std"], dtype=dtype))
