"""Train a segmentation model on iSAID, Potsdam or Vaihingen: one process, or torchrun DDP on one or several machines.

Single process (one GPU, or the CPU)::

    python train.py --dataset iSAID --arch pfnet_r50 --joint_edge_loss_pfnet --ohem ...

One machine, G GPUs (one process each; NCCL)::

    torchrun --standalone --nproc_per_node=G train.py ...

Several machines: the same command on every machine with ``--nnodes=N --node_rank=i
--rdzv_endpoint=HOST:PORT --rdzv_backend=c10d`` (see docs/training.md). CPU processes use gloo.
The official recipes are in ``configs/pointflow/*.yaml`` (``scripts/train.sh CONFIG [GPUS]`` launches one).

The file reads top to bottom: the flags, the parts of a run (data, model, optimisation, resume), one
epoch (train, validate, save), the loop over the epochs, and ``main``.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from easydict import EasyDict
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset
from tqdm import tqdm

import datasets
import network
import transforms
from config import add_config_flags, dataset_root, effective_config, parse_with_config, save_config
from datasets.file_check import (
    DataFileError,
    all_smaller_than,
    check_masks,
    has_labelled_pixel,
    no_labelled_pixels,
    summarize_mask_problems,
)
from datasets.registry import names_text, val_splits_text
from datasets.uniform import ClassUniformSampler
from engine.cpu_precision import emulated_precision_note
from engine.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    close_distributed,
    init_distributed,
)
from engine.optim import build_scheduler, build_sgd, lr_factor, zero_lr_epochs
from engine.reproducibility import capture_rng_state, restore_rng_state, seed_everything
from engine.run_checkpoint import (
    LAST_NAME,
    TrainingState,
    check_training_checkpoint,
    environment_differences,
    record_validation,
    resume_training,
    run_environment,
    training_payload,
    write_epoch_checkpoints,
)
from engine.text_log import close_logger, setup_logger
from engine.train_log import RunLog, prediction_panel
from evaluation import cli
from evaluation.metrics import ConfusionMatrix, format_table, metrics_summary
from loss import get_loss
from network.options import ResolvedModel, add_model_flags, resolve_model_options
from network.resnet_d import fill_imagenet_trunk
from network.zoo import WeightsError, apply_weights_flag
from utils.atomic import exit_on_write_error
from utils.checkpoint import (
    CheckpointFileError,
    CheckpointMismatchError,
    checkpoint_class_table,
    fill_model,
    read_checkpoint,
    read_class_table,
    unwrap_model,
)

AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# Numeric flags and the smallest value each accepts (None = not given, where the flag is optional).
FLAG_MINIMUM = {"crop_size": 1, "bs_mult_val": 1, "num_workers": 0, "max_epoch": 1, "print_freq": 1, "val_freq": 1,
                "thicky": 1, "class_uniform_tile": 1, "pre_size": 1, "stop_after": 1, "momentum": 0,
                "weight_decay": 0, "edge_weight": 0, "seg_weight": 0}
NUM_VAL_PANELS = 4
# Flags that say how to run, not what to train: left out of config.yaml (so that ``--config that/config.yaml``
# repeats a run without resuming or stopping it) and of the resume consistency check.
RUN_CONTROL_FLAGS = {"resume", "stop_after", "config", "overrides", "overwrite", "num_workers", "device", "local_rank",
                     "trusted_pickle"}


# The flags.

def build_parser() -> argparse.ArgumentParser:
    """train.py's flags: the original's names and meanings, plus native AMP, resume and config files."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train PFNet (PointFlow, CVPR 2021) or a baseline. Launch with torchrun for several GPUs or "
                    "machines.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="iSAID",
                      help=f"{names_text()}; root from the configuration's DATASET section")
    data.add_argument("--dataset_spec", default=None,
                      help="with --dataset custom: YAML description of your dataset (docs/data_custom.md); root "
                           "from DATASET.CUSTOM_DIR")
    data.add_argument("--cv", type=int, default=0, help="cross-validation split; the aerial datasets have one (0)")
    data.add_argument("--val_split", default=None,
                      help=f"split validated during training (default as the original: {val_splits_text()})")
    data.add_argument("--crop_size", type=int, default=720, help="training patch size (resize or crop, see --with_aug)")
    data.add_argument("--with_aug", action="store_true",
                      help="Potsdam/Vaihingen: random scale in [--scale_min, --scale_max] + random crop instead of "
                           "a resize")
    data.add_argument("--scale_min", type=float, default=1.0, help="smallest random scale (with --with_aug)")
    data.add_argument("--scale_max", type=float, default=1.0, help="largest random scale (with --with_aug)")
    data.add_argument("--pre_size", type=int, default=None,
                      help="with --with_aug: scale the shorter side to this before the random scale")
    data.add_argument("--color_aug", type=float, default=0.0, help="colour jitter strength (0 = off, as the original)")
    data.add_argument("--gblur", action=argparse.BooleanOptionalAction, default=True,
                      help="random Gaussian blur of every training image (always on in the original)")
    data.add_argument("--thicky", type=int, default=8, help="thickness in pixels of the boundary target (edge loss)")
    data.add_argument("--class_uniform_pct", type=float, default=0.0,
                      help="share of each epoch drawn around class centroids, only with --class_uniform_sampling "
                           "(in the original it had no effect: its datasets never built class-uniform epochs)")
    data.add_argument("--class_uniform_tile", type=int, default=1024, help="tile side for the class centroids")
    data.add_argument("--class_uniform_sampling", action="store_true",
                      help="turn on class-uniform sampling (not part of the published recipe, which saw plain "
                           "shuffled patches)")
    data.add_argument("--bs_mult", type=int, default=4, help="training batch per process (per GPU); at least 2")
    data.add_argument("--bs_mult_val", type=int, default=1, help="validation batch per process")
    cli.add_num_workers_argument(data, "per training process (validation uses half as many)")

    model = add_model_flags(parser)
    model.add_argument("--pretrained", default=None,
                       help="ImageNet trunk weights (the original's pretrained_models/resnet50-deep.pth); "
                            "default: random initialisation")
    model.add_argument("--activation_checkpointing", action="store_true",
                       help="recompute the activations of layer0-layer2 in the backward pass: less GPU memory, "
                            "same result, a few percent more compute")
    model.add_argument("--syncbn", action="store_true",
                       help="synchronised BatchNorm across GPU processes (plain BatchNorm on the CPU)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--lr", type=float, default=0.002, help="base learning rate")
    optim.add_argument("--lr_schedule", default="poly", choices=["poly", "scl-poly"],
                       help="per-epoch LR factor, stepped at the top of each epoch as in the original: epoch e "
                            "trains at lr * (1 - (e + 1) / max_epoch) ** poly_exp, so the last epoch at LR 0")
    optim.add_argument("--poly_exp", type=float, default=1.0, help="poly exponent")
    optim.add_argument("--repoly", type=float, default=1.5, help="scl-poly: exponent of the restarted poly")
    optim.add_argument("--rescale", type=float, default=1.0, help="scl-poly: LR factor at the restart, in (0, 1]")
    optim.add_argument("--rlx_off_epoch", type=int, default=-1, help="scl-poly: epoch of the restart")
    optim.add_argument("--max_epoch", type=int, default=180,
                       help="number of epochs; with --resume, a larger value continues a run on the schedule of "
                            "the new length")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    optim.add_argument("--weight_decay", type=float, default=1e-4, help="SGD weight decay (all parameters)")
    optim.add_argument("--amp", default="off", choices=sorted(AMP_DTYPES),
                       help="mixed precision: fp16 (with a gradient scaler) or bf16; off = float32")
    optim.add_argument("--fp16", action="store_true", help="the original's apex AMP flag: same as --amp fp16")
    optim.add_argument("--seed", type=int, default=0, help="random seed (process r uses seed + r)")
    optim.add_argument("--deterministic", action="store_true",
                       help="deterministic algorithms (bit-exact reruns and resumes; slower on GPUs)")
    optim.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")

    losses = parser.add_argument_group("loss")
    losses.add_argument("--joint_edge_loss_pfnet", action="store_true",
                        help="PFNet's loss: segmentation loss + class-balanced BCE on the three edge maps (models "
                             "without edge maps train on the segmentation loss alone, with a note)")
    losses.add_argument("--edge_weight", type=float, default=1.0, help="weight of each edge term")
    losses.add_argument("--seg_weight", type=float, default=1.0, help="weight of the segmentation term (joint loss)")
    losses.add_argument("--ohem", action="store_true", help="OHEM cross-entropy (thresh 0.7, min_kept 10000)")

    io = parser.add_argument_group("checkpoints and logs")
    io.add_argument("--exp", default="default", help="experiment folder under --ckpt and --tb_path")
    io.add_argument("--ckpt", default="logs/ckpt", help="checkpoint root: runs go to CKPT/EXP/DATASET-ARCH")
    io.add_argument("--tb_path", default="logs/tb", help="TensorBoard root: TB_PATH/EXP/DATASET-ARCH")
    io.add_argument("--snapshot", default=None, help="initial weights (a checkpoint or a state_dict)")
    io.add_argument("--weights", default=None, metavar="NAME",
                    help="named weights (python -m network.zoo list), downloaded once and verified: a checkpoint "
                         "entry is --snapshot (fine-tuning; --snapshot_partial for other classes), an ImageNet "
                         "entry (resnet50_deep.imagenet, resnet101_deep.imagenet) is --pretrained")
    io.add_argument("--trusted-pickle", dest="trusted_pickle", action="store_true",
                    help="read --snapshot / --resume / --pretrained files that hold arbitrary pickled Python "
                         "objects (legacy checkpoints); this can run code stored in the file, so only for files "
                         "you trust")
    io.add_argument("--snapshot_partial", action="store_true",
                    help="load only the --snapshot tensors whose shapes fit (e.g. another class count)")
    io.add_argument("--allow_class_mismatch", action="store_true",
                    help="start from a --snapshot trained for other class names than --dataset's (without "
                         "--snapshot_partial, such a start is refused)")
    io.add_argument("--restore_optimizer", action="store_true", help="also load the optimizer state of --snapshot")
    io.add_argument("--resume", default=None,
                    help="continue a run exactly from its last.pth (weights, optimizer, schedule, RNG, best record); "
                         "model flags not given are read from it")
    io.add_argument("--stop_after", type=int, default=None,
                    help="stop after this many epochs of this run, as if interrupted (continue with --resume)")
    io.add_argument("--overwrite", action="store_true", help="start afresh in a run folder that has a last.pth")
    io.add_argument("--val_freq", "--eval_freq", type=int, default=1,
                    help="validate when epoch %% val_freq == 0, and after the last epoch")
    io.add_argument("--print_freq", type=int, default=5, help="iterations between log records")

    add_config_flags(parser, "train.py")

    original = parser.add_argument_group("accepted for the original's scripts (no effect)")
    original.add_argument("--max_cu_epoch", type=int, default=100000, help="the original's class-uniform epoch limit")
    original.add_argument("--sgd", action="store_true", default=True, help="SGD is the only optimiser")
    original.add_argument("--aux", action="store_true", help="the models here have no auxiliary head")
    original.add_argument("-wb", "--wt_bound", type=float, default=1.0,
                          help="class-weight bound of losses these models do not use")
    original.add_argument("--apex", action="store_true",
                          help="apex DDP is replaced by torch DDP under torchrun; it does not turn on mixed "
                               "precision: choose that with --amp (--fp16 = --amp fp16)")
    original.add_argument("--local_rank", "--local-rank", type=int, default=None,
                          help="passed by the deprecated torch.distributed.launch (use torchrun, which sets "
                               "LOCAL_RANK)")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, EasyDict, list[str]]:
    """Flags after the experiment file and overrides, this run's configuration, and notes about mapped flags.

    Raises:
        SystemExit: (argparse) on bad flags, with a message naming the file, override or flag at fault.
    """
    parser = build_parser()
    args, config = parse_with_config(parser, argv)
    return args, config, check_args(parser, args, config)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace, config: EasyDict) -> list[str]:
    """Validate flag combinations; map the original's apex flags. Returns notes to print."""
    notes = []
    if args.fp16:
        notes.append("--fp16 (apex AMP in the original) -> native mixed precision, --amp fp16")
        args.amp = "fp16"
    if args.apex:
        notes.append("--apex: apex is not needed; under torchrun the processes use torch DistributedDataParallel "
                     "(the original's --apex selected apex DDP, its scripts trained in float32). --apex does not "
                     "choose the precision: mixed precision is --amp fp16 or --amp bf16 (the original's --fp16 "
                     f"maps to --amp fp16); this run uses --amp {args.amp}")
    if args.class_uniform_pct and not args.class_uniform_sampling:
        notes.append("--class_uniform_pct: no effect, as in the original (its aerial datasets never built "
                     "class-uniform epochs); add --class_uniform_sampling to sample by class")
    if args.class_uniform_sampling and not 0.0 < args.class_uniform_pct <= 1.0:
        parser.error("--class_uniform_sampling needs --class_uniform_pct in (0, 1], e.g. 0.5")
    if args.aux:
        notes.append("--aux: no effect (the models have no auxiliary head; the original ignored it with the joint "
                     "loss)")
    if args.bs_mult < 2:
        parser.error("--bs_mult must be at least 2: the PSP module's 1x1 bin is batch-normalised per process")
    for name, lowest in FLAG_MINIMUM.items():
        value = getattr(args, name)
        if value is not None and not value >= lowest:
            parser.error(f"--{name} must be at least {lowest}, got {value}")
    if not args.lr > 0:
        parser.error(f"--lr must be a positive learning rate, got {args.lr}")
    if not 0 <= args.cv < config.DATASET.CV_SPLITS:
        parser.error(f"--cv {args.cv} is outside [0, {config.DATASET.CV_SPLITS})")
    try:
        datasets.dataset_class(args.dataset, args.dataset_spec)
    except (KeyError, ValueError) as error:
        parser.error(f"--dataset {args.dataset!r}: {error.args[0]}")
    if args.arch is not None:
        try:
            network.model_entry(args.arch)
        except KeyError as error:
            parser.error(f"--arch: {error.args[0]}")
    if args.resume and (args.snapshot or args.weights):
        parser.error("--resume continues a run with its own weights; leave out --snapshot / --weights")
    try:
        schedule_factor(args)
    except ValueError as error:
        parser.error(str(error))
    return notes


