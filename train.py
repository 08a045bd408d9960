"""Train a segmentation model on iSAID, Potsdam or Vaihingen: one process, or torchrun DDP on one or several machines.

Single process (one GPU, or the CPU)::

    python train.py --dataset iSAID --arch pfnet_r50 --joint_edge_loss_pfnet --ohem ...

One machine, G GPUs (one process each; NCCL)::

    torchrun --standalone --nproc_per_node=G train.py ...

Several machines: the same command on every machine with ``--nnodes=N --node_rank=i
--rdzv_endpoint=HOST:PORT --rdzv_backend=c10d`` (see docs/training.md). CPU processes use gloo.
The official recipes are in ``configs/pointflow/*.yaml`` (``scripts/train.sh CONFIG [GPUS]`` launches one).

The file reads top to bottom: setup (the flags: ``engine/train_flags.py``), the parts of a run (data, model,
optimisation), one epoch (:func:`step` per batch, validation with the evaluator eval.py uses, save), the loop
over the epochs, and ``main``. The start-up checks (checkpoints, data, run folder, resume) are in
``engine/run_start.py``.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass

import torch
from easydict import EasyDict
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset
from tqdm import tqdm

import datasets
import network
import transforms
from config import effective_config, parse_with_config, save_config
from datasets.uniform import ClassUniformSampler
from engine import run_start
from engine.distributed import (
    DistContext,
    all_gather_objects,
    barrier,
    broadcast_buffers,
    close_distributed,
    init_distributed,
)
from engine.meter import ScalarMeter
from engine.optim import build_scheduler, build_sgd
from engine.reproducibility import capture_rng_state
from engine.run_checkpoint import (
    LAST_NAME,
    TrainingState,
    record_validation,
    run_environment,
    training_payload,
    write_epoch_checkpoints,
)
from engine.run_start import Run, StartCheckpoints, StartError, resolve_model, uses_edge_loss
from engine.text_log import close_logger, setup_logger
from engine.train_flags import AMP_DTYPES, build_parser, check_args, flag_values, schedule_factor
from engine.train_log import RunLog, prediction_panel
from evaluation import cli
from evaluation.evaluator import SegmentationEvaluator, inference_on_dataset
from evaluation.metrics import format_table
from loss import get_loss
from network.options import ResolvedModel
from network.resnet_d import fill_imagenet_trunk
from utils.atomic import exit_on_write_error
from utils.checkpoint import checkpoint_class_table, fill_model, unwrap_model

NUM_VAL_PANELS = 4


# Setup.

def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, EasyDict, list[str]]:
    """Flags after the experiment file and overrides, this run's configuration, and notes about mapped flags.

    Raises:
        SystemExit: (argparse) on bad flags, with a message naming the file, override or flag at fault.
    """
    parser = build_parser()
    args, config = parse_with_config(parser, argv)
    return args, config, check_args(parser, args)


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

def build_datasets(args: argparse.Namespace, config: EasyDict, with_edge: bool):
    """Training dataset (with the boundary target for the edge loss) and validation dataset."""
    root = cli.dataset_dir(args, config)
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
    """The model on the CPU with the resolved options (``args.arch`` and its options: ``run_start.resolve_model``):
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
    """Datasets (checked: ``run_start.check_training_data``), loaders, model (with the weights of the --snapshot
    and --pretrained ``checkpoints``), criteria and optimisation of ``run``."""
    args, log = run.args, run.log
    with_edge = uses_edge_loss(run)
    train_set, val_set = build_datasets(args, run.config, with_edge)
    run_start.check_training_data(args, train_set, val_set)
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


# One epoch.

def progress_disabled(ctx: DistContext) -> bool | None:
    """tqdm's ``disable``: bars on rank 0 when it writes to a terminal (None = tqdm decides), else off."""
    return None if ctx.is_main else True


def step(parts: Parts, batch: dict, device: torch.device, amp: str) -> dict[str, torch.Tensor]:
    """One optimisation step on ``batch``: forward (under ``amp`` autocast), criterion, backward, optimizer step.

    ``batch`` holds ``image`` float (N, 3, H, W) normalised, ``mask`` int64 (N, H, W) class ids (255 ignored)
    and, with the edge loss, ``edge`` float (N, 1, H, W) boundary targets. The model returns logits
    (N, K, H, W) (PFNet in training mode also three edge logits (N, 1, H, W)).

    Returns:
        The detached scalar loss terms: ``loss`` (their sum) and the criterion's terms.

    Raises:
        FloatingPointError: the loss is not finite (without the fp16 scaler, which skips such steps).
    """
    images = batch["image"].to(device, non_blocking=True)
    masks = batch["mask"].to(device, non_blocking=True)
    edges = batch["edge"].to(device, non_blocking=True) if "edge" in batch else None
    parts.optimizer.zero_grad(set_to_none=True)
    amp_dtype = AMP_DTYPES[amp]
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        outputs = parts.model(images)
    terms = parts.criterion(outputs, masks, edges)
    loss = sum(terms.values())
    if not parts.scaler.is_enabled() and not torch.isfinite(loss):
        values = {name: value.item() for name, value in terms.items()}
        raise FloatingPointError(f"loss became {loss.item()}: {values}")
    parts.scaler.scale(loss).backward()
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    return {"loss": loss.detach(), **{name: value.detach() for name, value in terms.items()}}


