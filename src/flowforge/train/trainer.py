"""The training loop: AdamW, warm-up + cosine LR, gradient clipping, EMA, logging, checkpoints, resume, DDP.

The trainer assumes only that the model is an ``nn.Module`` with ``loss(batch) -> scalar Tensor``.
Everything it writes to ``out`` is plain JSON, JSON lines and safetensors:

.. code-block:: text

    out/config.json          the user's ``config`` dict, verbatim
    out/metrics.jsonl        one JSON object per log line
    out/ckpt-000500/         model, ema, optimizer, rng .safetensors + manifest.json
    out/latest               name of the newest checkpoint
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from . import distributed as _dist
from .checkpoint import (
    CheckpointError,
    atomic_write,
    flatten_state,
    latest_checkpoint,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
    unflatten_state,
)
from .ema import EMA

__all__ = ["BatchRequest", "Run", "Trainer", "lr_at", "run_seeds", "train"]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"


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
    """tqdm bar when available, else a plain line on stderr every log; nothing when disabled."""

    def __init__(self, enabled: bool, total: int, initial: int) -> None:
        self.enabled, self.total, self.bar = enabled, total, None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, rec: Mapping[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{rec['loss']:.4g}", lr=f"{rec['lr']:.2e}", refresh=False)
        elif self.enabled:
            print(
                f"step {rec['step']}/{self.total}  loss {rec['loss']:.4g}  lr {rec['lr']:.2e}  "
                f"grad_norm {rec['grad_norm']:.3g}  {rec['steps_per_sec']:.1f} steps/s  "
                f"{rec['elapsed']:.0f}s",
                file=sys.stderr,
                flush=True,
            )

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
            raise FileNotFoundError(f"no run folder at {self.out}; pass the out= folder that train() wrote")
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
# Trainer


class Trainer:
    """Trains ``model`` by minimising ``model.loss(batch)``; see :func:`train` for every argument.

    Use :func:`train` unless you need the trainer object (e.g. inside ``callback``, which receives it:
    ``trainer.step``, ``trainer.model``, ``trainer.optimizer``, ``trainer.ema``, ``trainer.last_loss``,
    ``trainer.last_grad_norm``).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        steps: int,
        out: str | os.PathLike[str] | None = None,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup: int | None = None,
        schedule: str = "cosine",
        min_lr_ratio: float = 0.0,
        grad_clip: float | None = 1.0,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        log_every: int = 100,
        ckpt_every: int | None = None,
        keep: int = 3,
        seed: int = 0,
        resume: bool = False,
        progress: bool = True,
        config: dict[str, Any] | None = None,
        callback: Callable[[int, Trainer], None] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not callable(getattr(model, "loss", None)) or not isinstance(model, nn.Module):
            raise TypeError(
                "train needs an nn.Module with a method loss(batch) -> scalar Tensor; "
                f"{type(model).__name__} "
                "has none. Wrap the network in an objective (e.g. flowforge.FlowMatching(net, ...))"
            )

        def need_int(name: str, v: Any, lo: int) -> int:
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
            return v

        self.model = model
        self.data = data
        if data is not None and data is getattr(model, "env", None):  # ff.train(tb, env): the model samples
            self.data = None
        self.steps = need_int("steps", steps, 1)
        self.out = None if out is None else Path(out)
        self.batch_size = need_int("batch_size", batch_size, 1)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.betas = (float(betas[0]), float(betas[1]))
        self.warmup = min(1000, steps // 20) if warmup is None else need_int("warmup", warmup, 0)
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
        self.schedule = schedule
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {min_lr_ratio}")
        self.min_lr_ratio = float(min_lr_ratio)
        if grad_clip is not None and grad_clip < 0:
            raise ValueError(f"grad_clip must be > 0, or None / 0 for no clipping; got {grad_clip}")
        self.grad_clip = float(grad_clip) if grad_clip else None
        if not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1], got {ema_decay}")
        self.ema_decay = float(ema_decay)
        self.ema_warmup = bool(ema_warmup)
        self.log_every = need_int("log_every", log_every, 1)
        self.ckpt_every = max(1, steps // 10) if ckpt_every is None else need_int("ckpt_every", ckpt_every, 0)
        self.keep = need_int("keep", keep, 1)
        self.seed = need_int("seed", seed, 0)
        if resume and out is None:
            raise ValueError("resume=True needs the run folder: pass out='runs/name' (the one used before)")
        self.resume = bool(resume)
        self.progress = bool(progress)
        if config is not None and not isinstance(config, dict):
            raise TypeError(f"config must be a dict (written to config.json), got {type(config).__name__}")
        self.config = config
        self._config_json = _jsonable(config if config is not None else {}, "config")
        self.callback = callback
        self.device = None if device is None else torch.device(device)
        _make_source(self.data, torch.device("cpu"))  # fail early on an unusable data argument

        self.step = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.ema: EMA | None = None
        self.last_loss: Tensor | None = None
        self.last_grad_norm: Tensor | None = None
        self.dist = _dist.DistInfo()

    def settings(self, world_size: int = 1) -> dict[str, Any]:
        """The hyperparameters that determine the trajectory; a resume must match them exactly."""
        return {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "betas": list(self.betas),
            "warmup": self.warmup,
            "schedule": self.schedule,
            "min_lr_ratio": self.min_lr_ratio,
            "grad_clip": self.grad_clip,
            "ema_decay": self.ema_decay,
            "ema_warmup": self.ema_warmup,
            "seed": self.seed,
            "world_size": world_size,
        }

    def lr_at(self, step: int) -> float:
        """Learning rate of update ``step`` (0-based) under this trainer's schedule."""
        return lr_at(
            step,
            lr=self.lr,
            steps=self.steps,
            warmup=self.warmup,
            schedule=self.schedule,
            min_lr_ratio=self.min_lr_ratio,
        )

    def _pick_device(self) -> torch.device:
        if self.device is not None:
            if self.device.type == "cuda" and self.device.index is None and _dist.env_world_size() > 1:
                return torch.device("cuda", _dist.env_local_rank())  # one GPU per process
            return self.device
        if torch.cuda.is_available():
            return torch.device("cuda", _dist.env_local_rank() if _dist.env_world_size() > 1 else 0)
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def fit(self) -> Run:
        """Train (or resume) to ``steps`` and return the :class:`Run`."""
        device = self._pick_device()
        info = _dist.setup(device)
        self.dist = info
        try:
            return self._fit(device, info)
        finally:
            _dist.teardown(info)

    def _check_same_run(self, saved: Mapping[str, Any], settings: dict[str, Any]) -> None:
        diffs = []
        old = saved.get("trainer", {})
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
                f"resume=True, but {self.out} holds a run with different settings: "
                + "; ".join(diffs)
                + ". Pass the saved values to continue that run, or choose a new out= folder for a new run."
            )

    def _fit(self, device: torch.device, info: _dist.DistInfo) -> Run:
        model = self.model.to(device)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                f"{type(model).__name__} has no trainable parameters (requires_grad=True); nothing to train"
            )
        opt = torch.optim.AdamW(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        ema = EMA(model, self.ema_decay, warmup=self.ema_warmup)
        gen = torch.Generator()
        self.optimizer, self.ema = opt, ema
        settings = self.settings(info.world_size)
        out, main = self.out, info.is_main
        metrics: list[dict[str, Any]] = []

        ckpt = None
        if out is not None:
            found = latest_checkpoint(out)
            if self.resume and found is not None:
                ckpt = load_checkpoint(out)  # validates every file before anything is applied
            elif self.resume:
                if main:
                    warnings.warn(
                        f"resume=True but {out} holds no checkpoint; starting a fresh run", stacklevel=3
                    )
            elif found is not None:
                raise FileExistsError(
                    f"{out} already holds a run (up to {found.name}); pass resume=True to continue it, "
                    "or choose another out= folder (or delete this one) to start a new run"
                )
        _dist.barrier(info)  # every process has looked at `out` before rank 0 writes to it

        start, elapsed0, loss_carry, gn_carry, count = 0, 0.0, 0.0, 0.0, 0
        if ckpt is not None:
            saved = ckpt.config
            self._check_same_run(saved, settings)
            name = ckpt.path.name
            _check_fits(model, ckpt.tensors["model"], f"{name}/model.safetensors")
            _check_fits(model, ckpt.tensors["ema"], f"{name}/ema.safetensors")
            if ckpt.step >= self.steps:
                _load_strict(model, ckpt.tensors["model"], f"{name}/model.safetensors")
                ema.load_state_dict(ckpt.tensors["ema"], saved.get("ema_updates", 0))
                self.step = ckpt.step
                if main:
                    warnings.warn(
                        f"the run in {out} already finished ({ckpt.step}/{self.steps} steps); loaded its "
                        "final weights and trained nothing. To train longer, start a new run in "
                        "another out= folder",
                        stacklevel=3,
                    )
                return Run(out)._attach(model, ema, metrics, self.step, self._config_json)
            try:
                opt_state = unflatten_state(saved["optimizer"], ckpt.tensors["optimizer"])
                per_rank = unflatten_state(saved["rng"], ckpt.tensors["rng"])[f"rank{info.rank}"]
                n_saved = sum(len(g["params"]) for g in opt_state["param_groups"])
            except (KeyError, TypeError) as e:
                raise CheckpointError(  # noqa: B904
                    f"{name}/manifest.json lacks trainer state ({e}); it was not written by train()"
                )
            if n_saved != len(params):
                raise CheckpointError(
                    f"{name} holds optimizer state for {n_saved} parameters, the model trains {len(params)}; "
                    "set requires_grad as in the original run"
                )
            _load_strict(model, ckpt.tensors["model"], f"{name}/model.safetensors")
            ema.load_state_dict(ckpt.tensors["ema"], saved["ema_updates"])
            opt.load_state_dict(opt_state)
            _set_rng_state(gen, per_rank["rng"])
            start, elapsed0 = ckpt.step, float(saved["elapsed"])
            loss_carry, gn_carry, count = (
                float(per_rank["loss"]),
                float(saved["grad_norm"]),
                int(saved["count"]),
            )
            if main:
                _truncate_metrics(out / METRICS_FILE, start)
        else:
            data_seed, global_seed = run_seeds(self.seed, info.rank)
            gen.manual_seed(data_seed)
            torch.manual_seed(global_seed)  # the model's loss may draw from the global RNG
            if out is not None and main:
                out.mkdir(parents=True, exist_ok=True)
                atomic_write(
                    out / CONFIG_FILE, json.dumps(self.config if self.config is not None else {}, indent=2)
                )
                atomic_write(out / METRICS_FILE, "")

        wrapped = None
        if info.enabled:
            wrapped = _dist.wrap(model, info, device)  # broadcasts rank 0's weights to every process
            if ckpt is None:
                ema.load_state_dict(model.state_dict(), num_updates=0)
        source = _make_source(self.data, device)
        loss_acc = torch.tensor(loss_carry, dtype=torch.float64, device=device)
        gn_acc = torch.tensor(gn_carry, dtype=torch.float64, device=device)
        max_norm = self.grad_clip if self.grad_clip is not None else math.inf
        bar = _Progress(self.progress and main, self.steps, start)
        t0 = t_log = time.perf_counter()
        step_log = self.step = start
        lr = self.lr_at(start)
        try:
            while self.step < self.steps:
                lr = self.lr_at(self.step)
                for group in opt.param_groups:
                    group["lr"] = lr
                batch = _to_device(source(self.batch_size, gen), device)
                opt.zero_grad(set_to_none=True)
                loss = wrapped(batch) if wrapped is not None else model.loss(batch)
                if self.step == start and (not isinstance(loss, Tensor) or loss.numel() != 1):
                    shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
                    raise ValueError(
                        f"model.loss(batch) must return a scalar Tensor, got {shape}; reduce it with .mean()"
                    )
                loss.backward()
                if self.grad_clip is None:  # the norm is still logged; computing it alone is cheaper
                    gn = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                else:
                    gn = torch.nn.utils.clip_grad_norm_(params, max_norm)
                opt.step()
                ema.update(model)
                self.step += 1
                self.last_loss, self.last_grad_norm = loss.detach(), gn.detach()
                loss_acc += self.last_loss.reshape(())
                gn_acc += self.last_grad_norm
                count += 1
                bar.update()

                if self.step % self.log_every == 0 or self.step == self.steps:
                    now = time.perf_counter()
                    mean_loss = _dist.all_reduce_sum(loss_acc, info).item() / (count * info.world_size)
                    rec = {
                        "step": self.step,
                        "loss": mean_loss,
                        "lr": lr,
                        "grad_norm": gn_acc.item() / count,
                        "steps_per_sec": (self.step - step_log) / max(now - t_log, 1e-9),
                        "elapsed": elapsed0 + now - t0,
                    }
                    if not math.isfinite(mean_loss):
                        raise FloatingPointError(
                            f"loss became {mean_loss} by step {self.step}; lower lr (now {lr:.3g}), keep "
                            "grad_clip on, or check the data for NaNs. resume=True restarts from the "
                            "last good checkpoint"
                        )
                    if main:
                        metrics.append(rec)
                        if out is not None:
                            with open(out / METRICS_FILE, "a", encoding="utf-8") as f:
                                f.write(json.dumps(rec) + "\n")
                        bar.log(rec)
                    loss_acc.zero_()
                    gn_acc.zero_()
                    count, t_log, step_log = 0, now, self.step

                if out is not None and (
                    (self.ckpt_every and self.step % self.ckpt_every == 0) or self.step == self.steps
                ):
                    self._save(
                        model,
                        opt,
                        ema,
                        gen,
                        info,
                        settings,
                        loss_acc,
                        gn_acc,
                        count,
                        elapsed0 + time.perf_counter() - t0,
                    )

                if self.callback is not None:
                    self.callback(self.step, self)
        finally:
            bar.close()
        return Run(out)._attach(model, ema, metrics, self.step, self._config_json)

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
            assert self.out is not None
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
            }
            groups = {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": opt_tensors,
                "rng": rng_tensors,
            }
            save_checkpoint(self.out, groups, state, step=self.step, keep=self.keep)
        _dist.barrier(info)


