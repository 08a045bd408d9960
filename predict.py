"""Segment your own imagery with a PFNet checkpoint: image files, folders, whole GeoTIFF tiles.

Every image, whatever its size, is segmented with overlapping sliding windows whose logits are
averaged; tiles are processed in strips, so memory does not grow with the tile's area (see
``evaluation.inference.predict_large_image``). One mask per input, ``{out_dir}/{stem}_pred.png`` (palette
PNG, pixel values = class ids) or ``{stem}_pred.tif`` (single-band uint8 GeoTIFF of class ids with
the input's CRS, geotransform and a colour table).

Example::

    python predict.py --snapshot potsdam_r50.pth --dataset Posdam --out_dir preds top_potsdam_2_13_RGB.tif
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from config import add_config_flags, parse_with_config
from evaluation.dataset_split import dataset_table
from evaluation.inference import parse_scales, predict_large_image
from evaluation.restore import add_speed_flags, restore_model, speed_options
from network.options import add_model_flags
from utils.atomic import exit_on_write_error, remove_stale_partial_files
from utils.checkpoint import CheckpointMismatchError
from utils.palette import default_palette
from utils.raster_io import IMAGE_SUFFIXES, GeoTiffMaskSink, PaletteMaskSink, open_image


def build_parser() -> argparse.ArgumentParser:
    """predict.py's flags (values are checked in :func:`main`, before the model is loaded)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images (not searched recursively)")
    parser.add_argument("--snapshot", required=True, help="checkpoint (.pth) to load, e.g. an official PFSegNets one")
    parser.add_argument("--dataset", default=None,
                        help="iSAID, Posdam (or potsdam) or Vaihingen: gives the class count and the colour palette; "
                             "without it the class count is read from the checkpoint and a generic palette is used")
    parser.add_argument("--out_dir", required=True, help="folder for the masks (created if missing)")
    parser.add_argument("--format", choices=("auto", "png", "tif"), default="auto",
                        help="mask format: palette PNG or single-band GeoTIFF; auto = GeoTIFF for GeoTIFF inputs, "
                             "PNG otherwise (default auto)")
    parser.add_argument("--window", type=int, default=896,
                        help="sliding-window size in pixels (default 896, the training crop of iSAID/Potsdam; "
                             "768 suits Vaihingen)")
    parser.add_argument("--stride", type=int, default=None,
                        help="window step in pixels (default: from --overlap)")
    parser.add_argument("--overlap", type=float, default=1 / 3,
                        help="window overlap fraction when --stride is not given: stride = ceil(window * (1 - "
                             "overlap)) (default 1/3, as the original's sliding mode)")
    parser.add_argument("--batch_size", type=int, default=1, help="windows per forward pass (default 1)")
    parser.add_argument("--scales", default="1.0",
                        help="comma-separated test-time scales, applied per window (default 1.0)")
    parser.add_argument("--flip", action="store_true", help="also average the horizontally flipped window")
    parser.add_argument("--bands", default="1,2,3",
                        help="GeoTIFF bands (1-based) fed as the model's three channels (default 1,2,3)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace masks that already exist")
    parser.add_argument("--trusted-pickle", dest="trusted_pickle", action="store_true",
                        help="allow arbitrary pickled objects in the checkpoint (legacy files); this can run code "
                             "stored in the file, so only for files you trust")
    add_model_flags(parser)
    add_speed_flags(parser)
    add_config_flags(parser, "predict.py")
    return parser


def collect_inputs(entries: list[str]) -> list[Path]:
    """Image files named directly plus the images (by suffix) directly inside named folders, sorted."""
    found = []
    for entry in map(Path, entries):
        if entry.is_dir():
            found += sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif entry.is_file():
            found.append(entry)
        else:
            raise FileNotFoundError(f"input not found: {entry}")
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(entries)}")
    return found


def output_path(out_dir: Path, image_path: Path, fmt: str) -> Path:
    """``{out_dir}/{stem}_pred.{png|tif}``; ``auto`` picks tif for GeoTIFF inputs."""
    if fmt == "auto":
        fmt = "tif" if image_path.suffix.lower() in (".tif", ".tiff") else "png"
    return out_dir / f"{image_path.stem}_pred.{fmt}"


