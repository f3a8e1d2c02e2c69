"""Loading user arrays, checking them, and standardising them with a tracked change of variables."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["SUPPORTED_EXTENSIONS", "Standardizer", "check_finite", "load_array"]

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".npy", ".npz", ".pt", ".pth", ".csv")
"""File extensions :func:`load_array` reads."""

_PREFERRED_KEYS = ("x", "data", "arr_0")


def _pick_entry(entries: dict[str, Any], path: Path, kind: str) -> Any:
    """Choose the single array of a ``.npz`` / dict checkpoint, or the one under a preferred key."""
    if len(entries) == 0:
        raise ValueError(f"{path} is empty: the {kind} holds no arrays; save one (N, D) array in it")
    if len(entries) == 1:
        return next(iter(entries.values()))
    for key in _PREFERRED_KEYS:
        if key in entries:
            return entries[key]
    raise ValueError(
        f"{path} holds several arrays {sorted(entries)} and none is named {' / '.join(_PREFERRED_KEYS)}; "
        "save the data under the key 'x' (e.g. np.savez(path, x=data)) or keep a single array in the file"
    )


def _read_csv(path: Path) -> np.ndarray:
    with open(path, encoding="utf-8") as fh:
        lines = [ln for ln in fh.read().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path} is empty; write one row per sample with comma-separated numbers")
    skip = 0
    try:
        [float(v) for v in lines[0].split(",")]
    except ValueError:
        skip = 1  # the first row is a header
    body = lines[skip:]
    if not body:
        raise ValueError(f"{path} holds only a header row {lines[0]!r} and no data rows")
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


def _to_tensor(obj: Any, path: Path) -> Tensor:
    if isinstance(obj, Tensor):
        if obj.is_complex() or not (obj.is_floating_point() or obj.dtype in _INT_TORCH):
            raise ValueError(f"{path} holds a {obj.dtype} tensor, not real numbers; save a float array")
        return obj.detach().to("cpu", torch.float32)
    arr = np.asarray(obj) if not isinstance(obj, np.ndarray) else obj
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"{path} holds non-numeric data (dtype {arr.dtype}); save a float array, "
            "e.g. np.save(path, x.astype(np.float32))"
        )
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


_INT_TORCH = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def load_array(path: str | os.PathLike[str]) -> Tensor:
    """Read an ``(N, D)`` data array from disk as a float32 tensor.

    Formats (chosen by extension, see :data:`SUPPORTED_EXTENSIONS`):

    - ``.npy``: one array (loaded with ``allow_pickle=False``).
    - ``.npz``: the single array in the archive, else the one under ``x``, ``data`` or ``arr_0``.
    - ``.pt`` / ``.pth``: a tensor, or a dict holding one tensor (else the key ``x``, ``data`` or
      ``arr_0``), loaded with ``torch.load(weights_only=True)`` so no code from the file is run.
    - ``.csv``: comma-separated numbers, one sample per row; a first row that does not parse as numbers
      is taken as a header and skipped.

    Args:
        path: file to read.

    Returns:
        Tensor of shape ``(N, D)``, dtype float32, on the CPU. Booleans and integers are converted.

    Raises:
        FileNotFoundError: the file does not exist (the message names the path).
        ValueError: unsupported extension, 1-D or >2-D array, non-numeric content, an empty array, or an
            ambiguous ``.npz`` / dict; each message says what to write instead.

    Example:
        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as d:
        ...     np.save(f"{d}/x.npy", np.zeros((5, 3)))
        ...     load_array(f"{d}/x.npy").shape
        torch.Size([5, 3])
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise ValueError(
            f"cannot read {path}: unsupported extension {ext or '(none)'!r}; "
            f"supported extensions are {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path} (resolved to {path.resolve()})")

    if ext == ".npy":
        try:
            obj: Any = np.load(path, allow_pickle=False)
        except ValueError as exc:  # object arrays need pickle
            raise ValueError(
                f"{path} holds non-numeric (object) data that would need pickle to load ({exc}); "
                "save a float array, e.g. np.save(path, x.astype(np.float32))"
            ) from None
    elif ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                obj = _pick_entry({k: archive[k] for k in archive.files}, path, ".npz archive")
        except ValueError as exc:
            if "pickle" not in str(exc):
                raise
            raise ValueError(
                f"{path} holds non-numeric (object) data that would need pickle to load; "
                "save float arrays, e.g. np.savez(path, x=x.astype(np.float32))"
            ) from None
    elif ext in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"{path} holds objects that safe loading (torch.load(weights_only=True)) refuses: "
                f"{str(exc).splitlines()[0]}; save a plain tensor with torch.save(x, path)"
            ) from None
        if isinstance(obj, dict):
            obj = _pick_entry(obj, path, "dict")
        if not isinstance(obj, (Tensor, np.ndarray)):
            raise ValueError(
                f"{path} holds a {type(obj).__name__}, not a tensor; save the data with torch.save(x, path) "
                "for an (N, D) tensor x, or a dict {'x': x}"
            )
    else:
        obj = _read_csv(path)

    x = _to_tensor(obj, path)
    if x.ndim == 1:
        raise ValueError(
            f"{path} holds a 1-D array of shape {tuple(x.shape)}; expected (N, D). For N scalar samples "
            "save x.reshape(-1, 1), i.e. shape (N, 1)"
        )
    if x.ndim != 2:
        raise ValueError(
            f"{path} holds an array of shape {tuple(x.shape)}; expected (N, D). Flatten each sample, "
            "e.g. x.reshape(len(x), -1)"
        )
    if x.numel() == 0:
        raise ValueError(
            f"{path} holds an empty array of shape {tuple(x.shape)}; expected (N, D) with N, D >= 1"
        )
    return x.contiguous()


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
        mean = x.mean(dim=0)
        std = x.std(dim=0, correction=0)
        std = torch.where(std > eps, std, torch.ones_like(std))
        return cls(mean=mean.detach().clone(), std=std.detach().clone())

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
