"""Cutting one large image and its mask into overlapping patches, as the original split tools do.

Window rule of the original ``split_iSAID.py`` / ``split_isprs.py``: window starts at
``0, stride, 2*stride, ...`` below the image side (``stride = patch - overlap``); a window passing the
border is shifted back to end exactly at the border, so every patch is full size and no padding is
used.  Only images strictly larger than the patch in both dimensions are cut; smaller ones are written
whole under their own name.  Patch names are ``{base}_{y0}_{y1}_{x0}_{x1}{suffix}.png`` (end-exclusive).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.file_check import describe_invalid_ids, invalid_label_ids
from tools._errors import InputError, ToolError
from tools._image_files import (
    atomic_copy,
    atomic_write_image,
    check_pixel_count,
    output_is_complete,
    read_colour_mask,
    read_image_bgr,
    read_label_image,
)
from tools._jobs import JobResult
from tools._masks import ColourCoding, IdCoding, colours_to_ids, ids_to_labels
from utils.atomic import atomic_write_bytes
from utils.image_io import ImageScaling
from utils.source_policy import STRICT_SOURCES, SourcePolicy

MASK_READ_MODES = ("colour", "gray", "convert", "remap")
GEOMETRY_FILE = "patch_geometry.json"
"""Written into a tool's output root: the window geometry its patches were cut with."""


def patch_starts(length: int, patch: int, stride: int) -> list[int]:
    """Start offsets in pixels of the patches cut along one axis of ``length`` pixels (distinct, increasing).

    ``range(0, length, stride)`` with every patch ending past ``length`` moved back to
    ``length - patch``; the original visits such a shifted patch several times and rewrites the same
    file, so duplicates are dropped here.  (Not ``evaluation.inference.window_starts``, the sliding windows of
    inference, whose rule differs.)
    """
    if stride < 1:
        raise ValueError(f"stride (patch - overlap) must be >= 1, got {stride}")
    starts: list[int] = []
    for start in range(0, length, stride):
        start = min(start, length - patch)
        if not starts or starts[-1] != start:
            starts.append(start)
    return starts


def check_geometry(patch_height: int, patch_width: int, overlap: int) -> None:
    """Raise ``ToolError`` unless patches are positive and the overlap leaves a positive stride."""
    if patch_height < 1 or patch_width < 1 or overlap < 0 or overlap >= min(patch_height, patch_width):
        raise ToolError(f"invalid patch geometry: {patch_width}x{patch_height} with overlap {overlap}; "
                        "patch sides must be >= 1 and 0 <= overlap < patch side")


def record_geometry(out: Path, geometry: dict) -> None:
    """Record the patch geometry in ``out/GEOMETRY_FILE``, or refuse a run whose geometry differs from the one
    recorded there (two patch sets in one folder would mix silently; names differ, nothing is replaced).

    Raises:
        ToolError: naming the file, both geometries and the fix.
    """
    record = out / GEOMETRY_FILE
    if record.is_file():
        try:
            recorded = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ToolError(f"{record} cannot be read ({error}); delete it if {out} holds only this tool's output") \
                from None
        if recorded != geometry:
            raise ToolError(f"{out} holds patches cut with {recorded} (see {record}), this run asks for {geometry}; "
                            "choose another output folder, or delete that one to start over")
        return
    atomic_write_bytes(record, (json.dumps(geometry, sort_keys=True) + "\n").encode())


def patch_windows(height: int, width: int, patch_height: int, patch_width: int,
                  overlap: int) -> list[tuple[int, int, int, int]] | None:
    """Windows ``(y0, y1, x0, x1)`` (end-exclusive) covering an image, or None if it is kept whole.

    An image is cut only when ``height > patch_height`` and ``width > patch_width`` (strictly).
    """
    if not (height > patch_height and width > patch_width):
        return None
    rows = patch_starts(height, patch_height, patch_height - overlap)
    cols = patch_starts(width, patch_width, patch_width - overlap)
    return [(y0, y0 + patch_height, x0, x0 + patch_width) for x0 in cols for y0 in rows]


