"""The training loop: AdamW, warm-up + cosine LR, gradient clipping, EMA, logging, checkpoints, resume, DDP.

The trainer assumes only that the model is an ``nn.Module`` with ``loss(batch) -> scalar Tensor``.
Everything it writes to ``out`` is plain JSON, JSON lines and safetensors:

.. code-block:: text

    out/config.json          the user's ``config`` dict, verbatim
    out/trainer.json         what ran: device, resolved precision / compile / channels_last / tf32, torch
    out/metrics.jsonl        one JSON object per log line
    out/ckpt-000500/         model, ema, optimizer, rng .safetensors + manifest.json
    out/latest               name of the newest checkpoint
    out/.lock                pid and host of the process training into ``out`` (removed at the end)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from . import distributed as _dist
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_write,
    flatten_state,
    latest_checkpoint,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
    unflatten_state,
)
from .config import TrainConfig, make_train_config
from .ema import EMA
from .lock import RunLockedError, run_lock

__all__ = [
    "BatchRequest",
    "Run",
    "RunLockedError",
    "TrainConfig",
    "Trainer",
    "auto_threads",
    "lr_at",
    "makes_own_batches",
    "resolve_speed",
    "run_seeds",
    "train",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SETUP_FILE = "trainer.json"


class BatchRequest(NamedTuple):
    """What ``model.loss`` receives each step when ``data=None``: make a batch of this size yourself.

    Attributes:
        size: the batch size.
        generator: the run's seeded CPU ``torch.Generator`` (use it for reproducible sampling).
        device: the training device.
    """

    size: int
    generator: torch.Generator
    device: torch.device


def lr_at(
    step: int,
    *,
    lr: float,
    steps: int,
    warmup: int = 0,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.0,
) -> float:
    r"""Learning rate of update number ``step`` (0-based): linear warm-up, then cosine decay or constant.

    .. math::

        \eta_s = \begin{cases}
            \eta\,(s + 1) / W & s < W \\
            \eta\,\big(r + (1 - r)\,\tfrac12 (1 + \cos \pi p_s)\big),\ p_s = \tfrac{s - W}{S - W}
                & s \ge W,\ \text{cosine} \\
            \eta & s \ge W,\ \text{constant}
        \end{cases}

    with :math:`W` = ``warmup``, :math:`S` = ``steps`` and :math:`r` = ``min_lr_ratio``.

    Args:
        step: the update index, ``0 <= step < steps``.
        lr: the peak learning rate :math:`\eta`.
        steps: total number of updates :math:`S`.
        warmup: warm-up length :math:`W`.
        schedule: ``"cosine"`` or ``"constant"``.
        min_lr_ratio: :math:`r`, the floor of the cosine as a fraction of ``lr``.

    Example:
        >>> lr_at(0, lr=1.0, steps=110, warmup=10)
        0.1
        >>> lr_at(10, lr=1.0, steps=110, warmup=10), lr_at(60, lr=1.0, steps=110, warmup=10)
        (1.0, 0.5)
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        span = steps - warmup
        p = min(1.0, (step - warmup) / span) if span > 0 else 1.0
        return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * p)))
    raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")


# ----------------------------------------------------------------------------------------------------
# data


def run_seeds(seed: int, rank: int = 0) -> tuple[int, int]:
    """Independent seeds for the data generator and torch's global RNG of process ``rank``.

    The two streams must differ: seeded alike, the data's uniforms and the loss's uniforms (e.g. the
    flow-matching times) would be the same numbers, and the model would learn that coincidence. Derived
    with numpy's ``SeedSequence`` so that nearby seeds and ranks give unrelated streams.
    """
    data_seed, global_seed = np.random.SeedSequence([seed, rank]).generate_state(2, dtype=np.uint64)
    return int(data_seed >> np.uint64(1)), int(global_seed >> np.uint64(1))


def _host_seeds(seed: int, rank: int = 0) -> tuple[int, int]:
    """Seeds for numpy's and Python's global RNGs of process ``rank``, independent of :func:`run_seeds`."""
    np_seed, py_seed = np.random.SeedSequence([seed, rank, 1]).generate_state(2, dtype=np.uint32)
    return int(np_seed), int(py_seed)


def _seed_everything(gen: torch.Generator, seed: int, rank: int) -> None:
    """Seed the data generator and the global torch, numpy and Python RNGs of a fresh run."""
    data_seed, global_seed = run_seeds(seed, rank)
    gen.manual_seed(data_seed)
    torch.manual_seed(global_seed)  # the model's loss may draw from the global RNGs
    np_seed, py_seed = _host_seeds(seed, rank)
    np.random.seed(np_seed)
    random.seed(py_seed)


def _make_source(data: Any, device: torch.device) -> Callable[[int, torch.Generator], Any]:
    if data is None:
        return lambda n, g: BatchRequest(n, g, device)
    if isinstance(data, Tensor):
        tensors: tuple[Tensor, ...] = (data,)
    elif isinstance(data, tuple | list) and data and all(isinstance(t, Tensor) for t in data):
        tensors = tuple(data)
    elif callable(data):
        return data
    else:
        raise TypeError(
            f"data must be a Tensor (N, *event), a tuple of Tensors sharing N, a callable "
            f"data(batch_size, generator) -> batch, or None (model.loss then gets a BatchRequest); "
            f"got {type(data).__name__}. For an environment or energy held by the model, pass data=None "
            "(or the model's own env)"
        )
    n = tensors[0].shape[0] if tensors[0].ndim else 0
    if n == 0 or any(t.ndim == 0 or t.shape[0] != n for t in tensors):
        shapes = [tuple(t.shape) for t in tensors]
        raise ValueError(f"data tensors need a shared, non-empty first dimension N; got shapes {shapes}")

    def draw(batch_size: int, generator: torch.Generator) -> Any:
        idx = torch.randint(n, (batch_size,), generator=generator)
        rows = tuple(t[idx.to(t.device)] for t in tensors)
        return rows[0] if len(rows) == 1 and isinstance(data, Tensor) else rows

    return draw


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, BatchRequest):
        return batch
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_to_device(b, device) for b in batch))
    if isinstance(batch, tuple | list):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


