"""Train PFNet on iSAID, Potsdam or Vaihingen: one process, or torchrun DDP on one or several machines.

Single process (one GPU, or the CPU)::

    python train.py --dataset iSAID --arch pfnet_r50 --joint_edge_loss_pfnet --ohem ...

One machine, G GPUs (one process each; NCCL)::

    torchrun --standalone --nproc_per_node=G train.py ...

Several machines: the same command on every machine with ``--nnodes=N --node_rank=i
--rdzv_endpoint=HOST:PORT --rdzv_backend=c10d`` (see README, "Training"). CPU processes use gloo.
The official recipes are in ``scripts/pointflow/train_*.sh``.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset
from tqdm import tqdm

import datasets
import network
import transforms
from config import (
    ConfigError,
    cfg,
    dataset_root,
    effective_config,
    merge_sections,
    parse_override,
    read_experiment_file,
    save_config,
    set_dotted,
    yaml_value,
)
from datasets.registry import names_text, val_splits_text
from datasets.uniform import ClassUniformSampler
from engine.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    close_distributed,
    init_distributed,
)
from engine.optim import build_scheduler, build_sgd, lr_factor
from engine.reproducibility import capture_rng_state, restore_rng_state, seed_everything
from engine.run_checkpoint import (
    LAST_NAME,
    TrainingState,
    record_validation,
    resume_training,
    training_payload,
    write_epoch_checkpoints,
)
from engine.train_log import RunLog, close_logger, prediction_panel, setup_logger
from evaluation.metrics import ConfusionMatrix, format_table, metrics_summary
from loss import get_loss
from utils.atomic import exit_on_write_error
from utils.checkpoint import checkpoint_class_table, load_checkpoint, unwrap_model

AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}
NUM_VAL_PANELS = 4
# Flags that say how to run, not what to train: left out of config.yaml (so that ``--config that/config.yaml``
# repeats a run without resuming or stopping it) and of the resume consistency check.
RUN_CONTROL_FLAGS = {"resume", "stop_after", "config", "overrides", "overwrite", "num_workers", "device", "local_rank",
                     "trusted_pickle"}
# Flags an experiment file or --set cannot give: they name the configuration itself.
NOT_SETTABLE = {"help", "config", "overrides"}


def build_parser() -> argparse.ArgumentParser:
    """train.py's flags: the original's names and meanings, plus native AMP, resume and config files."""
    parser = argparse.ArgumentParser(
        description="Train PFNet (PointFlow, CVPR 2021). Launch with torchrun for several GPUs or machines.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="iSAID",
                      help=f"{names_text()}; root from cfg.DATASET")
    data.add_argument("--dataset_spec", default=None,
                      help="with --dataset custom: YAML description of your dataset (docs/data_custom.md); root "
                           "from cfg DATASET.CUSTOM_DIR")
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
    data.add_argument("--max_cu_epoch", type=int, default=100000, help="accepted for the original's scripts, no effect")
    data.add_argument("--bs_mult", type=int, default=4, help="training batch per process (per GPU); at least 2")
    data.add_argument("--bs_mult_val", type=int, default=1, help="validation batch per process")
    data.add_argument("--num_workers", type=int, default=4, help="data-loading worker processes per training process")

    model = parser.add_argument_group("model")
    model.add_argument("--arch", default="pfnet_r50",
                       help="pfnet_r50, pfnet_r101 or the original's "
                            "network.pointflow_resnet_with_max_avg_pool.* names")
    model.add_argument("--maxpool_size", type=int, default=9,
                       help="salient-point grid of the point-flow modules (the original train.py's default; "
                            "the official scripts use 14)")
    model.add_argument("--avgpool_size", type=int, default=9, help="edge-suppression grid of the point-flow modules")
    model.add_argument("--edge_points", type=int, default=32,
                       help="edge points per point-flow module (the official scripts use 128)")
    model.add_argument("--match_dim", type=int, default=64, help="embedding channels of the point matcher")
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
                       help="per-epoch LR factor, stepped at the top of each epoch as in the original")
    optim.add_argument("--poly_exp", type=float, default=1.0, help="poly exponent")
    optim.add_argument("--repoly", type=float, default=1.5, help="scl-poly: exponent of the restarted poly")
    optim.add_argument("--rescale", type=float, default=1.0, help="scl-poly: LR factor at the restart")
    optim.add_argument("--rlx_off_epoch", type=int, default=-1, help="scl-poly: epoch of the restart")
    optim.add_argument("--max_epoch", type=int, default=180, help="number of epochs")
    optim.add_argument("--sgd", action="store_true", default=True, help="SGD (always on, as in the original)")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    optim.add_argument("--weight_decay", type=float, default=1e-4, help="SGD weight decay (all parameters)")
    optim.add_argument("--amp", default="off", choices=sorted(AMP_DTYPES),
                       help="mixed precision: fp16 (with a gradient scaler) or bf16; off = float32")
    optim.add_argument("--apex", action="store_true",
                       help="accepted for the original's scripts: apex DDP is replaced by torch DDP under torchrun; "
                            "it does not turn on mixed precision: choose that with --amp (--fp16 = --amp fp16)")
    optim.add_argument("--fp16", action="store_true", help="the original's apex AMP flag: same as --amp fp16")
    optim.add_argument("--local_rank", "--local-rank", type=int, default=None,
                       help="passed by the deprecated torch.distributed.launch; ignored (use torchrun, which sets "
                            "LOCAL_RANK)")
    optim.add_argument("--seed", type=int, default=0, help="random seed (process r uses seed + r)")
    optim.add_argument("--deterministic", action="store_true",
                       help="deterministic algorithms (bit-exact reruns and resumes; slower on GPUs)")
    optim.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")

    losses = parser.add_argument_group("loss")
    losses.add_argument("--joint_edge_loss_pfnet", action="store_true",
                        help="PFNet's loss: segmentation loss + class-balanced BCE on the three edge maps")
    losses.add_argument("--edge_weight", type=float, default=1.0, help="weight of each edge term")
    losses.add_argument("--seg_weight", type=float, default=1.0, help="weight of the segmentation term (joint loss)")
    losses.add_argument("--ohem", action="store_true", help="OHEM cross-entropy (thresh 0.7, min_kept 10000)")
    losses.add_argument("--aux", action="store_true", help="accepted, no effect: PFNet has no auxiliary head")
    losses.add_argument("-wb", "--wt_bound", type=float, default=1.0,
                        help="accepted, no effect (the original's class-weighted losses are not used by PFNet)")

    io = parser.add_argument_group("checkpoints and logs")
    io.add_argument("--exp", default="default", help="experiment folder under --ckpt and --tb_path")
    io.add_argument("--ckpt", default="logs/ckpt", help="checkpoint root: runs go to CKPT/EXP/DATASET-ARCH")
    io.add_argument("--tb_path", default="logs/tb", help="TensorBoard root: TB_PATH/EXP/DATASET-ARCH")
    io.add_argument("--snapshot", default=None, help="initial weights (a checkpoint or a state_dict)")
    io.add_argument("--trusted-pickle", dest="trusted_pickle", action="store_true",
                    help="read --snapshot / --resume files that hold arbitrary pickled Python objects (legacy "
                         "checkpoints); this can run code stored in the file, so only for files you trust")
    io.add_argument("--snapshot_partial", action="store_true",
                    help="load only the --snapshot tensors whose shapes fit (e.g. another class count)")
    io.add_argument("--restore_optimizer", action="store_true", help="also load the optimizer state of --snapshot")
    io.add_argument("--resume", default=None,
                    help="continue a run exactly from its last.pth (weights, optimizer, schedule, RNG, best record)")
    io.add_argument("--stop_after", type=int, default=None,
                    help="stop after this many epochs of this run, as if interrupted (continue with --resume)")
    io.add_argument("--overwrite", action="store_true", help="start afresh in a run folder that has a last.pth")
    io.add_argument("--val_freq", "--eval_freq", type=int, default=1,
                    help="validate when epoch %% val_freq == 0, and after the last epoch")
    io.add_argument("--print_freq", type=int, default=5, help="iterations between log records")

    config = parser.add_argument_group("configuration")
    config.add_argument("--config", default=None,
                        help="YAML experiment file: flag names and cfg sections (see config.py); flags given "
                             "on the command line win")
    config.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides applied last: flag names (lr=0.01) or cfg keys (DATASET.ISAID_DIR=/data/iSAID)")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Flags after the experiment file and overrides, and the notes to print about mapped flags.

    Values from the ``--config`` file and ``--set`` pass the same type and ``choices`` checks as flags
    given on the command line (:func:`flag_value`).

    Raises:
        SystemExit: (argparse) on bad flags, with a message naming the file or override at fault.
    """
    parser = build_parser()
    pre_parser = argparse.ArgumentParser(add_help=False)
    pre_parser.add_argument("--config", default=None)
    config_path = pre_parser.parse_known_args(argv)[0].config
    settable = {action.dest: action for action in parser._actions if action.dest not in NOT_SETTABLE}
    try:
        if config_path:
            file_flags, cfg_sections = read_experiment_file(config_path)
            unknown = sorted(set(file_flags) - set(settable))
            if unknown:
                raise ConfigError(f"{config_path}: unknown flags {unknown}; see train.py --help for the flag names")
            parser.set_defaults(**{key: flag_value(settable[key], value, f"{config_path}: {key}")
                                   for key, value in file_flags.items()})
            merge_sections(cfg, cfg_sections, source=config_path)
        args = parser.parse_args(argv)
        for override in args.overrides:
            key, text = parse_override(override)
            if key in settable:
                setattr(args, key, flag_value(settable[key], yaml_value(text), f"--set {override}"))
            else:
                set_dotted(cfg, key, yaml_value(text), source=f"--set {override}")
    except ConfigError as error:
        parser.error(str(error))
    return args, check_args(parser, args)


