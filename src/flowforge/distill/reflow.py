r"""Reflow: rectified flow retrained on its own teacher's noise-data pairs (2-rectified flow++).

Liu, Gong & Liu (2022), "Flow Straight and Fast", arXiv:2209.03003 (reflow); Lee, Lin & Fanti (2024),
"Improving the Training of Rectified Flows", arXiv:2405.20320 (rf++; official code ``sangyun884/rfpp``).

A trained teacher defines a deterministic coupling :math:`x_1 = \mathrm{ODE}_{0\to1}(x_0)`. Regressing
the straight-line velocity on those pairs,

.. math:: L(\theta) = E_{t\sim p(t),\;x_0\sim N(0, I)}\; d\big(v_\theta(x_t, t),\; x_1 - x_0\big),
    \qquad x_t = t\,x_1 + (1 - t)\,x_0,

gives a field with the same marginals whose trajectories are straighter (they cannot cross), so few
Euler steps suffice. :func:`generate_pairs` integrates the teacher and stores the pairs (resumable);
:func:`load_pairs` reads them back; :class:`Reflow` is the objective (a recipe of parts: the affine
path, rf++'s U-shaped time sampler, the pseudo-Huber distance); its :meth:`Reflow.generator` is
:class:`~flowforge.continuous.FlowMatching`'s (1-step Euler, Heun, ...).

Time direction: rf++ writes :math:`z_\tau = (1 - \tau) x + \tau\varepsilon` (noise at :math:`\tau = 1`) and
regresses :math:`\varepsilon - x`. We convert with :math:`t = 1 - \tau` and :math:`v = -v_{rf++}`, which
gives the formula above (target :math:`x_1 - x_0`). The U-shaped density
:math:`p(t) \propto e^{at} + e^{a(1-t)}` is symmetric, so it reads the same in both directions; rf++
rescales it affinely (not a clamp) to :math:`[10^{-5}, 1 - 10^{-5}]`, and so does :class:`Reflow`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from flowforge.continuous.flow_matching import FlowMatching
from flowforge.continuous.generator import FlowGenerator, make_solver
from flowforge.core import solvers as S
from flowforge.core.guidance import drop_labels
from flowforge.core.objectives import Distance, PseudoHuber, regression_loss, regression_target
from flowforge.core.paths import AffinePath
from flowforge.core.schedules import Linear
from flowforge.core.time import TimeSampler, UShaped

__all__ = ["Reflow", "generate_pairs", "load_pairs", "pairs_metadata", "PAIRS_FORMAT"]

#: ``format`` entry of a pairs file's metadata.
PAIRS_FORMAT = "flowforge.reflow-pairs/1"

_ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


# --------------------------------------------------------------------------------------------------
# Pairs on disk
# --------------------------------------------------------------------------------------------------


def _teacher_field(
    teacher: Any, event_shape: tuple[int, ...] | None
) -> tuple[Callable[..., Tensor], tuple[int, ...]]:
    """``(velocity(x, t, **cond), event_shape)`` from a model with ``generator()``, a FlowGenerator or a callable."""
    make = getattr(teacher, "generator", None)
    if callable(make) and not isinstance(teacher, FlowGenerator):
        teacher = make()
    field = getattr(teacher, "field", None)
    if field is not None and hasattr(teacher, "event_shape"):
        shape = tuple(teacher.event_shape)
        if event_shape is not None and tuple(event_shape) != shape:
            raise ValueError(
                f"event_shape={tuple(event_shape)} but the teacher generates {shape}; drop event_shape"
            )
        return field, shape
    if not callable(teacher):
        raise TypeError(
            "the teacher must be a model with generator() (FlowMatching, Reflow), a FlowGenerator, or a "
            f"velocity callable v(x, t, **cond); got {type(teacher).__name__}"
        )
    if event_shape is None:
        raise ValueError(
            "a velocity callable as teacher needs event_shape=..., e.g. generate_pairs(v, n, path, event_shape=(2,))"
        )
    return teacher, tuple(int(s) for s in event_shape)


def _splitmix64(x: int) -> int:
    """One splitmix64 output (Steele et al., 2014): decorrelated seeds from ``(base, chunk)``."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0x7FFFFFFFFFFFFFFF


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _as_bytes(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _write_concatenated(path: Path, parts: list[Path], keys: list[str], metadata: dict[str, str]) -> None:
    """Concatenate the rows of chunk files into one safetensors file, streaming (one chunk in memory).

    The safetensors layout: an 8-byte little-endian header size, a JSON header giving each tensor's
    dtype, shape and byte range, then the raw little-endian bytes (spec: huggingface/safetensors).
    """
    first = safetensors.torch.load_file(str(parts[0]))
    rows = 0
    for p in parts:
        with safetensors.safe_open(str(p), framework="pt") as f:
            rows += f.get_slice(keys[0]).get_shape()[0]
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for k in keys:
        t = first[k]
        if t.dtype not in _ST_DTYPES:
            raise ValueError(
                f"pairs entry {k!r} has dtype {t.dtype}, which safetensors cannot store; cast it"
            )
        nbytes = rows * t[0].numel() * t.element_size()
        header[k] = {
            "dtype": _ST_DTYPES[t.dtype],
            "shape": [rows, *t.shape[1:]],
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # 8-byte alignment of the data, as the reference writer does
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for k in keys:
            for p in parts:
                f.write(_as_bytes(safetensors.torch.load_file(str(p))[k]))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_chunk(path: Path) -> dict[str, Tensor] | None:
    """A complete chunk file's tensors, or ``None`` when it is unreadable (then it is redone)."""
    try:
        return safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError):
        return None


def generate_pairs(
    teacher: Any,
    n: int,
    path: str | os.PathLike[str],
    *,
    solver: str | S.Solver = "heun",
    steps: int = 16,
    batch_size: int = 1024,
    generator: torch.Generator | None = None,
    y: Tensor | None = None,
    event_shape: tuple[int, ...] | None = None,
    teacher_name: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    r"""Integrate a teacher from noise to data and store the pairs ``(x0, x1[, y])`` in a safetensors file.

    Each chunk of ``batch_size`` rows draws its noise :math:`x_0 \sim N(0, I)` from its own CPU generator,
    seeded from one base seed (drawn once from ``generator``) and the chunk's index, and integrates
    :math:`\dot x = v(x, t)` from t=0 to t=1 with ``solver``. Chunks are written atomically (temporary
    file then ``os.replace``) into ``<path>.parts/``; a killed run called again with the same arguments
    continues from the last complete chunk and writes the same bits as an uninterrupted run. At the end
    the chunks are concatenated (streaming) into ``path`` and a JSON sidecar ``path.with_suffix(".json")``
    records ``teacher, solver, steps, seed, n, batch_size, event_shape, dtype``; the same JSON is the
    safetensors file's ``__metadata__["flowforge"]``. Calling it again on a finished file with the same
    arguments does nothing.

    Args:
        teacher: a model with ``generator()`` (:class:`~flowforge.continuous.FlowMatching`,
            :class:`Reflow` for a further round), a :class:`~flowforge.continuous.FlowGenerator` (e.g. a
            guided one), or a velocity callable ``v(x, t, **cond)`` (then give ``event_shape``). Put a
            network with dropout in eval mode first (``run.generator()`` does).
        n: number of pairs.
        path: the output file, ending in ``.safetensors``.
        solver: a solver name (``"heun"``, ``"rk4"``, ``"dopri5"``, ...) or a solver object.
        steps: uniform steps of the solver (ignored by ``"dopri5"``).
        batch_size: rows per chunk (and per teacher call).
        generator: draws the base seed; a resumed run must pass an equally seeded generator (or None to
            reuse the stored seed).
        y: class labels ``(n,)`` passed to the teacher as ``y=`` and stored with the pairs.
        event_shape: shape of one sample (only for a velocity callable).
        teacher_name: recorded in the metadata (default: the teacher's class name).
        device: where the teacher runs (noise is drawn on the CPU, so the bits do not depend on it).
        dtype: dtype of the noise and the stored pairs.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> m = torch.tensor([2.0, -1.0])
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = generate_pairs(lambda x, t: m.expand_as(x), 10, Path(d) / "pairs.safetensors", event_shape=(2,),
        ...                        solver="euler", steps=1, batch_size=4, generator=torch.Generator().manual_seed(0))
        ...     x0, x1 = load_pairs(p)
        ...     bool(torch.allclose(x1 - x0, m.expand(10, 2))), pairs_metadata(p)["n"]
        (True, 10)
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(
            f"the pairs file must end in .safetensors, got {str(path)!r}; write e.g. 'pairs.safetensors'"
        )
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer number of pairs, got {n!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n, batch_size = int(n), int(batch_size)
    field, shape = _teacher_field(teacher, event_shape)
    if y is not None:
        if not isinstance(y, Tensor) or y.dim() < 1 or y.shape[0] != n:
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y must be a tensor of n={n} labels, shape ({n},), got {got}")
        y = y.detach().cpu()
    solver_obj = make_solver(solver)
    solver_name = solver if isinstance(solver, str) else type(solver).__name__
    if teacher_name is None:
        net = getattr(teacher, "net", None)
        teacher_name = type(teacher).__name__ + (
            f"({type(net).__name__})" if isinstance(net, nn.Module) else ""
        )

    meta_path = path.with_suffix(".json")
    parts_dir = path.with_name(path.name + ".parts")
    progress = parts_dir / "progress.json"
    stored_seed = None
    for f in (progress, meta_path):
        if f.exists():
            stored_seed = json.loads(f.read_text()).get("seed")
            break
    if generator is None and stored_seed is not None:
        seed = int(stored_seed)
    else:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    meta: dict[str, Any] = {
        "format": PAIRS_FORMAT,
        "teacher": str(teacher_name),
        "solver": solver_name,
        "steps": int(steps),
        "seed": seed,
        "n": n,
        "batch_size": batch_size,
        "event_shape": list(shape),
        "dtype": str(dtype).replace("torch.", ""),
        "keys": ["x0", "x1"] + (["y"] if y is not None else []),
    }

    def check_same(old: dict[str, Any], where: Path) -> None:
        diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        if diff:
            raise ValueError(
                f"{where} was written with other settings {diff} (stored, requested); pass the same "
                f"arguments (and an equally seeded generator) to resume, or write to a new path"
            )

    if path.exists() and meta_path.exists():  # finished before: nothing to do if it is the same request
        check_same(json.loads(meta_path.read_text()), meta_path)
        return path

    if path.exists() and not parts_dir.exists():
        raise FileExistsError(
            f"{path} exists but is not a finished pairs file (no {meta_path.name}) nor an interrupted run; "
            "move it away or write the pairs to another path"
        )
    parts_dir.mkdir(parents=True, exist_ok=True)
    if progress.exists():
        check_same(json.loads(progress.read_text()), progress)
    else:
        _atomic_bytes(progress, json.dumps(meta, indent=1).encode())
    for tmp in parts_dir.glob("*.tmp"):  # a write that was killed half-way
        tmp.unlink()

    chunks = math.ceil(n / batch_size)
    parts = [parts_dir / f"chunk-{k:06d}.safetensors" for k in range(chunks)]
    grid = S.uniform_grid(1 if isinstance(solver_obj, S.Dopri5) else int(steps))
    for k, part in enumerate(parts):
        lo, hi = k * batch_size, min(n, (k + 1) * batch_size)
        if part.exists():
            done = _read_chunk(part)
            if done is not None and done["x0"].shape[0] == hi - lo:
                if y is not None and not torch.equal(done["y"], y[lo:hi]):
                    raise ValueError(
                        f"{part} holds other labels y than the ones passed; pass the same y to resume"
                    )
                continue
        g = torch.Generator().manual_seed(_splitmix64(seed ^ _splitmix64(k)))
        x0 = torch.randn((hi - lo, *shape), generator=g, dtype=dtype)
        cond = {"y": y[lo:hi].to(device)} if y is not None else {}
        with torch.no_grad():
            x1 = S.solve(lambda x, t, c=cond: field(x, t, **c), x0.to(device), solver_obj, grid.to(dtype)).x
        tensors = {"x0": x0, "x1": x1.detach().to("cpu", dtype)}
        if y is not None:
            tensors["y"] = y[lo:hi].contiguous()
        _atomic_bytes(part, safetensors.torch.save(tensors))

    text = json.dumps(meta, indent=1)
    _write_concatenated(path, parts, meta["keys"], {"flowforge": json.dumps(meta, sort_keys=True)})
    _atomic_bytes(meta_path, text.encode())
    for p in [*parts, progress]:
        p.unlink()
    parts_dir.rmdir()
    return path


def pairs_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata :func:`generate_pairs` stored in a pairs file (``teacher, solver, steps, seed, n, ...``)."""
    path = Path(path)
    _check_exists(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("flowforge")
    except (safetensors.SafetensorError, OSError) as e:
        raise ValueError(
            f"{path} is not a readable safetensors file ({e}); regenerate it with generate_pairs"
        ) from e
    if raw is None:
        raise ValueError(f"{path} has no flowforge pairs metadata; write pairs files with generate_pairs")
    return json.loads(raw)


def _check_exists(path: Path) -> None:
    if path.exists():
        return
    parts = path.with_name(path.name + ".parts")
    if parts.exists():
        raise FileNotFoundError(
            f"{path} is not finished: {parts} holds the chunks of an interrupted run; call generate_pairs "
            "again with the same arguments to resume it"
        )
    raise FileNotFoundError(f"no pairs file at {path}; write one with generate_pairs(teacher, n, path)")


def load_pairs(path: str | os.PathLike[str]) -> tuple[Tensor, ...]:
    """Read and validate a pairs file from :func:`generate_pairs`; returns ``(x0, x1)`` or ``(x0, x1, y)``.

    ``x0`` and ``x1`` are ``(n, *event)``, ``y`` is ``(n,)``; the tuple is ready for
    ``train(reflow, load_pairs(path), ...)``. Errors name what is wrong: a missing or unfinished file,
    wrong or missing keys, shapes that disagree with each other or with the stored metadata.

    Example:
        >>> load_pairs("no/such/pairs.safetensors")
        Traceback (most recent call last):
            ...
        FileNotFoundError: no pairs file at no/such/pairs.safetensors; write one with generate_pairs(teacher, n, path)
    """
    path = Path(path)
    _check_exists(path)
    try:
        tensors = safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError) as e:
        raise ValueError(
            f"{path} is not a readable safetensors file ({e}); regenerate it with generate_pairs"
        ) from e
    keys = sorted(tensors)
    if keys not in (["x0", "x1"], ["x0", "x1", "y"]):
        raise ValueError(
            f"{path} holds tensors {keys}; a pairs file holds exactly x0 and x1 (and optionally y), "
            "as written by generate_pairs"
        )
    x0, x1 = tensors["x0"], tensors["x1"]
    if x0.shape != x1.shape or x0.dim() < 2:
        raise ValueError(
            f"{path}: x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must share one shape (n, *event)"
        )
    if "y" in tensors and tensors["y"].shape[:1] != x0.shape[:1]:
        raise ValueError(
            f"{path}: y {tuple(tensors['y'].shape)} needs one label per pair, shape ({x0.shape[0]},)"
        )
    meta = pairs_metadata(path)
    if meta.get("n") != x0.shape[0] or list(meta.get("event_shape", [])) != list(x0.shape[1:]):
        raise ValueError(
            f"{path}: the metadata says n={meta.get('n')}, event_shape={meta.get('event_shape')} but x0 is "
            f"{tuple(x0.shape)}; the file was altered, regenerate it with generate_pairs"
        )
    return (x0, x1, tensors["y"]) if "y" in tensors else (x0, x1)


# --------------------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------------------


def _split_pairs(batch: Any) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    if isinstance(batch, dict) and "x0" in batch and "x1" in batch:
        x0, x1 = batch["x0"], batch["x1"]
        cond = {k: v for k, v in batch.items() if k not in ("x0", "x1")}
    elif (
        isinstance(batch, (tuple, list))
        and len(batch) in (2, 3)
        and all(isinstance(b, Tensor) for b in batch)
    ):
        x0, x1 = batch[0], batch[1]
        cond = {"y": batch[2]} if len(batch) == 3 else {}
    else:
        got = type(batch).__name__ if not isinstance(batch, Tensor) else f"a tensor {tuple(batch.shape)}"
        raise ValueError(
            f"Reflow.loss needs a batch of teacher pairs (x0, x1), (x0, x1, y) or {{'x0': ..., 'x1': ...}}; "
            f"got {got}. Make pairs with generate_pairs(teacher, n, path) and train on load_pairs(path)"
        )
    if x0.shape != x1.shape:
        raise ValueError(
            f"Reflow.loss: x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must have the same shape (B, *event)"
        )
    return x0, x1, cond


class Reflow(nn.Module):
    r"""Reflow of a teacher on its own pairs, with rectified flow++'s defaults (arXiv:2405.20320).

    The loss is :math:`E_t\, d(v_\theta(x_t, t), x_1 - x_0)` on stored teacher pairs (see the module
    docstring): the coupling is the teacher's, not independent. Defaults follow the official rf++ code
    (converted to t=0 noise):

    - time: :class:`~flowforge.core.time.UShaped` with ``a = 4`` (:math:`p(t) \propto e^{at} + e^{a(1-t)}`),
      rescaled affinely to ``t_range = (1e-5, 1 - 1e-5)``;
    - distance: pseudo-Huber :math:`(\sqrt{\|v_\theta - v\|^2 + C^2} - C)/d` with :math:`C = 0.00054\,d`
      (``sangyun884/rfpp:train.py``, ``huber``; note: ``d``, not iCT's :math:`\sqrt d`); rf++'s LPIPS term
      for images is not included.

    For the ablation pass ``time=Uniform(), distance=SquaredError()`` (plain reflow, Liu et al. 2022).
    Further rounds: make pairs from a trained :class:`Reflow` and build the next one with
    :meth:`from_teacher`.

    Args:
        net: the student network ``net(x, t, **cond)``.
        init_from: a teacher (:class:`~flowforge.continuous.FlowMatching`, :class:`Reflow` or a bare
            network) whose weights are copied into ``net`` (rf++ starts the student from the teacher).
        path: an affine path (default linear, the rectified-flow path).
        time: training-time sampler (default ``UShaped(4.0)``).
        distance: per-sample distance (default rf++'s pseudo-Huber, ``C = 0.00054 d``).
        prediction: what ``net`` outputs (default ``"velocity"``; see ``FlowMatching``).
        t_range: training times are rescaled affinely into this interval.
        label_dropout: probability of replacing ``y`` by ``null_label`` (classifier-free guidance).
        null_label: the null class (defaults to ``net.num_classes`` when the net has it).
        event_shape: shape of one sample; inferred from the first batch when omitted.

    Example:
        >>> import torch
        >>> from flowforge import FlowMatching
        >>> from flowforge.distill import Reflow
        >>> from flowforge.nn import MLP
        >>> teacher = FlowMatching(MLP(dim=2, width=32, depth=2), event_shape=(2,))
        >>> rf = Reflow.from_teacher(teacher)
        >>> x0 = torch.randn(64, 2)
        >>> x1 = teacher.generator().sample(64, x0=x0, solver="heun", steps=4)
        >>> rf.loss((x0, x1)).ndim
        0
        >>> rf.generator().sample(8, solver="euler", steps=1, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([8, 2])
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        init_from: nn.Module | None = None,
        path: AffinePath | None = None,
        time: TimeSampler | None = None,
        distance: Distance | None = None,
        prediction: str = "velocity",
        t_range: tuple[float, float] = (1e-5, 1.0 - 1e-5),
        label_dropout: float = 0.0,
        null_label: int | None = None,
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        path = path if path is not None else AffinePath(Linear())
        if not isinstance(path, AffinePath):
            raise TypeError(
                f"Reflow regresses straight pairs on an affine path, got {type(path).__name__}; "
                "use path=AffinePath(Linear()) (the default)"
            )
        if init_from is not None:
            src = init_from.net if isinstance(getattr(init_from, "net", None), nn.Module) else init_from
            try:
                net.load_state_dict(src.state_dict())
            except RuntimeError as e:
                raise ValueError(
                    f"cannot start the student from the teacher's weights ({e}); build the student with the "
                    "teacher's architecture, or use Reflow.from_teacher(teacher)"
                ) from e
        lo, hi = t_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(
                f"t_range must satisfy 0 <= lo < hi <= 1, got {t_range}; rf++ uses (1e-5, 1 - 1e-5)"
            )
        self.t_range = (float(lo), float(hi))
        self.time = time if time is not None else UShaped(4.0)
        self._distance = distance
        # FlowMatching owns the net, the path, the prediction's conversion and the generator
        self.flow = FlowMatching(
            net,
            path=path,
            time=self.time,
            prediction=prediction,
            label_dropout=label_dropout,
            null_label=null_label,
            event_shape=event_shape,
        )

    @classmethod
    def from_teacher(cls, teacher: nn.Module, **kwargs: Any) -> Reflow:
        """A student that starts as a copy of ``teacher``'s network (and its path and prediction).

        Args:
            teacher: a :class:`~flowforge.continuous.FlowMatching`, a :class:`Reflow` (next round) or a
                bare network.
            **kwargs: the other :class:`Reflow` arguments (``time``, ``distance``, ...).
        """
        fm = teacher.flow if isinstance(teacher, Reflow) else teacher
        if isinstance(fm, FlowMatching):
            kwargs.setdefault("prediction", fm.prediction)
            kwargs.setdefault("event_shape", fm.event_shape)
            kwargs.setdefault("null_label", fm.null_label)
            if isinstance(fm.path, AffinePath):
                kwargs.setdefault("path", fm.path)
            net = fm.net
        elif isinstance(teacher, nn.Module):
            net = teacher
        else:
            raise TypeError(
                f"from_teacher needs a FlowMatching, a Reflow or an nn.Module, got {type(teacher).__name__}"
            )
        return cls(copy.deepcopy(net).requires_grad_(True), **kwargs)

    @property
    def net(self) -> nn.Module:
        """The student network."""
        return self.flow.net

    @property
    def event_shape(self) -> tuple[int, ...] | None:
        """Shape of one sample (known after the first batch or when given)."""
        return self.flow.event_shape

    def distance(self, d: int) -> Distance:
        """The distance in use for events of size ``d`` (rf++'s pseudo-Huber unless one was given)."""
        return self._distance if self._distance is not None else PseudoHuber(c=0.00054 * d)

    def loss(self, batch: Any) -> Tensor:
        """Reflow loss on teacher pairs ``(x0, x1)``, ``(x0, x1, y)`` or ``{"x0", "x1", **cond}``; a scalar."""
        x0, x1, cond = _split_pairs(batch)
        fm = self.flow
        if fm.event_shape is None:
            fm.event_shape = tuple(x1.shape[1:])
        lo, hi = self.t_range
        t = lo + (hi - lo) * self.time(x1.shape[0], device=x1.device, dtype=x1.dtype)
        ps = fm.path.sample(x0, x1, t)
        if fm.label_dropout > 0 and "y" in cond:
            cond["y"] = drop_labels(cond["y"], fm.label_dropout, fm.null_label)
        pred = fm.net(ps.x_t, t, **cond)
        sigma = fm.path.effective_schedule(t).sigma if fm.prediction == "score" else None
        target = regression_target(ps, fm.prediction, sigma)
        return regression_loss(pred, target, t, self.distance(x1[0].numel()))

    def velocity(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        """The student's velocity at ``(x, t)``; ``x: (B, *event)``, ``t: (B,)``."""
        return self.flow.velocity(x, t, **cond)

    def generator(self, *args: Any, **kwargs: Any) -> FlowGenerator:
        """The student as a :class:`~flowforge.continuous.FlowGenerator` (``FlowMatching.generator``'s arguments)."""
        return self.flow.generator(*args, **kwargs)