def plan_outputs(inputs: list[Path], out_dir: Path, fmt: str, overwrite: bool) -> list[Path]:
    """One output per input; refuse name clashes and (without ``overwrite``) existing files, up front."""
    outputs = [output_path(out_dir, path, fmt) for path in inputs]
    seen: dict[Path, Path] = {}
    for image_path, out_path in zip(inputs, outputs):
        if out_path in seen:
            raise ValueError(f"{image_path} and {seen[out_path]} would both be written to {out_path}; "
                             "predict them into different --out_dir folders")
        seen[out_path] = image_path
        if out_path.exists() and not overwrite:
            raise FileExistsError(f"{out_path} exists; pass --overwrite to replace it")
    return outputs


def parse_bands(text: str) -> tuple[int, int, int]:
    """``--bands`` text such as ``"4,3,2"`` -> three 1-based band numbers (R, G, B order fed to the model).

    Raises:
        ValueError: not three positive integers; the message names ``--bands``.
    """
    try:
        bands = tuple(int(value) for value in text.split(","))
    except ValueError:
        bands = ()
    if len(bands) != 3 or min(bands) < 1:
        raise ValueError(f"--bands needs three 1-based band numbers such as 1,2,3, got {text!r}")
    return bands


def window_stride(window: int, stride: int | None, overlap: float) -> int:
    """The window step in pixels: ``stride``, else ``ceil(window * (1 - overlap))``.

    Raises:
        ValueError: ``--window`` not positive, ``--stride`` outside ``1..window`` (a larger step would leave
            pixels uncovered) or ``--overlap`` outside ``[0, 1)``; the message names the flag.
    """
    if window < 1:
        raise ValueError(f"--window must be a positive number of pixels, got {window}")
    if stride is None:
        if not 0 <= overlap < 1:
            raise ValueError(f"--overlap must be a fraction in [0, 1), got {overlap}")
        return math.ceil(window * (1 - overlap))
    if not 1 <= stride <= window:
        raise ValueError(f"--stride must be between 1 and --window ({window}) so windows cover every pixel, "
                         f"got {stride}")
    return stride


def predict_file(model, image_path: Path, out_path: Path, palette: np.ndarray, args, stride: int,
                 scales: tuple[float, ...], bands: tuple[int, int, int], show_progress: bool = True) -> None:
    """Segment one image into ``out_path`` (partial files are removed on failure)."""
    source = open_image(image_path, bands)
    try:
        if out_path.suffix == ".tif":
            sink = GeoTiffMaskSink(out_path, source.height, source.width, palette, source.geo_profile)
        else:
            sink = PaletteMaskSink(out_path, source.height, source.width, palette)
        try:
            predict_large_image(
                model, source.read, (source.height, source.width), sink.write,
                window=args.window, stride=stride, batch_size=args.batch_size, scales=scales, flip=args.flip,
                device=args.device, show_progress=show_progress,
            )
        except BaseException:
            sink.abort()
            raise
        sink.close()
    finally:
        source.close()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: check every flag, load the model once, write one mask per input.

    Flag, input and checkpoint problems end in a usage error (exit status 2) before any mask is
    written; an image that cannot be read stops the run with its name (earlier masks are kept).
    """
    parser = build_parser()
    args, _ = parse_with_config(parser, argv)
    try:
        stride = window_stride(args.window, args.stride, args.overlap)
        scales = parse_scales(args.scales)
        bands = parse_bands(args.bands)
        if args.batch_size < 1:
            raise ValueError(f"--batch_size must be at least 1, got {args.batch_size}")
        inputs = collect_inputs(args.inputs)
        outputs = plan_outputs(inputs, Path(args.out_dir), args.format, args.overwrite)
        remove_stale_partial_files(args.out_dir)
        palette = dataset_table(args.dataset)[1] if args.dataset else None
        restored = restore_model(args, args.snapshot, None if palette is None else len(palette), device=args.device,
                                 trusted_pickle=args.trusted_pickle, **speed_options(args))
        model = restored.model
        if palette is None:
            palette = default_palette(restored.num_classes)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, CheckpointMismatchError) as error:
        parser.error(str(error))
    for warning in restored.resolved.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"model: {restored.resolved.describe()}")
    for image_path, out_path in tqdm(list(zip(inputs, outputs)), desc="images", unit="img", disable=len(inputs) < 2):
        try:
            predict_file(model, image_path, out_path, palette, args, stride, scales, bands)
        except (ValueError, ImportError, OSError) as error:
            parser.exit(2, f"error: {image_path}: {error}\n")
        print(f"{image_path} -> {out_path}")
    return 0


if __name__ == "__main__":
    with exit_on_write_error():
        sys.exit(main())