def schedule_factor(args: argparse.Namespace):
    """The LR factor function of the flags (see ``engine.optim.lr_factor``)."""
    return lr_factor(args.lr_schedule, max_epoch=args.max_epoch, poly_exp=args.poly_exp,
                     rescale_epoch=args.rlx_off_epoch, rescale=args.rescale, repoly=args.repoly)


def run_name(args: argparse.Namespace) -> str:
    """Run folder name: dataset and the architecture's last dotted component, e.g. ``iSAID-pfnet_r50``."""
    return f"{args.dataset}-{args.arch.rsplit('.', 1)[-1]}"


def flag_values(args: argparse.Namespace) -> dict:
    """The flags that define the run, without RUN_CONTROL_FLAGS (for config.yaml and the resume check)."""
    return {key: value for key, value in vars(args).items() if key not in RUN_CONTROL_FLAGS}


class StartError(Exception):
    """A run that cannot start as asked; ``main`` prints the message and exits with status 2."""


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


@dataclass
class Parts:
    """The objects one epoch works on."""

    model: nn.Module
    criterion: nn.Module
    val_criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_loader: DataLoader
    val_loader: DataLoader
    dataset_cls: type


# The parts of a run.

def resolve_model(args: argparse.Namespace, resume_checkpoint: dict | None) -> ResolvedModel:
    """The arch and model options (flags, else the --resume checkpoint's, else the registry's); written back
    into ``args`` so that config.yaml and the checkpoints record the values the run really uses."""
    resolved = resolve_model_options(args, resume_checkpoint.get("config") if resume_checkpoint else None,
                                     str(args.resume))
    args.arch = resolved.arch
    for name, value in resolved.options.items():
        setattr(args, name, value)
    return resolved


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