def flag_value(action: argparse.Action, value: Any, source: str) -> Any:
    """A flag's value from an experiment file or ``--set``, checked as argparse checks the command line.

    Args:
        action: the flag's argparse action.
        value: the file's YAML value, or the ``--set`` text read as YAML; text given to a numeric flag is
            converted with its type (``"1e-3"``, a string in YAML, -> 0.001).
        source: where the value came from, for errors (``exp.yaml: amp`` or ``--set amp=fp8``).

    Returns:
        The value typed as the flag: bool for on/off flags, int or float for numeric flags, str otherwise
        (None where the flag's default is None).

    Raises:
        ConfigError: naming ``source``, the value and what the flag accepts.
    """
    if action.nargs == 0:  # on/off flags (store_true, --x/--no-x)
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {value!r} is not an on/off value; use true or false")
        return value
    if value is None and action.default is None:
        return None
    if action.type in (int, float):
        value = number_value(action.type, value, source)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # as the command line passes it
    elif not isinstance(value, str):
        raise ConfigError(f"{source}: {value!r} is not a text value")
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{source}: {value!r} is not allowed; choose from {sorted(action.choices)}")
    return value


def number_value(kind: type, value: Any, source: str) -> int | float:
    """``value`` as ``kind`` (int or float): text is parsed, a float is refused for an int flag."""
    name = "an integer" if kind is int else "a number"
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            raise ConfigError(f"{source}: {value!r} is not {name}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and isinstance(value, float)):
        raise ConfigError(f"{source}: {value!r} is not {name}")
    return kind(value)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
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
        notes.append("--aux: no effect (PFNet has no auxiliary head; the original ignored it with the joint loss)")
    if args.bs_mult < 2:
        parser.error("--bs_mult must be at least 2: the PSP module's 1x1 bin is batch-normalised per process")
    if not 0 <= args.cv < cfg.DATASET.CV_SPLITS:
        parser.error(f"--cv {args.cv} is outside [0, {cfg.DATASET.CV_SPLITS})")
    try:
        datasets.dataset_class(args.dataset, args.dataset_spec)
    except (KeyError, ValueError) as error:
        parser.error(f"--dataset {args.dataset!r}: {error.args[0]}")
    if args.resume and args.snapshot:
        parser.error("--resume continues a run with its own weights; leave out --snapshot")
    try:
        lr_factor(args.lr_schedule, max_epoch=args.max_epoch, poly_exp=args.poly_exp,
                  rescale_epoch=args.rlx_off_epoch, rescale=args.rescale, repoly=args.repoly)
    except ValueError as error:
        parser.error(str(error))
    return notes


def run_name(args: argparse.Namespace) -> str:
    """Run folder name: dataset and the architecture's last dotted component, e.g. ``iSAID-pfnet_r50``."""
    return f"{args.dataset}-{args.arch.rsplit('.', 1)[-1]}"


def flag_values(args: argparse.Namespace) -> dict:
    """The flags that define the run, without RUN_CONTROL_FLAGS (for config.yaml and the resume check)."""
    return {key: value for key, value in vars(args).items() if key not in RUN_CONTROL_FLAGS}


def build_datasets(args: argparse.Namespace):
    """Training dataset (with the boundary target for the edge loss) and validation dataset."""
    root = dataset_root(args.dataset)
    dataset_cls = datasets.dataset_class(args.dataset, args.dataset_spec)
    train_transform = transforms.build_train_transform(
        dataset_cls, args.crop_size, scale_min=args.scale_min, scale_max=args.scale_max, with_aug=args.with_aug,
        color_aug=args.color_aug, gaussian_blur=args.gblur, pre_size=args.pre_size)
    train_set = dataset_cls(root, "train", joint_transform=train_transform, with_edge=args.joint_edge_loss_pfnet,
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
        raise ValueError(f"{len(train_set)} training images give no full batch of {args.bs_mult} per process "
                         f"over {ctx.world_size} processes; lower --bs_mult")
    val_shard = Subset(val_set, range(ctx.rank, len(val_set), ctx.world_size))
    val_loader = DataLoader(val_shard, batch_size=args.bs_mult_val, shuffle=False,
                            num_workers=args.num_workers // 2, pin_memory=pin)
    return train_loader, val_loader


def build_model(args: argparse.Namespace, ctx: DistContext, num_classes: int, log) -> nn.Module:
    """PFNet on the CPU with the flags' options: ImageNet trunk from --pretrained, SyncBN, activation checkpointing."""
    sync = args.syncbn and ctx.device.type == "cuda" and ctx.is_distributed
    if args.syncbn and not sync:
        log.info("--syncbn: plain BatchNorm (synchronised BatchNorm needs several GPU processes)")
    model = network.get_model(
        args.arch, num_classes, maxpool_size=args.maxpool_size, avgpool_size=args.avgpool_size,
        edge_points=args.edge_points, match_dim=args.match_dim, pretrained=args.pretrained,
        norm_layer=nn.SyncBatchNorm if sync else nn.BatchNorm2d,
    )
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


def wrap_model(model: nn.Module, args: argparse.Namespace, ctx: DistContext) -> nn.Module:
    """Move to the device; wrap in DDP for several processes. Without the edge loss the edge heads get
    no gradient, so DDP must look for unused parameters."""
    model = model.to(ctx.device)
    if not ctx.is_distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=not args.joint_edge_loss_pfnet)


def progress_disabled(ctx: DistContext) -> bool | None:
    """tqdm's ``disable``: bars on rank 0 when it writes to a terminal (None = tqdm decides), else off."""
    return None if ctx.is_main else True


def train_one_epoch(model, loader, criterion, optimizer, scaler, args, ctx: DistContext, epoch: int,
                    state: TrainingState, run_log: RunLog, log) -> dict[str, float]:
    """One pass over the training loader; returns the epoch's mean loss terms (averaged over processes).

    Each batch holds ``image`` float (N, 3, H, W) normalised, ``mask`` int64 (N, H, W) class ids (255 ignored)
    and, with the edge loss, ``edge`` float (N, 1, H, W) boundary targets; N is --bs_mult. The model
    returns logits (N, K, H, W) and three edge logits (N, 1, H, W); the criterion returns scalar terms.
    The loss terms are logged every --print_freq iterations.
    """
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
        terms = criterion(outputs, masks, edges)
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
            run_log.record("train", state.global_step, record)
            log.info(f"[epoch {epoch}] [iter {iteration + 1} / {len(loader)}] "
                     + " ".join(f"[{k} {v:.5f}]" for k, v in values.items())
                     + f" [lr {lr:.6f}] [{images_per_s:.1f} img/s]")
    return {name: total / len(loader) for name, total in totals.items()}


def mean_over_processes(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, float]:
    """Average scalar tensors over all processes (one all-reduce) and return Python floats."""
    stacked = torch.stack([value.float().reshape(()) for value in values.values()])
    all_reduce_sum(stacked)
    return dict(zip(values, (stacked / ctx.world_size).tolist()))


@torch.no_grad()
def validate(model, loader, val_criterion, args, ctx: DistContext, dataset_cls):
    """Score the (sharded) validation set with the shared confusion-matrix code.

    Each batch holds ``image`` float (N, 3, H, W) and ``mask`` int64 (N, H, W) (255 ignored); the model
    gives logits (N, K, H, W), their argmax (N, H, W) feeds the (K, K) confusion matrix, which is summed
    over the processes with the loss sum and the labelled-pixel count.

    Returns:
        ``(summary, val_loss, panels)``: :func:`evaluation.metrics.metrics_summary` of the all-reduced matrix, the
        cross-entropy per labelled pixel over all processes, and (on rank 0) up to NUM_VAL_PANELS
        image/truth/prediction panels.
    """
    bare = unwrap_model(model)
    bare.eval()
    amp_dtype = AMP_DTYPES[args.amp]
    confusion = ConfusionMatrix(dataset_cls.num_classes, device=ctx.device)
    loss_and_pixels = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    panels = []
    for batch in tqdm(loader, desc="validating", disable=progress_disabled(ctx), dynamic_ncols=True, leave=False):
        images = batch["image"].to(ctx.device, non_blocking=True)
        masks = batch["mask"].to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = bare(images)
        logits = logits.float()
        loss_and_pixels[0] += val_criterion(logits, masks).double()
        loss_and_pixels[1] += (masks != dataset_cls.ignore_label).sum()
        predictions = logits.argmax(dim=1)
        confusion.update(predictions, masks)
        wanted = min(len(images), NUM_VAL_PANELS - len(panels)) if ctx.is_main else 0
        panels += [prediction_panel(images[i], masks[i], predictions[i], dataset_cls.palette,
                                    datasets.IMAGENET_MEAN, datasets.IMAGENET_STD) for i in range(wanted)]
    all_reduce_sum(confusion.matrix)
    all_reduce_sum(loss_and_pixels)
    val_loss = float(loss_and_pixels[0] / loss_and_pixels[1]) if loss_and_pixels[1] > 0 else math.nan
    return metrics_summary(confusion.matrix, list(dataset_cls.class_names)), val_loss, panels


def log_validation(run_log: RunLog, log, epoch: int, summary: dict, val_loss: float, panels) -> None:
    """Print the per-class table; record the means, per-class IoU and prediction panels."""
    log.info(f"validation after epoch {epoch}:\n{format_table(summary)}\nval loss {val_loss:.5f}")
    means = {key: summary[key] for key in ("miou", "mean_f1", "mean_accuracy", "overall_accuracy", "fwiou", "pixels")}
    per_class_iou = {row["name"]: row["iou"] for row in summary["classes"]}
    run_log.record("val", epoch, {**means, "val_loss": val_loss, "iou": per_class_iou})
    run_log.scalars("val_iou", per_class_iou, epoch)
    for index, panel in enumerate(panels):
        run_log.image(f"val_predictions/{index}", panel, epoch)


def check_resume_config(saved: dict, current: dict, log) -> None:
    """Warn about flags or cfg values that differ from those the resumed run was started with."""
    changed = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
    for key in changed:
        log.warning(f"--resume: {key} was {saved.get(key)!r} in the checkpoint, now {current.get(key)!r}")


def prepare_run_dir(args: argparse.Namespace, ctx: DistContext) -> tuple[Path, Path]:
    """Checkpoint and TensorBoard folders of this run; refuses to start afresh over an existing run."""
    run_dir = Path(args.ckpt) / args.exp / run_name(args)
    tb_dir = Path(args.tb_path) / args.exp / run_name(args)
    if (run_dir / LAST_NAME).exists() and not (args.resume or args.overwrite):
        raise SystemExit(f"{run_dir / LAST_NAME} exists: continue that run with --resume {run_dir / LAST_NAME}, "
                         f"start over with --overwrite, or pick another --exp")
    barrier()  # every process has checked before rank 0 creates anything
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, tb_dir


def main(argv: list[str] | None = None) -> dict:
    """Train; returns ``{"run_dir": ..., "best": {"epoch", "mean_iu", "file_name"}}``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, notes = parse_args(argv)
    ctx = init_distributed(args.device)
    try:
        return train(args, notes, ctx, command=" ".join(argv))
    finally:
        close_distributed()


def build_optimisation(args: argparse.Namespace, ctx: DistContext, model: nn.Module, snapshot: dict | None):
    """SGD (optionally with the --snapshot's state), the per-epoch LR schedule and the gradient scaler."""
    optimizer = build_sgd(model, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    if snapshot is not None and args.restore_optimizer:
        if "optimizer" not in snapshot:
            raise ValueError(f"--restore_optimizer: {args.snapshot} holds no optimizer state")
        optimizer.load_state_dict(snapshot["optimizer"])
    factor = lr_factor(args.lr_schedule, max_epoch=args.max_epoch, poly_exp=args.poly_exp,
                       rescale_epoch=args.rlx_off_epoch, rescale=args.rescale, repoly=args.repoly)
    scheduler = build_scheduler(optimizer, factor)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=args.amp == "fp16")
    return optimizer, scheduler, scaler


def resume(args: argparse.Namespace, ctx: DistContext, model, optimizer, scheduler, scaler, config: dict,
           log) -> TrainingState:
    """Restore a --resume checkpoint, this process's RNG streams included."""
    state, extras = resume_training(args.resume, model, optimizer, scheduler, scaler,
                                    trusted_pickle=args.trusted_pickle)
    check_resume_config(extras.get("config", {}), config, log)
    rng_states = extras["rng_states"]
    if len(rng_states) == ctx.world_size:
        restore_rng_state(rng_states[ctx.rank])
    else:
        log.warning(f"--resume: saved by {len(rng_states)} processes, now {ctx.world_size}: the random streams "
                    f"restart (the run continues, not bit-exactly)")
        seed_everything(args.seed + ctx.rank + 1000 * state.next_epoch)
    log.info(f"resuming {args.resume} at epoch {state.next_epoch} (best mIoU so far {state.best.mean_iu:.5f})")
    return state


def save_epoch(run_dir: Path, model, optimizer, scheduler, scaler, state: TrainingState, epoch: int, config: dict,
               command: str, seed: int, improved: bool, stale_best: str, ctx: DistContext, log,
               class_table: dict) -> None:
    """Gather every process's RNG state; rank 0 writes last.pth (and the new best snapshot), with the dataset's
    ``class_names`` and ``palette`` (``class_table``) so that predict.py needs no dataset to colour its masks."""
    rng_states = all_gather_objects(capture_rng_state())
    if ctx.is_main:
        payload = training_payload(model, optimizer, scheduler, scaler, state, epoch, rng_states, config, command, seed)
        payload.update(class_table)
        write_epoch_checkpoints(run_dir, payload, state.best.file_name if improved else "", stale_best)
        log.info(f"epoch {epoch}: saved {run_dir / LAST_NAME}"
                 + (f" and {state.best.file_name} (best mIoU {state.best.mean_iu:.5f})" if improved else ""))
    barrier()


def train(args: argparse.Namespace, notes: list[str], ctx: DistContext, command: str) -> dict:
    """Set up data, model and optimisation (or resume), then run the epochs (see :func:`main`)."""
    seed_everything(args.seed + ctx.rank)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS needs it
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not args.deterministic
    run_dir, tb_dir = prepare_run_dir(args, ctx)
    log = setup_logger(run_dir / "train.log", ctx.is_main)
    for note in notes:
        log.info(note)
    log.info(f"{ctx.world_size} process(es) on {ctx.device.type}; run folder {run_dir}")
    config = effective_config(flag_values(args), cfg)
    if ctx.is_main:
        save_config(run_dir / "config.yaml", config)

    train_set, val_set = build_datasets(args)
    dataset_cls = type(train_set)
    train_loader, val_loader = build_loaders(args, ctx, train_set, val_set)
    log.info(f"{len(train_set)} training images ({len(train_loader)} iterations per epoch), {len(val_set)} validation")
    model = build_model(args, ctx, dataset_cls.num_classes, log)
    snapshot = None
    if args.snapshot:
        snapshot = load_checkpoint(args.snapshot, model, strict_shapes=not args.snapshot_partial,
                                   trusted_pickle=args.trusted_pickle)
        log.info(f"weights from {args.snapshot} ({len(snapshot['skipped'])} tensors skipped)")
    model = wrap_model(model, args, ctx)
    criterion, val_criterion = get_loss(joint_edge_loss_pfnet=args.joint_edge_loss_pfnet, ohem=args.ohem,
                                        edge_weight=args.edge_weight, seg_weight=args.seg_weight,
                                        ignore_index=dataset_cls.ignore_label)
    optimizer, scheduler, scaler = build_optimisation(args, ctx, model, snapshot)
    state = resume(args, ctx, model, optimizer, scheduler, scaler, config, log) if args.resume else TrainingState()

    run_log = RunLog(run_dir / "log.jsonl", tb_dir, enabled=ctx.is_main)
    end_epoch = args.max_epoch if args.stop_after is None else min(args.max_epoch, state.next_epoch + args.stop_after)
    try:
        for epoch in range(state.next_epoch, end_epoch):
            with warnings.catch_warnings():
                # the original steps its per-epoch schedule before the epoch's first optimizer step, on purpose
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                scheduler.step()
            train_loader.sampler.set_epoch(epoch)
            epoch_losses = train_one_epoch(model, train_loader, criterion, optimizer, scaler, args, ctx, epoch,
                                           state, run_log, log)
            # DDP gave every process rank 0's BatchNorm statistics before each forward, and each then updated
            # them with its own batch: continue (validate, checkpoint) with rank 0's, those last.pth holds
            broadcast_buffers(unwrap_model(model))
            run_log.record("epoch", epoch, {**epoch_losses, "lr": optimizer.param_groups[0]["lr"]})
            improved, stale_best = False, ""
            if epoch % args.val_freq == 0 or epoch == args.max_epoch - 1:
                summary, val_loss, panels = validate(model, val_loader, val_criterion, args, ctx, dataset_cls)
                miou = summary["miou"] if summary["miou"] is not None else 0.0  # None: no labelled pixel
                improved, stale_best = record_validation(state, epoch, miou)
                log_validation(run_log, log, epoch, summary, val_loss, panels)
            state.next_epoch = epoch + 1
            save_epoch(run_dir, model, optimizer, scheduler, scaler, state, epoch, config, command, args.seed,
                       improved, stale_best, ctx, log, checkpoint_class_table(dataset_cls))
        if end_epoch < args.max_epoch:
            log.info(f"stopped after {args.stop_after} epochs (--stop_after); "
                     f"continue with --resume {run_dir / LAST_NAME}")
    finally:
        run_log.close()
        close_logger(log)
    return {"run_dir": str(run_dir), "best": asdict(state.best)}


if __name__ == "__main__":
    with exit_on_write_error():
        main()
