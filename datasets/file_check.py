"""Bad data files: the one error type for them, and the check of label-id masks before work starts.

:class:`DataFileError` is raised by the dataset readers for an image or mask that cannot be used; its
message is one line naming the file, with or without DataLoader worker processes.

Masks are checked (every pixel a class id 0..K-1 or the ignore label 255) by one implementation for the
data tools (when they write masks), ``train.py`` (the validation split before the first epoch) and
``eval.py`` (before any image is scored). A mask with other ids would otherwise fail late (after a whole
training epoch) or be scored wrongly.

Data that cannot be used at all is refused by the same checks in ``tools/prepare_dataset.py``, ``train.py``
and ``eval.py``: a split whose masks hold no labelled pixel (:func:`check_masks`, :func:`has_labelled_pixel`),
and images that are all smaller than the window or crop (:func:`all_smaller_than`).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from datasets.classes import IGNORE_LABEL
from utils.image_io import ImageReadError, image_size, read_as_stored

IDS_LISTED = 8
FILES_LISTED = 3
_WORKER_TRACEBACK = "\nOriginal Traceback"


class DataFileError(ValueError):
    """An image or mask of a dataset that cannot be used (unreadable, truncated, wrong size or ids).

    A DataLoader worker re-raises an exception in the main process as ``type(error)(worker traceback text)``;
    this class keeps only the original one-line message of such a text, so that the user reads the same
    line naming the file with or without loader workers.
    """

    def __init__(self, message: str):
        if _WORKER_TRACEBACK in message:
            message = message.rstrip().splitlines()[-1].split(f"{DataFileError.__name__}: ", 1)[-1]
        super().__init__(message)


def invalid_label_ids(ids: np.ndarray, num_classes: int) -> dict[int, int]:
    """``{id: pixel count}`` of the values in ``ids`` (any shape, integer) that are neither a class id
    ``0..num_classes-1`` nor IGNORE_LABEL; empty when the mask is valid."""
    values, counts = np.unique(ids, return_counts=True)
    return {int(value): int(count) for value, count in zip(values, counts)
            if not (0 <= value < num_classes or value == IGNORE_LABEL)}


def describe_invalid_ids(path: str | Path, invalid: dict[int, int], num_classes: int) -> str:
    """One line: the file, the offending ids with their pixel counts, and what is allowed."""
    listed = ", ".join(f"{value} x {count}" for value, count in sorted(invalid.items())[:IDS_LISTED])
    more = f" and {len(invalid) - IDS_LISTED} more ids" if len(invalid) > IDS_LISTED else ""
    return (f"{path}: label ids outside the {num_classes} classes (0..{num_classes - 1}, {IGNORE_LABEL} = ignore): "
            f"{listed}{more} (id x pixels)")


@dataclass
class MaskCheck:
    """What :func:`check_masks` found: one line per bad file, and the labelled pixels (not IGNORE_LABEL) of
    the readable masks."""

    problems: list[str]
    labelled_pixels: int


def _check_one_mask(path: Path, num_classes: int) -> tuple[str | None, int]:
    try:
        ids = read_as_stored(path)
    except ImageReadError as error:
        return str(error), 0
    if ids is None:
        state = "cannot be decoded (truncated, corrupt or not an image)" if path.exists() else "does not exist"
        return f"{path}: {state}", 0
    if ids.ndim == 3:
        ids = ids[..., 0]
    invalid = invalid_label_ids(ids, num_classes)
    labelled = int(np.count_nonzero(ids != IGNORE_LABEL))
    return (describe_invalid_ids(path, invalid, num_classes) if invalid else None), labelled


def check_masks(mask_paths: Sequence[str | Path], num_classes: int, what: str = "checking masks",
                workers: int = 4) -> MaskCheck:
    """Decode every mask (threads; OpenCV releases the GIL): find the bad files and count the labelled pixels.

    Args:
        mask_paths: label-id PNGs (single channel, or channels equal as the datasets read them).
        num_classes: K; ids must be in ``0..K-1`` or IGNORE_LABEL.
        what: progress-bar label.
        workers: reader threads.

    Returns:
        The problems in the order of ``mask_paths`` (unreadable files and files with ids outside the classes)
        and the number of pixels whose id is not IGNORE_LABEL.
    """
    paths = [Path(path) for path in mask_paths]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(lambda path: _check_one_mask(path, num_classes), paths), total=len(paths),
                            desc=what, unit="mask", disable=len(paths) < 100, leave=False))
    return MaskCheck([problem for problem, _ in results if problem is not None],
                     sum(labelled for _, labelled in results))


def has_labelled_pixel(mask_paths: Sequence[str | Path]) -> bool:
    """Whether any mask has a pixel that is not IGNORE_LABEL; reads the masks in order and stops at the first
    such one (usually the first file). Unreadable masks are passed over (the readers report them)."""
    for path in mask_paths:
        try:
            ids = read_as_stored(path)
        except ImageReadError:
            continue
        if ids is not None and np.any(ids != IGNORE_LABEL):
            return True
    return False


def no_labelled_pixels(what: str, count: int) -> str:
    """One line for an error: the ``count`` masks of ``what`` (e.g. "training split train of /data/x") hold
    no labelled pixel."""
    return (f"{what}: none of its {count} masks has a labelled pixel (every pixel is {IGNORE_LABEL} = ignore), so "
            "there is nothing to train on or score; check that the masks hold class ids (see docs/data.md)")


def all_smaller_than(image_paths: Sequence[str | Path], side: int) -> tuple[int, int] | None:
    """Whether every image is smaller than a ``side`` x ``side`` window in both directions (it cannot hold one
    window), from the file headers; stops at the first image that is not.

    Returns:
        The largest (height, width) among the images when all are smaller, else None (also for no images or
        when no header can be read: the readers report unreadable files).
    """
    largest = None
    for path in image_paths:
        try:
            height, width = image_size(path)
        except ImageReadError:
            continue
        if height >= side or width >= side:
            return None
        largest = max(largest or (0, 0), (height, width), key=lambda size: size[0] * size[1])
    return largest


def summarize_mask_problems(problems: Sequence[str], total: int) -> str:
    """One line for an error: how many of ``total`` masks are bad, and the first FILES_LISTED problems."""
    shown = "; ".join(problems[:FILES_LISTED])
    more = f"; and {len(problems) - FILES_LISTED} more" if len(problems) > FILES_LISTED else ""
    return f"{len(problems)} of {total} masks are not valid label-id masks: {shown}{more}"
