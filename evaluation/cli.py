"""One vocabulary for the inference flags of ``eval.py`` and ``predict.py``: same concept, same flag, same meaning.

=====================  ==================================================  ==================================
concept                flag (aliases kept for the original's scripts)      meaning
=====================  ==================================================  ==================================
window                 ``--window``                                        sliding-window side in pixels
stride                 ``--stride``                                        window step in pixels
overlap                ``--overlap`` (``--sliding_overlap``)               step from the window: fraction <= 1
                                                                           or pixels > 1 (when no --stride)
blend                  ``--blend {mean,gaussian}``                         weights of overlapping windows
scales                 ``--scales``                                        test-time scales, logits averaged
flips / rotations      ``--flip``/``--hflip``, ``--no_flip``, ``--vflip``,   D4 test-time transforms
                       ``--rot90``
windows per pass       ``--batch_size``                                    windows per forward pass
dataset root           ``--dataset_dir``                                   the dataset's folder (overrides the
                                                                           configuration's DATASET section)
device                 ``--device {auto,cpu,cuda,cuda:N}``                 auto = this process's GPU if CUDA
                                                                           is available, else the CPU
checkpoint trust       ``--trusted-pickle`` (``--trusted_pickle``)          may run code from the checkpoint
data workers           ``--num_workers``                                   data-loading processes
named weights          ``--weights NAME``                                   a file of ``network.zoo`` instead of
                                                                           --snapshot (downloaded once, cached)
bands / scaling        ``--bands``, ``--scaling``                          see ``utils.image_io``
GDAL sources           ``--allow-source-root DIR`` (repeatable),            what a VRT may make GDAL read, see
                       ``--allow-network-sources``                          ``utils.source_policy``
=====================  ==================================================  ==================================

Model options and ``--precision`` are defined in ``evaluation.restore``. The defaults differ where the
protocols do (``eval.py`` follows the original: 513 px windows, horizontal flip on, uniform blend;
``predict.py``: 896 px windows, no flip, Gaussian blend); the meaning never does. ``train.py`` shares the
dataset root, device, checkpoint trust and data workers; its training patch is ``--crop_size``, a name no
inference flag uses. The flags the original's scripts pass that do nothing here are defined once, in
:data:`ORIGINAL_FLAGS`.
"""
from __future__ import annotations

import argparse
import math
import os
import re

from config import dataset_root
from evaluation.inference import BLENDS
from network.zoo import ZOO
from utils.cores import usable_cores
from utils.image_io import parse_bands, parse_scaling
from utils.source_policy import add_source_arguments, source_policy


def add_window_arguments(parser: argparse._ActionsContainer, *, window: int, blend: str) -> None:
    """``--window``, ``--stride``, ``--overlap`` (alias ``--sliding_overlap``), ``--blend``."""
    parser.add_argument("--window", type=int, default=window,
                        help=f"sliding-window size in pixels (default {window})")
    parser.add_argument("--stride", type=int, default=None,
                        help="window step in pixels, 1..--window (default: from --overlap)")
    parser.add_argument("--overlap", "--sliding_overlap", dest="overlap", type=float, default=1 / 3,
                        help="window overlap when --stride is not given: a fraction (<= 1) of the window, step = "
                             "ceil(window x (1 - overlap)), or pixels (> 1), step = window - overlap (default 1/3, "
                             "as the original's sliding mode)")
    parser.add_argument("--blend", choices=BLENDS, default=blend,
                        help=f"weights of overlapping windows: mean = uniform average (the original's), gaussian = "
                             f"weights falling off towards the window border, no seams (default {blend})")


def add_tta_arguments(parser: argparse._ActionsContainer, *, scales: str, flip: bool) -> None:
    """``--scales``, ``--flip``/``--hflip``/``--no_flip``, ``--vflip``, ``--rot90``, ``--batch_size``."""
    parser.add_argument("--scales", default=scales,
                        help=f"comma-separated test-time scales whose logits are averaged (default {scales})")
    parser.add_argument("--flip", "--hflip", dest="flip", action="store_true", default=flip,
                        help="also average the horizontally flipped image" + (" (default on)" if flip else ""))
    parser.add_argument("--no_flip", dest="flip", action="store_false",
                        help="do not average the horizontally flipped image" + ("" if flip else " (default)"))
    parser.add_argument("--vflip", action="store_true", help="also average the vertically flipped image")
    parser.add_argument("--rot90", action="store_true",
                        help="also average the 90/180/270-degree rotations (with a flip: all 8 of the dihedral "
                             "group; aerial imagery has no up). Logits are averaged before the argmax")
    parser.add_argument("--batch_size", type=int, default=1,
                        help="windows (eval whole mode: images) per forward pass (default 1)")


