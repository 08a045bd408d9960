"""Colour-coded or id-coded ground truth -> label-id ("gray") masks, with an explicit policy for unknown values."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from datasets.classes import IGNORE_LABEL
from datasets.isaid import ISAIDDataset
from datasets.isprs import PotsdamDataset
from datasets.loveda import LoveDADataset
from tools._errors import InputError, ToolError
from tools._folders import check_output_outside_input, natural_key
from tools._image_files import atomic_write_image, header_size, output_is_complete, read_colour_mask
from tools._jobs import JobResult, RunSummary, run_jobs
from utils.atomic import remove_partial_files

UNKNOWN_COLOR_CHOICES = ("error", "ignore", "background")
_UNMAPPED = np.uint16(0xFFFF)
_ROWS_PER_STRIPE = 1024
_COLOURS_LISTED = 10


def _check_coding(unknown: str, codes: tuple, label_ids: tuple[int, ...]) -> None:
    """Raise ValueError unless ``unknown`` is a policy and every code (colour or value) has one label id."""
    if unknown not in UNKNOWN_COLOR_CHOICES:
        raise ValueError(f"unknown-colour policy must be one of {UNKNOWN_COLOR_CHOICES}, got {unknown!r}")
    if len(codes) != len(label_ids):
        raise ValueError(f"{len(codes)} colours or values but {len(label_ids)} label ids: they must pair up")


@dataclass(frozen=True)
class ColourCoding:
    """How colours map to label ids.

    Attributes:
        colours_bgr: known colours in OpenCV's BGR order.
        label_ids: label id of each known colour (same length).
        unknown: policy for any other colour: ``"error"`` (raise, naming file, colours and pixel counts),
            ``"ignore"`` (write ``IGNORE_LABEL`` 255) or ``"background"`` (write 0, what the original
            tools silently did; for ISPRS id 0 is impervious surfaces).
    """

    colours_bgr: tuple[tuple[int, int, int], ...]
    label_ids: tuple[int, ...]
    unknown: str = "error"

    def __post_init__(self) -> None:
        _check_coding(self.unknown, self.colours_bgr, self.label_ids)


def palette_coding(palette_rgb, unknown: str = "error", extra_rgb: dict | None = None) -> ColourCoding:
    """Coding where row ``k`` of an RGB palette is label ``k``; ``extra_rgb`` maps more RGB colours to ids."""
    pairs = [(tuple(int(c) for c in rgb[::-1]), label) for label, rgb in enumerate(palette_rgb)]
    pairs += [(tuple(int(c) for c in rgb[::-1]), label) for rgb, label in (extra_rgb or {}).items()]
    return ColourCoding(tuple(colour for colour, _ in pairs), tuple(label for _, label in pairs), unknown)


def isaid_coding(unknown: str = "error") -> ColourCoding:
    """The 16 iSAID colours (the original convert tool's BGR table)."""
    return palette_coding(ISAIDDataset.palette, unknown)


def isprs_coding(unknown: str = "error", eroded: bool = False) -> ColourCoding:
    """The six ISPRS colours; with ``eroded`` the black border of the noBoundary labels becomes 255."""
    extra = {PotsdamDataset.eroded_border_color: IGNORE_LABEL} if eroded else None
    return palette_coding(PotsdamDataset.palette, unknown, extra)


@dataclass(frozen=True)
class IdCoding:
    """How the values of an id-coded (single-channel 8-bit) mask map to label ids.

    Attributes:
        source_ids: the values the raw masks hold.
        label_ids: label id written for each of them (same length; ``IGNORE_LABEL`` for no-data).
        unknown: policy for any other value, as ``ColourCoding.unknown``.
    """

    source_ids: tuple[int, ...]
    label_ids: tuple[int, ...]
    unknown: str = "error"

    def __post_init__(self) -> None:
        _check_coding(self.unknown, self.source_ids, self.label_ids)


def loveda_coding(unknown: str = "error") -> IdCoding:
    """LoveDA's raw mask values: no-data -> 255 (ignore), class value k + 1 -> label id k."""
    no_data = LoveDADataset.raw_no_data
    classes = range(LoveDADataset.num_classes)
    return IdCoding((no_data, *(k + 1 for k in classes)), (LoveDADataset.ignore_label, *classes), unknown)


def ids_to_labels(mask: np.ndarray, coding: IdCoding, path: Path | str) -> tuple[np.ndarray, list[str]]:
    """Map the values of an id-coded mask to label ids.

    Args:
        mask: (H, W) uint8 raw values.
        coding: value table and unknown-value policy.
        path: file the mask came from, for messages.

    Returns:
        ids: (H, W) uint8 label ids.
        warnings: one message per file with unknown values (policies ``ignore`` / ``background``).

    Raises:
        InputError: with policy ``error``, listing the unknown values and their pixel counts.
    """
    table = np.full(256, _UNMAPPED, np.uint16)
    table[list(coding.source_ids)] = coding.label_ids
    mapped = table[mask]
    unmapped = mapped == _UNMAPPED
    if not unmapped.any():
        return mapped.astype(np.uint8), []
    values, counts = np.unique(mask[unmapped], return_counts=True)
    listed = ", ".join(f"{value} x {count}" for value, count in list(zip(values.tolist(), counts.tolist()))[:10])
    message = (f"{path}: {int(counts.sum())} of {mask.size} pixels hold values outside "
               f"{sorted(coding.source_ids)}: {listed}")
    if coding.unknown == "error":
        raise InputError(f"{message}. Fix the mask, or choose --unknown-color ignore (write 255) or background "
                         "(write 0)")
    fill = IGNORE_LABEL if coding.unknown == "ignore" else 0
    mapped[unmapped] = fill
    return mapped.astype(np.uint8), [f"{message}; written as {fill}"]


@lru_cache(maxsize=4)
def _lookup_table(colours_bgr: tuple[tuple[int, int, int], ...], label_ids: tuple[int, ...]) -> np.ndarray:
    """(2**24,) uint16 table from packed BGR key to label id, ``_UNMAPPED`` for unknown colours."""
    table = np.full(1 << 24, _UNMAPPED, np.uint16)
    for (blue, green, red), label in zip(colours_bgr, label_ids):
        table[(blue << 16) | (green << 8) | red] = label
    return table


def _packed_keys(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> (H, W) int32 keys ``b << 16 | g << 8 | r``."""
    channels = bgr.astype(np.int32)
    return (channels[..., 0] << 16) | (channels[..., 1] << 8) | channels[..., 2]


def colours_to_ids(bgr: np.ndarray, coding: ColourCoding, path: Path | str) -> tuple[np.ndarray, list[str]]:
    """Convert a colour mask to label ids.

    Args:
        bgr: (H, W, 3) uint8 colour mask in OpenCV's BGR order.
        coding: colour table and unknown-colour policy.
        path: file the mask came from, for messages.

    Returns:
        ids: (H, W) uint8 label ids.
        warnings: one message per file with unknown colours (policies ``ignore`` / ``background``).

    Raises:
        InputError: with policy ``error``, listing the unknown colours (RGB) and their pixel counts.
    """
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise InputError(f"{path}: expected an 8-bit 3-channel colour mask, found {bgr.dtype} {bgr.shape}")
    table = _lookup_table(coding.colours_bgr, coding.label_ids)
    fill = IGNORE_LABEL if coding.unknown == "ignore" else 0
    ids = np.empty(bgr.shape[:2], np.uint8)
    unknown_counts: dict[int, int] = {}
    for top in range(0, bgr.shape[0], _ROWS_PER_STRIPE):
        keys = _packed_keys(bgr[top:top + _ROWS_PER_STRIPE])
        stripe = table[keys]
        unmapped = stripe == _UNMAPPED
        if unmapped.any():
            colours, counts = np.unique(keys[unmapped], return_counts=True)
            for key, count in zip(colours.tolist(), counts.tolist()):
                unknown_counts[key] = unknown_counts.get(key, 0) + count
            stripe[unmapped] = fill
        ids[top:top + _ROWS_PER_STRIPE] = stripe
    if not unknown_counts:
        return ids, []
    message = _describe_unknown(path, unknown_counts, bgr.shape[0] * bgr.shape[1])
    if coding.unknown == "error":
        raise InputError(f"{message}. Fix the mask, or choose --unknown-color ignore (write 255) or "
                         "background (write 0, the original tools' behaviour)")
    return ids, [f"{message}; written as {fill}"]


def _describe_unknown(path: Path | str, counts: dict[int, int], total: int) -> str:
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    listed = ", ".join(f"RGB({key & 255}, {(key >> 8) & 255}, {key >> 16}) x {count}"
                       for key, count in ordered[:_COLOURS_LISTED])
    more = f" and {len(ordered) - _COLOURS_LISTED} more colours" if len(ordered) > _COLOURS_LISTED else ""
    pixels = sum(counts.values())
    return (f"{path}: {pixels} of {total} pixels have colours outside the palette: {listed}{more}")


@dataclass(frozen=True)
class ConvertJob:
    """Convert one colour mask file into a label-id PNG at ``target``."""

    name: str
    source: Path
    target: Path
    coding: ColourCoding
    overwrite: bool = False


def convert_one(job: ConvertJob) -> JobResult:
    """Run one ``ConvertJob``; keeps a finished ``target`` (one that decodes, of the source's size) unless
    ``overwrite``.

    Raises:
        InputError: unreadable mask, transparent alpha or, with policy ``error``, unknown colours.
    """
    result = JobResult(job.name)
    if not job.overwrite:
        size = header_size(job.source)
        if output_is_complete(job.target, *(size or (None, None))):
            result.existing = 1
            return result
    colours, had_alpha = read_colour_mask(job.source)
    if had_alpha:
        result.ignored_alpha.append(str(job.source))
    ids, result.warnings = colours_to_ids(colours, job.coding, job.source)
    atomic_write_image(job.target, ids)
    result.written = 1
    return result


def convert_folder(tool: str, masks_dir: Path, out_dir: Path, source_suffix: str, coding: ColourCoding,
                   workers: int | None, overwrite: bool, on_error: str, progress: bool = True) -> RunSummary:
    """Convert every ``*{source_suffix}`` file in ``masks_dir`` to ``out_dir/{stem}.png`` (label ids).

    Raises:
        ToolError: missing input folder, output folder equal to or inside it, or bad input with
            ``on_error="error"``.
    """
    masks_dir, out_dir = Path(masks_dir), Path(out_dir)
    if not masks_dir.is_dir():
        raise ToolError(f"{masks_dir} does not exist; expected the colour masks there (see --root_path, --phase)")
    check_output_outside_input(masks_dir, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_files(out_dir)
    sources = sorted(masks_dir.glob(f"*{source_suffix}"), key=lambda path: natural_key(path.name))
    if not sources and on_error == "error":
        raise ToolError(f"{masks_dir} holds no colour masks (*{source_suffix}); check --root_path and --phase, "
                        "or run with --on-error skip to accept an empty folder")
    jobs = [ConvertJob(str(source), source, out_dir / f"{source.stem}.png", coding, overwrite) for source in sources]
    return run_jobs(tool, convert_one, jobs, workers, on_error, progress)