def uses_edge_loss(run: Run) -> bool:
    """--joint_edge_loss_pfnet for a model whose training forward returns edge maps (PFNet); other models
    train on the segmentation loss alone."""
    if not run.args.joint_edge_loss_pfnet:
        return False
    if network.model_entry(run.args.arch).edge_outputs:
        return True
    run.log.info(f"--joint_edge_loss_pfnet: {run.args.arch} has no edge maps; training on the segmentation loss alone")
    return False


def build_datasets(args: argparse.Namespace, config: EasyDict, with_edge: bool):
    """Training dataset (with the boundary target for the edge loss) and validation dataset."""
    root = dataset_root(config, args.dataset)
    dataset_cls = datasets.dataset_class(args.dataset, args.dataset_spec)
    train_transform = transforms.build_train_transform(
        dataset_cls, args.crop_size, scale_min=args.scale_min, scale_max=args.scale_max, with_aug=args.with_aug,
        color_aug=args.color_aug, gaussian_blur=args.gblur, pre_size=args.pre_size)
    train_set = dataset_cls(root, "train", joint_transform=train_transform, with_edge=with_edge,
                            edge_thickness=args.thicky)
    val_split = args.val_split or dataset_cls.val_split
    val_set = dataset_cls(root, val_split, joint_transform=transforms.build_eval_transform(dataset_cls, args.crop_size))
    return train_set, val_set