def add_run_arguments(parser: argparse._ActionsContainer) -> None:
    """``--device`` (:func:`add_device_argument`) and ``--trusted-pickle`` (:func:`add_trusted_pickle_argument`)."""
    add_device_argument(parser)
    add_trusted_pickle_argument(parser, "the checkpoint")


DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def device_flag(text: str) -> str:
    """argparse type of ``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as given (resolved by
    ``engine.distributed.resolve_device``).

    Raises:
        argparse.ArgumentTypeError: any other value.
    """
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device; choose from {', '.join(DEVICE_CHOICES)}")


def add_device_argument(parser: argparse._ActionsContainer) -> None:
    """``--device``: where the model runs (``engine.distributed.resolve_device``)."""
    parser.add_argument("--device", type=device_flag, default="auto", metavar="{" + ",".join(DEVICE_CHOICES) + "}",
                        help="where the model runs: auto = this process's GPU when CUDA is available (under "
                             "torchrun the GPU of its LOCAL_RANK), else the CPU (default auto)")


def add_trusted_pickle_argument(parser: argparse._ActionsContainer, files: str) -> None:
    """``--trusted-pickle`` (alias ``--trusted_pickle``) for the checkpoint ``files`` an entry point reads."""
    parser.add_argument("--trusted-pickle", "--trusted_pickle", dest="trusted_pickle", action="store_true",
                        help=f"allow arbitrary pickled objects in {files} (legacy checkpoints): this can run code "
                             "stored in the file, so only for files you trust")


def add_dataset_dir_argument(parser: argparse._ActionsContainer) -> None:
    """``--dataset_dir``: the dataset root, instead of the configuration's DATASET section (:func:`dataset_dir`)."""
    parser.add_argument("--dataset_dir", default=None,
                        help="dataset root holding {split}/images and {split}/masks (default: the configuration's "
                             "DATASET section, e.g. --set DATASET.ISAID_DIR=/data/iSAID)")


def dataset_dir(args: argparse.Namespace, config) -> str:
    """The dataset root of the parsed flags: ``--dataset_dir``, else the configuration's root of ``--dataset``.

    Raises:
        KeyError: unknown dataset name (see :func:`config.dataset_root`).
    """
    return args.dataset_dir or dataset_root(config, args.dataset)


def add_weights_argument(parser: argparse._ActionsContainer, *, instead_of: str) -> None:
    """``--weights NAME``: named weights of :mod:`network.zoo`, resolved by ``network.zoo.apply_weights_flag``."""
    parser.add_argument("--weights", default=None, metavar="NAME",
                        help=f"named weights instead of {instead_of}: {', '.join(ZOO)} (python -m network.zoo list); "
                             "downloaded once into $PFSEG_HOME (default ~/.cache/pfsegnets) and verified; the "
                             "entry also gives --arch and, when not given, --dataset")
MAX_DEFAULT_WORKERS = 8
"""Most data-loading processes given by default (more rarely speeds up decoding a batch of PNG patches)."""