@dataclass(frozen=True)
class SplitJob:
    """Cut one image (and optionally its mask) into patches.

    Attributes:
        name: label for messages (usually the image file name).
        base: output file stem before the window suffix.
        image_path: source image, read with OpenCV as 3-channel BGR.
        image_out: folder for image patches.
        mask_path: source mask, or None (e.g. iSAID test images).
        mask_out: folder for mask patches.
        mask_suffix: added after the window in mask names (``_instance_color_RGB``, ``_gray_mask``).
        mask_mode: ``colour`` (3-channel, kept as is), ``gray`` (single-channel ids, kept as is),
            ``convert`` (colour mask turned into ids with ``coding``) or ``remap`` (single-channel values
            mapped to ids with ``coding``, e.g. LoveDA's 0 -> 255, 1..7 -> 0..6).
        coding: colour table for ``convert``, value table for ``remap``.
        patch_height, patch_width, overlap: window geometry in pixels.
        whole_copy: for images kept whole, copy the source files byte for byte under their own names
            (the original's behaviour) instead of writing ``{base}.png`` / ``{base}{mask_suffix}.png``.
        whole_only: never cut; write the whole image (for stitched whole-image evaluation).
        overwrite: rewrite outputs that exist.
        bands: 1-based bands of the image written as its three channels (None: ``utils.image_io``'s default,
            1, 2, 3), e.g. ``(4, 1, 2)`` for IR-R-G from an RGB+IR tile.
        scaling: ``utils.image_io.ImageScaling`` of non-8-bit images, one for the dataset
            (``utils.image_io.dataset_scaling``; None: 8-bit images, used as they are).
        num_classes: for ``gray`` masks: K, refuse ids other than 0..K-1 and 255 (None: not checked).
        policy: what a GDAL image (a VRT) may make GDAL read (``utils.source_policy``).
    """

    name: str
    base: str
    image_path: Path
    image_out: Path
    mask_path: Path | None
    mask_out: Path | None
    mask_suffix: str
    mask_mode: str
    coding: ColourCoding | IdCoding | None
    patch_height: int
    patch_width: int
    overlap: int
    whole_copy: bool = False
    whole_only: bool = False
    overwrite: bool = False
    bands: tuple[int, ...] | None = None
    scaling: ImageScaling | None = None
    num_classes: int | None = None
    policy: SourcePolicy = STRICT_SOURCES


def largest_first(jobs: list[SplitJob]) -> list[SplitJob]:
    """Jobs ordered by source file size, largest first, so no big image is left to run alone at the end."""
    return sorted(jobs, key=lambda job: job.image_path.stat().st_size if job.image_path.exists() else 0,
                  reverse=True)


def _output_names(job: SplitJob, windows: list | None) -> list[tuple[Path, Path | None]]:
    """(image output, mask output) paths for each window, or the single whole-image pair."""
    has_mask = job.mask_path is not None
    if windows is None:
        if job.whole_copy:
            image_name, mask_name = job.image_path.name, job.mask_path.name if has_mask else None
        else:
            image_name, mask_name = f"{job.base}.png", f"{job.base}{job.mask_suffix}.png"
        return [(job.image_out / image_name, job.mask_out / mask_name if has_mask else None)]
    pairs = []
    for y0, y1, x0, x1 in windows:
        stem = f"{job.base}_{y0}_{y1}_{x0}_{x1}"
        mask_target = job.mask_out / f"{stem}{job.mask_suffix}.png" if has_mask else None
        pairs.append((job.image_out / f"{stem}.png", mask_target))
    return pairs


def _windows_for(job: SplitJob, height: int, width: int) -> list | None:
    if job.whole_only:
        return None
    return patch_windows(height, width, job.patch_height, job.patch_width, job.overlap)


def _all_complete(pairs: list[tuple[Path, Path | None]], crops: list[tuple[int, int, int, int]]) -> bool:
    """Whether every output of a previous run decodes as a file of its window's size (see output_is_complete)."""
    return all(output_is_complete(path, y1 - y0, x1 - x0)
               for pair, (y0, y1, x0, x1) in zip(pairs, crops) for path in pair if path is not None)


def _crops(windows: list | None, height: int, width: int) -> list[tuple[int, int, int, int]]:
    return [(0, height, 0, width)] if windows is None else windows