def build_train_sampler(args: argparse.Namespace, ctx: DistContext, train_set) -> Sampler:
    """The original's sampler (permutation seeded by the epoch, wrap-around padding, rank r takes every
    world-th index), or with --class_uniform_sampling the class-uniform sampler, sharded the same way."""
    if args.class_uniform_sampling:
        return ClassUniformSampler(train_set, class_uniform_pct=args.class_uniform_pct,
                                   class_uniform_tile=args.class_uniform_tile, seed=args.seed,
                                   rank=ctx.rank, world_size=ctx.world_size)
    return DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed,
                              drop_last=False)


def build_loaders(args: argparse.Namespace, ctx: DistContext, train_set, val_set) -> tuple[DataLoader, DataLoader]:
    """Training loader with ``drop_last`` (as the original); validation: rank r scores images r, r + world, ...
    (none dropped or repeated)."""
    pin = ctx.device.type == "cuda"
    train_loader = DataLoader(train_set, batch_size=args.bs_mult, sampler=build_train_sampler(args, ctx, train_set),
                              drop_last=True, num_workers=args.num_workers, pin_memory=pin)
    if len(train_loader) == 0:
        raise StartError(f"{len(train_set)} training images give no full batch of {args.bs_mult} per process "
                         f"over {ctx.world_size} processes; lower --bs_mult")
    val_shard = Subset(val_set, range(ctx.rank, len(val_set), ctx.world_size))
    val_loader = DataLoader(val_shard, batch_size=args.bs_mult_val, shuffle=False,
                            num_workers=args.num_workers // 2, pin_memory=pin)
    return train_loader, val_loader


def build_model(args: argparse.Namespace, ctx: DistContext, num_classes: int, log: logging.Logger,
                pretrained: dict | None = None) -> nn.Module:
    """The model on the CPU with the resolved options (``args.arch`` and its options, see :func:`resolve_model`):
    ImageNet trunk from ``pretrained`` (the --pretrained checkpoint, read), SyncBN, activation checkpointing.

    Raises:
        StartError: the --pretrained tensors do not fit the trunk.
    """
    sync = args.syncbn and ctx.device.type == "cuda" and ctx.is_distributed
    if args.syncbn and not sync:
        log.info("--syncbn: plain BatchNorm (synchronised BatchNorm needs several GPU processes)")
    options = {name: getattr(args, name) for name in network.model_defaults(args.arch)}
    model = network.get_model(args.arch, num_classes, norm_layer=nn.SyncBatchNorm if sync else nn.BatchNorm2d,
                              **options)
    if pretrained is not None:
        try:
            fill_imagenet_trunk(model, pretrained["state_dict"], args.pretrained)
        except RuntimeError as error:
            raise StartError(f"--pretrained: {error}") from None
    if args.activation_checkpointing:
        network.enable_activation_checkpointing(model)
    if sync:
        log.info("synchronised BatchNorm (torch.nn.SyncBatchNorm); head.fpn_out and head.conv_last keep plain "
                 "BatchNorm2d as in the original")
    if args.pretrained is None and args.snapshot is None and args.resume is None:
        log.info("training from random initialisation (the paper's recipe starts from ImageNet weights: "
                 "--pretrained pretrained_models/resnet50-deep.pth)")
    log.info(f"{args.arch}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    return model


def wrap_model(model: nn.Module, ctx: DistContext, with_edge: bool) -> nn.Module:
    """Move to the device; wrap in DDP for several processes. Without the edge loss the edge heads get
    no gradient, so DDP must look for unused parameters."""
    model = model.to(ctx.device)
    if not ctx.is_distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=not with_edge)


def build_optimisation(args: argparse.Namespace, ctx: DistContext, model: nn.Module, snapshot: dict | None):
    """SGD (optionally with the --snapshot's state), the per-epoch LR schedule and the gradient scaler."""
    optimizer = build_sgd(model, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    if snapshot is not None and args.restore_optimizer:
        if "optimizer" not in snapshot:
            raise StartError(f"--restore_optimizer: {args.snapshot} holds no optimizer state")
        optimizer.load_state_dict(snapshot["optimizer"])
    scheduler = build_scheduler(optimizer, schedule_factor(args))
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=args.amp == "fp16")
    return optimizer, scheduler, scaler


def build_parts(run: Run, checkpoints: StartCheckpoints) -> Parts:
    """Datasets (checked: :func:`check_training_data`), loaders, model (with the weights of the --snapshot and
    --pretrained ``checkpoints``), criteria and optimisation of ``run``."""
    args, log = run.args, run.log
    with_edge = uses_edge_loss(run)
    train_set, val_set = build_datasets(args, run.config, with_edge)
    check_training_data(args, train_set, val_set)
    dataset_cls = type(train_set)
    train_loader, val_loader = build_loaders(args, run.ctx, train_set, val_set)
    log.info(f"{len(train_set)} training images ({len(train_loader)} iterations per epoch), {len(val_set)} validation")
    model = build_model(args, run.ctx, dataset_cls.num_classes, log, checkpoints.pretrained)
    snapshot = checkpoints.snapshot
    if snapshot is not None:
        snapshot = fill_model(model, snapshot, args.snapshot, strict_shapes=not args.snapshot_partial,
                              classifier_key=network.model_entry(args.arch).classifier_key)
        log.info(f"weights from {args.snapshot} ({len(snapshot['skipped'])} tensors skipped)")
    model = wrap_model(model, run.ctx, with_edge)
    criterion, val_criterion = get_loss(joint_edge_loss_pfnet=with_edge, ohem=args.ohem,
                                        edge_weight=args.edge_weight, seg_weight=args.seg_weight,
                                        ignore_index=dataset_cls.ignore_label)
    optimizer, scheduler, scaler = build_optimisation(args, run.ctx, model, snapshot)
    return Parts(model, criterion, val_criterion, optimizer, scheduler, scaler, train_loader, val_loader,
                 dataset_cls)


def check_resume_config(saved: dict, current: dict, log) -> None:
    """Warn about flags or cfg values that differ from those the resumed run was started with."""
    changed = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
    for key in changed:
        log.warning(f"--resume: {key} was {saved.get(key)!r} in the checkpoint, now {current.get(key)!r}")


def resume(run: Run, parts: Parts, checkpoint: dict) -> TrainingState:
    """Restore a --resume checkpoint (already read), this process's RNG streams included."""
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


# One epoch.

def progress_disabled(ctx: DistContext) -> bool | None:
    """tqdm's ``disable``: bars on rank 0 when it writes to a terminal (None = tqdm decides), else off."""
    return None if ctx.is_main else True


def train_one_epoch(run: Run, parts: Parts, state: TrainingState, epoch: int) -> dict[str, float]:
    """One pass over the training loader; returns the epoch's mean loss terms (averaged over processes).

    Each batch holds ``image`` float (N, 3, H, W) normalised, ``mask`` int64 (N, H, W) class ids (255 ignored)
    and, with the edge loss, ``edge`` float (N, 1, H, W) boundary targets; N is --bs_mult. The model
    returns logits (N, K, H, W) (PFNet in training mode also three edge logits (N, 1, H, W)); the criterion
    returns scalar terms. The loss terms are logged every --print_freq iterations.
    """
    args, ctx, model, optimizer, scaler = run.args, run.ctx, parts.model, parts.optimizer, parts.scaler
    loader = parts.train_loader
    model.train()
    amp_dtype = AMP_DTYPES[args.amp]
    totals: dict[str, float] = {}
    progress = tqdm(loader, desc=f"epoch {epoch}", disable=progress_disabled(ctx), dynamic_ncols=True, leave=False)
    tick = time.perf_counter()
    for iteration, batch in enumerate(progress):
        images = batch["image"].to(ctx.device, non_blocking=True)
        masks = batch["mask"].to(ctx.device, non_blocking=True)
        edges = batch["edge"].to(ctx.device, non_blocking=True) if "edge" in batch else None
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(ctx.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(images)
        terms = parts.criterion(outputs, masks, edges)
        loss = sum(terms.values())
        if not scaler.is_enabled() and not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}, iteration {iteration}: "
                                     f"{ {name: value.item() for name, value in terms.items()} }")
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        state.global_step += 1

        values = mean_over_processes({"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}, ctx)
        for name, value in values.items():
            totals[name] = totals.get(name, 0.0) + value
        now = time.perf_counter()
        images_per_s = images.shape[0] * ctx.world_size / max(now - tick, 1e-9)
        tick = now
        lr = optimizer.param_groups[0]["lr"]
        progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
        if iteration % args.print_freq == 0:
            record = {"epoch": epoch, "iter": iteration + 1, "iters": len(loader), **values, "lr": lr,
                      "images_per_s": images_per_s}
            run.run_log.record("train", state.global_step, record)
            run.log.info(f"[epoch {epoch}] [iter {iteration + 1} / {len(loader)}] "
                         + " ".join(f"[{k} {v:.5f}]" for k, v in values.items())
                         + f" [lr {lr:.6f}] [{images_per_s:.1f} img/s]")
    return {name: total / len(loader) for name, total in totals.items()}


def mean_over_processes(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, float]:
    """Average scalar tensors over all processes (one all-reduce) and return Python floats."""
    stacked = torch.stack([value.float().reshape(()) for value in values.values()])
    all_reduce_sum(stacked)
    return dict(zip(values, (stacked / ctx.world_size).tolist()))


@torch.no_grad()
def validate(run: Run, parts: Parts):
    """Score the (sharded) validation set with the shared confusion-matrix code.

    Each batch holds ``image`` float (N, 3, H, W) and ``mask`` int64 (N, H, W) (255 ignored); the model
    gives logits (N, K, H, W), their argmax (N, H, W) feeds the (K, K) confusion matrix, which is summed
    over the processes with the loss sum and the labelled-pixel count.

    Returns:
        ``(summary, val_loss, panels)``: :func:`evaluation.metrics.metrics_summary` of the all-reduced matrix,
        the cross-entropy per labelled pixel over all processes, and (on rank 0) up to NUM_VAL_PANELS
        image/truth/prediction panels.
    """
    ctx, dataset_cls = run.ctx, parts.dataset_cls
    bare = unwrap_model(parts.model)
    bare.eval()
    amp_dtype = AMP_DTYPES[run.args.amp]
    confusion = ConfusionMatrix(dataset_cls.num_classes, device=ctx.device)
    loss_and_pixels = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    panels = []
    for batch in tqdm(parts.val_loader, desc="validating", disable=progress_disabled(ctx), dynamic_ncols=True,
                      leave=False):
        images = batch["image"].to(ctx.device, non_blocking=True)
        masks = batch["mask"].to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = bare(images)
        logits = logits.float()
        loss_and_pixels[0] += parts.val_criterion(logits, masks).double()
        loss_and_pixels[1] += (masks != dataset_cls.ignore_label).sum()
        predictions = logits.argmax(dim=1)
        confusion.update(predictions, masks)
        wanted = min(len(images), NUM_VAL_PANELS - len(panels)) if ctx.is_main else 0
        panels += [prediction_panel(images[i], masks[i], predictions[i], dataset_cls.palette, dataset_cls.class_names,
                                    datasets.IMAGENET_MEAN, datasets.IMAGENET_STD) for i in range(wanted)]
    all_reduce_sum(confusion.matrix)
    all_reduce_sum(loss_and_pixels)
    val_loss = float(loss_and_pixels[0] / loss_and_pixels[1]) if loss_and_pixels[1] > 0 else math.nan
    return metrics_summary(confusion.matrix, list(dataset_cls.class_names)), val_loss, panels


def log_validation(run: Run, epoch: int, summary: dict, val_loss: float, panels) -> None:
    """Print the per-class table; record the means, per-class IoU and prediction panels."""
    run.log.info(f"validation after epoch {epoch}:\n{format_table(summary)}\nval loss {val_loss:.5f}")
    means = {key: summary[key] for key in ("miou", "mean_f1", "mean_accuracy", "overall_accuracy", "fwiou", "pixels")}
    per_class_iou = {row["name"]: row["iou"] for row in summary["classes"]}
    run.run_log.record("val", epoch, {**means, "val_loss": val_loss, "iou": per_class_iou})
    run.run_log.scalars("val_iou", per_class_iou, epoch)
    for index, panel in enumerate(panels):
        run.run_log.image(f"val_predictions/{index}", panel, epoch)


def save_epoch(run: Run, parts: Parts, state: TrainingState, epoch: int, improved: bool, stale_best: str) -> None:
    """Gather every process's RNG state; rank 0 writes last.pth (and the new best snapshot), with the dataset's
    ``class_names`` and ``palette`` so that predict.py needs no dataset to colour its masks."""
    rng_states = all_gather_objects(capture_rng_state())
    if run.ctx.is_main:
        payload = training_payload(parts.model, parts.optimizer, parts.scheduler, parts.scaler, state, epoch,
                                   rng_states, run.saved_config, run.command, run.args.seed,
                                   run_environment(run.ctx.device, run.ctx.world_size, run.args.num_workers))
        payload.update(checkpoint_class_table(parts.dataset_cls))
        write_epoch_checkpoints(run.run_dir, payload, state.best.file_name if improved else "", stale_best)
        run.log.info(f"epoch {epoch}: saved {run.run_dir / LAST_NAME}"
                     + (f" and {state.best.file_name} (best mIoU {state.best.mean_iu:.5f})" if improved else ""))
    barrier()


def run_epoch(run: Run, parts: Parts, state: TrainingState, epoch: int) -> None:
    """Step the schedule, train, validate when due, save the checkpoints."""
    args = run.args
    with warnings.catch_warnings():
        # the original steps its per-epoch schedule before the epoch's first optimizer step, on purpose
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        parts.scheduler.step()
    lr = parts.optimizer.param_groups[0]["lr"]
    run.log.info(f"epoch {epoch} of {args.max_epoch}: lr {lr:.6g}")
    parts.train_loader.sampler.set_epoch(epoch)
    epoch_losses = train_one_epoch(run, parts, state, epoch)
    # DDP gave every process rank 0's BatchNorm statistics before each forward, and each then updated
    # them with its own batch: continue (validate, checkpoint) with rank 0's, those last.pth holds
    broadcast_buffers(unwrap_model(parts.model))
    run.run_log.record("epoch", epoch, {**epoch_losses, "lr": lr})
    improved, stale_best = False, ""
    if epoch % args.val_freq == 0 or epoch == args.max_epoch - 1:
        summary, val_loss, panels = validate(run, parts)
        improved, stale_best = record_validation(state, epoch, summary["miou"])  # None: no labelled pixel
        log_validation(run, epoch, summary, val_loss, panels)
    state.next_epoch = epoch + 1
    save_epoch(run, parts, state, epoch, improved, stale_best)


# The loop.

def start(run: Run, resolved: ResolvedModel, notes: list[str],
          checkpoints: StartCheckpoints) -> tuple[Parts, TrainingState]:
    """Log the run's setup, build its parts (or resume them); once it is certain to start, write its
    configuration (:func:`config_file`)."""
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
    parts = build_parts(run, checkpoints)
    resuming = checkpoints.resume is not None
    state = resume(run, parts, checkpoints.resume) if resuming else TrainingState()
    announce_zero_lr_epochs(run, state.next_epoch)
    if ctx.is_main:
        save_config(config_file(run.run_dir, resuming=resuming), run.saved_config)
    return parts, state


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


def train(args: argparse.Namespace, config: EasyDict, notes: list[str], ctx: DistContext, command: str) -> dict:
    """Set up the run's parts (or resume them), then run the epochs (see :func:`main`)."""
    seed_everything(args.seed + ctx.rank)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS needs it
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not args.deterministic
    checkpoints = read_start_checkpoints(args)
    resolved = resolve_model(args, checkpoints.resume)
    if checkpoints.resume is not None:
        check_resume_length(args, checkpoints.resume)
    run_dir, tb_dir, created = prepare_run_dir(args, ctx)
    log = setup_logger(run_dir / "train.log", ctx.is_main)
    saved_config = effective_config(flag_values(args), config)
    run = Run(args, config, ctx, run_dir, log, RunLog(run_dir / "log.jsonl", tb_dir, enabled=ctx.is_main), command,
              saved_config)
    try:
        parts, state = start(run, resolved, notes, checkpoints)
    except BaseException as error:
        abandon_start(run, tb_dir, created, error)
        raise
    try:
        end_epoch = args.max_epoch if args.stop_after is None else min(args.max_epoch,
                                                                       state.next_epoch + args.stop_after)
        for epoch in range(state.next_epoch, end_epoch):
            run_epoch(run, parts, state, epoch)
        if end_epoch < args.max_epoch:
            log.info(f"stopped after {args.stop_after} epochs (--stop_after); "
                     f"continue with --resume {run_dir / LAST_NAME}")
    finally:
        run.run_log.close()
        close_logger(log)
    return {"run_dir": str(run_dir), "best": asdict(state.best)}


def main(argv: list[str] | None = None) -> dict:
    """Train; returns ``{"run_dir": ..., "best": {"epoch", "mean_iu", "file_name"}}``.

    Raises:
        SystemExit: status 2 with one line on stderr when the run cannot start as asked.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args, config, notes = parse_args(argv)
    ctx = init_distributed(args.device)
    try:
        return train(args, config, notes, ctx, command=" ".join(argv))
    except (StartError, FileNotFoundError, CheckpointFileError, CheckpointMismatchError, DataFileError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        close_distributed()


if __name__ == "__main__":
    with exit_on_write_error():
        main()
