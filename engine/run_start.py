"""The start of a training run, before its first epoch: refuse, in seconds and with one line, a start that
cannot work (a missing or mismatched checkpoint, unusable data, an existing run, nothing left to train);
resolve the model options; seed the process; create the run folder (and remove it again when the start
fails); log the setup; restore a --resume checkpoint. :class:`Run` is what every later step shares.

``train.py`` prints the :data:`START_ERRORS` as ``train.py: error: MESSAGE`` and exits with status 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from easydict import EasyDict

import datasets
import network
from datasets.file_check import (
    DataFileError,
    all_smaller_than,
    check_masks,
    has_labelled_pixel,
    no_labelled_pixels,
    summarize_mask_problems,
)
from engine.cpu_precision import emulated_precision_note
from engine.distributed import DistContext, barrier
from engine.optim import zero_lr_epochs
from engine.reproducibility import restore_rng_state, seed_everything
from engine.run_checkpoint import (
    LAST_NAME,
    TrainingState,
    check_training_checkpoint,
    environment_differences,
    resume_training,
    run_environment,
)
from engine.text_log import close_logger
from engine.train_flags import schedule_factor
from engine.train_log import RunLog
from network.options import ResolvedModel, resolve_model_options
from network.zoo import WeightsError, apply_weights_flag
from utils.checkpoint import CheckpointFileError, CheckpointMismatchError, read_checkpoint, read_class_table


class StartError(Exception):
    """A run that cannot start as asked; ``main`` prints the message and exits with status 2."""


START_ERRORS = (StartError, FileNotFoundError, CheckpointFileError, CheckpointMismatchError, DataFileError)
"""The errors that mean a run cannot start as asked (a usage error: one line, exit status 2)."""


@dataclass
class Run:
    """What every step of a run shares: the flags, this run's configuration, the process group, where the
    run writes, and its logs."""

    args: argparse.Namespace
    config: EasyDict
    ctx: DistContext
    run_dir: Path
    log: logging.Logger
    run_log: RunLog
    command: str
    saved_config: dict


def seed_and_determinism(args: argparse.Namespace, ctx: DistContext) -> None:
    """Seed this process (--seed + rank); with --deterministic, deterministic algorithms and cuBLAS, else the
    cuDNN autotuner."""
    seed_everything(args.seed + ctx.rank)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS needs it
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not args.deterministic


def run_name(args: argparse.Namespace) -> str:
    """Run folder name: dataset and the architecture's last dotted component, e.g. ``iSAID-pfnet_r50``."""
    return f"{args.dataset}-{args.arch.rsplit('.', 1)[-1]}"


def resolve_model(args: argparse.Namespace, resume_checkpoint: dict | None) -> ResolvedModel:
    """The arch and model options (flags, else the --resume checkpoint's, else the registry's); written back
    into ``args`` so that config.yaml and the checkpoints record the values the run really uses."""
    resolved = resolve_model_options(args, resume_checkpoint.get("config") if resume_checkpoint else None,
                                     str(args.resume))
    args.arch = resolved.arch
    for name, value in resolved.options.items():
        setattr(args, name, value)
    return resolved


def uses_edge_loss(run: Run) -> bool:
    """--joint_edge_loss_pfnet for a model whose training forward returns edge maps (PFNet); other models
    train on the segmentation loss alone."""
    if not run.args.joint_edge_loss_pfnet:
        return False
    if network.model_entry(run.args.arch).edge_outputs:
        return True
    run.log.info(f"--joint_edge_loss_pfnet: {run.args.arch} has no edge maps; training on the segmentation loss alone")
    return False


def check_resume_length(args: argparse.Namespace, resume_checkpoint: dict) -> None:
    """Refuse a --resume that has nothing left to train: --max_epoch must exceed the finished epochs."""
    finished = int(resume_checkpoint.get("epoch", -1)) + 1
    if args.max_epoch <= finished:
        raise StartError(f"--resume {args.resume} has finished {finished} epochs and --max_epoch is {args.max_epoch}: "
                         f"to train longer pass a larger --max_epoch (e.g. --max_epoch {finished + 1}); the schedule "
                         f"then follows the new length from epoch {finished}")


