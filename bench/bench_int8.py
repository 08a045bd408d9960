#!/usr/bin/env python3
"""Benchmark: int8 ONNX (``tools/export_onnx.py --int8``) against float32 ONNX on the trained reference model.

The model is the tests' reference PFNet-R50 (tests/trained_models.py: pools 4 / 4, 16 edge points, trained two
epochs by train.py on synthetic Potsdam tiles), trained here into ``--work-dir`` unless ``--checkpoint`` and
``--calibration`` name another model and its training images. Both files are written by the library the tool
uses (``evaluation.onnx_export``, ``evaluation.onnx_quantize``; 32 calibration windows, seed 0), and kept in
``--work-dir`` for later runs.

Measured, with ``--threads`` intra-op threads for both sessions:

- latency at each ``--sizes`` square input (batch 1): calls alternate between the two files, so a slow spell
  on a shared machine hits both alike; median of ``--repeats`` after ``--warmup`` rounds;
- mask agreement (share of equal argmax pixels) on windows of those sizes from a held-out synthetic tile
  (seed 1, never trained on);
- mIoU of both files on the held-out data, each patch segmented whole: the calibration dataset's ``test`` split
  (the reference model's held-out tile), and two synthetic tiles of seed 1 prepared into 512 px patches.

    python bench/bench_int8.py                                    # 512² and 896², 2 threads
    python bench/bench_int8.py --checkpoint run/last.pth --calibration data/potsdam --sizes 512
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # the reference model's recipe lives in tests/trained_models.py

from bench.measure import time_alternating  # noqa: E402
from engine.cpu_precision import cpu_capability  # noqa: E402
from utils.atomic import atomic_write_bytes  # noqa: E402

HELD_OUT_SEED = 1
HELD_OUT_SIZE = 1024


def reference_model(work_dir: Path) -> tuple[Path, Path]:
    """(checkpoint, calibration images folder) of the tests' reference PFNet-R50, trained once into ``work_dir``."""
    from trained_models import PFNET_OPTIONS, make_reference_data, train_potsdam

    base = work_dir / "reference"
    found = sorted(base.glob("ckpt/pfnet_r50/*/last.pth"))
    if found:
        return found[0], base / "potsdam" / "train" / "images"
    print(f"training the reference PFNet-R50 into {base} (a few minutes)", flush=True)
    raw, root = make_reference_data(base)
    return train_potsdam(base, raw, root, "pfnet_r50", PFNET_OPTIONS).checkpoint, root / "train" / "images"


def held_out_split(work_dir: Path) -> Path:
    """Prepared root of two synthetic Potsdam tiles of seed 1 (never trained on) in 512 px patches."""
    from tools.make_synthetic_data import make_synthetic
    from tools.prepare_dataset import PrepareOptions, prepare

    root = work_dir / "held_out" / "potsdam"
    if not root.is_dir():
        raw = make_synthetic("potsdam", work_dir / "held_out" / "raw", seed=HELD_OUT_SEED, num_images=2,
                             size=HELD_OUT_SIZE)
        prepare("potsdam", raw, root, PrepareOptions(patch_size=512, stride=512, workers=1, progress=False))
    return root


def export_pair(checkpoint: Path, calibration: Path, work_dir: Path, windows: int) -> tuple[Path, Path]:
    """(float32 file, int8 file) of ``checkpoint`` in ``work_dir``, written only when missing."""
    from trained_models import restore

    from evaluation.onnx_export import export_onnx, onnx_metadata
    from evaluation.onnx_quantize import calibration_images, calibration_windows, quantize_onnx

    fp32, int8 = work_dir / "fp32.onnx", work_dir / f"int8_{windows}w.onnx"
    if not fp32.is_file():
        _, restored = restore(checkpoint)
        print(f"exporting {checkpoint} to {fp32} (minutes on a 2-core CPU)", flush=True)
        export_onnx(restored.model, fp32, onnx_metadata(num_classes=restored.num_classes, arch=restored.resolved.arch,
                                                        options=restored.resolved.options, snapshot=checkpoint))
    if not int8.is_file():
        images = calibration_images(calibration)
        quantize_onnx(fp32, int8, calibration_windows(images, windows),
                      {"source": str(calibration), "images": len(images), "windows": windows, "window": 512,
                       "seed": 0})
    return fp32, int8