def train(
    model: nn.Module,
    data: Any,
    *,
    steps: int,
    out: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    warmup: int | None = None,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.0,
    grad_clip: float | None = 1.0,
    ema_decay: float = 0.999,
    ema_warmup: bool = True,
    log_every: int = 100,
    ckpt_every: int | None = None,
    keep: int = 3,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    config: dict[str, Any] | None = None,
    callback: Callable[[int, Trainer], None] | None = None,
    device: torch.device | str | None = None,
) -> Run:
    """Train ``model`` by minimising ``model.loss(batch)`` with AdamW; returns the :class:`Run`.

    Each step: set the learning rate (:func:`lr_at`), draw a batch, ``loss = model.loss(batch)``,
    backward, clip the gradient norm, AdamW step, EMA update. Under ``torchrun`` (``WORLD_SIZE > 1``) the
    same call trains data-parallel with DDP: every process draws its own batches (seed offset by its
    rank), gradients are averaged, and only rank 0 logs and writes files.

    **Data contract.** ``data`` is one of

    - a Tensor ``(N, *event)``: each step draws ``batch_size`` rows uniformly *with replacement* using
      the run's seeded CPU ``torch.Generator``; ``model.loss`` gets a ``(batch_size, *event)`` tensor.
      A tuple of tensors sharing ``N`` (e.g. ``(x, labels)``) gives a tuple of rows.
    - a callable ``data(batch_size, generator) -> batch`` (energies, environments, streaming data); the
      batch is passed to ``model.loss`` as is (tensors in it are moved to the device).
    - None: the model makes its own batches (GFlowNets, reverse-KL Boltzmann generators);
      ``model.loss`` gets a :class:`BatchRequest` ``(size, generator, device)``.

    **Reproducibility.** A fresh run seeds its data generator and torch's global RNG (which the loss may
    use, e.g. for noise and times) with two independent seeds derived from ``(seed, rank)`` (:func:`run_seeds`); same seed and same initial weights give the same
    result, bit for bit on CPU. The model's initial weights are the caller's. ``resume=True`` restores
    every RNG state (data generator, torch CPU, CUDA, numpy, python) with the weights, EMA and
    optimizer, so a killed run continues exactly as if it had not been interrupted.

    Args:
        model: an ``nn.Module`` with ``loss(batch) -> scalar Tensor`` (and optionally ``generator()``).
        data: see the data contract above.
        steps: total number of optimizer updates.
        out: run folder for ``config.json``, ``metrics.jsonl`` and checkpoints; None keeps nothing on disk.
        batch_size: batch size per process (the global batch is ``batch_size * world_size``).
        lr: peak learning rate.
        weight_decay: AdamW's decoupled weight decay, applied to every trainable parameter.
        betas: AdamW's betas.
        warmup: linear warm-up steps; default ``min(1000, steps // 20)``.
        schedule: ``"cosine"`` (decay to ``min_lr_ratio * lr``) or ``"constant"`` after warm-up.
        min_lr_ratio: floor of the cosine, as a fraction of ``lr``.
        grad_clip: maximum global gradient norm; None or 0 disables clipping (the norm is still logged).
        ema_decay: EMA decay (see :class:`~flowforge.train.ema.EMA`).
        ema_warmup: use the EMA warm-up ``min(decay, (1 + n) / (10 + n))``.
        log_every: steps between log lines (progress and ``metrics.jsonl``); the last step always logs.
        ckpt_every: steps between checkpoints (default ``steps // 10``; 0 = only at the end). A checkpoint
            is always written at the end when ``out`` is given.
        keep: how many checkpoints to keep.
        seed: seeds the data stream and the global torch RNG of a fresh run.
        resume: continue the run in ``out`` from its latest checkpoint (starts fresh, with a warning,
            when there is none). Every setting that shapes the trajectory and ``config`` must match.
        progress: show a tqdm bar (loss, steps/s) when tqdm is installed, else print a line every
            ``log_every`` steps on stderr; False prints nothing.
        config: the user's JSON-serialisable description of the run, written to ``out/config.json``.
        callback: ``callback(step, trainer)`` after every step (and after that step's checkpoint).
        device: training device; default CUDA when available (``cuda:LOCAL_RANK`` under torchrun), else
            the model's device. The model is moved there in place.

    Returns:
        The :class:`Run`, holding the trained model (raw weights) and its EMA.

    Raises:
        FileExistsError: ``out`` already holds a run and ``resume`` is False.
        ValueError: ``resume=True`` but the saved run had different settings or config.
        CheckpointError: the checkpoint to resume from is damaged (the model is left untouched).
        FloatingPointError: the loss became NaN or infinite.

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
    return Trainer(
        model,
        data,
        steps=steps,
        out=out,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        betas=betas,
        warmup=warmup,
        schedule=schedule,
        min_lr_ratio=min_lr_ratio,
        grad_clip=grad_clip,
        ema_decay=ema_decay,
        ema_warmup=ema_warmup,
        log_every=log_every,
        ckpt_every=ckpt_every,
        keep=keep,
        seed=seed,
        resume=resume,
        progress=progress,
        config=config,
        callback=callback,
        device=device,
    ).fit()
