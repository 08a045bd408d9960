#!/usr/bin/env python3
"""Export a checkpoint to ONNX, for deployment without PyTorch (onnxruntime, TensorRT, OpenVINO, GIS servers).

The model is rebuilt as eval.py and predict.py rebuild it: ``--arch`` and the model options from the flags,
else from the configuration saved in the checkpoint, else the arch's recommended values; the class count
from the checkpoint's classifier. The file takes ``images`` (N, 3, H, W) float32, RGB scaled to [0, 1] minus
the ImageNet mean over its std, with N, H and W dynamic, and returns ``logits`` (N, K, H, W) float32. Class
names and palette go into the ONNX metadata, chosen as predict.py chooses them: from ``--dataset`` (with
``--dataset_spec`` for ``custom``), else the class names and palette train.py saved in the checkpoint (custom
datasets included: no dataset flag needed), else the built-in dataset its saved configuration names; see
docs/deployment.md.

With ``--deepness`` the file is one the QGIS plugin Deepness runs as it is: input (N, 3, T, T) RGB in [0, 1]
with T = ``--tile_size`` fixed, the normalisation inside, output ``probabilities`` (N, K, T, T) (softmax),
and the metadata keys the plugin reads (``model_type``, ``class_names``, ``tile_size``, ``tiles_overlap``,
``resolution``, ``seg_thresh``); see ``evaluation.onnx_export.deepness_metadata`` and docs/deployment.md.

Example::

    python tools/export_onnx.py --snapshot potsdam_r50.pth --dataset Posdam --out potsdam_r50.onnx
    python tools/export_onnx.py --weights pfnet_r50.potsdam --out potsdam_r50.onnx
    python tools/export_onnx.py --snapshot potsdam_r50.pth --out potsdam_r50_int8.onnx --int8 \
        --calibration data/potsdam            # int8 for CPUs, calibrated on 32 training windows
    python predict.py --backend onnxruntime --onnx potsdam_r50.onnx --out_dir preds top_potsdam_2_13_RGB.tif
    python tools/export_onnx.py --weights pfnet_r50.potsdam --deepness --resolution_cm 5 --out potsdam_qgis.onnx
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.registry import names_text  # noqa: E402
from evaluation.cli import add_trusted_pickle_argument, add_weights_argument  # noqa: E402
from evaluation.dataset_split import dataset_table  # noqa: E402
from evaluation.onnx_export import (  # noqa: E402
    DEEPNESS_OUTPUT,
    DEFAULT_OPSET,
    MIN_SIZE,
    DeepnessModel,
    deepness_metadata,
    export_onnx,
    onnx_metadata,
)
from evaluation.onnx_quantize import (  # noqa: E402
    DEFAULT_SEED,
    DEFAULT_WINDOW,
    DEFAULT_WINDOWS,
    calibration_images,
    calibration_windows,
    quantize_onnx,
)
from evaluation.restore import restore_model, saved_class_table  # noqa: E402
from network.options import add_model_flags  # noqa: E402
from network.zoo import apply_weights_flag  # noqa: E402
from utils.atomic import temporary_path_beside  # noqa: E402
from utils.checkpoint import CheckpointMismatchError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """export_onnx.py's flags (checked in :func:`main` before the checkpoint is read)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", default=None, help="checkpoint (.pth) to export, e.g. an official PFSegNets one")
    add_weights_argument(parser, instead_of="--snapshot")
    parser.add_argument("--out", required=True, help="ONNX file to write (.onnx)")
    parser.add_argument("--dataset", default=None,
                        help=f"{names_text()}: class names and palette stored in the file (default: those saved "
                             "in the checkpoint by train.py, else its saved dataset's; none for an official "
                             "snapshot)")
    parser.add_argument("--dataset_spec", default=None,
                        help="with --dataset custom: its YAML description (not needed: the checkpoint carries "
                             "the classes)")
    parser.add_argument("--fp16", action="store_true",
                        help="float16 weights and computation behind a float32 input and output (half the file "
                             "size; for GPU runtimes: onnxruntime's CPU provider runs float32 faster)")
    parser.add_argument("--int8", action="store_true",
                        help="int8 for CPUs: onnxruntime static quantisation (QDQ, per-channel int8 weights, uint8 "
                             "activations) of the float32 export, calibrated on --calibration; the point "
                             "selection stays float32 (docs/deployment.md)")
    parser.add_argument("--calibration", default=None,
                        help="with --int8: a prepared dataset root (its train/images are used) or a folder of "
                             "training images")
    parser.add_argument("--calibration_windows", type=int, default=DEFAULT_WINDOWS,
                        help=f"with --int8: windows drawn (seed {DEFAULT_SEED}) from the calibration images "
                             f"(default {DEFAULT_WINDOWS})")
    parser.add_argument("--calibration_window", type=int, default=DEFAULT_WINDOW,
                        help=f"with --int8: side of the calibration windows in pixels, at most the image's "
                             f"(default {DEFAULT_WINDOW})")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, {DEFAULT_OPSET} or newer (default {DEFAULT_OPSET})")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    deepness = parser.add_argument_group("QGIS Deepness plugin profile")
    deepness.add_argument("--deepness", action="store_true",
                          help="write a file the QGIS plugin Deepness runs as it is: RGB in [0, 1] of a fixed "
                               "--tile_size, normalisation inside, per-class probabilities out, Deepness metadata")
    deepness.add_argument("--tile_size", type=int, default=512,
                          help="with --deepness: the tile side in pixels, fixed in the file (default 512)")
    deepness.add_argument("--tiles_overlap", type=int, default=15,
                          help="with --deepness: overlap of neighbouring tiles in percent (default 15)")
    deepness.add_argument("--resolution_cm", type=float, default=None,
                          help="with --deepness: ground resolution of the training imagery in cm per pixel (Potsdam "
                               "5, Vaihingen 9); Deepness resamples the map to it (default: not stored, set in QGIS)")
    add_trusted_pickle_argument(parser, "the checkpoint")
    add_model_flags(parser)
    return parser


