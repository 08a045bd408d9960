"""Training checkpoints: ``last.pth`` every epoch, ``best_epoch_E_mean-iu_M.pth`` on improvement, and resume.

A training checkpoint is the original's dict (``state_dict`` with ``module.`` keys, ``optimizer``,
``epoch``, ``mean_iu``, ``command``), so the original's tools and :func:`utils.checkpoint.load_checkpoint`
read it, plus what an exact resume needs: ``scheduler``, ``scaler``, ``sampler``, ``rng_states`` (one per
rank), ``best_record``, ``global_step`` and the effective ``config``, and the ``environment`` the run's
numbers depend on (:func:`run_environment`), which a resume compares with its own. Files are written atomically.
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from utils.atomic import atomic_path
from utils.checkpoint import (
    WRAPPER_PREFIX,
    CheckpointMismatchError,
    fill_model,
    save_checkpoint,
    unwrap_model,
)

LAST_NAME = "last.pth"
# The environment entries, in the order a resume names their differences, and how it names each.
ENVIRONMENT_LABELS = {"threads": "threads", "cpu_capability": "CPU capability", "device": "device",
                      "cuda_device": "CUDA device", "torch": "torch", "numpy": "numpy", "opencv": "OpenCV",
                      "world_size": "processes", "num_workers": "data-loading workers"}


def best_name(epoch: int, mean_iu: float) -> str:
    """The original's best-snapshot file name, e.g. ``best_epoch_15_mean-iu_0.66970.pth``."""
    return f"best_epoch_{epoch}_mean-iu_{mean_iu:.5f}.pth"


@dataclass
class BestRecord:
    """Best validation so far: ``epoch`` (-1 before any), ``mean_iu`` and the snapshot's file name."""

    epoch: int = -1
    mean_iu: float = -math.inf
    file_name: str = ""


@dataclass
class TrainingState:
    """Everything a resumed run continues from (besides model, optimizer, scheduler and scaler states)."""

    next_epoch: int = 0
    global_step: int = 0
    last_mean_iu: float = 0.0  # 0.0 with last_mean_iu_epoch -1: not validated yet (the original's start value)
    last_mean_iu_epoch: int = -1
    best: BestRecord | None = None

    def __post_init__(self) -> None:
        if self.best is None:
            self.best = BestRecord()


def run_environment(device: torch.device, world_size: int, num_workers: int) -> dict[str, Any]:
    """What a bit-exact continuation of a run depends on besides its flags and saved states.

    The intra-op thread count and the CPU's vector instruction set change how float sums are split and
    ordered; the device (and GPU model), the torch, NumPy and OpenCV versions change kernels and random
    streams; the process count and the data-loading workers change which random stream augments which image.

    Args:
        device: the device this process trains on.
        world_size: number of training processes.
        num_workers: data-loading worker processes per training process.

    Returns:
        Plain values keyed as ENVIRONMENT_LABELS (``cuda_device`` is None on the CPU).
    """
    return {
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": device.type,
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": str(torch.__version__),  # a TorchVersion, which weights-only loading refuses
        "numpy": str(np.__version__),
        "opencv": str(cv2.__version__),
        "world_size": world_size,
        "num_workers": num_workers,
    }


def environment_differences(saved: dict[str, Any] | None, current: dict[str, Any]) -> str:
    """One line naming each difference between a checkpoint's environment and this process's, or "" if none.

    Args:
        saved: the checkpoint's ``environment`` entry (None for a checkpoint written before it was recorded).
        current: :func:`run_environment` of this process.

    Returns:
        e.g. ``"resume: threads 2 → 1, torch 2.4.0 → 2.5.1: the resumed run will not be bit-identical"``.
    """
    if saved is None:
        return ("resume: the checkpoint does not record the threads, CPU, device and library versions it was "
                "trained with: the resumed run may not be bit-identical")
    changes = [f"{label} {saved.get(key)} → {current[key]}" for key, label in ENVIRONMENT_LABELS.items()
               if saved.get(key) != current[key]]
    if not changes:
        return ""
    return f"resume: {', '.join(changes)}: the resumed run will not be bit-identical"


