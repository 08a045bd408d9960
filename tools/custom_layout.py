"""Raw-layout rules of a custom dataset: the spec file's folders, pairing rule and splits -> preparation jobs.

``custom_jobs`` lists the images, pairs each with its mask, assigns the splits and checks everything
(the spec, every pairing, every mask's values and size) before ``tools/prepare_dataset.py custom``
writes a single file; the writing then uses the benchmarks' machinery (``tools/_tiling.py``: atomic,
resumable, parallel).  The spec format is ``datasets.custom.load_spec``'s.
"""

from __future__ import annotations

import dataclasses
import glob
from pathlib import Path

import numpy as np

from datasets.classes import IGNORE_LABEL
from datasets.custom import CustomDataset, DatasetSpec, SpecError, load_spec
from tools._errors import InputError, ToolError
from tools._folders import check_output_outside_input, natural_key
from tools._jobs import JobResult, report_input_problems, run_jobs
from tools._masks import ColourCoding, IdCoding, palette_coding
from tools._tiling import SplitJob, check_geometry, read_job_mask
from utils import image_io
from utils.image_io import IMAGE_SUFFIXES, ImageScaling
from utils.source_policy import STRICT_SOURCES, SourcePolicy

CUSTOM_NAME = CustomDataset.prepare_name
_LISTED = 3


def spec_coding(spec: DatasetSpec, unknown: str) -> ColourCoding | IdCoding:
    """The colour or value table of a spec: class ``k`` -> label id ``k``, ignored codes -> 255."""
    if spec.mask_format == "colour":
        return palette_coding([item.color for item in spec.classes], unknown,
                              {colour: IGNORE_LABEL for colour in spec.ignore})
    values = tuple(item.value for item in spec.classes) + spec.ignore
    labels = tuple(range(len(spec.classes))) + (IGNORE_LABEL,) * len(spec.ignore)
    return IdCoding(values, labels, unknown)


def _source_folder(pattern: str) -> Path:
    """The folder a folder-or-glob entry reads from (the glob's fixed part)."""
    path = Path(pattern)
    return path.parent if glob.has_magic(path.name) else path


def _list_files(spec: DatasetSpec, key: str, pattern: str) -> list[Path]:
    """Image files of a folder (directly inside, by suffix) or of a glob pattern, in natural order."""
    if glob.has_magic(Path(pattern).name):
        if not Path(pattern).parent.is_dir():
            raise ToolError(f"{spec.path}: {key}: folder {Path(pattern).parent} does not exist; fix the path "
                            "(relative to the spec file)")
        files = [Path(name) for name in glob.glob(pattern)]
    elif not Path(pattern).is_dir():
        raise ToolError(f"{spec.path}: {key}: folder {pattern} does not exist; fix the path (relative to the spec "
                        "file) or create it")
    else:
        files = [path for path in Path(pattern).iterdir() if path.suffix.lower() in IMAGE_SUFFIXES]
    files = sorted((path for path in files if path.is_file() and not path.name.startswith(".")),
                   key=lambda path: natural_key(path.name))
    if not files:
        raise ToolError(f"{spec.path}: {key}: {pattern} holds no images ({', '.join(IMAGE_SUFFIXES)}); fix the path")
    return files


