"""Safetensors I/O and crash-safe training checkpoints.

Tensors are read and written by the `safetensors <https://huggingface.co/docs/safetensors>`_ package
(``safetensors.torch.save`` / ``load`` on bytes); nothing is ever unpickled, so loading a file never
executes code from it. This module adds atomic files, checksummed checkpoint folders and clear errors.

A checkpoint is a folder ``ckpt-000500/`` holding one ``<group>.safetensors`` per tensor group (model,
EMA, optimizer, ...) and a ``manifest.json`` with the step, a JSON ``config`` and the size and sha256
of every file. Every file is written atomically (temporary file in the same folder, flush + fsync,
``os.replace``), the folder is assembled as ``ckpt-000500.tmp/`` and renamed into place, and the
``latest`` pointer file is replaced last, so a kill at any instant leaves the previous checkpoint
loadable.

Example:
    >>> import tempfile, torch
    >>> from flowforge.train.checkpoint import save_checkpoint, load_checkpoint
    >>> root = tempfile.mkdtemp()
    >>> _ = save_checkpoint(root, {"model": {"w": torch.ones(2, 3)}}, {"lr": 0.1}, step=5)
    >>> ckpt = load_checkpoint(root)
    >>> ckpt.step, ckpt.config, ckpt.tensors["model"]["w"].shape
    (5, {'lr': 0.1}, torch.Size([2, 3]))
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import Tensor

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "atomic_write",
    "checkpoint_name",
    "flatten_state",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_safetensors",
    "read_manifest",
    "safetensors_metadata",
    "save_checkpoint",
    "save_safetensors",
    "unflatten_state",
]

PathLike = str | os.PathLike

MANIFEST = "manifest.json"
LATEST = "latest"
_FORMAT = "flowforge-checkpoint"
_VERSION = 1
_CKPT_RE = re.compile(r"^ckpt-(\d+)$")
_GROUP_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class CheckpointError(RuntimeError):
    """A checkpoint or safetensors file is missing, truncated, corrupted or malformed.

    The message names the file, says what is wrong and what to do about it. Nothing has been loaded
    into any model when this is raised.
    """


# ----------------------------------------------------------------------------------------------------
# atomic files


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_chunks(path: Path, chunks: Iterable[bytes]) -> tuple[str, int]:
    """Write ``chunks`` to ``path`` atomically; returns (sha256 hex digest, size in bytes)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return digest.hexdigest(), size


