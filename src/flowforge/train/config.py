"""Every training setting in one frozen, validated dataclass.

Example:
    >>> cfg = TrainConfig(steps=1_000, lr=3e-4)
    >>> cfg.warmup, cfg.ckpt_every, cfg.grad_clip
    (50, 100, 1.0)
    >>> TrainConfig(steps=0)
    Traceback (most recent call last):
    ...
    ValueError: steps must be an int >= 1, got 0; write e.g. steps=1000 (--steps 1000 on the command line)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.choices import unknown_choice

__all__ = ["PRECISIONS", "TrainConfig", "make_train_config"]

_SCHEDULES = ("cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """The settings of one training run (the keyword arguments of :func:`~flowforge.train.train`).

    Validated once, here; the derived defaults (``warmup``, ``ckpt_every``) are filled in, ``out`` becomes a
    ``Path``, ``device`` a ``torch.device`` and ``grad_clip=0`` becomes None.
    ``dataclasses.replace(cfg, steps=...)`` re-validates but keeps the ``warmup`` and ``ckpt_every`` already
    filled in from the old ``steps``; pass them again (or build a new TrainConfig) when that matters.

    Attributes:
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
        seed: seeds the data stream and the global torch, numpy and Python RNGs of a fresh run.
        resume: continue the run in ``out`` from its latest checkpoint (starts fresh, with a warning, when
            there is none). Every setting that shapes the trajectory, and ``config``, must match.
        progress: show a tqdm bar (loss, lr, steps/s) on stderr; False prints nothing.
        device: training device; default CUDA when available (``cuda:LOCAL_RANK`` under torchrun), else
            the model's device. The model is moved there in place.
        threads: CPU threads for the duration of the run (``torch.set_num_threads``, restored after). None
            picks: 1 thread for a model under 1M parameters on CPU, torch's default otherwise. Never
            changed on CUDA.
        precision: ``"fp32"``; ``"bf16"``: the loss (the forward pass) runs under
            ``torch.autocast(dtype=torch.bfloat16)``, on CUDA and CPU alike (weights, gradients, optimizer
            and EMA stay float32); ``"auto"``: ``"bf16"`` on a CUDA device that supports it (compute
            capability >= 8.0), else ``"fp32"``. Part of the trajectory: a resume must use the same
            resolved precision.
        compile: ``torch.compile`` what the trainer calls each step (``model.loss``); the model itself is
            not wrapped, so checkpoints, the EMA and ``state_dict`` keys are unchanged. None: True on CUDA,
            False on CPU.
        channels_last: put the model's 4-D weights and the 4-D tensors of each batch in
            ``torch.channels_last`` memory format (faster convolutions on CUDA). None: True on CUDA when
            the model has a 4-D weight (a 2-D convolution).
        tf32: let CUDA matmuls and cuDNN convolutions use TensorFloat-32 for the run
            (``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``; both
            restored after). None: True on CUDA. Nothing is changed on a CPU run.

    The four speed options above default to None / ``"auto"`` and are resolved once, when training
    starts, from the device (and the model's ``cuda_defaults``, see :func:`~flowforge.train.train`); the
    resolved values are written to ``out/trainer.json`` and each checkpoint's manifest. On CPU the
    defaults resolve to fp32, no compile, no channels_last, no tf32: exactly the behaviour before they
    existed.
    """

    steps: int
    out: str | os.PathLike[str] | None = None
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int | None = None
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    log_every: int = 100
    ckpt_every: int | None = None
    keep: int = 3
    seed: int = 0
    resume: bool = False
    progress: bool = True
    device: torch.device | str | None = None
    threads: int | None = None
    precision: str = "auto"
    compile: bool | None = None
    channels_last: bool | None = None
    tf32: bool | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        def need_int(name: str, lo: int, example: int, flag: str | None = None) -> int:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                cli = f" ({flag} {example} on the command line)" if flag else ""
                raise ValueError(
                    f"{name} must be an int >= {lo}, got {v!r}; write e.g. {name}={example}{cli}"
                )
            return v

        def need_float(name: str, ok: bool, rule: str, example: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not ok:
                raise ValueError(f"{name} must be {rule}, got {v!r}; write e.g. {name}={example}")
            return float(v)

        steps = need_int("steps", 1, 1000, "--steps")
        need_int("batch_size", 1, 256)
        put("lr", need_float("lr", _num(self.lr) and self.lr > 0, "a number > 0", "1e-3"))
        put("weight_decay", need_float("weight_decay", _num(self.weight_decay), "a number", "0.0"))
        try:
            b0, b1 = (float(b) for b in self.betas)
        except (TypeError, ValueError):
            raise ValueError(
                f"betas must be two numbers, got {self.betas!r}; write e.g. betas=(0.9, 0.999)"
            ) from None
        if not (0.0 <= b0 < 1.0 and 0.0 <= b1 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas!r}; write e.g. betas=(0.9, 0.999)")
        put("betas", (b0, b1))
        put("warmup", min(1000, steps // 20) if self.warmup is None else need_int("warmup", 0, 100))
        if self.schedule not in _SCHEDULES:
            raise unknown_choice("schedule", self.schedule, _SCHEDULES)
        ratio = self.min_lr_ratio
        put(
            "min_lr_ratio",
            need_float("min_lr_ratio", _num(ratio) and 0.0 <= ratio <= 1.0, "in [0, 1]", "0.0"),
        )
        clip = self.grad_clip
        if clip is not None and (isinstance(clip, bool) or not _num(clip) or clip < 0):
            raise ValueError(
                f"grad_clip must be > 0, or None / 0 for no clipping; got {clip!r}; write e.g. grad_clip=1.0"
            )
        put("grad_clip", float(clip) if clip else None)
        decay = self.ema_decay
        put("ema_decay", need_float("ema_decay", _num(decay) and 0.0 <= decay <= 1.0, "in [0, 1]", "0.999"))
        put("ema_warmup", bool(self.ema_warmup))
        need_int("log_every", 1, 100)
        put("ckpt_every", max(1, steps // 10) if self.ckpt_every is None else need_int("ckpt_every", 0, 1000))
        need_int("keep", 1, 3)
        need_int("seed", 0, 0, "--seed")
        put("out", None if self.out is None else Path(self.out))
        if self.resume and self.out is None:
            raise ValueError(
                "resume=True needs the run folder: pass out='runs/name' (--out runs/name on the command "
                "line), the one used before"
            )
        put("resume", bool(self.resume))
        put("progress", bool(self.progress))
        if self.device is not None:
            try:
                put("device", torch.device(self.device))
            except (RuntimeError, TypeError) as e:
                raise ValueError(
                    f"device {self.device!r} is not a torch device ({e}); write e.g. device='cpu'"
                ) from None
        if self.threads is not None:
            need_int("threads", 1, 1)
        if not isinstance(self.precision, str) or self.precision not in PRECISIONS:
            raise unknown_choice(
                "precision",
                self.precision,
                PRECISIONS,
                hint="'bf16' runs the loss under bfloat16 autocast, 'fp32' in float32, 'auto' picks bf16 on "
                "CUDA devices that support it",
            )
        for name in ("compile", "channels_last", "tf32"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, bool):
                raise ValueError(
                    f"{name} must be True, False or None (automatic: True on CUDA, False on CPU), got {v!r}; "
                    f"write e.g. {name}=False"
                )

    def trajectory(self, world_size: int = 1) -> dict[str, Any]:
        """The settings that determine the trajectory (saved in checkpoints); a resume must match them.

        ``precision`` is reported as given (possibly ``"auto"``); the trainer replaces it by the resolved
        value before saving or comparing.
        """
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
            "precision": self.precision,
        }


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x == x  # NaN fails x == x


def make_train_config(train_config: TrainConfig | None, settings: dict[str, Any]) -> TrainConfig:
    """``train_config`` with ``settings`` (TrainConfig field names) applied; unknown names are an error.

    Example:
        >>> make_train_config(None, {"steps": 10, "lr": 0.1}).lr
        0.1
        >>> make_train_config(TrainConfig(steps=10), {"step": 5})
        Traceback (most recent call last):
        ...
        ValueError: unknown training setting 'step' (did you mean 'steps'?); choose one of steps, out, ...
    """
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    for name in settings:
        if name not in names:
            raise unknown_choice("training setting", name, names)
    if train_config is not None:
        if not isinstance(train_config, TrainConfig):
            raise TypeError(
                f"the third argument of train must be a TrainConfig, got {type(train_config).__name__}; "
                "pass settings by keyword instead (train(model, data, steps=1000, ...))"
            )
        return dataclasses.replace(train_config, **settings) if settings else train_config
    if "steps" not in settings:
        raise TypeError(
            "train needs the number of updates: pass steps=1000 (--steps 1000 on the command line)"
        )
    return TrainConfig(**settings)
