"""train.py's flags: their definitions, the checks of their combinations, and the flags that define a run.

The names and meanings are the original's, plus native AMP, resume, config files and the shared vocabulary of
:mod:`evaluation.cli` (``--dataset_dir``, ``--device``, ``--trusted-pickle``, ``--num_workers``).
"""
from __future__ import annotations

import argparse
import re

import torch

import datasets
import network
from config import add_config_flags
from datasets.registry import names_text, val_splits_text
from engine.distributed import resolve_device
from engine.optim import lr_factor
from evaluation import cli
from network.options import add_model_flags

AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# Numeric flags and the smallest value each accepts (None = not given, where the flag is optional).
FLAG_MINIMUM = {"crop_size": 1, "bs_mult_val": 1, "num_workers": 0, "max_epoch": 1, "print_freq": 1, "val_freq": 1,
                "thicky": 1, "class_uniform_tile": 1, "pre_size": 1, "stop_after": 1, "momentum": 0,
                "weight_decay": 0, "edge_weight": 0, "seg_weight": 0}
# Flags that say how to run, not what to train: left out of config.yaml (so that ``--config that/config.yaml``
# repeats a run without resuming or stopping it) and of the resume consistency check.
RUN_CONTROL_FLAGS = {"resume", "stop_after", "config", "overrides", "overwrite", "num_workers", "device", "local_rank",
                     "trusted_pickle"}
# The original's flags that train.py accepts for its scripts (evaluation.cli.ORIGINAL_FLAGS).
ORIGINAL_TRAIN_FLAGS = ("cv", "max_cu_epoch", "sgd", "aux", "wt_bound", "apex", "local_rank")


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
                      help=f"{names_text()}; root from --dataset_dir, else the configuration's DATASET section")
    data.add_argument("--dataset_spec", default=None,
                      help="with --dataset custom: YAML description of your dataset (docs/data_custom.md); root "
                           "from --dataset_dir or DATASET.CUSTOM_DIR")
    cli.add_dataset_dir_argument(data)
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
    cli.add_device_argument(optim)

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
    cli.add_trusted_pickle_argument(io, "the --snapshot, --resume and --pretrained files")
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

    cli.add_original_flags(parser, ORIGINAL_TRAIN_FLAGS)
    return parser


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
    try:
        resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if re.fullmatch(r"cuda:\d+", args.device):
        parser.error(f"--device {args.device}: train.py gives each process the GPU of its LOCAL_RANK; pass "
                     f"--device cuda and choose the GPUs with CUDA_VISIBLE_DEVICES (e.g. "
                     f"CUDA_VISIBLE_DEVICES={args.device[5:]})")
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


def flag_values(args: argparse.Namespace) -> dict:
    """The flags that define the run, without RUN_CONTROL_FLAGS (for config.yaml and the resume check)."""
    return {key: value for key, value in vars(args).items() if key not in RUN_CONTROL_FLAGS}


