"""The process-group runtime of train.py, eval.py and predict.py: where a process sits under torchrun, its
device, the process group (one process per GPU, or CPU processes over gloo) and small collectives.

torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; a plain
``python train.py`` run has none of them and is a world of one process (no process group). Every collective
here is a no-op (or returns its input) without a process group, so the same code runs in both worlds.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: global ``rank``, ``local_rank`` on its node, ``world_size``, ``device``."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes checkpoints (global rank 0)."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when several processes work together (DDP, sharded data, collectives)."""
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The torch device a process uses for the ``--device`` value ``device``.

    ``auto`` is this process's GPU if CUDA is available, else the CPU. ``cuda`` is GPU ``local_rank``; so is
    ``cuda:N`` when several processes run (each takes its own GPU), while a single process keeps the GPU it
    names. Any other torch device name (``cpu``, ``mps``, ...) is used as given.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or another torch device name.
        local_rank: this process's rank on its node (torchrun's ``LOCAL_RANK``).
        world_size: the number of processes (torchrun's ``WORLD_SIZE``).

    Raises:
        ValueError: ``device`` is not a torch device name, or names CUDA on a machine without it; one line
            naming ``--device``.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device} is not a torch device: use auto, cpu, cuda or cuda:N") from None
    if chosen.type != "cuda":
        return chosen
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device} was given but CUDA is not available; use --device cpu")
    if chosen.index is None or world_size > 1:
        return torch.device("cuda", local_rank)
    return chosen


def process_context(device: str = "auto") -> DistContext:
    """This process's place in the torchrun world (from its environment) and its device; joins no group.

    Raises:
        ValueError: see :func:`resolve_device`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device, local_rank, world_size)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=chosen)


def init_distributed(device: str = "auto") -> DistContext:
    """:func:`process_context`, make its GPU the current one and, for more than one process, join the group.

    The backend is NCCL for GPUs and gloo otherwise (CPU processes). Each GPU process uses its own GPU
    (:func:`resolve_device`). Leave the group with :func:`close_distributed`.

    Raises:
        ValueError: see :func:`resolve_device`.
    """
    context = process_context(device)
    if context.device.type == "cuda":
        torch.cuda.set_device(context.device)
    if context.is_distributed and not dist.is_initialized():
        backend = "nccl" if context.device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    return context


def close_distributed() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place and return it (unchanged in a world of one)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Process ``src``'s ``obj`` on every process (``obj`` itself in a world of one); every process takes part."""
    if not dist.is_initialized():
        return obj
    shared = [obj]
    dist.broadcast_object_list(shared, src=src)
    return shared[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` as a list indexed by rank (``[obj]`` in a world of one)."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Overwrite every process's buffers of ``module`` (BatchNorm running statistics) with process ``src``'s,
    in place (no-op without a process group)."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src)


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()
