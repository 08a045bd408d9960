"""Evaluate a checkpoint on a dataset split: the original PFSegNets ``eval.py`` protocol and flags.

Per image, step for step as the original (the published numbers depend on it): the image is read as
RGB and, with ``--resize_scale S``, resized to S x S with PIL bicubic and its mask with PIL nearest;
ToTensor + ImageNet normalisation; logits of the whole image (``-im whole``) or of sliding windows
(``-im sliding``), averaged over ``--scales`` and the horizontal flip unless ``--no_flip``, resized to
the evaluated size (bilinear, align_corners=True); argmax; one confusion matrix over all pixels whose
label is below K (255 ignored). mIoU is the nan-mean over the classes present in truth or prediction.

Writes to the output folder (``--out_dir``, else ``{ckpt_path}/{exp_name}/{split}`` as the original):
``metrics.json``, ``metrics.csv``, ``report.html`` (+ ``report_iou.png``, ``report_samples.png``),
``eval_{date}.log`` and, with ``--dump_images``, ``rgb/``, ``pred/``, ``compose/``, ``diff/`` (and
``side_by_side/`` with ``--dump_side_by_side``).

Example: an official iSAID checkpoint with the published protocol (the model and its options come from the
checkpoint, else from the registry's recommended values: PFNet-R50, 14 / 9 / 128 / 64; the split defaults to
iSAID's val)::

    python eval.py --dataset iSAID --snapshot iSAID_pfnet_r50.pth -im whole --single_scale --no_flip \\
        --resize_scale 896 --out_dir results/isaid

The original's long form (``scripts/pointflow/test/test_iSAID_pfnet_R50.sh``, with ``--arch
network.pointflow_resnet_with_max_avg_pool.DeepR50_PF_maxavg_deeply --cv_split 0 --mode semantic ...``) runs
unchanged.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from easydict import EasyDict
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from config import add_config_flags, parse_with_config
from datasets import normalize_image
from datasets.file_check import (
    DataFileError,
    all_smaller_than,
    check_masks,
    no_labelled_pixels,
    summarize_mask_problems,
)
from datasets.registry import DATASETS, names_text, val_splits_text
from engine.cpu_precision import emulated_precision_note
from engine.distributed import process_context
from engine.text_log import LOGGER_NAME, close_logger, setup_logger
from evaluation import cli
from evaluation.dataset_split import DATASET_NAMES, default_split, load_split
from evaluation.evaluator import SegmentationEvaluator, inference_on_dataset
from evaluation.metrics import (
    erode_class_boundaries,
    format_table,
    parse_class_list,
    write_metrics_csv,
    write_metrics_json,
)
from evaluation.report import make_sample, write_report
from evaluation.restore import add_speed_flags
from evaluation.segmenter import Protocol, Segmenter
from network.options import add_model_flags
from network.zoo import apply_weights_flag
from utils.atomic import exit_on_write_error
from utils.checkpoint import CheckpointMismatchError, read_class_table
from utils.image_io import ImageReadError, read_image
from utils.palette import blend, colorize, error_map, palette_image, save_image, side_by_side

log = logging.getLogger(LOGGER_NAME)


def build_parser() -> argparse.ArgumentParser:
    """The original ``eval.py`` flags (same names and defaults unless the help says otherwise) plus ours."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("what to evaluate")
    what.add_argument("--dataset", required=True, choices=DATASET_NAMES,
                      help=f"dataset: {names_text()} (the original's spellings are accepted)")
    what.add_argument("--dataset_spec", default=None,
                      help="with --dataset custom: the YAML description of the dataset (docs/data_custom.md)")
    cli.add_dataset_dir_argument(what)
    what.add_argument("--split", default=None,
                      help=f"split folder to evaluate (default: the split the original validated on: "
                           f"{val_splits_text()})")
    what.add_argument("--snapshot", default=None, help="checkpoint file (.pth) to evaluate (or --weights)")
    cli.add_weights_argument(what, instead_of="--snapshot")
    what.add_argument("--allow_class_mismatch", action="store_true",
                      help="score a checkpoint trained on another dataset or for other classes than --dataset's "
                           "(train.py saves both in its checkpoints); without it such a run is refused")

    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--resize_scale", type=int, default=None,
                          help="resize every image (bicubic) and mask (nearest) to S x S before inference and "
                               "score at that size, as the original (official scripts: 896; Vaihingen 768)")
    protocol.add_argument("-im", "--inference_mode", choices=("whole", "sliding"), default="sliding",
                          help="whole image in one forward pass, or overlapping windows averaged (default "
                               "sliding, as the original; the official scripts use whole)")
    protocol.add_argument("--single_scale", action="store_true", help="use scale 1.0 only (ignores --scales)")
    cli.add_tta_arguments(protocol, scales="0.5,1.0,2.0", flip=True)
    cli.add_window_arguments(protocol, window=513, blend="mean")
    cli.add_band_arguments(protocol)
    protocol.add_argument("--exclude-classes", "--exclude_classes", dest="exclude_classes", default="",
                          help="class ids or names left out of the means, e.g. 'clutter' or '0' "
                               "(default: none; the published numbers include background/clutter)")
    protocol.add_argument("--eroded_masks", default=None,
                          help="folder of eroded-boundary truth masks (ISPRS 'noBoundary' converted to class ids, "
                               "255 on borders) named like the split's masks; scored instead of the full masks")
    protocol.add_argument("--boundary_ignore", type=int, default=0,
                          help="ignore truth pixels within this many pixels of a class boundary (ISPRS uses 3); "
                               "applied at the evaluated size (default 0 = off)")

    add_model_flags(parser)
    add_speed_flags(parser)

    output = parser.add_argument_group("output")
    output.add_argument("--ckpt_path", default=None,
                        help="output root; the folder is {ckpt_path}/{exp_name}/{split} (default: inferred from "
                             "--snapshot as the original)")
    output.add_argument("--exp_name", default=None,
                        help="experiment name in the output path (default: the snapshot's grandparent folder)")
    output.add_argument("--out_dir", default=None, help="write here instead of {ckpt_path}/{exp_name}/{split}")
    output.add_argument("--overwrite", action="store_true", help="replace the results of an earlier evaluation")
    output.add_argument("--dump_images", action="store_true",
                        help="write rgb/{name}_color.png (palette), pred/{name}.png (class ids), "
                             "compose/{name}_compose.png (blend) and diff/{name}_diff.png (errors)")
    output.add_argument("--dump_side_by_side", action="store_true",
                        help="also write side_by_side/{name}.png: image | ground truth | prediction")
    output.add_argument("--report_samples", type=int, default=4,
                        help="images shown in report_samples.png / report.html (default 4)")

    run = parser.add_argument_group("run")
    cli.add_run_arguments(run)
    cli.add_num_workers_argument(run, "(image and mask decoding)")
    run.add_argument("--test_mode", action="store_true", help="stop after 7 images (a quick check)")
    add_config_flags(parser, "eval.py")
    cli.add_original_flags(parser, ("mode", "cv_split", "with_f1"))
    return parser


