"""Data-parallel helpers for the trainer: join torchrun's process group, and agree across ranks.

Launch a training script with `torchrun --nproc_per_node=K`; torchrun sets RANK, WORLD_SIZE and
LOCAL_RANK. Without WORLD_SIZE > 1 every helper here is a no-op, so the trainer calls them always.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import unwrap_model
from ..device import autocast_dtype, get_device

__all__ = ["DistInfo", "all_gather_objects", "all_mean", "any_rank", "cleanup_distributed", "place_model",
           "setup_distributed"]


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this process called init_process_group (and so tears it down)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

    Without WORLD_SIZE > 1 this does nothing. Backend: nccl when training on CUDA, else gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), local, dist.get_world_size(), owns_group=False)
    use_cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, local, world, owns_group=True)


def cleanup_distributed(info: DistInfo) -> None:
    """Leave the process group this process created, once every rank got here.

    The barrier lets gloo finish its pending collectives first: a group torn down (or garbage-collected
    with the DDP wrapper at exit) while its worker thread still holds work can deadlock on the GIL, so a
    finished torchrun run would never exit. A rank that does not arrive within a minute (it crashed)
    is not waited for."""
    if not (info.owns_group and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=60))
        else:
            dist.barrier()
    except RuntimeError:  # another rank is gone: leave anyway
        pass
    dist.destroy_process_group()


def all_mean(info: DistInfo, value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over all ranks (`value` itself without DDP)."""
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def any_rank(info: DistInfo, device: torch.device, *flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over all ranks, in one all-reduce (so every rank stops together)."""
    if not info.enabled:
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def all_gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """`[obj of rank 0, obj of rank 1, ...]` (`[obj]` without DDP)."""
    if not info.enabled:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def place_model(model: nn.Module, config: Any, info: DistInfo) -> tuple[torch.device, torch.dtype | None, nn.Module,
                                                                           nn.Module]:
    """(device, autocast dtype or None for fp32, the plain module, what the training forward calls).

    The plain module is what checkpoints and evaluation use; under torchrun the training forward goes
    through a DistributedDataParallel wrapper of it, on this process's own GPU.
    """
    if info.enabled and torch.cuda.is_available() and config.device in ("auto", "cuda"):
        device = torch.device(f"cuda:{info.local_rank}")
    else:
        device = get_device(config.device)
    dtype = autocast_dtype(device, None if config.dtype == "auto" else config.dtype)  # None = fp32
    model = unwrap_model(model).to(device)
    if config.compile:
        model.compile()  # in place: state_dict keys keep their names
    train_model: nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        train_model = DDP(model, device_ids=ids)
    return device, dtype, model, train_model