def atomic_write(path: PathLike, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` atomically: readers see the old file or the new one, never a mix.

    The data goes to a temporary file in the same folder, is flushed and fsynced, and then renamed over
    ``path`` with ``os.replace``.

    Args:
        path: the file to (re)write; its folder must exist.
        data: the new contents; ``str`` is encoded as UTF-8.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    _atomic_write_chunks(Path(path), [data])


# ----------------------------------------------------------------------------------------------------
# safetensors (through the safetensors package)


def _check_tensor_dict(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None, what: str) -> None:
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"{what}: tensor names must be str, got {name!r}; convert the key with str()")
        if name == "__metadata__":
            raise ValueError(
                f"{what}: '__metadata__' is reserved by the safetensors format; rename the tensor"
            )
        if not isinstance(t, Tensor):
            raise TypeError(
                f"{what}: {name!r} is a {type(t).__name__}, not a torch.Tensor; only tensors are stored"
            )
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"{what}: metadata must map str to str, got {k!r}: {v!r}; convert with str()")


def _safetensors_bytes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None, what: str) -> bytes:
    """``tensors`` serialised by ``safetensors.torch.save``: CPU, contiguous, shared memory copied apart."""
    _check_tensor_dict(tensors, metadata, what)
    plain: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr and ptr in seen:  # the package refuses tensors sharing memory; store independent copies
            t = t.clone()
        seen.add(ptr)
        plain[name] = t
    try:
        return safetensors.torch.save(plain, metadata=dict(metadata) if metadata else None)
    except KeyError as e:  # the package's dtype table has no entry for this dtype
        bad = sorted(n for n, t in plain.items() if t.dtype == e.args[0]) or [str(e)]
        raise TypeError(
            f"{what}: {bad[0]!r} has dtype {e.args[0]}, which safetensors does not store; cast it to a "
            "float, int, uint8 or bool dtype"
        ) from None


def _safetensors_load(data: bytes, where: str, advice: str) -> dict[str, Tensor]:
    """Deserialise with the safetensors package (never unpickles); its errors become CheckpointError."""
    try:
        return safetensors.torch.load(data)
    except safetensors.SafetensorError as e:
        msg = str(e).removeprefix("Error while deserializing: ")
        raise CheckpointError(
            f"{where} has a bad header (the safetensors package says: {msg}); {advice}"
        ) from None


def save_safetensors(
    path: PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` to a safetensors file, atomically (``safetensors.torch.save`` + fsync + rename).

    Args:
        path: the file to write (conventionally ``*.safetensors``).
        tensors: name -> tensor, any dtype the safetensors package stores, any device (copied to CPU).
            Tensors sharing memory are written as independent copies.
        metadata: optional str -> str stored under ``__metadata__``.
    """
    _atomic_write_chunks(Path(path), [_safetensors_bytes(tensors, metadata, str(path))])


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


_FILE_ADVICE = "re-create the file or restore it from a backup"


def load_safetensors(path: PathLike) -> dict[str, Tensor]:
    """Read a safetensors file into CPU tensors with the safetensors package (nothing is unpickled).

    Args:
        path: the file.

    Returns:
        name -> tensor.

    Raises:
        CheckpointError: the file is missing, truncated, has trailing bytes or a malformed header.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; check the path or re-create the file")
    return _safetensors_load(path.read_bytes(), str(path), _FILE_ADVICE)


def safetensors_metadata(path: PathLike) -> dict[str, str]:
    """The ``__metadata__`` (str -> str) of a safetensors file; empty when it has none."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; check the path or re-create the file")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except safetensors.SafetensorError as e:
        msg = str(e).removeprefix("Error while deserializing: ")
        raise CheckpointError(
            f"{path} has a bad header (the safetensors package says: {msg}); {_FILE_ADVICE}"
        ) from None


# ----------------------------------------------------------------------------------------------------
# nested state <-> (JSON, tensors)


def flatten_state(obj: Any) -> tuple[Any, dict[str, Tensor]]:
    """Split a nested state (e.g. ``optimizer.state_dict()``) into JSON and a flat dict of tensors.

    Tensors become ``{"__tensor__": key}``, numpy arrays ``{"__ndarray__": key}``, tuples
    ``{"__tuple__": [...]}`` and dicts with non-str keys ``{"__items__": [[k, v], ...]}``, so
    :func:`unflatten_state` restores the exact structure and types. No pickle is involved.

    Args:
        obj: nested dicts / lists / tuples of tensors, numpy arrays, numbers, strings, bools and None.

    Returns:
        (a JSON-serialisable structure, key -> tensor).

    Raises:
        TypeError: for any other object, naming where it sits.
    """
    tensors: dict[str, Tensor] = {}

    def key_for(path: str) -> str:
        key, i = path or "_", 1
        while key in tensors:
            key, i = f"{path}#{i}", i + 1
        return key

    def enc(o: Any, path: str) -> Any:
        if isinstance(o, Tensor):
            key = key_for(path)
            tensors[key] = o.detach()
            return {"__tensor__": key}
        if isinstance(o, np.ndarray):
            key = key_for(path)
            tensors[key] = torch.from_numpy(
                np.ascontiguousarray(o).astype(np.int64 if o.dtype.kind in "ui" else o.dtype)
            )
            return {"__ndarray__": key, "dtype": o.dtype.str}
        if isinstance(o, np.generic):
            return o.item()
        if o is None or isinstance(o, bool | int | float | str):
            return o
        if isinstance(o, tuple):
            return {"__tuple__": [enc(v, f"{path}.{i}") for i, v in enumerate(o)]}
        if isinstance(o, list):
            return [enc(v, f"{path}.{i}") for i, v in enumerate(o)]
        if isinstance(o, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in o):
                return {k: enc(v, f"{path}.{k}" if path else k) for k, v in o.items()}
            return {"__items__": [[enc(k, f"{path}.k"), enc(v, f"{path}.{k}")] for k, v in o.items()]}
        raise TypeError(
            f"cannot store a {type(o).__name__} at {path or '<root>'!r} in a checkpoint: only tensors, numpy "
            "arrays, numbers, strings, None, lists, tuples and dicts are stored (never pickles); "
            "convert it first"
        )

    return enc(obj, ""), tensors


def unflatten_state(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of :func:`flatten_state`.

    Raises:
        CheckpointError: a referenced tensor is missing.
    """

    def dec(o: Any) -> Any:
        if isinstance(o, list):
            return [dec(v) for v in o]
        if isinstance(o, dict):
            if "__tensor__" in o or "__ndarray__" in o:
                key = o.get("__tensor__", o.get("__ndarray__"))
                if key not in tensors:
                    raise CheckpointError(
                        f"state refers to tensor {key!r}, which is not stored; the checkpoint is incomplete"
                    )
                t = tensors[key]
                return t if "__tensor__" in o else t.numpy().astype(np.dtype(o["dtype"]))
            if "__tuple__" in o:
                return tuple(dec(v) for v in o["__tuple__"])
            if "__items__" in o:
                return {dec(k): dec(v) for k, v in o["__items__"]}
            return {k: dec(v) for k, v in o.items()}
        return o

    return dec(obj)


# ----------------------------------------------------------------------------------------------------
# checkpoint folders


@dataclass
class Checkpoint:
    """A validated checkpoint, fully loaded into CPU memory.

    Attributes:
        path: the checkpoint folder, e.g. ``runs/moons/ckpt-000500``.
        step: the training step it was taken at.
        tensors: group -> (name -> tensor), one group per ``<group>.safetensors`` file.
        config: the JSON-serialisable dict given to :func:`save_checkpoint`.
    """

    path: Path
    step: int
    tensors: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint at ``step``: ``ckpt-000500``."""
    return f"ckpt-{step:06d}"


def list_checkpoints(root: PathLike) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first (temporary folders are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CKPT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: PathLike) -> Path | None:
    """The checkpoint the ``latest`` pointer names, else the newest folder; None when there is none."""
    root = Path(root)
    try:
        name = (root / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if _CKPT_RE.match(name) and (root / name).is_dir():
        return root / name
    found = list_checkpoints(root)
    return found[-1] if found else None


def _remove_stale(root: Path) -> None:
    """Remove leftovers of interrupted saves and prunes: ``*.tmp``/``*.old``/``*.del`` folders, temp files."""
    for p in root.iterdir():
        if p.is_dir() and re.match(r"^ckpt-\d+\.(tmp|old|del)$", p.name):
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file() and p.name.startswith(f".{LATEST}.") and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)


def save_checkpoint(
    root: PathLike,
    tensors: Mapping[str, Mapping[str, Tensor]],
    config: Mapping[str, Any] | None = None,
    *,
    step: int,
    keep: int | None = 3,
) -> Path:
    """Write a checkpoint folder ``root/ckpt-<step>`` atomically and keep only the newest ``keep``.

    Layout: one ``<group>.safetensors`` per entry of ``tensors`` and a ``manifest.json`` with the step,
    ``config`` and the size and sha256 of each file. The folder is built as ``ckpt-<step>.tmp``, renamed
    into place, and then the ``latest`` pointer is replaced; older checkpoints are removed only after
    that. A crash at any point leaves the previous checkpoint loadable.

    Args:
        root: the run folder (created if needed).
        tensors: group name (``[A-Za-z0-9_.-]``) -> state dict of tensors, e.g.
            ``{"model": model.state_dict(), "ema": ema.state_dict()}``.
        config: JSON-serialisable dict stored in the manifest (no pickles).
        step: training step; names the folder.
        keep: how many checkpoints to keep (the newest ones); None keeps all.

    Returns:
        The checkpoint folder.
    """
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1 (or None to keep every checkpoint), got {keep}")
    if not _is_int(step) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    for group in tensors:
        if not isinstance(group, str) or not _GROUP_RE.match(group) or group == "manifest":
            raise ValueError(
                f"checkpoint group {group!r} is not a valid file stem; use letters, digits, _ . -"
            )
    try:
        config_text = json.dumps(dict(config or {}))
    except TypeError as e:
        raise TypeError(
            f"checkpoint config must be JSON-serialisable ({e}); use flatten_state for tensors"
        ) from e
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    name = checkpoint_name(step)
    tmp = root / f"{name}.tmp"
    tmp.mkdir()
    files = {}
    for group, state in tensors.items():
        fname = f"{group}.safetensors"
        sha, size = _atomic_write_chunks(
            tmp / fname, [_safetensors_bytes(state, {"format": "pt"}, f"{name}/{fname}")]
        )
        files[fname] = {"bytes": size, "sha256": sha}
    manifest = {
        "format": _FORMAT,
        "version": _VERSION,
        "step": step,
        "files": files,
        "config": json.loads(config_text),
    }
    atomic_write(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    _fsync_dir(tmp)
    final = root / name
    old = None
    if final.exists():  # re-saving the same step: move the old one aside first
        old = root / f"{name}.old"
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write(root / LATEST, name + "\n")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if keep is not None:
        for p in list_checkpoints(root)[:-keep]:
            if p.name != name:
                trash = p.with_name(p.name + ".del")
                os.replace(p, trash)  # atomic: a half-deleted folder never looks like a checkpoint
                shutil.rmtree(trash, ignore_errors=True)
    return final


def _advice(root: Path, ckpt: Path) -> str:
    older = [p for p in list_checkpoints(root) if p != ckpt and _step_of(p) < _step_of(ckpt)]
    if older:
        return f"delete {ckpt.name}/ to fall back to {older[-1].name}"
    return f"no older checkpoint is left in {root}; restore the file from a backup or start the run again"


def _step_of(p: Path) -> int:
    m = _CKPT_RE.match(p.name)
    return int(m.group(1)) if m else -1


def read_manifest(ckpt: PathLike) -> dict[str, Any]:
    """Read and check the ``manifest.json`` of a checkpoint folder (no tensor is read)."""
    ckpt = Path(ckpt)
    root = ckpt.parent
    where = f"{ckpt.name}/{MANIFEST}"
    advice = _advice(root, ckpt)
    path = ckpt / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{where} is missing, so {ckpt.name} is not a complete checkpoint; {advice}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{where} is not valid JSON ({e}); {advice}") from None
    ok = (
        isinstance(manifest, dict)
        and manifest.get("format") == _FORMAT
        and _is_int(manifest.get("step"))
        and isinstance(manifest.get("files"), dict)
        and isinstance(manifest.get("config", {}), dict)
        and all(
            isinstance(v, dict) and _is_int(v.get("bytes")) and isinstance(v.get("sha256"), str)
            for v in manifest["files"].values()
        )
    )
    if not ok:
        raise CheckpointError(
            f"{where} is not a flowforge checkpoint manifest (format, step, files); {advice}"
        )
    if manifest.get("version", 0) > _VERSION:
        raise CheckpointError(
            f"{where} has format version {manifest['version']}, newer than this flowforge reads "
            f"({_VERSION}); "
            "upgrade flowforge"
        )
    return manifest


def load_checkpoint(path: PathLike, *, groups: Sequence[str] | None = None) -> Checkpoint:
    """Load and fully validate a checkpoint into CPU memory.

    Every requested file must exist, have the size and sha256 recorded in the manifest, and a valid
    safetensors header. Nothing is applied to any model here, so a bad checkpoint cannot half-load one.

    Args:
        path: a checkpoint folder (``.../ckpt-000500``) or a run folder, in which case the checkpoint
            named by ``latest`` (else the newest one) is loaded.
        groups: which tensor groups to read (default all in the manifest).

    Returns:
        The :class:`Checkpoint`.

    Raises:
        CheckpointError: nothing to load, or a file is missing, truncated, corrupted or malformed. The
            message names the file and says how to fall back to the previous checkpoint.
    """
    path = Path(path)
    if (path / MANIFEST).is_file() or _CKPT_RE.match(path.name):
        ckpt = path
    else:
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(
                f"no checkpoint in {path} (expected a ckpt-NNNNNN/ folder); check the path, or train first"
            )
        ckpt = found
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint folder {ckpt} is missing; check the path")
    root = ckpt.parent
    advice = _advice(root, ckpt)
    manifest = read_manifest(ckpt)
    files: dict[str, dict[str, Any]] = manifest["files"]
    wanted = list(groups) if groups is not None else [f.removesuffix(".safetensors") for f in files]
    tensors: dict[str, dict[str, Tensor]] = {}
    for group in wanted:
        fname = f"{group}.safetensors"
        where = f"{ckpt.name}/{fname}"
        if fname not in files:
            have = ", ".join(f.removesuffix(".safetensors") for f in files) or "none"
            raise CheckpointError(f"{ckpt.name} has no {fname!r} (it holds: {have}); it was saved without it")
        fpath = ckpt / fname
        if not fpath.is_file():
            raise CheckpointError(f"{where} is missing; {advice}")
        expected = files[fname]["bytes"]
        data = fpath.read_bytes()
        if len(data) < expected:
            raise CheckpointError(
                f"{where} is truncated (expected {expected} bytes, found {len(data)}); {advice}"
            )
        if len(data) > expected:
            raise CheckpointError(
                f"{where} is too long (expected {expected} bytes, found {len(data)}); {advice}"
            )
        loaded = _safetensors_load(data, where, advice)
        sha = hashlib.sha256(data).hexdigest()
        if sha != files[fname]["sha256"]:
            raise CheckpointError(
                f"{where} is corrupted (its sha256 {sha[:12]}... does not match the manifest's "
                f"{files[fname]['sha256'][:12]}...); {advice}"
            )
        tensors[group] = loaded
    return Checkpoint(path=ckpt, step=manifest["step"], tensors=tensors, config=manifest.get("config", {}))