def read_job_mask(job: SplitJob) -> tuple[np.ndarray, list[str], bool]:
    """The job's mask as ``mask_mode`` says: (H, W, 3) BGR or (H, W) label ids, any unknown-value warnings, and
    whether an opaque alpha channel was dropped.

    Raises:
        InputError: unreadable mask, ids outside the classes, or unknown colours / values under policy ``error``.
    """
    if job.mask_mode == "colour":
        colours, had_alpha = read_colour_mask(job.mask_path)
        return colours, [], had_alpha
    if job.mask_mode == "gray":
        ids, had_alpha = read_label_image(job.mask_path)
        if job.num_classes is not None:
            invalid = invalid_label_ids(ids, job.num_classes)
            if invalid:
                raise InputError(describe_invalid_ids(job.mask_path, invalid, job.num_classes)
                                 + "; fix the mask, or run with --on-error skip")
        return ids, [], had_alpha
    if job.mask_mode == "convert":
        colours, had_alpha = read_colour_mask(job.mask_path)
        ids, warnings = colours_to_ids(colours, job.coding, job.mask_path)
        return ids, warnings, had_alpha
    if job.mask_mode == "remap":
        ids, had_alpha = read_label_image(job.mask_path)
        labels, warnings = ids_to_labels(ids, job.coding, job.mask_path)
        return labels, warnings, had_alpha
    raise ValueError(f"mask_mode must be one of {MASK_READ_MODES}, got {job.mask_mode!r}")


def split_one(job: SplitJob) -> JobResult:
    """Run one ``SplitJob``: read, check, cut and write the missing outputs atomically.

    Raises:
        InputError: unreadable image or mask, missing mask, size mismatch, unknown mask colours.
    """
    result = JobResult(job.name)
    if job.mask_path is not None and not job.mask_path.is_file():
        raise InputError(f"{job.image_path}: its mask {job.mask_path} does not exist; add it, or run with "
                         "--on-error skip to leave this image out")
    # Checked before a bomb header's size makes millions of output names.
    size = check_pixel_count(job.image_path)
    # Resume: the output names follow from the image size, which the header gives without decoding.
    if size is not None and not job.overwrite:
        windows = _windows_for(job, *size)
        pairs = _output_names(job, windows)
        if _all_complete(pairs, _crops(windows, *size)):
            result.existing = sum(1 + (mask is not None) for _, mask in pairs)
            result.patches = len(pairs)
            return result
    image = read_image_bgr(job.image_path, job.bands, job.scaling, job.policy)
    mask = None
    if job.mask_path is not None:
        mask, result.warnings, had_alpha = read_job_mask(job)
        if had_alpha:
            result.ignored_alpha.append(str(job.mask_path))
        if mask.shape[:2] != image.shape[:2]:
            raise InputError(f"{job.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                             f"{job.image_path} is {image.shape[1]}x{image.shape[0]}; they must match pixel for pixel")
    windows = _windows_for(job, *image.shape[:2])
    pairs = _output_names(job, windows)
    result.patches = len(pairs)
    job.image_out.mkdir(parents=True, exist_ok=True)
    if job.mask_out is not None and mask is not None:
        job.mask_out.mkdir(parents=True, exist_ok=True)
    crops = _crops(windows, *image.shape[:2])
    copy_sources = windows is None and job.whole_copy
    for (y0, y1, x0, x1), (image_target, mask_target) in zip(crops, pairs):
        outputs = [(image_target, job.image_path, image[y0:y1, x0:x1])]
        if mask_target is not None:
            outputs.append((mask_target, job.mask_path, mask[y0:y1, x0:x1]))
        for target, source, array in outputs:
            if not job.overwrite and output_is_complete(target, y1 - y0, x1 - x0):
                result.existing += 1
                continue
            if target.exists() and not job.overwrite:
                result.warnings.append(f"{target}: the existing output does not decode as a {x1 - x0} x {y1 - y0} "
                                       "image (damaged by an earlier run?); written again")
            if copy_sources:
                atomic_copy(source, target)
                result.written += 1
            else:
                atomic_write_image(target, np.ascontiguousarray(array))
                result.written += 1
    return result
