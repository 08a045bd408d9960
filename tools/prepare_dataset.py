#!/usr/bin/env python3
"""One command per dataset: official download layout -> the patch folders the datasets read.

Splits, converts colour labels to label ids and arranges the result in one go::

    {out}/{split}/images/{stem}.png
    {out}/{split}/masks/{stem}_instance_color_RGB.png   (iSAID; label ids despite the name)
    {out}/{split}/masks/{stem}_gray_mask.png            (Potsdam, Vaihingen, LoveDA)

iSAID: splits ``train`` and ``val`` (and ``test``, images only, when present) with the paper's setting,
896 x 896 windows with stride 512 (overlap 384; lxtGH/PFSegNets issue #5), not the 800 / 200
defaults of ``split_iSAID.py``.  P1527 and P1530 are skipped as in the original.
Potsdam (896 x 896) and Vaihingen (768 x 768): tiles go to ``train`` and ``test`` by the official ISPRS
split (``tools/raw_layout.py``; the original trains on ``train`` and validates on ``test``), with
stride 512 by default (the original does not state its stride).  ``--label-variant eroded`` uses the
``*_noBoundary`` labels, whose black borders become 255 (ignored).
LoveDA: ``Train`` -> ``train``, ``Val`` -> ``val`` (and ``Test`` -> ``test``, images only), Urban and Rural
(or one of them, ``--domain``) with the domain in the file names (``urban_1366.png``); whole 1024 x 1024
images unless ``--patch-size`` is given; no-data 0 becomes 255 (ignored) and classes 1..7 become 0..6.
Custom datasets (``custom --spec my_data.yaml``): see ``tools/custom_layout.py`` and docs/data_custom.md.
Each dataset's default window, mask suffix and splits are declared on its class in ``datasets/``.

Patch names and pixels are those of the original two-step pipeline (split, then convert) for the same
window settings.  Raw data is only read; re-running resumes an interrupted run.  See
``tools/raw_layout.py`` for the raw layouts accepted (their jobs: ``tools/official_layout.py``).
From Python: ``prepare(dataset, raw, out, PrepareOptions(...))``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.file_check import all_smaller_than, has_labelled_pixel, no_labelled_pixels  # noqa: E402
from datasets.registry import DATASET_CLASSES  # noqa: E402
from tools._cli import add_common_arguments, add_unknown_color_argument, positive_int, run_tool  # noqa: E402
from tools._errors import ToolError  # noqa: E402
from tools._folders import check_output_outside_input  # noqa: E402
from tools._jobs import RunSummary, run_jobs  # noqa: E402
from tools._masks import isaid_coding, isprs_coding, loveda_coding  # noqa: E402
from tools._tiling import SplitJob, check_geometry, largest_first, record_geometry, split_one  # noqa: E402
from tools.custom_layout import CUSTOM_NAME, custom_jobs  # noqa: E402
from tools.official_layout import isaid_jobs, isprs_jobs, loveda_jobs, report_name_problems  # noqa: E402
from tools.raw_layout import LOVEDA_DOMAIN_FOLDERS, POTSDAM_IRRG_BANDS, POTSDAM_PRODUCTS, SPLIT_TILES  # noqa: E402
from utils.atomic import remove_partial_files  # noqa: E402
from utils.image_io import (  # noqa: E402
    IDENTITY,
    SCALING_FILE,
    ImageReadError,
    ImageScaling,
    dataset_scaling,
    parse_bands,
)
from utils.source_policy import STRICT_SOURCES, SourcePolicy, add_source_arguments, source_policy  # noqa: E402

PREPARED = {cls.prepare_name: cls for cls in DATASET_CLASSES if cls.prepare_name != CUSTOM_NAME}
"""``prepare_dataset.py`` sub-command -> dataset class (its window, mask suffix and splits)."""
DATASETS = (*PREPARED, CUSTOM_NAME)
LOVEDA_DOMAINS = ("all", *LOVEDA_DOMAIN_FOLDERS)
LABEL_VARIANTS = ("full", "eroded")


def _with_dataset_scaling(jobs: list[SplitJob], out: Path, policy: SourcePolicy, notes: list[str]) -> list[SplitJob]:
    """The jobs with the dataset's one scaling of non-8-bit images (the jobs' own, as a custom spec gives it, else
    ``utils.image_io.dataset_scaling`` over the ``train`` images) and ``policy``; a scaling is saved as
    ``{out}/scaling.json`` and noted for the summary.

    Raises:
        ToolError: a training image cannot be read to estimate the scaling, or is refused by ``policy``.
    """
    scaling = next((job.scaling for job in jobs if job.scaling is not None), None)
    if scaling is None:
        train_images = dict.fromkeys(job.image_path for job in jobs if job.image_out == out / "train" / "images")
        try:
            scaling = dataset_scaling(list(train_images), jobs[0].bands if jobs else None, policy)
        except ImageReadError as error:
            raise ToolError(f"{error}; the dataset's scaling of non-8-bit images is estimated on the train "
                            "images") from None
    if scaling is None:
        return [dataclasses.replace(job, policy=policy) for job in jobs]
    if scaling == ImageScaling(low=(IDENTITY[0],) * len(scaling.low), high=(IDENTITY[1],) * len(scaling.high)):
        rule = "their values all lie in 0..255 and are used as they are"
    else:
        rule = f"scaled per band from {list(scaling.low)} .. {list(scaling.high)} to 0..255, one range for the dataset"
    notes.append(f"non-8-bit images: {rule} ({out / SCALING_FILE}; pass --scaling {out / SCALING_FILE} to "
                 "predict.py and eval.py)")
    return [dataclasses.replace(job, scaling=scaling, policy=policy) for job in jobs]


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    """How :func:`prepare` cuts, checks and writes a dataset; the defaults are the command line's.
    :func:`options_from_flags` builds one from the parsed flags.

    Attributes:
        patch_size: window side in pixels (None: the dataset class's ``patch_size``: 896 for iSAID and
            Potsdam, 768 for Vaihingen, whole images for LoveDA).
        stride: window step in pixels (None: the class's ``patch_stride``, 512; the window side where
            the class has none).
        label_variant: ISPRS only: ``"full"`` labels or ``"eroded"`` (noBoundary; borders -> 255).
        domain: LoveDA only: ``"all"``, ``"urban"`` or ``"rural"``.
        spec: ``custom`` only: the dataset's YAML description (``datasets/custom.py``).
        product: Potsdam only: image product ``"RGB"`` (2_Ortho_RGB), ``"RGBIR"`` (4_Ortho_RGBIR) or ``"IRRG"``
            (3_Ortho_IRRG); bands are read explicitly, an IR band tagged as alpha is never premultiplied.
        bands: Potsdam and custom: the three 1-based bands written, e.g. ``(4, 1, 2)`` or ``"4,1,2"``, or (Potsdam)
            ``"irrg"`` for the product's IR-R-G bands (the Vaihingen convention); None: the product's first
            three, or the spec's ``bands``.
        workers: processes (None: all cores; 1: no pool).
        overwrite: rewrite existing outputs (default: keep them and resume).
        on_error: ``"error"`` stops at the first bad input; ``"skip"`` skips it and lists it.
        unknown_color: ``"error"``, ``"ignore"`` (255) or ``"background"`` (0) for colours outside the palette.
        whole_held_out: also write whole, uncut held-out images to ``{out}/val_ori`` (iSAID) or
            ``{out}/test_ori`` (ISPRS) for whole-image evaluation.
        image_dir, label_dir: ISPRS only: override the folders of the official layout.
        split_tiles: ISPRS only: ``{split: tile ids}`` instead of the official train/test split.
        progress: show a progress bar.
        policy: what a GDAL image (a VRT) may make GDAL read (``utils.source_policy``; default: files in
            its own folder, no network).
    """

    patch_size: int | None = None
    stride: int | None = None
    label_variant: str = "full"
    domain: str = "all"
    spec: str | Path | None = None
    product: str = "RGB"
    bands: str | tuple[int, ...] | None = None
    workers: int | None = None
    overwrite: bool = False
    on_error: str = "error"
    unknown_color: str = "error"
    whole_held_out: bool = False
    image_dir: str | Path | None = None
    label_dir: str | Path | None = None
    split_tiles: dict[str, tuple[str, ...]] | None = None
    progress: bool = True
    policy: SourcePolicy = STRICT_SOURCES


def prepare(dataset: str, raw: str | Path | None, out: str | Path,
            options: PrepareOptions | None = None) -> RunSummary:
    """Prepare one dataset from its raw download layout into ``{out}/{split}/images|masks``.

    Args:
        dataset: ``"isaid"``, ``"potsdam"``, ``"vaihingen"``, ``"loveda"`` or ``"custom"``.
        raw: root of the unpacked download (layouts in ``tools/raw_layout.py``); None for ``custom``.
        out: output root (must not be, or be inside, ``raw``, ``image_dir`` or ``label_dir``); point the
            config's dataset folder here.
        options: window, labels, bands and run settings (None: ``PrepareOptions()``, the command line's defaults).

    Non-8-bit images get one scaling for the whole dataset (``utils.image_io.dataset_scaling``; a custom spec
    may fix it), saved as ``{out}/scaling.json``; 16-bit images whose values fit in 0..255 stay as they are.

    Returns:
        Totals of the run; ``warnings`` also carry per-split tile counts and left-out files.

    Raises:
        ToolError: unrecognised layout, output equal to or inside ``raw``, ``image_dir`` or ``label_dir``,
            or bad input with ``on_error="error"``.
    """
    options = options or PrepareOptions()
    dataset = dataset.lower()
    if dataset not in DATASETS:
        raise ToolError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    if options.label_variant not in LABEL_VARIANTS:
        raise ToolError(f"label_variant must be one of {LABEL_VARIANTS}, got {options.label_variant!r}")
    if options.domain not in LOVEDA_DOMAINS:
        raise ToolError(f"domain must be one of {LOVEDA_DOMAINS}, got {options.domain!r}")
    out = Path(out)
    if dataset == CUSTOM_NAME:
        return _prepare_custom(out, options)
    if raw is None:
        raise ToolError(f"{dataset} needs --raw DIR, the root of the unpacked official download")
    raw = Path(raw)
    if raw.is_file() and raw.suffix.lower() == ".zip":
        raise ToolError(f"--raw {raw} is a zip file: pass the folder that holds it, --raw {raw.parent} (LoveDA's zips "
                        "are unpacked there; layouts in tools/raw_layout.py, LoveDA in docs/data_custom.md)")
    if not raw.is_dir():
        raise ToolError(f"raw folder {raw} does not exist")
    image_dir = Path(options.image_dir) if options.image_dir else None
    label_dir = Path(options.label_dir) if options.label_dir else None
    for source in (raw, image_dir, label_dir):
        if source is not None:
            check_output_outside_input(source, out)
    product, bands = options.product, options.bands
    if product not in POTSDAM_PRODUCTS or (product != "RGB" and dataset != "potsdam"):
        raise ToolError(f"--product {product}: choose one of {tuple(POTSDAM_PRODUCTS)} (Potsdam only)")
    if bands not in (None, "default") and dataset != "potsdam":
        raise ToolError(f"--bands is for Potsdam's products and custom datasets; {dataset} images are read as "
                        "they are")
    chosen_bands = _potsdam_bands(product, bands) if dataset == "potsdam" else None
    facts = PREPARED[dataset]
    whole_only = options.patch_size is None and facts.patch_size is None
    patch = options.patch_size if options.patch_size is not None else (facts.patch_size or 1)
    stride = options.stride if options.stride is not None else (facts.patch_stride or patch)
    if not whole_only and not 1 <= stride <= patch:
        raise ToolError(f"--stride {stride}: the window step must be between 1 and the patch size ({patch})")
    overlap = 0 if whole_only else patch - stride
    check_geometry(patch, patch, overlap)
    unknown_color, overwrite, on_error = options.unknown_color, options.overwrite, options.on_error
    if dataset == "isaid":
        jobs, notes = isaid_jobs(raw, out, isaid_coding(unknown_color), patch, overlap, options.whole_held_out,
                                 overwrite)
    elif dataset == "loveda":
        jobs, notes = loveda_jobs(raw, out, loveda_coding(unknown_color), patch, overlap, whole_only, options.domain,
                                  overwrite, on_error)
    else:
        coding = isprs_coding(unknown_color, eroded=options.label_variant == "eroded")
        jobs, notes = isprs_jobs(dataset, raw, out, coding, patch, overlap, options.label_variant, image_dir,
                                 label_dir, options.split_tiles or SPLIT_TILES[dataset], options.whole_held_out,
                                 overwrite, product, chosen_bands)
    if dataset != "loveda":
        report_name_problems(dataset, raw, image_dir, label_dir, options.label_variant, product, on_error, notes)
    _check_window_fits(dataset, jobs)
    jobs = _with_dataset_scaling(jobs, out, options.policy, notes)
    record_geometry(out, {"dataset": dataset, "patch": None if whole_only else patch,
                          "stride": None if whole_only else stride, "label_variant": options.label_variant})
    return _run(dataset, jobs, out, notes, options)


def _prepare_custom(out: Path, options: PrepareOptions) -> RunSummary:
    """``prepare("custom", None, out, options)``: the jobs the spec describes (``tools.custom_layout``), run.

    Raises:
        ToolError: no spec, or a problem ``custom_jobs`` finds in it.
    """
    if options.spec is None:
        raise ToolError("custom needs --spec FILE, the YAML description of the dataset (docs/data_custom.md)")
    custom_bands = None if options.bands in (None, "default") else _explicit_bands(options.bands)
    jobs, notes = custom_jobs(options.spec, out, options.patch_size, options.stride, options.unknown_color,
                              options.overwrite, options.workers, options.progress, custom_bands, options.on_error,
                              options.policy)
    _check_window_fits(CUSTOM_NAME, jobs)
    return _run(CUSTOM_NAME, _with_dataset_scaling(jobs, out, options.policy, notes), out, notes, options)


def _potsdam_bands(product: str, bands: str | tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The band choice for a Potsdam product: None (its bands 1, 2, 3), ``"irrg"`` or explicit numbers."""
    if bands is None or bands == "default":
        return None
    if bands == "irrg":
        if product == "RGB":
            raise ToolError("--bands irrg needs an infrared band: use --product RGBIR or IRRG")
        return POTSDAM_IRRG_BANDS[product]
    return _explicit_bands(bands)


def _explicit_bands(bands: str | tuple[int, ...]) -> tuple[int, ...]:
    """``"4,1,2"`` or ``(4, 1, 2)`` -> three 1-based band numbers."""
    try:
        return parse_bands(bands) if isinstance(bands, str) else tuple(bands)
    except ValueError as error:
        raise ToolError(str(error)) from None


def _run(dataset: str, jobs: list[SplitJob], out: Path, notes: list[str], options: PrepareOptions) -> RunSummary:
    """Clear partial files left by an interrupted run, save the jobs' scaling, then cut every job's image in the
    worker pool; refuse a result whose masks hold no labelled pixel (:func:`_check_labelled_splits`).

    Raises:
        ToolError: a split has no labelled pixel.
    """
    if jobs and jobs[0].scaling is not None:
        jobs[0].scaling.save(out / SCALING_FILE)
    for folder in {job.image_out for job in jobs} | {job.mask_out for job in jobs if job.mask_out is not None}:
        remove_partial_files(folder)
    summary = run_jobs(f"prepare {dataset}", split_one, largest_first(jobs), options.workers, options.on_error,
                       options.progress)
    summary.notes.extend(notes)
    if summary.written:  # a re-run over finished outputs decodes nothing: its first run checked them
        _check_labelled_splits(jobs)
    return summary


def _check_window_fits(dataset: str, jobs: list[SplitJob]) -> None:
    """Refuse a window that no image to be cut can hold (every image smaller in both directions), from the
    image headers, before anything is written.

    Raises:
        ToolError: naming the window, the largest image and the --patch-size to pass.
    """
    cut = [job for job in jobs if not job.whole_only]
    if not cut:
        return
    largest = all_smaller_than([job.image_path for job in cut], cut[0].patch_height)
    if largest is not None:
        raise ToolError(f"every {dataset} image is smaller than the {cut[0].patch_width} x {cut[0].patch_height} "
                        f"window (the largest is {largest[1]} x {largest[0]} px), so no patch can be cut: pass "
                        f"--patch-size {max(largest)} or less")


def _check_labelled_splits(jobs: list[SplitJob]) -> None:
    """Refuse a prepared split whose masks hold no labelled pixel (every pixel 255 = ignore, e.g. labels that
    are all no-data): nothing could be trained on or scored there. Splits without masks are not checked.

    Raises:
        ToolError: naming the split's mask folder and how many masks it has.
    """
    for folder in sorted({job.mask_out for job in jobs if job.mask_out is not None and job.mask_path is not None}):
        masks = sorted(folder.glob("*.png"))
        if masks and not has_labelled_pixel(masks):
            raise ToolError(no_labelled_pixels(f"prepared masks {folder}", len(masks)))


def _geometry_text() -> str:
    """Each dataset's default window for the help text, e.g. ``"896 for iSAID, ..., whole images for LoveDA"``."""
    return ", ".join(f"{cls.patch_size} for {cls.name}" if cls.patch_size else f"whole images for {cls.name}"
                     for cls in PREPARED.values()) + ", the spec's patch_size (else whole images) for custom"


def _parse_tiles(text: str | None) -> tuple[str, ...] | None:
    return tuple(item.strip() for item in text.split(",") if item.strip()) if text else None


def options_from_flags(args: argparse.Namespace) -> PrepareOptions:
    """The :class:`PrepareOptions` of the parsed command line (the one place flags become options).

    Raises:
        ValueError: ``--train-tiles`` without ``--test-tiles`` or the reverse, or a malformed
            ``--allow-source-root``; the message names the flag.
    """
    policy = source_policy(args)
    split_tiles = None
    if args.train_tiles or args.test_tiles:
        if not (args.train_tiles and args.test_tiles):
            raise ValueError("--train-tiles and --test-tiles go together")
        split_tiles = {"train": _parse_tiles(args.train_tiles), "test": _parse_tiles(args.test_tiles)}
    return PrepareOptions(patch_size=args.patch_size, stride=args.stride, label_variant=args.label_variant,
                          domain=args.domain, spec=args.spec, product=args.product, bands=args.bands,
                          workers=args.workers, overwrite=args.overwrite, on_error=args.on_error,
                          unknown_color=args.unknown_color, whole_held_out=args.whole_held_out,
                          image_dir=args.image_dir, label_dir=args.label_dir, split_tiles=split_tiles, policy=policy)


def build_parser() -> argparse.ArgumentParser:
    """prepare_dataset.py's flags (turned into :class:`PrepareOptions` by :func:`options_from_flags`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=str.lower, choices=DATASETS,
                        help="which dataset the raw folder holds, in any letter case (custom: --spec)")
    parser.add_argument("--raw", default=None, help="root of the unpacked official download (not for custom)")
    parser.add_argument("--spec", default=None,
                        help="custom: YAML description of your images, masks, classes and splits "
                             "(docs/data_custom.md, docs/examples/custom_dataset.yaml)")
    parser.add_argument("--out", required=True,
                        help="output root, outside --raw, --image-dir and --label-dir; the config's dataset folder")
    parser.add_argument("--patch-size", type=positive_int, default=None,
                        help=f"window side in pixels (default: {_geometry_text()})")
    parser.add_argument("--stride", type=positive_int, default=None,
                        help="window step in pixels (default 512; the window side for LoveDA and custom)")
    parser.add_argument("--label-variant", choices=LABEL_VARIANTS, default="full",
                        help="ISPRS: full labels (default, as the original implies) or the eroded "
                             "'noBoundary' labels, whose black borders become 255 = ignore")
    parser.add_argument("--product", choices=tuple(POTSDAM_PRODUCTS), default="RGB",
                        help="Potsdam: image product, 2_Ortho_RGB (default), 4_Ortho_RGBIR or 3_Ortho_IRRG")
    parser.add_argument("--bands", default=None,
                        help="Potsdam: the three bands written, 1-based in the product's order (e.g. 4,1,2), or "
                             "'irrg' for IR-R-G (the Vaihingen convention); default the product's bands 1,2,3 "
                             "(RGB for RGBIR). custom: overrides the spec's bands (e.g. 4,1,2)")
    parser.add_argument("--domain", choices=LOVEDA_DOMAINS, default="all",
                        help="LoveDA: both domains (default) or only Urban or Rural (domain-adaptation protocol)")
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
    add_source_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Command line: parse the flags and run ``prepare``; prints the run summary."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_flags(args)
    except ValueError as error:
        parser.error(str(error))
    run_tool(lambda: prepare(args.dataset, args.raw, args.out, options))


if __name__ == "__main__":
    main()