def prepare_run_dir(args: argparse.Namespace, ctx: DistContext) -> tuple[Path, Path, bool]:
    """Checkpoint and TensorBoard folders of this run, and whether this start creates them (a failed start
    then removes them again); refuses to start afresh over an existing run."""
    run_dir = Path(args.ckpt) / args.exp / run_name(args)
    tb_dir = Path(args.tb_path) / args.exp / run_name(args)
    if (run_dir / LAST_NAME).exists() and not (args.resume or args.overwrite):
        raise StartError(f"{run_dir / LAST_NAME} exists: continue that run with --resume {run_dir / LAST_NAME}, "
                         f"start over with --overwrite, or pick another --exp")
    created = not run_dir.exists() and not tb_dir.exists()
    barrier()  # every process has checked before rank 0 creates anything
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, tb_dir, created


@dataclass
class StartCheckpoints:
    """The checkpoint dicts of --resume, --snapshot and --pretrained (None: flag not given), read by
    :func:`read_start_checkpoints` before anything is built."""

    resume: dict | None
    snapshot: dict | None
    pretrained: dict | None


def read_start_checkpoints(args: argparse.Namespace) -> StartCheckpoints:
    """The --resume, --snapshot and --pretrained files, read (with --trusted-pickle, unpickling any object) before
    any dataset or model is built: a typo'd path or a broken file fails in seconds, not after the data is listed.

    Returns:
        The checkpoint dicts (see :func:`utils.checkpoint.read_checkpoint`).

    Raises:
        StartError: naming the flag and the file: missing, empty, truncated, not a checkpoint, needing
            --trusted-pickle, (--resume) without the training state, or (--snapshot) trained for other classes
            (:func:`check_snapshot_classes`).
    """
    try:
        apply_weights_flag(args)
    except WeightsError as error:
        raise StartError(f"--weights: {error}") from None
    checkpoints = {}
    for flag in ("resume", "snapshot", "pretrained"):
        path = getattr(args, flag)
        if path is None:
            continue
        try:
            checkpoints[flag] = read_checkpoint(path, trusted_pickle=args.trusted_pickle)
            if flag == "resume":
                check_training_checkpoint(checkpoints[flag], path)
        except (FileNotFoundError, CheckpointFileError, CheckpointMismatchError) as error:
            raise StartError(f"--{flag}: {error}") from None
    if "snapshot" in checkpoints:
        check_snapshot_classes(args, checkpoints["snapshot"])
    return StartCheckpoints(checkpoints.get("resume"), checkpoints.get("snapshot"), checkpoints.get("pretrained"))


def check_snapshot_classes(args: argparse.Namespace, snapshot: dict) -> None:
    """Refuse a --snapshot trained for other classes than --dataset's (by the class names train.py saves in its
    checkpoints), unless --snapshot_partial (fine-tuning to new classes) or --allow_class_mismatch.

    Raises:
        StartError: naming the checkpoint's dataset and classes, the dataset's classes and the flags.
    """
    saved = read_class_table(snapshot)
    classes = list(datasets.dataset_class(args.dataset, args.dataset_spec).class_names)
    if saved is None or saved[0] == classes or args.snapshot_partial or args.allow_class_mismatch:
        return
    trained_on = (snapshot.get("config") or {}).get("dataset", "an unrecorded dataset")
    raise StartError(f"--snapshot {args.snapshot} was trained on {trained_on} for the classes {saved[0]}, but "
                     f"--dataset {args.dataset} has {classes}: pass --snapshot_partial to fine-tune to the new "
                     f"classes, or --allow_class_mismatch to start from it anyway")


def config_file(run_dir: Path, resuming: bool) -> Path:
    """Where this start records its configuration: ``config.yaml`` for a run's first start (or --overwrite),
    ``config.resume-N.yaml`` for its N-th resume, so that the flags of every start are kept."""
    first = run_dir / "config.yaml"
    if not resuming or not first.exists():
        return first
    number = 1
    while (run_dir / f"config.resume-{number}.yaml").exists():
        number += 1
    return run_dir / f"config.resume-{number}.yaml"