def _by_stem(spec: DatasetSpec, key: str, files: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in files:
        if path.stem in found:
            raise ToolError(f"{spec.path}: {key}: {found[path.stem].name} and {path.name} have the same stem; "
                            "keep one of them")
        found[path.stem] = path
    return found


def _pairs(spec: DatasetSpec, images_key: str, images: str, masks_key: str,
           masks: str) -> tuple[dict[str, tuple[Path, Path]], list[Path]]:
    """key -> (image, mask) of one image folder and its mask folder, by the spec's suffix rule; and the masks
    that no image claims."""
    image_files = _by_stem(spec, images_key, _list_files(spec, images_key, images))
    mask_files = _by_stem(spec, masks_key, _list_files(spec, masks_key, masks))
    pairs, unpaired, foreign = {}, [], []
    for stem, image in image_files.items():
        if not stem.endswith(spec.image_suffix):
            foreign.append(image)
            continue
        pair_key = stem[: len(stem) - len(spec.image_suffix)] if spec.image_suffix else stem
        mask = mask_files.get(pair_key + spec.mask_suffix)
        if mask is None:
            unpaired.append((image, pair_key + spec.mask_suffix))
        else:
            pairs[pair_key] = (image, mask)
    if foreign:
        raise ToolError(f"{spec.path}: image_suffix: {len(foreign)} image(s) do not end with "
                        f"{spec.image_suffix!r}, e.g. {foreign[0]}; fix image_suffix or narrow images with a glob")
    if unpaired:
        listed = ", ".join(f"{image.name} (expected {stem}.* in {masks})" for image, stem in unpaired[:_LISTED])
        raise ToolError(f"{spec.path}: {masks_key}: {len(unpaired)} of {len(image_files)} images have no mask: "
                        f"{listed}; add the masks, or fix mask_suffix / image_suffix")
    paired = {mask for _, mask in pairs.values()}
    return pairs, [mask for mask in mask_files.values() if mask not in paired]


def _assign_splits(spec: DatasetSpec) -> tuple[dict[str, dict[str, tuple[Path, Path]]], list[Path]]:
    """split -> {key: (image, mask)} as the spec's ``split_by`` says, every split non-empty; and the masks
    without their image."""
    orphans = []
    if spec.split_by == "folders":
        assigned = {}
        for split, folder in spec.splits.items():
            assigned[split], unclaimed = _pairs(spec, f"splits.{split}", str(Path(spec.images) / folder),
                                                f"splits.{split}", str(Path(spec.masks) / folder))
            orphans += unclaimed
    else:
        pairs, orphans = _pairs(spec, "images", spec.images, "masks", spec.masks)
        assigned = _listed_splits(spec, pairs) if spec.split_by == "lists" else _fraction_splits(spec, pairs)
    for split, members in assigned.items():
        if not members:
            raise ToolError(f"{spec.path}: splits.{split}: no image falls into this split; give it images "
                            "(a larger share, entries in its list, files in its folder) or remove it")
    return assigned, orphans


def _listed_splits(spec: DatasetSpec, pairs: dict[str, tuple[Path, Path]]) -> dict[str, dict]:
    assigned, owner = {}, {}
    for split, list_file in spec.splits.items():
        path = Path(list_file)
        if not path.is_file():
            raise ToolError(f"{spec.path}: splits.{split}: list file {path} does not exist; create it (one image "
                            "stem per line) or fix the path (relative to the spec file)")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        members = {}
        for name in names:
            pair_key = Path(name).stem
            if spec.image_suffix and pair_key.endswith(spec.image_suffix):
                pair_key = pair_key[: -len(spec.image_suffix)]
            if pair_key not in pairs:
                raise ToolError(f"{path}: {name!r} (splits.{split}) is not an image of {spec.images}; fix the list")
            if pair_key in owner:
                raise ToolError(f"{path}: {name!r} is in splits.{split} and splits.{owner[pair_key]}; keep it in one")
            owner[pair_key] = split
            members[pair_key] = pairs[pair_key]
        assigned[split] = members
    return assigned


def _fraction_splits(spec: DatasetSpec, pairs: dict[str, tuple[Path, Path]]) -> dict[str, dict]:
    """Seeded shuffle of the sorted keys, cut in the splits' order by ``round(share * N)`` images each."""
    keys = sorted(pairs, key=natural_key)
    order = [keys[index] for index in np.random.default_rng(spec.seed).permutation(len(keys))]
    assigned, start = {}, 0
    for split, share in spec.splits.items():
        count = min(len(keys) - start, round(share * len(keys)))
        assigned[split] = {key: pairs[key] for key in sorted(order[start:start + count], key=natural_key)}
        start += count
    return assigned


def spec_scaling(spec: DatasetSpec, train_images: list[Path], policy: SourcePolicy) -> ImageScaling | None:
    """The scaling of a spec's non-8-bit images: the spec's ``[low, high]``, or for ``dataset`` the one of
    ``utils.image_io.dataset_scaling`` over the training images (None when they are all 8-bit).

    Raises:
        ToolError: an image cannot be opened, lacks a chosen band or is refused by ``policy``.
    """
    try:
        if isinstance(spec.scaling, tuple):
            if all(image_io.is_eight_bit(path, spec.bands, policy) for path in train_images):
                return None
            return ImageScaling(low=(spec.scaling[0],) * 3, high=(spec.scaling[1],) * 3)
        return image_io.dataset_scaling(train_images, spec.bands, policy)
    except image_io.ImageReadError as error:
        raise ToolError(f"{error} (spec {spec.path}: images, bands)") from None


def check_pair(job: SplitJob) -> JobResult:
    """Check one pair before anything is written: mask readable, values known, size equal to the image's.

    Raises:
        InputError: naming the mask (or image) and the fix.
    """
    mask, _, _ = read_job_mask(job)
    try:
        size = image_io.image_size(job.image_path, job.policy)
    except image_io.SourcePolicyError as error:
        raise InputError(str(error)) from None
    except image_io.ImageReadError as error:
        raise InputError(f"{error}; convert it to PNG or GeoTIFF, or remove it") from None
    if mask.shape[:2] != size:
        raise InputError(f"{job.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                         f"{job.image_path} is {size[1]}x{size[0]}; they must match pixel for pixel")
    return JobResult(job.name)


def custom_jobs(spec_path: str | Path, out: Path, patch_size: int | None, stride: int | None, unknown_color: str,
                overwrite: bool, workers: int | None = None, progress: bool = True,
                bands: tuple[int, ...] | None = None, on_error: str = "error",
                policy: SourcePolicy = STRICT_SOURCES) -> tuple[list[SplitJob], list[str]]:
    """Preparation jobs of a custom dataset, every input checked first (nothing is written here).

    Args:
        spec_path: the dataset's YAML description.
        out: output root (must lie outside the spec's image and mask folders).
        patch_size, stride: window and step in pixels, overriding the spec's (None: the spec's; whole
            images when neither gives a window; the step defaults to the window).
        unknown_color: policy for mask colours / values not in the spec (``tools._masks``).
        overwrite: rewrite existing outputs.
        workers: processes of the check pass (None: all cores).
        progress: show the check pass's progress bar.
        bands: three 1-based image bands, overriding the spec's ``bands``.
        on_error: ``"error"`` stops at masks without their image, ``"skip"`` notes them and leaves them out.
        policy: what a GDAL image (a VRT) may make GDAL read (``utils.source_policy``).

    Raises:
        ToolError: a bad spec, a missing folder, an image without a mask, a mask without its image (with
            ``on_error="error"``), a mask colour or value not in the spec (policy ``error``), a size mismatch,
            an image refused by ``policy``, an empty split; each names the file or key and the fix.

    The jobs carry the spec's bands and the images' scaling (``spec_scaling``); ``prepare`` saves a
    dataset scaling as ``{out}/scaling.json`` once every check has passed.
    """
    try:
        spec = load_spec(spec_path)
    except SpecError as error:
        raise ToolError(str(error)) from None
    if bands is not None:
        spec = dataclasses.replace(spec, bands=tuple(bands))
    for source in (spec.images, spec.masks):
        check_output_outside_input(_source_folder(source), out)
    patch = patch_size or spec.patch_size
    step = stride or spec.stride or patch
    if patch:
        check_geometry(patch, patch, patch - step)
    coding = spec_coding(spec, unknown_color)
    mode = "convert" if spec.mask_format == "colour" else "remap"
    assigned, orphans = _assign_splits(spec)
    jobs, notes = [], []
    report_input_problems(notes, "mask(s) without their image", [str(path) for path in orphans],
                          "add the images, or remove the masks", on_error)
    scaling = spec_scaling(spec, [image for image, _ in assigned["train"].values()], policy)
    for split, members in assigned.items():
        notes.append(f"{spec.name} {split}: {len(members)} images")
        for pair_key, (image, mask) in members.items():
            jobs.append(SplitJob(name=str(image), base=pair_key, image_path=image, image_out=out / split / "images",
                                 mask_path=mask, mask_out=out / split / "masks",
                                 mask_suffix=CustomDataset.mask_suffix, mask_mode=mode, coding=coding,
                                 patch_height=patch or 1, patch_width=patch or 1,
                                 overlap=(patch - step) if patch else 0, whole_only=patch is None,
                                 overwrite=overwrite, bands=spec.bands, scaling=scaling, policy=policy))
    run_jobs(f"check {spec.name}", check_pair, jobs, workers, "error", progress)
    return jobs, notes
