"""Data-parallel training under ``torchrun``, with no change to the user's code.

When the environment says ``WORLD_SIZE > 1`` (as ``torchrun --nproc_per_node K`` sets it), the trainer
calls :func:`setup` to join the process group (NCCL on CUDA, gloo on CPU), wraps the model in
:class:`LossModule` + ``DistributedDataParallel`` so gradients are averaged across processes, logs and
checkpoints on rank 0 only, and calls :func:`teardown` at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistInfo",
    "LossModule",
    "barrier",
    "env_world_size",
    "gather_objects",
    "setup",
    "teardown",
    "wrap",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 is the main process, the only one that writes files).
        world_size: number of processes; 1 means no distribution.
        local_rank: rank on this node; picks the GPU.
        owns_group: whether :func:`setup` created the process group (and :func:`teardown` destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """True under a multi-process job."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(  # noqa: B904
            f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; unset it or launch with torchrun"
        )


def env_local_rank() -> int:
    """``LOCAL_RANK`` (else ``RANK``, else 0) from the environment."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


def setup(device: torch.device) -> DistInfo:
    """Join the process group when ``WORLD_SIZE > 1``; otherwise return a single-process :class:`DistInfo`.

    A group the caller already initialised is reused (and left alive at the end).

    Args:
        device: the training device; CUDA selects NCCL, anything else gloo.
    """
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={world} but this torch build has no torch.distributed; "
            "launch a single process instead"
        )
    local_rank = env_local_rank()
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=False)
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        raise RuntimeError(
            f"WORLD_SIZE={world} but RANK / MASTER_ADDR are not set; launch with "
            "`torchrun --nproc_per_node K script.py` (or unset WORLD_SIZE for one process)"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        if not dist.is_gloo_available():
            raise RuntimeError("CPU data-parallel training needs the gloo backend, which this torch lacks")
        backend = "gloo"
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)


def teardown(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op for one process)."""
    if info.enabled:
        dist.barrier()


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    """Sum of ``t`` over processes (a new tensor; ``t`` itself for one process)."""
    if not info.enabled:
        return t
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (``[obj]`` for one process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


class LossModule(nn.Module):
    """Makes ``model.loss(batch)`` the ``forward`` so that DDP's gradient hooks fire.

    Args:
        model: any module with ``loss(batch) -> scalar Tensor``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> Tensor:
        """``self.model.loss(batch)``."""
        return self.model.loss(batch)


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(LossModule(model))`` on the given device; call it as ``wrapped(batch)``."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(LossModule(model), device_ids=ids)