def check_training_data(args: argparse.Namespace, train_set, val_set) -> None:
    """Refuse data that cannot train or be scored, before the first epoch: every validation mask is decoded
    (ids must be classes or 255) and must give at least one labelled pixel; the training masks must hold one
    (read until the first is found); and not every training image may be smaller than --crop_size.

    Raises:
        StartError: one line naming the split and its folder (bad masks: how many, the first files and ids).
    """
    masks = [mask for _, mask in val_set.items]
    check = check_masks(masks, val_set.num_classes, "checking validation masks", max(1, args.num_workers))
    where = f"validation split {val_set.split} ({val_set.root / val_set.split})"
    if check.problems:
        raise StartError(f"{where}: {summarize_mask_problems(check.problems, len(masks))}")
    if check.labelled_pixels == 0:
        raise StartError(no_labelled_pixels(where, len(masks)))
    if not has_labelled_pixel([mask for _, mask in train_set.items]):
        raise StartError(no_labelled_pixels(f"training split {train_set.split} ({train_set.root / train_set.split})",
                                            len(train_set.items)))
    largest = all_smaller_than([image for image, _ in train_set.items], args.crop_size)
    if largest is not None:
        raise StartError(f"every image of the training split {train_set.split} ({train_set.root / train_set.split}) "
                         f"is smaller than --crop_size {args.crop_size} (the largest is {largest[1]} x {largest[0]} "
                         f"px): pass a --crop_size of at most {max(largest)}, or prepare larger patches")


def check_resume_config(saved: dict, current: dict, log) -> None:
    """Warn about flags or cfg values that differ from those the resumed run was started with."""
    changed = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
    for key in changed:
        log.warning(f"--resume: {key} was {saved.get(key)!r} in the checkpoint, now {current.get(key)!r}")


def announce_zero_lr_epochs(run: Run, first_epoch: int) -> None:
    """Say before training which epochs run at LR 0 (the poly schedule reaches 0 at its last epoch)."""
    args = run.args
    zero = zero_lr_epochs(schedule_factor(args), first_epoch)
    if not zero:
        return
    if len(zero) == args.max_epoch - first_epoch:
        run.log.warning(f"every epoch of this run ({', '.join(map(str, zero))}) trains at LR 0: with --max_epoch "
                        f"{args.max_epoch} the original's per-epoch {args.lr_schedule} schedule is 0 there, so the "
                        f"weights will not change; pass --max_epoch {args.max_epoch + 1} or more to train")
    else:
        run.log.info(f"epoch {zero[-1]} (the last) trains at LR 0, as in the original's {args.lr_schedule} "
                     f"schedule; for {args.max_epoch} epochs at a nonzero LR pass --max_epoch {args.max_epoch + 1}")


def abandon_start(run: Run, tb_dir: Path, created: bool, error: BaseException) -> None:
    """After a failed start: remove the run's folders if this start created them (no stub run folder stays),
    else say in the run's log that this start failed (its files are as they were)."""
    if not created:
        run.log.error(f"this start of the run failed, nothing was changed: {error}")
    run.run_log.close()
    close_logger(run.log)
    if created and run.ctx.is_main:
        shutil.rmtree(run.run_dir, ignore_errors=True)
        shutil.rmtree(tb_dir, ignore_errors=True)


def announce_start(run: Run, resolved: ResolvedModel, notes: list[str]) -> None:
    """Log the notes about mapped flags, the precision and model warnings, the processes and the model."""
    ctx, log = run.ctx, run.log
    for note in notes:
        log.info(note)
    precision_note = emulated_precision_note(run.args.amp, ctx.device)
    if precision_note:
        log.warning(precision_note)
    for warning in resolved.warnings:
        log.warning(warning)
    log.info(f"{ctx.world_size} process(es) on {ctx.device.type}; run folder {run.run_dir}")
    log.info(f"model: {resolved.describe()}")


def resume_run(run: Run, parts, checkpoint: dict) -> TrainingState:
    """Restore a --resume checkpoint (already read) into ``parts`` (train.py's model, optimizer, scheduler and
    scaler), this process's RNG streams included; warn about flags and (with --deterministic) an environment
    that differ from the checkpoint's."""
    args, ctx, log = run.args, run.ctx, run.log
    state, extras = resume_training(checkpoint, args.resume, parts.model, parts.optimizer, parts.scheduler,
                                    parts.scaler)
    check_resume_config(extras.get("config", {}), run.saved_config, log)
    if args.deterministic:
        differences = environment_differences(extras.get("environment"),
                                              run_environment(ctx.device, ctx.world_size, args.num_workers))
        if differences:
            log.warning(differences)
    rng_states = extras["rng_states"]
    if len(rng_states) == ctx.world_size:
        restore_rng_state(rng_states[ctx.rank])
    else:
        log.warning(f"--resume: saved by {len(rng_states)} processes, now {ctx.world_size}: the random streams "
                    f"restart (the run continues, not bit-exactly)")
        seed_everything(args.seed + ctx.rank + 1000 * state.next_epoch)
    log.info(f"resuming {args.resume} at epoch {state.next_epoch} (best mIoU so far {state.best.mean_iu:.5f})")
    return state