def training_payload(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                     state: TrainingState, epoch: int, rng_states: list[dict], config: dict, command: str,
                     sampler_seed: int, environment: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint dict after epoch ``epoch`` (0-based) has finished (``environment``: :func:`run_environment`)."""
    model_state = unwrap_model(model).state_dict()
    return {
        "state_dict": {WRAPPER_PREFIX + key: value for key, value in model_state.items()},
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "mean_iu": state.last_mean_iu,
        "command": command,
        "mean_iu_epoch": state.last_mean_iu_epoch,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "sampler": {"seed": sampler_seed, "epoch": epoch + 1},
        "rng_states": rng_states,
        "best_record": asdict(state.best),
        "global_step": state.global_step,
        "config": config,
        "environment": environment,
    }


def record_validation(state: TrainingState, epoch: int, mean_iu: float | None) -> tuple[bool, str]:
    """Note a validation result in ``state``; on a new best, name its snapshot.

    Args:
        mean_iu: the validation mIoU, or None when no labelled pixel was scored (recorded as 0.0, never a best).

    Returns:
        ``(improved, stale_best_file)``: whether ``mean_iu`` beats the best so far, and the previous best
        snapshot's file name to delete once the new one is written ("" if none).
    """
    state.last_mean_iu, state.last_mean_iu_epoch = (0.0 if mean_iu is None else mean_iu), epoch
    if mean_iu is None or not mean_iu > state.best.mean_iu:
        return False, ""
    stale = state.best.file_name
    state.best = BestRecord(epoch=epoch, mean_iu=mean_iu, file_name=best_name(epoch, mean_iu))
    return True, stale


def write_epoch_checkpoints(run_dir: Path, payload: dict[str, Any], best_file: str = "",
                            stale_best_file: str = "") -> None:
    """Write ``last.pth``; with ``best_file``, copy it there too, then delete ``stale_best_file``."""
    last_path = run_dir / LAST_NAME
    save_checkpoint(last_path, payload)
    if not best_file:
        return
    with atomic_path(run_dir / best_file) as temp_path:
        shutil.copyfile(last_path, temp_path)
    if stale_best_file and stale_best_file != best_file:
        (run_dir / stale_best_file).unlink(missing_ok=True)


def check_training_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse a checkpoint (read with :func:`utils.checkpoint.read_checkpoint`) that cannot be resumed.

    Raises:
        CheckpointMismatchError: the file lacks the training state (a bare state_dict or a weights-only
            snapshot); the message says to pass it as --snapshot.
    """
    missing = [key for key in ("optimizer", "scheduler", "epoch", "rng_states") if key not in checkpoint]
    if missing:
        raise CheckpointMismatchError(
            f"{path} has no {', '.join(missing)}: it is not a checkpoint written by train.py. "
            f"To start from its weights, pass it as --snapshot instead of --resume."
        )


def resume_training(checkpoint: dict[str, Any], path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any,
                    scaler: Any) -> tuple[TrainingState, dict[str, Any]]:
    """Load a training checkpoint (read with :func:`utils.checkpoint.read_checkpoint` from ``path``, and checked
    by the caller with :func:`check_training_checkpoint`) into model, optimizer, scheduler and scaler.

    Returns:
        ``(state, extras)``: where to continue, and the file's remaining entries (``rng_states``,
        ``config``, ...).
    """
    extras = fill_model(model, checkpoint, path)
    optimizer.load_state_dict(extras["optimizer"])
    scheduler.load_state_dict(extras["scheduler"])
    if extras.get("scaler"):
        scaler.load_state_dict(extras["scaler"])
    best = BestRecord(**extras["best_record"]) if "best_record" in extras else BestRecord()
    state = TrainingState(
        next_epoch=int(extras["epoch"]) + 1,
        global_step=int(extras.get("global_step", 0)),
        last_mean_iu=float(extras.get("mean_iu", 0.0)),
        last_mean_iu_epoch=int(extras.get("mean_iu_epoch", -1)),
        best=best,
    )
    return state, extras