def decode_image(path: str) -> Image.Image:
    """The decoded PIL image of ``path``.

    Raises:
        DataFileError: one line naming the file: truncated, corrupt, not an image, or over Pillow's
            decompression-bomb limit (the message gives the limit).
    """
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataFileError(f"{path}: cannot be read ({error}); is it truncated or corrupt?") from None


class ProtocolDataset(Dataset):
    """(image, mask) files loaded the original evaluation's way.

    Each item: ``image`` float32 (3, H, W) normalised, ``pixels`` uint8 (H, W, 3) (the evaluated RGB,
    for dumps), ``mask`` int64 (H, W) class ids with 255 ignored, ``name`` the image's file stem.
    """

    def __init__(self, items: list[tuple[str, str]], num_classes: int, resize_scale: int | None = None,
                 boundary_ignore: int = 0, read_options: dict | None = None):
        self.items = items
        self.num_classes = num_classes
        self.resize_scale = resize_scale
        self.boundary_ignore = boundary_ignore
        self.read_options = read_options or {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        image_path, mask_path = self.items[index]
        try:
            image = Image.fromarray(read_image(image_path, **self.read_options))
        except ImageReadError as error:
            raise DataFileError(str(error)) from None
        mask = decode_image(mask_path)
        if mask.mode not in ("L", "P", "I", "I;16"):
            raise DataFileError(f"{mask_path} is a {mask.mode} image; masks must hold class ids in one channel "
                                "(convert colour masks with the data preparation tools)")
        if image.size != mask.size:
            raise DataFileError(f"{image_path} is {image.size[0]}x{image.size[1]} but its mask {mask_path} is "
                                f"{mask.size[0]}x{mask.size[1]}")
        if self.resize_scale:
            size = (self.resize_scale, self.resize_scale)
            image = image.resize(size, Image.Resampling.BICUBIC)
            mask = mask.resize(size, Image.Resampling.NEAREST)
        pixels = np.asarray(image)
        class_ids = np.asarray(mask).astype(np.int64)
        unexpected = np.setdiff1d(np.unique(class_ids), [*range(self.num_classes), 255])
        if unexpected.size:
            raise DataFileError(f"{mask_path} holds label ids {unexpected.tolist()}, not classes "
                                f"0..{self.num_classes - 1} or 255 (ignore): is it a mask of this dataset, "
                                "converted to class ids?")
        if self.boundary_ignore:
            class_ids = erode_class_boundaries(class_ids, self.boundary_ignore)
        return {
            "image": normalize_image(pixels),
            "pixels": torch.from_numpy(pixels.copy()),
            "mask": torch.from_numpy(class_ids),
            "name": Path(image_path).stem,
        }


def output_dir(args: argparse.Namespace) -> Path:
    """``--out_dir``, else the original's ``{ckpt_path}/{exp_name}/{split}`` where, by default,
    ``exp_name`` is the snapshot's grandparent folder and ``ckpt_path`` the name of the folder above."""
    if args.out_dir:
        return Path(args.out_dir)
    if args.weights:  # named weights: {ckpt_path or results}/{exp_name or NAME}/{split}
        return Path(args.ckpt_path or "results") / (args.exp_name or args.weights) / args.split
    snapshot_dir = os.path.dirname(args.snapshot)
    experiment_dir = os.path.dirname(snapshot_dir)
    exp_name = args.exp_name if args.exp_name is not None else os.path.basename(experiment_dir)
    ckpt_path = args.ckpt_path if args.ckpt_path is not None else os.path.basename(os.path.dirname(experiment_dir))
    return Path(ckpt_path) / exp_name / args.split


def replace_masks(items: list[tuple[str, str]], mask_dir: str) -> list[tuple[str, str]]:
    """Pair each image with the same-named mask file in ``mask_dir`` (all must exist)."""
    replaced = [(image, str(Path(mask_dir) / Path(mask).name)) for image, mask in items]
    missing = [mask for _, mask in replaced if not os.path.isfile(mask)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} eroded masks missing in {mask_dir}, e.g. {missing[0]}")
    return replaced


def dump_prediction(out_dir: Path, name: str, pixels: np.ndarray, truth: np.ndarray, prediction: np.ndarray,
                    palette: np.ndarray, side_by_side_panels: bool) -> None:
    """Write the colour, class-id, blend and error images of one prediction (names after the input)."""
    colours = colorize(prediction, palette)
    overlay = blend(pixels, colours)
    save_image(out_dir / "rgb" / f"{name}_color.png", palette_image(prediction, palette))
    save_image(out_dir / "pred" / f"{name}.png", prediction.astype(np.uint8))
    save_image(out_dir / "compose" / f"{name}_compose.png", overlay)
    if (truth != 255).any():
        save_image(out_dir / "diff" / f"{name}_diff.png", error_map(overlay, prediction, truth))
    if side_by_side_panels:
        panel = side_by_side([pixels, colorize(truth, palette), colours])
        save_image(out_dir / "side_by_side" / f"{name}.png", panel)


def evaluate(args: argparse.Namespace, config: EasyDict) -> dict:
    """Run the evaluation described by ``args`` (dataset roots from ``config``); return the metrics summary
    (see ``metrics_summary``).

    Raises:
        ValueError: an out-of-range flag value (:func:`check_flags`), before any file is read; and the
            errors of the dataset, checkpoint and files named by the flags.
    """
    close_logger(log)  # until this evaluation's log exists, a failure is not written into an earlier one's
    check_flags(args)
    args.device = str(one_process_device(args.device))
    note = emulated_precision_note(args.precision, args.device)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    args.split = args.split or default_split(args.dataset)
    root = cli.dataset_dir(args, config)
    items, class_names, palette = load_split(args.dataset, args.split, root, args.dataset_spec)
    if args.eroded_masks:
        items = replace_masks(items, args.eroded_masks)
    exclude = parse_class_list(args.exclude_classes, class_names)
    protocol = Protocol.from_args(args)
    read_options = cli.band_options(args)
    sliding = protocol.window is not None
    if args.batch_size > 1 and not sliding and not args.resize_scale:
        raise ValueError("--batch_size > 1 in whole mode needs --resize_scale (images of one size)")
    out_dir = output_dir(args)
    if (out_dir / "metrics.json").exists() and not args.overwrite:
        raise FileExistsError(f"{out_dir / 'metrics.json'} exists; pass --overwrite or choose --out_dir")
    where = f"split {args.split} of {args.dataset} ({Path(root) / args.split})"
    check_split_masks(args, items, len(class_names), where)
    apply_weights_flag(args)
    segmenter = Segmenter.from_args(args, classes=(class_names, palette), protocol=protocol)
    checkpoint_extras, resolved = segmenter.extras, segmenter.resolved
    class_mismatch = describe_class_mismatch(args, checkpoint_extras, class_names)
    if class_mismatch and not args.allow_class_mismatch:
        raise ValueError(f"{class_mismatch}: evaluate it on the dataset it was trained on, or pass "
                         "--allow_class_mismatch to score it anyway")
    if sliding:
        check_window_fits(args, items, where)
    # outputs only once the dataset, the flags and the checkpoint are known to fit together
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / f"eval_{datetime.now().strftime('%Y_%m_%d_%H_%M_%S')}.log"
    setup_logger(log_path, is_main=True)
    for warning in resolved.warnings:
        log.warning("warning: %s", warning)
    log.info("snapshot %s (epoch %s), dataset %s/%s: %d images", args.snapshot,
             checkpoint_extras.get("epoch"), args.dataset, args.split, len(items))
    log.info("model: %s", resolved.describe())
    if class_mismatch:
        log.warning("warning: %s (--allow_class_mismatch): the scores compare different data or classes",
                    class_mismatch)
    log.info("mode %s, scales %s, transforms %s, resize %s%s; output %s", args.inference_mode, protocol.scales,
             protocol.transforms, args.resize_scale,
             f", window {protocol.window} stride {protocol.step} blend {protocol.blend}" if sliding else "",
             out_dir)

    dataset = ProtocolDataset(items, len(class_names), args.resize_scale, args.boundary_ignore, read_options)
    loader = DataLoader(dataset, batch_size=1 if sliding else args.batch_size, shuffle=False,
                        num_workers=args.num_workers)
    evaluator = SegmentationEvaluator(class_names, device=args.device, exclude_classes=exclude)
    samples = []

    def dump_and_sample(batch: dict, predictions: torch.Tensor) -> None:
        """Write the dumps of each image of ``batch`` (with --dump_images); keep the report's first samples."""
        for name, pixels, truth, prediction in zip(batch["name"], batch["pixels"], batch["mask"], predictions):
            pixels, truth, prediction = pixels.numpy(), truth.numpy(), prediction.cpu().numpy().astype(np.uint8)
            if args.dump_images:
                dump_prediction(out_dir, name, pixels, truth, prediction, palette, args.dump_side_by_side)
            if len(samples) < args.report_samples:
                samples.append(make_sample(name, pixels, truth, prediction))

    summary = inference_on_dataset(lambda batch: segmenter.logits(batch["image"]).argmax(1), loader, evaluator,
                                   after_batch=dump_and_sample, max_batches=7 if args.test_mode else None,
                                   desc=f"eval {args.split}")
    images_scored = evaluator.images
    log.info("results on %s/%s:\n%s", args.dataset, args.split, format_table(summary))
    extra = {
        "dataset": args.dataset, "split": args.split, "snapshot": str(args.snapshot), "weights": args.weights,
        "arch": resolved.arch,
        "checkpoint_epoch": checkpoint_extras.get("epoch"),
        "checkpoint_mean_iu": None if checkpoint_extras.get("mean_iu") is None
        else float(checkpoint_extras["mean_iu"]),
        "images": images_scored,
        "protocol": {
            "inference_mode": args.inference_mode, "scales": list(protocol.scales), **protocol.transforms,
            "blend": protocol.blend if sliding else None,
            "resize_scale": args.resize_scale, "crop_size": protocol.window,
            "stride": protocol.step, "eroded_masks": args.eroded_masks, "boundary_ignore": args.boundary_ignore,
        },
        "model_options": resolved.options,
        "model_option_sources": resolved.sources,
        "command": " ".join(sys.argv),
    }
    write_metrics_json(out_dir / "metrics.json", summary, extra)
    write_metrics_csv(out_dir / "metrics.csv", summary)
    report = write_report(out_dir, summary, palette, samples,
                          title=f"{args.dataset} {args.split}: {Path(args.snapshot).name}",
                          facts=report_facts(args, extra, resolved))
    log.info("wrote %s, %s, %s and %s", out_dir / "metrics.json", out_dir / "metrics.csv", report, log_path)
    return summary


def report_facts(args: argparse.Namespace, extra: dict, resolved) -> dict[str, str]:
    """The run's facts for the report's header: checkpoint, data, model options and their sources, protocol,
    date and command (``extra``: the run's entries of metrics.json)."""
    protocol = extra["protocol"]
    window = (f", window {protocol['crop_size']} stride {protocol['stride']} blend {protocol['blend']}"
              if protocol["crop_size"] else "")
    transforms = ", ".join(name for name in ("flip", "vflip", "rot90") if protocol.get(name)) or "none"
    epoch = extra["checkpoint_epoch"]
    return {
        "checkpoint": f"{args.weights or args.snapshot}" + (f" (epoch {epoch})" if epoch is not None else ""),
        "data": f"{args.dataset}, split {args.split}: {extra['images']} images",
        "model": resolved.describe(),
        "protocol": f"{protocol['inference_mode']}, scales {protocol['scales']}, test-time transforms "
                    f"{transforms}{window}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": extra["command"],
    }


def check_split_masks(args: argparse.Namespace, items: list[tuple[str, str]], num_classes: int, where: str) -> None:
    """Refuse masks that cannot be scored, before the model is built: every mask is decoded (ids must be
    classes or 255) and together they must hold at least one labelled pixel.

    Raises:
        DataFileError: bad masks (how many, the first files and ids), or no labelled pixel in ``where``.
    """
    check = check_masks([mask for _, mask in items], num_classes, "checking masks", args.num_workers)
    if check.problems:
        raise DataFileError(summarize_mask_problems(check.problems, len(items)))
    if check.labelled_pixels == 0:
        raise DataFileError(no_labelled_pixels(where, len(items)))


def check_window_fits(args: argparse.Namespace, items: list[tuple[str, str]], where: str) -> None:
    """Refuse a sliding window larger than every image of ``where`` at its evaluated size (``--resize_scale``,
    else the file headers).

    Raises:
        ValueError: naming the window, the largest image and what to pass.
    """
    if args.resize_scale:
        largest = (args.resize_scale, args.resize_scale) if args.resize_scale < args.window else None
    else:
        largest = all_smaller_than([image for image, _ in items], args.window)
    if largest is not None:
        raise ValueError(f"every image of the {where} is smaller than the sliding window --window {args.window} "
                         f"(the largest is {largest[1]} x {largest[0]} px): pass --inference_mode whole, or a "
                         f"--window of at most {max(largest)}")


def describe_class_mismatch(args: argparse.Namespace, extras: dict, class_names: list[str]) -> str:
    """What differs between the dataset and classes a checkpoint was trained on (train.py saves both) and
    ``--dataset``'s, or "" when they agree or the checkpoint does not say (e.g. an official snapshot)."""
    saved_classes = read_class_table(extras)
    trained_on = (extras.get("config") or {}).get("dataset")
    other_dataset = (trained_on is not None and trained_on.lower() in DATASETS
                     and DATASETS[trained_on.lower()] is not DATASETS[args.dataset.lower()])
    other_classes = saved_classes is not None and saved_classes[0] != list(class_names)
    if not (other_dataset or other_classes):
        return ""
    classes = f"the classes {saved_classes[0]}" if saved_classes is not None else "unrecorded classes"
    return (f"{args.snapshot} was trained on {trained_on or 'an unrecorded dataset'} for {classes}, but "
            f"--dataset {args.dataset} has {list(class_names)}")


def one_process_device(device: str) -> torch.device:
    """The torch device of ``--device`` (``engine.distributed.process_context``: the same names as train.py
    and predict.py); eval.py scores a split in one process.

    Raises:
        ValueError: ``--device`` names no usable device, or several processes were started (torchrun).
    """
    context = process_context(device)
    if context.is_distributed:
        raise ValueError(f"eval.py runs as one process, but torchrun started {context.world_size}: run it as "
                         "python eval.py (predict.py is the one that shares its inputs among torchrun processes)")
    return context.device


def check_flags(args: argparse.Namespace) -> None:
    """Refuse out-of-range flag values (``--scales`` even with ``--single_scale``, which ignores it).

    Raises:
        ValueError: naming the flag and the value.
    """
    cli.parse_scales(args.scales)
    if not args.snapshot and not args.weights:
        raise ValueError("--snapshot is required (or --weights NAME: python -m network.zoo list)")
    minimum = {"resize_scale": 1, "window": 1, "batch_size": 1, "num_workers": 0, "boundary_ignore": 0,
               "report_samples": 0, "stride": 1}
    for name, lowest in minimum.items():
        value = getattr(args, name)
        if value is not None and value < lowest:
            raise ValueError(f"--{name} must be at least {lowest}, got {value}")
    if args.overlap < 0:
        raise ValueError(f"--overlap (alias --sliding_overlap) must be 0 or more (a fraction, or pixels), got "
                         f"{args.overlap}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: evaluate as the flags say; problems end in a usage error (exit status 2)."""
    parser = build_parser()
    args, config = parse_with_config(parser, argv)
    try:
        evaluate(args, config)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, CheckpointMismatchError) as error:
        if log.handlers:  # the output folder and its log exist: say there that the evaluation failed
            log.error("evaluation failed: %s", error)
        parser.error(str(error))
    finally:
        close_logger(log)
    return 0


if __name__ == "__main__":
    with exit_on_write_error():
        sys.exit(main())