def held_out_windows(root: Path, size: int) -> list[torch.Tensor]:
    """(1, 3, size, size) normalised windows of the held-out raw tiles: up to three corners per tile."""
    from datasets import normalize_image
    from utils.image_io import read_image

    found = []
    for tile in sorted((root.parent / "raw" / "2_Ortho_RGB").glob("*_RGB.tif")):
        image = normalize_image(read_image(tile))
        for top, left in ((0, 0), (HELD_OUT_SIZE - size, HELD_OUT_SIZE - size), (37, HELD_OUT_SIZE - size - 5)):
            if top >= 0 and left >= 0:
                found.append(image[None, :, top:top + size, left:left + size])
    return found


def miou(model, folders: list[Path], num_classes: int) -> float:
    """mIoU (%) of ``model`` over every prepared patch of ``folders`` (``{root}/{split}/images``, masks beside),
    each patch segmented whole."""
    from datasets import normalize_image
    from evaluation.metrics import ConfusionMatrix
    from utils.image_io import read_as_stored, read_image

    matrix = ConfusionMatrix(num_classes)
    for images in folders:
        for path in sorted(images.glob("*.png")):
            mask = read_as_stored(images.parent / "masks" / f"{path.stem}_gray_mask.png")
            logits = model(normalize_image(read_image(path))[None])
            matrix.update(logits.argmax(1), torch.from_numpy(mask.astype(np.int64))[None])
    return 100 * float(matrix.compute()["miou"])


def main(argv: list[str] | None = None) -> dict:
    """Command line: train or take the model, export both files, measure, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="model to measure (default: train the reference model)")
    parser.add_argument("--calibration", default=None,
                        help="with --checkpoint: its prepared dataset root or training images folder")
    parser.add_argument("--calibration_windows", type=int, default=32, help="calibration windows (default 32)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 896], help="square inputs (default 512 896)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of both sessions (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds, median reported (default 5)")
    parser.add_argument("--work-dir", default="/tmp/pfnet_bench_int8",
                        help="folder for the model, data and files, kept for later runs")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if bool(args.checkpoint) != bool(args.calibration):
        parser.error("--checkpoint and --calibration go together (the model and its training images)")
    from evaluation.onnx_backend import OnnxModel

    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint, calibration = ((Path(args.checkpoint), Path(args.calibration)) if args.checkpoint
                               else reference_model(work_dir))
    fp32_path, int8_path = export_pair(checkpoint, calibration, work_dir, args.calibration_windows)
    held_out = held_out_split(work_dir)
    models = {"fp32": OnnxModel(fp32_path, threads=args.threads), "int8": OnnxModel(int8_path, threads=args.threads)}
    rows = []
    for size in args.sizes:
        windows = held_out_windows(held_out, size)
        medians = time_alternating({name: functools.partial(model, windows[0]) for name, model in models.items()},
                                   args.warmup, args.repeats)
        agreements = [float((models["fp32"](window).argmax(1) == models["int8"](window).argmax(1)).float().mean())
                      for window in windows]
        rows.append({"size": size, "fp32_ms": 1e3 * medians["fp32"], "int8_ms": 1e3 * medians["int8"],
                     "speedup": medians["fp32"] / medians["int8"], "agreement_min": min(agreements),
                     "agreement_mean": statistics.mean(agreements), "windows": len(windows)})
    num_classes = models["fp32"].num_classes
    splits = {"seed-1 tiles": sorted(held_out.glob("*/images"))}
    test_split = (calibration.parent.parent if calibration.name == "images" else calibration) / "test" / "images"
    if test_split.is_dir():
        splits["test split"] = [test_split]
    scores = {split: {name: miou(model, folders, num_classes) for name, model in models.items()}
              for split, folders in splits.items()}
    result = {"checkpoint": str(checkpoint), "cpu": cpu_capability(), "threads": args.threads, "rows": rows,
              "miou": scores, "calibration_windows": args.calibration_windows}
    print(f"{checkpoint}: CPU {result['cpu']}, {args.threads} threads, onnxruntime, batch 1")
    print("| input | fp32 ms | int8 ms | fp32 / int8 | equal mask pixels (min / mean) | CPU | threads |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for row in rows:
        print(f"| {row['size']}² | {row['fp32_ms']:.0f} | {row['int8_ms']:.0f} | {row['speedup']:.2f}x | "
              f"{100 * row['agreement_min']:.2f} % / {100 * row['agreement_mean']:.2f} % ({row['windows']} windows) | "
              f"{result['cpu']} | {args.threads} |")
    for split, score in scores.items():
        print(f"held-out mIoU, {split}: fp32 {score['fp32']:.2f}, int8 {score['int8']:.2f} "
              f"(difference {score['int8'] - score['fp32']:+.2f} points)")
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(result, indent=2) + "\n").encode())
    return result


if __name__ == "__main__":
    main()