def default_num_workers() -> int:
    """Data-loading worker processes per training or evaluation process: the CPU cores this process may use
    (``utils.cores.usable_cores``: a container's or ``taskset``'s limit, not the machine's), shared among the
    torchrun processes of this machine (``LOCAL_WORLD_SIZE``), at least 1 and at most MAX_DEFAULT_WORKERS."""
    cores = usable_cores()
    return min(MAX_DEFAULT_WORKERS, max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def add_num_workers_argument(parser: argparse._ActionsContainer, per: str) -> None:
    """``--num_workers``, by default :func:`default_num_workers` (``per``: what one set of workers serves)."""
    parser.add_argument("--num_workers", type=int, default=default_num_workers(),
                        help=f"data-loading worker processes {per} (default: the CPU cores this process may use, "
                             f"divided among the torchrun processes of the machine, 1 to {MAX_DEFAULT_WORKERS}; "
                             "here %(default)s)")


def add_band_arguments(parser: argparse._ActionsContainer) -> None:
    """``--bands`` and ``--scaling`` (the reader's band choice and 16-bit/float rule, ``utils.image_io``) and the
    source policy's flags (:func:`add_source_arguments`)."""
    parser.add_argument("--bands", default=None,
                        help="three 1-based bands fed as the model's channels, e.g. 4,1,2 for IR-R-G from RGB+IR "
                             "(default 1,2,3; a gray image is repeated)")
    parser.add_argument("--scaling", default="auto",
                        help="16-bit/float inputs: auto = integers within 0..255 as they are, else a per-band 2nd-98th "
                             "percentile stretch of each image, "
                             "LOW,HIGH = that range to 0..255 for every band, or a scaling.json saved beside a "
                             "prepared dataset (8-bit inputs are used as they are; default auto)")
    add_source_arguments(parser)


def parse_scales(text: str) -> tuple[float, ...]:
    """``--scales`` text such as ``"0.5,1.0"`` -> the test-time scale factors, each finite and positive.

    Raises:
        ValueError: a value is not a positive number; the message names ``--scales``.
    """
    try:
        scales = tuple(float(value) for value in text.split(","))
    except ValueError:
        scales = ()
    if not scales or not all(0 < scale < math.inf for scale in scales):
        raise ValueError(f"--scales needs comma-separated positive numbers such as 0.75,1.0, got {text!r}")
    return scales


def window_stride(window: int, stride: int | None, overlap: float) -> int:
    """The window step in pixels: ``stride``, else ``ceil(window * (1 - overlap))`` for a fraction
    ``overlap <= 1``, else ``window - int(overlap)`` (overlap in pixels), as the original ``eval.py``.

    Raises:
        ValueError: ``--window`` not positive, or a step outside ``1..window`` (a larger step would leave
            pixels uncovered); the message names the flag.
    """
    if window < 1:
        raise ValueError(f"--window must be a positive number of pixels, got {window}")
    if stride is None:
        if overlap < 0 or not math.isfinite(overlap):
            raise ValueError(f"--overlap must be a fraction in [0, 1) or a pixel count > 1, got {overlap}")
        step = math.ceil(window * (1 - overlap)) if overlap <= 1 else window - int(overlap)
        if not 1 <= step <= window:
            raise ValueError(f"--overlap {overlap} leaves a window step of {step} px: give a fraction in [0, 1) or "
                             f"a pixel count below --window ({window})")
        return step
    if not 1 <= stride <= window:
        raise ValueError(f"--stride must be between 1 and --window ({window}) so windows cover every pixel, "
                         f"got {stride}")
    return stride


def band_options(args: argparse.Namespace) -> dict:
    """``bands``, ``scaling`` and ``policy`` keyword arguments of ``utils.image_io`` readers from the parsed flags.

    Raises:
        ValueError: a malformed ``--bands``, ``--scaling`` or ``--allow-source-root``; the message names the flag.
    """
    return {"bands": None if args.bands is None else parse_bands(args.bands), "scaling": parse_scaling(args.scaling),
            "policy": source_policy(args)}


def check_batch_size(batch_size: int) -> None:
    """Raises ValueError naming ``--batch_size`` unless it is at least 1."""
    if batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {batch_size}")


ORIGINAL_FLAGS: dict[str, tuple[tuple[str, ...], dict]] = {
    # train.py
    "cv": (("--cv",), {"type": int, "default": 0, "choices": (0,),
                       "help": "the original's cross-validation split: the aerial datasets have a single split, 0"}),
    "max_cu_epoch": (("--max_cu_epoch",), {"type": int, "default": 100000,
                                           "help": "the original's class-uniform epoch limit"}),
    "sgd": (("--sgd",), {"action": "store_true", "default": True, "help": "SGD is the only optimiser"}),
    "aux": (("--aux",), {"action": "store_true", "help": "the models here have no auxiliary head"}),
    "wt_bound": (("-wb", "--wt_bound"), {"type": float, "default": 1.0,
                                         "help": "class-weight bound of losses these models do not use"}),
    "apex": (("--apex",), {"action": "store_true",
                           "help": "apex DDP is replaced by torch DDP under torchrun; it does not turn on mixed "
                                   "precision: choose that with --amp (--fp16 = --amp fp16)"}),
    "local_rank": (("--local_rank", "--local-rank"), {"type": int, "default": None,
                                                      "help": "passed by the deprecated torch.distributed.launch "
                                                              "(use torchrun, which sets LOCAL_RANK)"}),
    # eval.py
    "mode": (("--mode",), {"default": "semantic", "choices": ("semantic",),
                           "help": "dataset quality; only 'semantic' exists for these datasets"}),
    "cv_split": (("--cv_split",), {"type": int, "default": None, "help": "these datasets have a single split"}),
    "with_f1": (("--with_f1",), {"action": "store_true", "help": "F1 is always reported"}),
}
"""The flags the original's scripts pass that do nothing here (or, ``--apex`` and ``--local_rank``, are replaced
by torchrun): name -> (option strings, ``add_argument`` keywords)."""


def add_original_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """The :data:`ORIGINAL_FLAGS` ``names`` in one group, "accepted for the original's scripts (no effect)".

    Raises:
        KeyError: a name that is not in ORIGINAL_FLAGS.
    """
    group = parser.add_argument_group("accepted for the original's scripts (no effect)")
    for name in names:
        option_strings, options = ORIGINAL_FLAGS[name]
        group.add_argument(*option_strings, dest=name, **options)
