"""Training checkpoints: ``last.pth`` every epoch, ``best_epoch_E_mean-iu_M.pth`` on improvement, and resume.

A training checkpoint is the original's dict (``state_dict`` with ``module.`` keys, ``optimizer``,
``epoch``, ``mean_iu``, ``command``), so the original's tools and :func:`utils.checkpoint.load_checkpoint`
read it, plus what an exact resume needs: ``scheduler``, ``scaler``, ``sampler``, ``rng_states`` (one per
rank), ``best_record``, ``global_step`` and the effective ``config``. Files are written atomically.
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.atomic import atomic_path
from utils.checkpoint import WRAPPER_PREFIX, fill_model, save_checkpoint, unwrap_model

LAST_NAME = "last.pth"


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


def training_payload(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                     state: TrainingState, epoch: int, rng_states: list[dict], config: dict, command: str,
                     sampler_seed: int) -> dict[str, Any]:
    """The checkpoint dict after epoch ``epoch`` (0-based) has finished."""
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
    }


def record_validation(state: TrainingState, epoch: int, mean_iu: float) -> tuple[bool, str]:
    """Note a validation result in ``state``; on a new best, name its snapshot.

    Returns:
        ``(improved, stale_best_file)``: whether ``mean_iu`` beats the best so far, and the previous best
        snapshot's file name to delete once the new one is written ("" if none).
    """
    state.last_mean_iu, state.last_mean_iu_epoch = mean_iu, epoch
    if not mean_iu > state.best.mean_iu:
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


def resume_training(checkpoint: dict[str, Any], path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any,
                    scaler: Any) -> tuple[TrainingState, dict[str, Any]]:
    """Load a training checkpoint (read with :func:`utils.checkpoint.read_checkpoint` from ``path``) into model,
    optimizer, scheduler and scaler.

    Returns:
        ``(state, extras)``: where to continue, and the file's remaining entries (``rng_states``,
        ``config``, ...).

    Raises:
        ValueError: the file is a weights-only snapshot without the training state (use --snapshot).
    """
    missing = [key for key in ("optimizer", "scheduler", "epoch", "rng_states") if key not in checkpoint]
    if missing:
        raise ValueError(
            f"{path} has no {', '.join(missing)}: it is not a checkpoint written by train.py. "
            f"To start from its weights, pass it as --snapshot instead of --resume."
        )
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