def train_one_epoch(run: Run, parts: Parts, state: TrainingState, epoch: int) -> dict[str, float]:
    """One pass over the training loader (:func:`step` per batch); logs the loss terms, averaged over the
    processes, every --print_freq iterations. Returns the epoch's mean loss terms."""
    args, ctx, loader = run.args, run.ctx, parts.train_loader
    parts.model.train()
    epoch_terms = ScalarMeter(ctx.device)
    progress = tqdm(loader, desc=f"epoch {epoch}", disable=progress_disabled(ctx), dynamic_ncols=True, leave=False)
    tick = time.perf_counter()
    for iteration, batch in enumerate(progress):
        try:
            terms = step(parts, batch, ctx.device, args.amp)
        except FloatingPointError as error:
            raise FloatingPointError(f"{error} at epoch {epoch}, iteration {iteration}") from None
        state.global_step += 1
        step_terms = ScalarMeter(ctx.device)
        step_terms.update(terms)
        values = step_terms.means()
        epoch_terms.update(terms)
        now = time.perf_counter()
        images_per_s = len(batch["image"]) * ctx.world_size / max(now - tick, 1e-9)
        tick = now
        lr = parts.optimizer.param_groups[0]["lr"]
        progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
        if iteration % args.print_freq == 0:
            run.run_log.record("train", state.global_step, {"epoch": epoch, "iter": iteration + 1, "iters": len(loader),
                                                            **values, "lr": lr, "images_per_s": images_per_s})
            run.log.info(f"[epoch {epoch}] [iter {iteration + 1} / {len(loader)}] "
                         + " ".join(f"[{k} {v:.5f}]" for k, v in values.items())
                         + f" [lr {lr:.6f}] [{images_per_s:.1f} img/s]")
    return epoch_terms.means()


@torch.no_grad()
def validate(run: Run, parts: Parts):
    """Score the (sharded) validation set with the evaluator eval.py uses
    (:func:`evaluation.evaluator.inference_on_dataset`): logits (N, K, H, W) of each batch's ``image``
    (N, 3, H, W), their argmax against ``mask`` (N, H, W) (255 ignored), summed over the processes.

    Returns:
        ``(summary, val_loss, panels)``: :func:`evaluation.metrics.metrics_summary` over all processes, the
        cross-entropy per labelled pixel over all processes, and (on rank 0) up to NUM_VAL_PANELS
        image/truth/prediction panels.
    """
    ctx, dataset_cls = run.ctx, parts.dataset_cls
    bare = unwrap_model(parts.model)
    bare.eval()
    amp_dtype = AMP_DTYPES[run.args.amp]
    val_loss, panels = ScalarMeter(ctx.device, names=("val_loss",)), []

    def predict(batch: dict) -> torch.Tensor:
        images = batch["image"].to(ctx.device, non_blocking=True)
        batch["mask"] = masks = batch["mask"].to(ctx.device, non_blocking=True)  # the evaluator's copy too
        with torch.autocast(ctx.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = bare(images).float()
        val_loss.update({"val_loss": parts.val_criterion(logits, masks)}, (masks != dataset_cls.ignore_label).sum())
        return logits.argmax(dim=1)

    def collect_panels(batch: dict, predictions: torch.Tensor) -> None:
        wanted = min(len(predictions), NUM_VAL_PANELS - len(panels)) if ctx.is_main else 0
        panels.extend(prediction_panel(batch["image"][i], batch["mask"][i], predictions[i], dataset_cls.palette,
                                       dataset_cls.class_names, datasets.IMAGENET_MEAN, datasets.IMAGENET_STD)
                      for i in range(wanted))

    evaluator = SegmentationEvaluator(dataset_cls.class_names, device=ctx.device)
    summary = inference_on_dataset(predict, parts.val_loader, evaluator, after_batch=collect_panels, desc="validating",
                                   disable_progress=progress_disabled(ctx))
    return summary, val_loss.means()["val_loss"], panels


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
    configuration (:func:`engine.run_start.config_file`)."""
    run_start.announce_start(run, resolved, notes)
    parts = build_parts(run, checkpoints)
    resuming = checkpoints.resume is not None
    state = run_start.resume_run(run, parts, checkpoints.resume) if resuming else TrainingState()
    run_start.announce_zero_lr_epochs(run, state.next_epoch)
    if run.ctx.is_main:
        save_config(run_start.config_file(run.run_dir, resuming=resuming), run.saved_config)
    return parts, state


def train(args: argparse.Namespace, config: EasyDict, notes: list[str], ctx: DistContext, command: str) -> dict:
    """Set up the run's parts (or resume them), then run the epochs (see :func:`main`)."""
    run_start.seed_and_determinism(args, ctx)
    checkpoints = run_start.read_start_checkpoints(args)
    resolved = resolve_model(args, checkpoints.resume)
    if checkpoints.resume is not None:
        run_start.check_resume_length(args, checkpoints.resume)
    run_dir, tb_dir, created = run_start.prepare_run_dir(args, ctx)
    log = setup_logger(run_dir / "train.log", ctx.is_main)
    saved_config = effective_config(flag_values(args), config)
    run = Run(args, config, ctx, run_dir, log, RunLog(run_dir / "log.jsonl", tb_dir, enabled=ctx.is_main), command,
              saved_config)
    try:
        parts, state = start(run, resolved, notes, checkpoints)
    except BaseException as error:
        run_start.abandon_start(run, tb_dir, created, error)
        raise
    del checkpoints  # their tensors are in the parts now; the run does not hold the files' dicts
    try:
        end_epoch = min(args.max_epoch, state.next_epoch + (args.stop_after or args.max_epoch))
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
    except run_start.START_ERRORS as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        close_distributed()


if __name__ == "__main__":
    with exit_on_write_error():
        main()