# ----------------------------------------------------------------------------------------------------
# state helpers


def _rng_state(data_gen: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {
        "data": data_gen.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(data_gen: torch.Generator, state: Mapping[str, Any]) -> None:
    data_gen.set_state(state["data"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warnings.warn(
                f"the checkpoint holds CUDA RNG states for {len(state['cuda'])} devices but "
                f"{torch.cuda.device_count()} are visible; CUDA randomness will not continue bit-for-bit",
                stacklevel=3,
            )


def _check_fits(model: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    """Raise CheckpointError (before touching the model) unless ``state`` loads strictly into ``model``."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    shapes = [
        f"{k}: {tuple(state[k].shape)} stored, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        raise CheckpointError(
            f"{where} does not fit this {type(model).__name__} ({', '.join(parts)}); "
            "build the model with the "
            "same architecture as the run (see Run(out).config) before loading"
        )


def _load_strict(model: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    _check_fits(model, state, where)
    with torch.no_grad():
        model.load_state_dict(state, strict=True)


def _jsonable(obj: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{what} must be JSON-serialisable ({e}); use plain numbers, strings, lists and dicts"
        ) from e


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    out = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a partial last line left by a kill
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _truncate_metrics(path: Path, step: int) -> None:
    keep = [r for r in _read_metrics(path) if isinstance(r.get("step"), int) and r["step"] <= step]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in keep))


class _Progress:
    """A tqdm bar on stderr (loss, lr, steps/s); nothing when disabled."""

    def __init__(self, enabled: bool, total: int, initial: int) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, rec: Mapping[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{rec['loss']:.4g}", lr=f"{rec['lr']:.2e}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ----------------------------------------------------------------------------------------------------
# Run


class Run:
    """A training run: its folder, step, config, metrics and (when just trained) the model itself.

    ``Run(out)`` opens a finished or interrupted run from its folder; :func:`train` returns a Run that
    also holds the trained model and its EMA.

    Args:
        out: the run folder written by :func:`train` (None for a run kept in memory only).

    Example:
        >>> import torch
        >>> class Quadratic(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.mu = torch.nn.Parameter(torch.zeros(2))
        ...     def loss(self, x):
        ...         return ((x - self.mu) ** 2).mean()
        >>> run = train(Quadratic(), torch.ones(64, 2), steps=50, batch_size=8, lr=0.1, progress=False)
        >>> run.step, len(run.metrics())
        (50, 1)
        >>> bool(run.load_into(Quadratic()).mu.sum() > 0)
        True
    """

    def __init__(self, out: str | os.PathLike[str] | None = None) -> None:
        self.out = None if out is None else Path(out)
        if self.out is not None and not self.out.is_dir():
            raise FileNotFoundError(
                f"no run folder at {self.out}; pass the out= folder (--out on the command line) that train() wrote"
            )
        self._model: nn.Module | None = None
        self._ema: EMA | None = None
        self._metrics: list[dict[str, Any]] = []
        self._step: int | None = None
        self._config: dict[str, Any] | None = None

    def _attach(
        self, model: nn.Module, ema: EMA, metrics: list[dict[str, Any]], step: int, config: dict[str, Any]
    ) -> Run:
        self._model, self._ema, self._metrics, self._step, self._config = model, ema, metrics, step, config
        return self

    @property
    def model(self) -> nn.Module | None:
        """The trained model with its raw (non-EMA) weights, when this Run came from :func:`train`."""
        return self._model

    @property
    def ema(self) -> EMA | None:
        """The EMA of the trained model, when this Run came from :func:`train`."""
        return self._ema

    @property
    def step(self) -> int:
        """Steps trained so far (that of the newest checkpoint for a Run opened from a folder)."""
        if self._step is not None:
            return self._step
        if self.out is not None:
            ckpt = latest_checkpoint(self.out)
            if ckpt is not None:
                return int(read_manifest(ckpt)["step"])
        return 0

    @property
    def config(self) -> dict[str, Any]:
        """The user's ``config`` dict (``out/config.json``)."""
        if self._config is not None:
            return self._config
        if self.out is not None and (self.out / CONFIG_FILE).is_file():
            return json.loads((self.out / CONFIG_FILE).read_text(encoding="utf-8"))
        return {}

    def metrics(self) -> list[dict[str, Any]]:
        """The logged records (``metrics.jsonl``), oldest first."""
        if self.out is not None and (self.out / METRICS_FILE).is_file():
            return _read_metrics(self.out / METRICS_FILE)
        return list(self._metrics)

    def load_into(self, model: nn.Module, ema: bool = True) -> nn.Module:
        """Load the run's EMA (or raw) weights into ``model``, which the caller builds.

        Everything is validated before the model is touched: a bad checkpoint or a model of another
        shape raises :class:`CheckpointError` and leaves ``model`` as it was.

        Args:
            model: a module with the run's architecture.
            ema: load the EMA weights (True) or the raw trained weights.

        Returns:
            ``model``.
        """
        kind = "ema" if ema else "model"
        if self._model is not None and self._ema is not None:
            state = self._ema.state_dict() if ema else self._model.state_dict()
            where = f"the run's {'EMA' if ema else 'raw'} weights"
        elif self.out is not None:
            ckpt = load_checkpoint(self.out, groups=[kind])
            state, where = ckpt.tensors[kind], f"{ckpt.path.name}/{kind}.safetensors"
        else:
            raise RuntimeError("this Run holds neither a trained model nor a folder; open one with Run(out)")
        _load_strict(model, state, where)
        return model

    def generator(self, model: nn.Module | None = None, *, ema: bool = True) -> Any:
        """``model.generator()`` with the run's EMA weights in place.

        Args:
            model: where to load the weights. Default: a copy of the trained model this Run holds (the
                trained model itself keeps its raw weights). A Run opened with ``Run(out)`` holds no
                model, so pass one built with the run's architecture.
            ema: use the EMA weights (True) or the raw ones.

        Returns:
            Whatever ``model.generator()`` returns (a flowforge Generator), with the model in eval mode.
        """
        if model is None:
            if self._model is None:
                raise RuntimeError(
                    "this Run was opened from a folder and holds no model; build one with the run's "
                    "architecture (see run.config) and call run.generator(model)"
                )
            model = copy.deepcopy(self._model)
        make = getattr(model, "generator", None)
        if not callable(make):
            raise AttributeError(
                f"{type(model).__name__} has no generator() method; "
                "use run.load_into(model) and sample from it"
            )
        self.load_into(model, ema=ema)
        model.eval()
        return make()

    def __repr__(self) -> str:
        return f"Run(out={str(self.out) if self.out else None!r}, step={self.step})"


# ----------------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------------
# Trainer


def makes_own_batches(model: nn.Module, data: Any) -> bool:
    """Whether ``model.loss`` gets a :class:`BatchRequest` (and ``data`` is ignored).

    True when the model's class says ``makes_own_batches = True`` (GFlowNets, reverse-KL Boltzmann
    generators: they sample their own training batches), or when ``data`` is None.
    """
    return bool(getattr(model, "makes_own_batches", False)) or data is None


def auto_threads(model: nn.Module, device: torch.device) -> int | None:
    """The ``threads=None`` rule: 1 CPU thread for a model under 1M parameters, else None (torch's default).

    Measured on a shared 2-core CPU, 300 steps of the README's moons FlowMatching (MLP 256x3, 133k
    parameters) and NSF (5 transforms, 64x64) took 2-16 s on one thread and 20-520 s on two: for models
    this small, per-op thread start-up and oversubscribed cores cost far more than the split saves. Never
    changes anything off the CPU.

    Args:
        model: the model to train.
        device: the training device.

    Returns:
        The thread count to use for the run, or None to leave torch's setting alone.
    """
    if device.type != "cpu":
        return None
    n = sum(p.numel() for p in model.parameters())
    return 1 if n < _SMALL_MODEL else None


_SMALL_MODEL = 1_000_000

_SPEED_KEYS = ("precision", "compile", "channels_last", "tf32")


def resolve_speed(train_config: TrainConfig, model: nn.Module, device: torch.device) -> dict[str, Any]:
    """The ``precision``, ``compile``, ``channels_last`` and ``tf32`` a run uses: "auto" / None resolved.

    On CUDA the automatic values are bf16 autocast (compute capability >= 8.0, else fp32), compile, tf32,
    and channels_last when the model has a 4-D weight (a 2-D convolution); a model class may change what
    "automatic" means for it on CUDA with a ``cuda_defaults`` attribute, e.g. ``{"precision": "fp32"}``
    for a normalizing flow whose log-determinants need float32 matmuls, or ``{"compile": False}`` for a
    loss with data-dependent Python loops. On any other device they are fp32 and False: the behaviour
    before these options existed. Values given explicitly are kept (``tf32`` reads False off CUDA, where
    it changes nothing).

    Args:
        train_config: the run's settings.
        model: the model to train (its weights' shapes and ``cuda_defaults`` are read).
        device: the training device.

    Returns:
        ``{"precision": "fp32" | "bf16", "compile": bool, "channels_last": bool, "tf32": bool}``.

    Example:
        >>> import torch
        >>> resolve_speed(TrainConfig(steps=1), torch.nn.Conv2d(1, 1, 3), torch.device("cpu"))
        {'precision': 'fp32', 'compile': False, 'channels_last': False, 'tf32': False}
    """
    cuda = device.type == "cuda"
    prefs: dict[str, Any] = {}
    if cuda:
        conv = any(p.ndim == 4 and p.is_floating_point() for p in model.parameters())
        bf16 = torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
        prefs = {
            "precision": "bf16" if bf16 else "fp32",
            "compile": True,
            "channels_last": conv,
            "tf32": True,
        }
        own = getattr(model, "cuda_defaults", None) or {}
        bad = [k for k in own if k not in _SPEED_KEYS]
        if not isinstance(own, Mapping) or bad:
            raise TypeError(
                f"{type(model).__name__}.cuda_defaults must be a dict with keys among {', '.join(_SPEED_KEYS)}, "
                f"got {own!r}; write e.g. cuda_defaults = {{'precision': 'fp32'}}"
            )
        prefs.update({k: v for k, v in own.items() if not (k == "precision" and v == "bf16" and not bf16)})
    cfg = train_config
    precision = cfg.precision if cfg.precision != "auto" else prefs.get("precision", "fp32")
    if precision not in ("fp32", "bf16"):
        raise ValueError(
            f"{type(model).__name__}.cuda_defaults: precision must be 'fp32' or 'bf16', got {precision!r}"
        )
    return {
        "precision": precision,
        "compile": bool(cfg.compile if cfg.compile is not None else prefs.get("compile", False)),
        "channels_last": bool(
            cfg.channels_last if cfg.channels_last is not None else prefs.get("channels_last", False)
        ),
        "tf32": cuda and bool(cfg.tf32 if cfg.tf32 is not None else prefs.get("tf32", False)),
    }


@contextlib.contextmanager
def _tf32(enabled: bool, device: torch.device) -> Iterator[None]:
    """TF32 on (or off) for CUDA matmuls and cuDNN convolutions for the block, restored after; CPU: nothing."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _channels_last(batch: Any) -> Any:
    """Every floating 4-D tensor of ``batch`` (tensor, tuple, list, dict) in channels_last memory format."""
    if isinstance(batch, Tensor):
        if batch.ndim == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_channels_last(b) for b in batch))
    if isinstance(batch, tuple | list):
        return type(batch)(_channels_last(b) for b in batch)
    if isinstance(batch, dict):
        return {k: _channels_last(v) for k, v in batch.items()}
    return batch


def _autocast(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A factory of the context the loss runs in: bfloat16 autocast for ``"bf16"``, nothing for ``"fp32"``."""
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


class _CompiledLoss:
    """``torch.compile(fn)``; when compile was automatic and the compiler fails, warn and run ``fn`` eagerly."""

    def __init__(self, fn: Callable[[Any], Tensor], explicit: bool, on_fallback: Callable[[], None]) -> None:
        self.eager, self.explicit, self.on_fallback = fn, explicit, on_fallback
        self.fn: Callable[[Any], Tensor] = torch.compile(fn)

    def __call__(self, batch: Any) -> Tensor:
        if self.fn is self.eager or self.explicit:
            return self.fn(batch)
        from torch._dynamo.exc import BackendCompilerFailed, InternalTorchDynamoError

        try:
            return self.fn(batch)
        except (BackendCompilerFailed, InternalTorchDynamoError) as e:
            warnings.warn(
                f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "training continues without it. Pass compile=False to skip it, or compile=True to see the error",
                stacklevel=2,
            )
            self.fn = self.eager
            self.on_fallback()
            return self.fn(batch)


@contextlib.contextmanager
def _threads(n: int | None, device: torch.device) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block, restored after; nothing on CUDA or for None."""
    before = torch.get_num_threads()
    if n is None or device.type == "cuda" or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class _Loop:
    """What the loop carries between steps: the parts, the running sums (on device) and the clocks."""

    model: nn.Module
    params: list[Tensor]
    opt: torch.optim.Optimizer
    ema: EMA
    gen: torch.Generator
    info: _dist.DistInfo
    device: torch.device
    settings: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    start: int = 0
    elapsed0: float = 0.0
    loss_carry: float = 0.0
    gn_carry: float = 0.0
    count: int = 0
    forward: Callable[[Any], Tensor] | None = None
    source: Callable[[int, torch.Generator], Any] | None = None
    loss_acc: Tensor | None = None
    gn_acc: Tensor | None = None
    t0: float = 0.0
    t_log: float = 0.0
    step_log: int = 0
    lr: float = 0.0
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    channels_last: bool = False


class Trainer:
    """Trains ``model`` by minimising ``model.loss(batch)``; see :func:`train` and :class:`TrainConfig`.

    Use :func:`train` unless you need the trainer object (e.g. inside ``callback``, which receives it:
    ``trainer.step``, ``trainer.model``, ``trainer.optimizer``, ``trainer.ema``, ``trainer.last_loss``,
    ``trainer.last_grad_norm``, ``trainer.train_config``, ``trainer.resolved`` (the precision / compile /
    channels_last / tf32 in use, once ``fit`` started); every setting also reads as ``trainer.<name>``).

    Args:
        model: an ``nn.Module`` with ``loss(batch) -> scalar Tensor``.
        data: see :func:`train`.
        train_config: the settings; keyword ``settings`` (TrainConfig fields) override it.
        callback: ``callback(step, trainer)`` after every step (and after that step's checkpoint).
        config: the user's JSON-serialisable description of the run, written to ``out/config.json``.
        **settings: TrainConfig fields.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        train_config: TrainConfig | None = None,
        *,
        callback: Callable[[int, Trainer], None] | None = None,
        config: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        if not callable(getattr(model, "loss", None)) or not isinstance(model, nn.Module):
            raise TypeError(
                "train needs an nn.Module with a method loss(batch) -> scalar Tensor; "
                f"{type(model).__name__} "
                "has none. Wrap the network in an objective (e.g. flowforge.FlowMatching(net, ...))"
            )
        self.train_config = make_train_config(train_config, settings)
        self.model = model
        self.data = None if makes_own_batches(model, data) else data
        if config is not None and not isinstance(config, dict):
            raise TypeError(f"config must be a dict (written to config.json), got {type(config).__name__}")
        self.config = config
        self._config_json = _jsonable(config if config is not None else {}, "config")
        self.callback = callback
        _make_source(self.data, torch.device("cpu"))  # fail early on an unusable data argument

        self.step = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.ema: EMA | None = None
        self.last_loss: Tensor | None = None
        self.last_grad_norm: Tensor | None = None
        self.dist = _dist.DistInfo()
        self.resolved: dict[str, Any] | None = None

    def __getattr__(self, name: str) -> Any:
        # trainer.steps, trainer.lr, ...: the settings read as attributes (only called for missing names)
        if name != "train_config" and name in _SETTING_NAMES and "train_config" in self.__dict__:
            return getattr(self.__dict__["train_config"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def settings(self, world_size: int = 1) -> dict[str, Any]:
        """The hyperparameters that determine the trajectory; a resume must match them exactly.

        ``precision`` is the resolved one (``"fp32"`` or ``"bf16"``), as saved in checkpoints.
        """
        resolved = self.resolved or resolve_speed(self.train_config, self.model, self._pick_device())
        return {**self.train_config.trajectory(world_size), "precision": resolved["precision"]}

    def lr_at(self, step: int) -> float:
        """Learning rate of update ``step`` (0-based) under this trainer's schedule."""
        c = self.train_config
        return lr_at(
            step, lr=c.lr, steps=c.steps, warmup=c.warmup, schedule=c.schedule, min_lr_ratio=c.min_lr_ratio
        )

    def _pick_device(self) -> torch.device:
        device = self.train_config.device
        if device is not None:
            if device.type == "cuda" and device.index is None and _dist.env_world_size() > 1:
                return torch.device("cuda", _dist.env_local_rank())  # one GPU per process
            return device
        if torch.cuda.is_available():
            return torch.device("cuda", _dist.env_local_rank() if _dist.env_world_size() > 1 else 0)
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def fit(self) -> Run:
        """Train (or resume) to ``steps`` and return the :class:`Run`.

        Holds ``out/.lock`` and the thread setting for the whole run; both are released on any exception.

        Raises:
            RunLockedError: another process is training into ``out``.
            KeyboardInterrupt: Ctrl-C, re-raised with the step reached.
        """
        cfg = self.train_config
        device = self._pick_device()
        threads = cfg.threads if cfg.threads is not None else auto_threads(self.model, device)
        self.resolved = resolve_speed(cfg, self.model, device)
        info = _dist.setup(device)
        self.dist = info
        try:
            with _threads(threads, device), _tf32(self.resolved["tf32"], device), self._locked(info):
                return self._fit(device, info)
        except KeyboardInterrupt:
            resume = (
                " resume=True (--resume on the command line) continues it." if cfg.out is not None else ""
            )
            raise KeyboardInterrupt(
                f"training interrupted at step {self.step}/{cfg.steps}.{resume}"
            ) from None
        finally:
            _dist.teardown(info)

    @contextlib.contextmanager
    def _locked(self, info: _dist.DistInfo) -> Iterator[None]:
        """Hold ``out/.lock`` (rank 0 takes it; every rank fails alike when it is held elsewhere)."""
        out = self.train_config.out
        if out is None:
            yield
            return
        lock, error = contextlib.ExitStack(), None
        if info.is_main:
            try:
                lock.enter_context(run_lock(out))
            except RunLockedError as e:
                error = e
        if info.enabled:
            msg = _dist.gather_objects(None if error is None else str(error), info)[0]
            if msg is not None and error is None:
                error = RunLockedError(msg)
        if error is not None:
            raise error
        with lock:
            yield

    def _check_same_run(self, saved: Mapping[str, Any], settings: dict[str, Any]) -> None:
        diffs = []
        # runs saved before the precision option existed trained in fp32
        old = {"precision": "fp32", **saved.get("trainer", {})}
        for k in sorted(set(old) | set(settings)):
            if old.get(k) != settings.get(k):
                diffs.append(f"{k}={old.get(k)!r} in the checkpoint, {settings.get(k)!r} now")
        old_cfg = saved.get("user_config", {})
        if old_cfg != self._config_json:
            keys = sorted(
                k
                for k in set(old_cfg) | set(self._config_json)
                if old_cfg.get(k, "<absent>") != self._config_json.get(k, "<absent>")
            )
            diffs.append(f"config differs in {keys}")
        if diffs:
            raise ValueError(
                f"resume=True (--resume on the command line), but {self.train_config.out} holds a run with "
                "different settings: "
                + "; ".join(diffs)
                + ". Pass the saved values to continue that run, or "
                "choose a new out= folder (--out on the command line) for a new run."
            )

    # -- the loop ---------------------------------------------------------------------------------------

    def _fit(self, device: torch.device, info: _dist.DistInfo) -> Run:
        cfg, main = self.train_config, info.is_main
        loop = self._setup(device, info)
        ckpt = self._find_checkpoint(main)
        _dist.barrier(info)  # every process has looked at `out` before rank 0 writes to it
        if ckpt is not None and ckpt.step >= cfg.steps:
            return self._finished(loop, ckpt)
        if ckpt is not None:
            self._restore(loop, ckpt)
        else:
            self._start_fresh(loop)
        self._prepare(loop)
        bar = _Progress(cfg.progress and main, cfg.steps, loop.start)
        try:
            while self.step < cfg.steps:
                self._update(loop)
                bar.update()
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._log(loop, bar)
                if cfg.out is not None and (
                    (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or self.step == cfg.steps
                ):
                    self._checkpoint(loop)
                if self.callback is not None:
                    self.callback(self.step, self)
        finally:
            bar.close()
        return Run(cfg.out)._attach(loop.model, loop.ema, loop.metrics, self.step, self._config_json)

    def _setup(self, device: torch.device, info: _dist.DistInfo) -> _Loop:
        """Move the model, build AdamW, the EMA and the data generator."""
        cfg, speed = self.train_config, self.resolved
        assert speed is not None
        model = self.model.to(device)
        if speed["channels_last"]:
            model.to(memory_format=torch.channels_last)  # 4-D weights only; keys and values unchanged
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                f"{type(model).__name__} has no trainable parameters (requires_grad=True); nothing to train"
            )
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        ema = EMA(model, cfg.ema_decay, warmup=cfg.ema_warmup)
        self.optimizer, self.ema = opt, ema
        settings = {**cfg.trajectory(info.world_size), "precision": speed["precision"]}
        return _Loop(model, params, opt, ema, torch.Generator(), info, device, settings)

    def _find_checkpoint(self, main: bool) -> Checkpoint | None:
        """The checkpoint to resume from (validated, nothing applied), None for a fresh run."""
        out, resume = self.train_config.out, self.train_config.resume
        if out is None:
            return None
        found = latest_checkpoint(out)
        if resume and found is not None:
            return load_checkpoint(out)  # validates every file before anything is applied
        if resume and main:
            warnings.warn(f"resume=True but {out} holds no checkpoint; starting a fresh run", stacklevel=4)
        elif found is not None:
            raise FileExistsError(
                f"{out} already holds a run (up to {found.name}); pass resume=True (--resume on the command "
                "line) to continue it, or choose another out= folder (--out), or delete this one, to start a "
                "new run"
            )
        return None

    def _finished(self, loop: _Loop, ckpt: Checkpoint) -> Run:
        """The run in ``out`` is complete: load its final weights and train nothing."""
        cfg, name = self.train_config, ckpt.path.name
        self._check_same_run(ckpt.config, loop.settings)
        _check_fits(loop.model, ckpt.tensors["model"], f"{name}/model.safetensors")
        _check_fits(loop.model, ckpt.tensors["ema"], f"{name}/ema.safetensors")
        _load_strict(loop.model, ckpt.tensors["model"], f"{name}/model.safetensors")
        loop.ema.load_state_dict(ckpt.tensors["ema"], ckpt.config.get("ema_updates", 0))
        self.step = ckpt.step
        if loop.info.is_main:
            warnings.warn(
                f"the run in {cfg.out} already finished ({ckpt.step}/{cfg.steps} steps); loaded its final "
                "weights and trained nothing. To train longer, start a new run in another out= folder "
                "(--out on the command line)",
                stacklevel=4,
            )
        return Run(cfg.out)._attach(loop.model, loop.ema, loop.metrics, self.step, self._config_json)

    def _restore(self, loop: _Loop, ckpt: Checkpoint) -> None:
        """Load weights, EMA, optimizer, every RNG and the running sums; validated before anything is applied."""
        saved, name = ckpt.config, ckpt.path.name
        self._check_same_run(saved, loop.settings)
        _check_fits(loop.model, ckpt.tensors["model"], f"{name}/model.safetensors")
        _check_fits(loop.model, ckpt.tensors["ema"], f"{name}/ema.safetensors")
        try:
            opt_state = unflatten_state(saved["optimizer"], ckpt.tensors["optimizer"])
            per_rank = unflatten_state(saved["rng"], ckpt.tensors["rng"])[f"rank{loop.info.rank}"]
            n_saved = sum(len(g["params"]) for g in opt_state["param_groups"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(  # noqa: B904
                f"{name}/manifest.json lacks trainer state ({e}); it was not written by train()"
            )
        if n_saved != len(loop.params):
            raise CheckpointError(
                f"{name} holds optimizer state for {n_saved} parameters, the model trains {len(loop.params)}; "
                "set requires_grad as in the original run"
            )
        _load_strict(loop.model, ckpt.tensors["model"], f"{name}/model.safetensors")
        loop.ema.load_state_dict(ckpt.tensors["ema"], saved["ema_updates"])
        loop.opt.load_state_dict(opt_state)
        _set_rng_state(loop.gen, per_rank["rng"])
        loop.start, loop.elapsed0 = ckpt.step, float(saved["elapsed"])
        loop.loss_carry, loop.gn_carry, loop.count = (
            float(per_rank["loss"]),
            float(saved["grad_norm"]),
            int(saved["count"]),
        )
        if loop.info.is_main:
            _truncate_metrics(self.train_config.out / METRICS_FILE, loop.start)

    def _start_fresh(self, loop: _Loop) -> None:
        """Seed every RNG from ``(seed, rank)`` and write ``config.json`` and an empty ``metrics.jsonl``."""
        cfg = self.train_config
        _seed_everything(loop.gen, cfg.seed, loop.info.rank)
        if cfg.out is not None and loop.info.is_main:
            cfg.out.mkdir(parents=True, exist_ok=True)
            atomic_write(
                cfg.out / CONFIG_FILE, json.dumps(self.config if self.config is not None else {}, indent=2)
            )
            atomic_write(cfg.out / METRICS_FILE, "")

    def _prepare(self, loop: _Loop) -> None:
        """Wrap for DDP, open the data source, put the running sums on the device, start the clocks."""
        forward = loop.model.loss
        if loop.info.enabled:
            forward = _dist.wrap(loop.model, loop.info, loop.device)  # broadcasts rank 0's weights
            if loop.start == 0:
                loop.ema.load_state_dict(loop.model.state_dict(), num_updates=0)
        speed = self.resolved
        assert speed is not None
        if speed["compile"]:  # the model is not wrapped: state_dict keys keep no "_orig_mod." prefix
            forward = _CompiledLoss(forward, self.train_config.compile is True, lambda: self._fell_back(loop))
        loop.forward = forward
        loop.autocast = _autocast(speed["precision"], loop.device)
        loop.channels_last = speed["channels_last"]
        self._write_setup(loop)
        loop.source = _make_source(self.data, loop.device)
        loop.loss_acc = torch.tensor(loop.loss_carry, dtype=torch.float64, device=loop.device)
        loop.gn_acc = torch.tensor(loop.gn_carry, dtype=torch.float64, device=loop.device)
        loop.t0 = loop.t_log = time.perf_counter()
        loop.step_log = self.step = loop.start
        loop.lr = self.lr_at(loop.start)

    def _fell_back(self, loop: _Loop) -> None:
        assert self.resolved is not None
        self.resolved = {**self.resolved, "compile": False}
        self._write_setup(loop)

    def _write_setup(self, loop: _Loop) -> None:
        """``out/trainer.json``: the device, the resolved speed options and torch, for this (re)start."""
        out = self.train_config.out
        if out is None or not loop.info.is_main:
            return
        setup = {
            "device": str(loop.device),
            "world_size": loop.info.world_size,
            **(self.resolved or {}),
            "torch": torch.__version__,
            "start_step": loop.start,
        }
        atomic_write(out / SETUP_FILE, json.dumps(setup, indent=2))

    def _update(self, loop: _Loop) -> None:
        """One step: set the LR, draw a batch, loss, backward, clip, AdamW, EMA; add to the running sums."""
        loop.lr = self.lr_at(self.step)
        for group in loop.opt.param_groups:
            group["lr"] = loop.lr
        batch = _to_device(loop.source(self.train_config.batch_size, loop.gen), loop.device)
        if loop.channels_last:
            batch = _channels_last(batch)
        loop.opt.zero_grad(set_to_none=True)
        with loop.autocast():
            loss = loop.forward(batch)
        if isinstance(loss, Tensor) and loss.dtype in (torch.bfloat16, torch.float16):
            loss = loss.float()
        if self.step == loop.start and (not isinstance(loss, Tensor) or loss.numel() != 1):
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(
                f"model.loss(batch) must return a scalar Tensor, got {shape}; reduce it with .mean()"
            )
        loss.backward()
        clip = self.train_config.grad_clip
        if clip is None:  # the norm is still logged; computing it alone is cheaper
            gn = torch.nn.utils.get_total_norm([p.grad for p in loop.params if p.grad is not None])
        else:
            gn = torch.nn.utils.clip_grad_norm_(loop.params, clip)
        loop.opt.step()
        loop.ema.update(loop.model)
        self.step += 1
        self.last_loss, self.last_grad_norm = loss.detach(), gn.detach()
        loop.loss_acc += self.last_loss.reshape(())
        loop.gn_acc += self.last_grad_norm
        loop.count += 1

    def _log(self, loop: _Loop, bar: _Progress) -> None:
        """Mean loss and grad norm since the last log line; stop a diverged run; append to metrics.jsonl."""
        now = time.perf_counter()
        mean_loss = _dist.all_reduce_sum(loop.loss_acc, loop.info).item() / (
            loop.count * loop.info.world_size
        )
        rec = {
            "step": self.step,
            "loss": mean_loss,
            "lr": loop.lr,
            "grad_norm": loop.gn_acc.item() / loop.count,
            "steps_per_sec": (self.step - loop.step_log) / max(now - loop.t_log, 1e-9),
            "elapsed": loop.elapsed0 + now - loop.t0,
        }
        if not math.isfinite(mean_loss):
            self._diverged(f"the loss became {mean_loss}", loop.lr)
        if loop.info.is_main:
            loop.metrics.append(rec)
            if self.train_config.out is not None:
                with open(self.train_config.out / METRICS_FILE, "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
            bar.log(rec)
        loop.loss_acc.zero_()
        loop.gn_acc.zero_()
        loop.count, loop.t_log, loop.step_log = 0, now, self.step

    def _checkpoint(self, loop: _Loop) -> None:
        """Save a checkpoint, unless the loss, grad norm or weights went non-finite since the last log."""
        finite = torch.isfinite(loop.loss_acc) & torch.isfinite(loop.gn_acc)
        for p in loop.params:
            finite &= torch.isfinite(p).all()
        if _dist.all_reduce_sum((~finite).to(torch.float64), loop.info).item() > 0:
            self._diverged("the loss, gradient norm or weights became non-finite", loop.lr)
        self._save(
            loop.model,
            loop.opt,
            loop.ema,
            loop.gen,
            loop.info,
            loop.settings,
            loop.loss_acc,
            loop.gn_acc,
            loop.count,
            loop.elapsed0 + time.perf_counter() - loop.t0,
        )

    def _diverged(self, what: str, lr: float) -> None:
        out = self.train_config.out
        last = latest_checkpoint(out) if out is not None else None
        kept = f" The last good checkpoint, {last.name}, is kept." if last is not None else ""
        raise FloatingPointError(
            f"training diverged: {what} by step {self.step} (lr {lr:.3g}); lower lr, keep gradient "
            f"clipping on (grad_clip=1.0), or check the data for NaNs, and start again in a new out "
            f"folder.{kept}"
        )

    def _save(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        ema: EMA,
        gen: torch.Generator,
        info: _dist.DistInfo,
        settings: dict[str, Any],
        loss_acc: Tensor,
        gn_acc: Tensor,
        count: int,
        elapsed: float,
    ) -> None:
        per_rank = _dist.gather_objects({"rng": _rng_state(gen), "loss": loss_acc.item()}, info)
        if info.is_main:
            out = self.train_config.out
            assert out is not None
            opt_json, opt_tensors = flatten_state(opt.state_dict())
            rng_json, rng_tensors = flatten_state({f"rank{r}": s for r, s in enumerate(per_rank)})
            state = {
                "trainer": settings,
                "user_config": self._config_json,
                "step": self.step,
                "optimizer": opt_json,
                "rng": rng_json,
                "ema_updates": ema.num_updates,
                "grad_norm": gn_acc.item(),
                "count": count,
                "elapsed": elapsed,
                "setup": dict(self.resolved or {}),
            }
            groups = {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": opt_tensors,
                "rng": rng_tensors,
            }
            save_checkpoint(out, groups, state, step=self.step, keep=self.train_config.keep)
        _dist.barrier(info)


_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def train(
    model: nn.Module,
    data: Any,
    train_config: TrainConfig | None = None,
    *,
    callback: Callable[[int, Trainer], None] | None = None,
    config: dict[str, Any] | None = None,
    **settings: Any,
) -> Run:
    """Train ``model`` by minimising ``model.loss(batch)`` with AdamW; returns the :class:`Run`.

    Each step: set the learning rate (:func:`lr_at`), draw a batch, ``loss = model.loss(batch)``,
    backward, clip the gradient norm, AdamW step, EMA update. Under ``torchrun`` (``WORLD_SIZE > 1``) the
    same call trains data-parallel with DDP: every process draws its own batches (seed offset by its
    rank), gradients are averaged, and only rank 0 logs and writes files.

    **Settings** are the fields of :class:`~flowforge.train.config.TrainConfig`, given by keyword
    (``train(model, x, steps=5000, lr=3e-4, out="runs/a")``) or as one object
    (``train(model, x, TrainConfig(steps=5000))``, keywords then override it). Unknown names are an error.

    **Data contract.** ``data`` is one of

    - a Tensor ``(N, *event)``: each step draws ``batch_size`` rows uniformly *with replacement* using
      the run's seeded CPU ``torch.Generator``; ``model.loss`` gets a ``(batch_size, *event)`` tensor.
      A tuple of tensors sharing ``N`` (e.g. ``(x, labels)``) gives a tuple of rows.
    - a callable ``data(batch_size, generator) -> batch`` (energies, streaming data); the batch is passed
      to ``model.loss`` as is (tensors in it are moved to the device).
    - None: ``model.loss`` gets a :class:`BatchRequest` ``(size, generator, device)`` and makes its own batch.

    A model whose class sets ``makes_own_batches = True`` (GFlowNets, reverse-KL Boltzmann generators)
    always gets a :class:`BatchRequest`, and ``data`` is ignored: pass None or the model's environment.

    **Reproducibility.** A fresh run seeds its data generator, torch's global RNG, numpy's global RNG
    and Python's ``random`` (which the loss may use, e.g. for noise and times) with independent seeds
    derived from ``(seed, rank)`` (:func:`run_seeds`); same seed and same initial weights give the same
    result, bit for bit on CPU. The model's initial weights are the caller's. ``resume=True`` restores
    every RNG state (data generator, torch CPU, CUDA, numpy, python) with the weights, EMA and
    optimizer, so a killed run continues exactly as if it had not been interrupted.

    **Speed on CUDA.** By default a CUDA run uses bfloat16 autocast around the loss (``precision``),
    ``torch.compile`` of ``model.loss`` (``compile``), channels_last memory for convolutional models
    (``channels_last``) and TF32 (``tf32``); a CPU run uses none of them (see :func:`resolve_speed`; a model
    class can set ``cuda_defaults = {"precision": "fp32"}`` to change what "auto" means for it). What was
    used is written to ``out/trainer.json``.

    **The run folder** ``out`` is locked (``out/.lock``) for the whole run: a second training into it
    fails with :class:`RunLockedError`. A diverging run stops before a non-finite checkpoint is written.

    Args:
        model: an ``nn.Module`` with ``loss(batch) -> scalar Tensor`` (and optionally ``generator()``).
        data: see the data contract above.
        train_config: all settings as one :class:`TrainConfig` (optional).
        callback: ``callback(step, trainer)`` after every step (and after that step's checkpoint).
        config: the user's JSON-serialisable description of the run, written to ``out/config.json``.
        **settings: :class:`TrainConfig` fields: ``steps`` (required unless ``train_config`` is given),
            ``out``, ``batch_size``, ``lr``, ``weight_decay``, ``betas``, ``warmup``, ``schedule``,
            ``min_lr_ratio``, ``grad_clip``, ``ema_decay``, ``ema_warmup``, ``log_every``, ``ckpt_every``,
            ``keep``, ``seed``, ``resume``, ``progress``, ``device``, ``threads``, ``precision``,
            ``compile``, ``channels_last``, ``tf32``.

    Returns:
        The :class:`Run`, holding the trained model (raw weights) and its EMA.

    Raises:
        FileExistsError: ``out`` already holds a run and ``resume`` is False.
        RunLockedError: another process is training into ``out`` (a ``FileExistsError``).
        ValueError: a setting is invalid, or ``resume=True`` but the saved run had different settings.
        CheckpointError: the checkpoint to resume from is damaged (the model is left untouched).
        FloatingPointError: the loss, gradient norm or weights became NaN or infinite.
        KeyboardInterrupt: Ctrl-C; the lock is released and the message names the step reached.

    Example:
        >>> import torch
        >>> class Center(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.mu = torch.nn.Parameter(torch.zeros(2))
        ...     def loss(self, x):
        ...         return ((x - self.mu) ** 2).sum(-1).mean()
        >>> x = torch.randn(1000, 2) + 3.0
        >>> run = train(Center(), x, steps=300, batch_size=64, lr=0.05, progress=False)
        >>> torch.allclose(run.model.mu, torch.full((2,), 3.0), atol=0.3)
        True
    """
    return Trainer(model, data, train_config, callback=callback, config=config, **settings).fit()