def check_flags(args: argparse.Namespace) -> None:
    """Refuse flags that cannot work, before anything is read.

    Raises:
        ValueError / FileExistsError / ImportError: the message names the flag and the fix.
    """
    if not args.snapshot and not args.weights:
        raise ValueError("--snapshot is required (or --weights NAME: python -m network.zoo list)")
    out = Path(args.out)
    if out.suffix != ".onnx":
        raise ValueError(f"--out must name a .onnx file, got {out}")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if args.deepness and (args.fp16 or args.int8):
        raise ValueError("--deepness writes a float32 file: leave out --fp16 / --int8")
    if args.deepness and not (args.tile_size >= MIN_SIZE and 0 <= args.tiles_overlap < 100):
        raise ValueError(f"--tile_size must be {MIN_SIZE} or more and --tiles_overlap 0..99 percent")
    if args.resolution_cm is not None and not args.resolution_cm > 0:
        raise ValueError(f"--resolution_cm must be positive, got {args.resolution_cm}")
    if args.opset < DEFAULT_OPSET:
        raise ValueError(f"--opset must be {DEFAULT_OPSET} or newer, got {args.opset}")
    for package in ("onnx", "onnxscript"):
        if importlib.util.find_spec(package) is None:
            raise ImportError(f"exporting needs {package}: pip install onnx onnxscript")
    if not args.int8:
        if args.calibration:
            raise ValueError("--calibration is read only with --int8; add --int8 or drop --calibration")
        return
    if args.fp16:
        raise ValueError("--int8 and --fp16 exclude each other; pass one of them")
    if not args.calibration:
        raise ValueError("--int8 needs --calibration DIR: a prepared dataset root or a folder of training images")
    if args.calibration_windows < 1 or args.calibration_window < 33:
        raise ValueError("--calibration_windows must be >= 1 and --calibration_window >= 33 px")
    if importlib.util.find_spec("onnxruntime") is None:
        raise ImportError("--int8 needs onnxruntime: pip install onnxruntime")
    args.calibration_images = calibration_images(args.calibration)


def export_int8(model, args: argparse.Namespace, metadata: dict[str, str]) -> None:
    """Export ``model`` in float32 to a temporary file beside ``--out``, then write its int8 form to ``--out``."""
    float_path = temporary_path_beside(args.out)
    try:
        export_onnx(model, float_path, metadata, opset=args.opset)
        images = args.calibration_images
        print(f"calibrating on {args.calibration_windows} windows of {args.calibration_window} px from "
              f"{len(images)} images in {images[0].parent}")
        windows = calibration_windows(images, args.calibration_windows, args.calibration_window, DEFAULT_SEED)
        quantize_onnx(float_path, args.out, windows,
                      {"source": str(images[0].parent), "images": len(images), "windows": args.calibration_windows,
                       "window": args.calibration_window, "seed": DEFAULT_SEED})
    finally:
        Path(float_path).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: check the flags, rebuild the model from the checkpoint, write the ONNX file.

    Flag and checkpoint problems end in a usage error (exit status 2) before the export starts.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_flags(args)
        apply_weights_flag(args)
        named = dataset_table(args.dataset, args.dataset_spec) if args.dataset else None
        restored = restore_model(args, args.snapshot, len(named[0]) if named else None, device="cpu",
                                 trusted_pickle=args.trusted_pickle, optimize=False)
        class_names, palette = named or saved_class_table(restored.extras) or (None, None)
        if args.deepness:
            names = class_names or [f"class_{index}" for index in range(restored.num_classes)]
            metadata = deepness_metadata(class_names=names, tile_size=args.tile_size,
                                         tiles_overlap=args.tiles_overlap, resolution_cm=args.resolution_cm,
                                         arch=restored.resolved.arch, snapshot=args.snapshot)
        else:
            metadata = onnx_metadata(num_classes=restored.num_classes, arch=restored.resolved.arch,
                                     options=restored.resolved.options, snapshot=args.snapshot,
                                     class_names=class_names, palette=palette)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, ImportError, CheckpointMismatchError) as error:
        parser.error(str(error))
    for warning in restored.resolved.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"model: {restored.resolved.describe()}, {restored.num_classes} classes")
    precision = "int8" if args.int8 else "float16" if args.fp16 else "float32"
    print(f"exporting to {args.out} ({precision}, opset {args.opset}); this takes a few minutes on a 2-core CPU")
    if args.deepness:
        export_onnx(DeepnessModel(restored.model).eval(), args.out, metadata, opset=args.opset,
                    tile_size=args.tile_size, output_name=DEEPNESS_OUTPUT)
    elif args.int8:
        export_int8(restored.model, args, metadata)
    else:
        export_onnx(restored.model, args.out, metadata, fp16=args.fp16, opset=args.opset)
    size_mb = Path(args.out).stat().st_size / 2**20
    print(f"wrote {args.out} ({size_mb:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
