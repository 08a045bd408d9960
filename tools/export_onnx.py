#!/usr/bin/env python3
"""Export a checkpoint to ONNX, for deployment without PyTorch (onnxruntime, TensorRT, OpenVINO, GIS servers).

The model is rebuilt as eval.py and predict.py rebuild it: ``--arch`` and the model options from the flags,
else from the configuration saved in the checkpoint, else the arch's recommended values; the class count
from the checkpoint's classifier. The file takes ``images`` (N, 3, H, W) float32, RGB scaled to [0, 1] minus
the ImageNet mean over its std, with N, H and W dynamic, and returns ``logits`` (N, K, H, W) float32. Class
names and palette (from ``--dataset``, else the dataset the checkpoint was trained on, when it says) go into
the ONNX metadata; see docs/deployment.md.

Example::

    python tools/export_onnx.py --snapshot potsdam_r50.pth --dataset Posdam --out potsdam_r50.onnx
    python predict.py --backend onnxruntime --onnx potsdam_r50.onnx --out_dir preds top_potsdam_2_13_RGB.tif
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.registry import names_text  # noqa: E402
from evaluation.dataset_split import dataset_table  # noqa: E402
from evaluation.onnx_export import DEFAULT_OPSET, export_onnx, onnx_metadata  # noqa: E402
from evaluation.restore import restore_model  # noqa: E402
from network.options import add_model_flags  # noqa: E402
from utils.checkpoint import CheckpointMismatchError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """export_onnx.py's flags (checked in :func:`main` before the checkpoint is read)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", required=True, help="checkpoint (.pth) to export, e.g. an official PFSegNets one")
    parser.add_argument("--out", required=True, help="ONNX file to write (.onnx)")
    parser.add_argument("--dataset", default=None,
                        help=f"{names_text()}: class names and palette stored in the file "
                             "(default: the dataset saved in the checkpoint; none for an official snapshot)")
    parser.add_argument("--fp16", action="store_true",
                        help="float16 weights and computation behind a float32 input and output (half the file "
                             "size; for GPU runtimes: onnxruntime's CPU provider runs float32 faster)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, {DEFAULT_OPSET} or newer (default {DEFAULT_OPSET})")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--trusted-pickle", dest="trusted_pickle", action="store_true",
                        help="allow arbitrary pickled objects in the checkpoint (only for files you trust)")
    add_model_flags(parser)
    return parser


def check_flags(args: argparse.Namespace) -> None:
    """Refuse flags that cannot work, before anything is read.

    Raises:
        ValueError / FileExistsError / ImportError: the message names the flag and the fix.
    """
    out = Path(args.out)
    if out.suffix != ".onnx":
        raise ValueError(f"--out must name a .onnx file, got {out}")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if args.opset < DEFAULT_OPSET:
        raise ValueError(f"--opset must be {DEFAULT_OPSET} or newer, got {args.opset}")
    for package in ("onnx", "onnxscript"):
        if importlib.util.find_spec(package) is None:
            raise ImportError(f"exporting needs {package}: pip install onnx onnxscript")


def class_table(dataset: str | None, saved_config: dict) -> tuple[list[str] | None, object]:
    """(class names, palette) of ``dataset``, else of the checkpoint's saved ``dataset``, else (None, None)."""
    name = dataset or saved_config.get("dataset")
    if not name:
        return None, None
    return dataset_table(name)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: check the flags, rebuild the model from the checkpoint, write the ONNX file.

    Flag and checkpoint problems end in a usage error (exit status 2) before the export starts.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_flags(args)
        expected_classes = len(dataset_table(args.dataset)[0]) if args.dataset else None
        restored = restore_model(args, args.snapshot, expected_classes, device="cpu",
                                 trusted_pickle=args.trusted_pickle, optimize=False)
        class_names, palette = class_table(args.dataset, restored.extras.get("config") or {})
        metadata = onnx_metadata(num_classes=restored.num_classes, arch=restored.resolved.arch,
                                 options=restored.resolved.options, snapshot=args.snapshot,
                                 class_names=class_names, palette=palette)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, ImportError, CheckpointMismatchError) as error:
        parser.error(str(error))
    for warning in restored.resolved.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"model: {restored.resolved.describe()}, {restored.num_classes} classes")
    print(f"exporting to {args.out} ({'float16' if args.fp16 else 'float32'}, opset {args.opset}); "
          "this takes a few minutes on a 2-core CPU")
    export_onnx(restored.model, args.out, metadata, fp16=args.fp16, opset=args.opset)
    size_mb = Path(args.out).stat().st_size / 2**20
    print(f"wrote {args.out} ({size_mb:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
