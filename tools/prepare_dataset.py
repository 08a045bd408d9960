#!/usr/bin/env python3
"""One command per dataset: official download layout -> the patch folders the datasets read.

Splits, converts colour labels to label ids and arranges the result in one go::

    {out}/{split}/images/{stem}.png
    {out}/{split}/masks/{stem}_instance_color_RGB.png   (iSAID; label ids despite the name)
    {out}/{split}/masks/{stem}_gray_mask.png            (Potsdam, Vaihingen)

iSAID: splits ``train`` and ``val`` (and ``test``, images only, when present) with the paper's setting,
896 x 896 windows with stride 512 (overlap 384; lxtGH/PFSegNets issue #5), not the 800 / 200
defaults of ``split_iSAID.py``.  P1527 and P1530 are skipped as in the original.
Potsdam (896 x 896) and Vaihingen (768 x 768): tiles go to ``train`` and ``test`` by the official ISPRS
split (``tools/raw_layout.py``; the original trains on ``train`` and validates on ``test``), with
stride 512 by default (the original does not state its stride).  ``--label-variant eroded`` uses the
``*_noBoundary`` labels, whose black borders become 255 (ignored).

Patch names and pixels are those of the original two-step pipeline (split, then convert) for the same
window settings.  Raw data is only read; re-running resumes an interrupted run.  See
``tools/raw_layout.py`` for the raw layouts accepted.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.classes import ISAID_MASK_SUFFIX, ISPRS_MASK_SUFFIX  # noqa: E402
from tools._common import (  # noqa: E402
    RunSummary,
    ToolError,
    add_common_arguments,
    check_output_outside_input,
    natural_key,
    positive_int,
    report_input_problems,
    run_jobs,
    run_tool,
)
from tools._masks import ColourCoding, add_unknown_color_argument, isaid_coding, isprs_coding  # noqa: E402
from tools._tiling import SplitJob, check_geometry, largest_first, record_geometry, split_one  # noqa: E402
from tools.raw_layout import ISAID_MASK_FOLDERS, ISPRS_FOLDERS, SPLIT_TILES, isprs_file_names  # noqa: E402
from tools.split_iSAID import EXCLUDED_IMAGES, isaid_base_images, report_isaid_name_problems  # noqa: E402
from utils.atomic import remove_partial_files  # noqa: E402

DATASETS = ("isaid", "potsdam", "vaihingen")
DEFAULT_GEOMETRY = {"isaid": (896, 512), "potsdam": (896, 512), "vaihingen": (768, 512)}
"""(patch side, stride) in pixels per dataset."""
LABEL_VARIANTS = ("full", "eroded")
_TILE_PATTERN = {"potsdam": re.compile(r"^top_potsdam_(\d+_\d+)_RGB\.tif$"),
                 "vaihingen": re.compile(r"^top_mosaic_09cm_area(\d+)\.tif$")}


def _job(image_path: Path, mask_path: Path | None, out_split: Path, base: str, mask_suffix: str,
         coding: ColourCoding, patch: int, overlap: int, whole_only: bool, overwrite: bool) -> SplitJob:
    return SplitJob(name=str(image_path), base=base, image_path=image_path, image_out=out_split / "images",
                    mask_path=mask_path, mask_out=out_split / "masks", mask_suffix=mask_suffix,
                    mask_mode="convert", coding=coding, patch_height=patch, patch_width=patch, overlap=overlap,
                    whole_only=whole_only, overwrite=overwrite)


def _isaid_jobs(raw: Path, out: Path, coding: ColourCoding, patch: int, overlap: int, whole_held_out: bool,
                overwrite: bool) -> tuple[list[SplitJob], list[str]]:
    jobs, notes = [], []
    splits = [split for split in ("train", "val", "test") if (raw / split / "images").is_dir()]
    if not {"train", "val"} <= set(splits):
        raise ToolError(f"{raw} does not look like iSAID: expected {raw}/train/images and {raw}/val/images "
                        "holding P*.png and P*_instance_color_RGB.png (see tools/raw_layout.py)")
    for split in splits:
        split_dir = raw / split
        images = isaid_base_images(split_dir / "images")
        if not images:
            raise ToolError(f"{split_dir / 'images'} holds no iSAID images (P*.png)")
        for image_path in images:
            if image_path.stem in EXCLUDED_IMAGES:
                notes.append(f"{image_path}: excluded, as by the original split tool")
                continue
            mask_path = None
            if split != "test":
                candidates = [split_dir / folder / f"{image_path.stem}{ISAID_MASK_SUFFIX}.png"
                              for folder in ISAID_MASK_FOLDERS]
                mask_path = next((path for path in candidates if path.is_file()), candidates[0])
            targets = [(out / split, False)]
            if whole_held_out and split == "val":
                targets.append((out / f"{split}_ori", True))
            for out_split, whole in targets:
                jobs.append(_job(image_path, mask_path, out_split, image_path.stem, ISAID_MASK_SUFFIX, coding,
                                 patch, overlap, whole, overwrite))
    return jobs, notes


def _isprs_tiles(dataset: str, image_dir: Path) -> dict[str, Path]:
    """Tile id -> image path for the tiles present in ``image_dir``."""
    tiles = {}
    for path in sorted(image_dir.glob("*.tif"), key=lambda item: natural_key(item.name)):
        match = _TILE_PATTERN[dataset].match(path.name)
        if match:
            tiles[match.group(1)] = path
    return tiles


def _isprs_jobs(dataset: str, raw: Path, out: Path, coding: ColourCoding, patch: int, overlap: int,
                label_variant: str, image_dir: Path | None, label_dir: Path | None,
                split_tiles: dict[str, tuple[str, ...]], whole_held_out: bool,
                overwrite: bool) -> tuple[list[SplitJob], list[str]]:
    folders = ISPRS_FOLDERS[dataset]
    image_dir = image_dir or raw / folders["image"]
    label_key = "label" if label_variant == "full" else "eroded"
    label_dir = label_dir or raw / folders[label_key]
    for folder, what in ((image_dir, "images"), (label_dir, f"{label_variant} labels")):
        if not folder.is_dir():
            raise ToolError(f"{folder} does not exist; expected the {dataset} {what} there (official layout, "
                            "see tools/raw_layout.py), or pass --image-dir / --label-dir")
    tiles = _isprs_tiles(dataset, image_dir)
    if not tiles:
        raise ToolError(f"{image_dir} holds no {dataset} image tiles ({_TILE_PATTERN[dataset].pattern})")
    jobs, notes = [], []
    assigned = set()
    for split, split_ids in split_tiles.items():
        present = [tile for tile in split_ids if tile in tiles]
        notes.append(f"{dataset} {split}: {len(present)} of {len(split_ids)} listed tiles present")
        for tile in present:
            assigned.add(tile)
            image_path = tiles[tile]
            mask_path = label_dir / isprs_file_names(dataset, tile)[label_key]
            targets = [(out / split, False)]
            if whole_held_out and split != "train":
                targets.append((out / f"{split}_ori", True))
            for out_split, whole in targets:
                jobs.append(_job(image_path, mask_path, out_split, image_path.stem, ISPRS_MASK_SUFFIX, coding,
                                 patch, overlap, whole, overwrite))
    notes.extend(f"{tiles[tile]}: in no split list, left out" for tile in tiles if tile not in assigned)
    return jobs, notes


def _report_name_problems(dataset: str, raw: Path, image_dir: Path | None, label_dir: Path | None,
                          label_variant: str, on_error: str, notes: list[str]) -> None:
    """Stop at (or note, with ``on_error="skip"``) raw files the jobs would drop in silence: masks without their
    image and names that do not parse."""
    if dataset == "isaid":
        for split in ("train", "val", "test"):
            images = raw / split / "images"
            for folder in ISAID_MASK_FOLDERS:
                if (raw / split / folder).is_dir():
                    report_isaid_name_problems(notes, images, raw / split / folder, on_error)
        return
    image_dir = image_dir or raw / ISPRS_FOLDERS[dataset]["image"]
    label_key = "label" if label_variant == "full" else "eroded"
    label_dir = label_dir or raw / ISPRS_FOLDERS[dataset][label_key]
    tiles = _isprs_tiles(dataset, image_dir)
    unparsable = [str(path) for path in sorted(image_dir.glob("*.tif")) if not _TILE_PATTERN[dataset].match(path.name)]
    report_input_problems(notes, f"image file name(s) that are not {dataset} tile names "
                          f"({_TILE_PATTERN[dataset].pattern})", unparsable, "rename them", on_error)
    label_names = {isprs_file_names(dataset, tile)[label_key] for tile in tiles}
    orphans = [str(path) for path in sorted(label_dir.glob("*.tif")) if path.name not in label_names]
    report_input_problems(notes, f"label tile(s) without their image in {image_dir}", orphans,
                          "add the image tiles, or remove the labels", on_error)


def prepare(dataset: str, raw: str | Path, out: str | Path, *, patch_size: int | None = None,
            stride: int | None = None, label_variant: str = "full", workers: int | None = None,
            overwrite: bool = False, on_error: str = "error", unknown_color: str = "error",
            whole_held_out: bool = False, image_dir: str | Path | None = None, label_dir: str | Path | None = None,
            split_tiles: dict[str, tuple[str, ...]] | None = None, progress: bool = True) -> RunSummary:
    """Prepare one dataset from its raw download layout into ``{out}/{split}/images|masks``.

    Args:
        dataset: ``"isaid"``, ``"potsdam"`` or ``"vaihingen"``.
        raw: root of the unpacked download (layouts in ``tools/raw_layout.py``).
        out: output root (must not be, or be inside, ``raw``, ``image_dir`` or ``label_dir``); point the
            config's dataset folder here.
        patch_size: window side in pixels (default 896 for iSAID and Potsdam, 768 for Vaihingen).
        stride: window step in pixels (default 512).
        label_variant: ISPRS only: ``"full"`` labels or ``"eroded"`` (noBoundary; borders -> 255).
        workers: processes (None: all cores).
        overwrite: rewrite existing outputs (default: keep them and resume).
        on_error: ``"error"`` stops at the first bad input; ``"skip"`` skips it and lists it.
        unknown_color: ``"error"``, ``"ignore"`` (255) or ``"background"`` (0) for colours outside the palette.
        whole_held_out: also write whole, uncut held-out images to ``{out}/val_ori`` (iSAID) or
            ``{out}/test_ori`` (ISPRS) for whole-image evaluation.
        image_dir, label_dir: ISPRS only: override the folders of the official layout.
        split_tiles: ISPRS only: ``{split: tile ids}`` instead of the official train/test split.
        progress: show a progress bar.

    Returns:
        Totals of the run; ``warnings`` also carry per-split tile counts and left-out files.

    Raises:
        ToolError: unrecognised layout, output equal to or inside ``raw``, ``image_dir`` or ``label_dir``,
            or bad input with ``on_error="error"``.
    """
    dataset = dataset.lower()
    if dataset not in DATASETS:
        raise ToolError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    if label_variant not in LABEL_VARIANTS:
        raise ToolError(f"label_variant must be one of {LABEL_VARIANTS}, got {label_variant!r}")
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise ToolError(f"raw folder {raw} does not exist")
    for source in (raw, image_dir, label_dir):
        if source is not None:
            check_output_outside_input(Path(source), out)
    default_patch, default_stride = DEFAULT_GEOMETRY[dataset]
    patch = default_patch if patch_size is None else patch_size
    stride = default_stride if stride is None else stride
    if not 1 <= stride <= patch:
        raise ToolError(f"--stride {stride}: the window step must be between 1 and the patch size ({patch})")
    overlap = patch - stride
    check_geometry(patch, patch, overlap)
    if dataset == "isaid":
        jobs, notes = _isaid_jobs(raw, out, isaid_coding(unknown_color), patch, overlap, whole_held_out, overwrite)
    else:
        coding = isprs_coding(unknown_color, eroded=label_variant == "eroded")
        jobs, notes = _isprs_jobs(dataset, raw, out, coding, patch, overlap, label_variant,
                                  Path(image_dir) if image_dir else None, Path(label_dir) if label_dir else None,
                                  split_tiles or SPLIT_TILES[dataset], whole_held_out, overwrite)
    _report_name_problems(dataset, raw, Path(image_dir) if image_dir else None, Path(label_dir) if label_dir else None,
                          label_variant, on_error, notes)
    record_geometry(out, {"dataset": dataset, "patch": patch, "stride": stride, "label_variant": label_variant})
    for folder in {job.image_out for job in jobs} | {job.mask_out for job in jobs}:
        remove_partial_files(folder)
    summary = run_jobs(f"prepare {dataset}", split_one, largest_first(jobs), workers, on_error, progress)
    summary.notes.extend(notes)
    return summary


def _parse_tiles(text: str | None) -> tuple[str, ...] | None:
    return tuple(item.strip() for item in text.split(",") if item.strip()) if text else None


def main(argv: list[str] | None = None) -> None:
    """Command line: parse the flags and run ``prepare``; prints the run summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=DATASETS, help="which dataset the raw folder holds")
    parser.add_argument("--raw", required=True, help="root of the unpacked official download")
    parser.add_argument("--out", required=True,
                        help="output root, outside --raw, --image-dir and --label-dir; the config's dataset folder")
    parser.add_argument("--patch-size", type=positive_int, default=None,
                        help="window side in pixels (default: 896 iSAID/Potsdam, 768 Vaihingen)")
    parser.add_argument("--stride", type=positive_int, default=None,
                        help="window step in pixels, at most the patch size (default 512)")
    parser.add_argument("--label-variant", choices=LABEL_VARIANTS, default="full",
                        help="ISPRS: full labels (default, as the original implies) or the eroded "
                             "'noBoundary' labels, whose black borders become 255 = ignore")
    parser.add_argument("--whole-held-out", action="store_true",
                        help="also write the uncut held-out images to {out}/val_ori (iSAID) or {out}/test_ori "
                             "(ISPRS) for whole-image evaluation")
    parser.add_argument("--image-dir", default=None, help="ISPRS: folder of the image tiles, if not the official one")
    parser.add_argument("--label-dir", default=None, help="ISPRS: folder of the label tiles, if not the official one")
    parser.add_argument("--train-tiles", default=None,
                        help="ISPRS: comma-separated train tile ids (e.g. 2_10,2_11 or 1,3) instead of the "
                             "official split")
    parser.add_argument("--test-tiles", default=None, help="ISPRS: comma-separated test tile ids, with --train-tiles")
    add_common_arguments(parser, memory="one image and its labels, up to ~1.5 GB for the largest iSAID scenes "
                                        "and ~450 MB for a 6000 x 6000 Potsdam tile",
                         problems="an unreadable or corrupt image or label, a missing label, a label without its "
                                  "image, a file name that does not parse, a label with transparent pixels, an "
                                  "image/label size mismatch, or (with --unknown-color error) label colours outside "
                                  "the palette")
    add_unknown_color_argument(parser)
    args = parser.parse_args(argv)
    split_tiles = None
    if args.train_tiles or args.test_tiles:
        if not (args.train_tiles and args.test_tiles):
            parser.error("--train-tiles and --test-tiles go together")
        split_tiles = {"train": _parse_tiles(args.train_tiles), "test": _parse_tiles(args.test_tiles)}
    run_tool(lambda: prepare(args.dataset, args.raw, args.out, patch_size=args.patch_size, stride=args.stride,
                             label_variant=args.label_variant, workers=args.workers, overwrite=args.overwrite,
                             on_error=args.on_error, unknown_color=args.unknown_color,
                             whole_held_out=args.whole_held_out, image_dir=args.image_dir, label_dir=args.label_dir,
                             split_tiles=split_tiles))


if __name__ == "__main__":
    main()
