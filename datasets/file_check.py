"""Bad data files: the one error type for them, and the check of label-id masks before work starts.

:class:`DataFileError` is raised by the dataset readers for an image or mask that cannot be used; its
message is one line naming the file, with or without DataLoader worker processes.

Masks are checked (every pixel a class id 0..K-1 or the ignore label 255) by one implementation for the
data tools (when they write masks), ``train.py`` (the validation split before the first epoch) and
``eval.py`` (before any image is scored). A mask with other ids would otherwise fail late (after a whole
training epoch) or be scored wrongly.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from datasets.classes import IGNORE_LABEL
from utils.image_io import ImageReadError, read_as_stored

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


def _mask_problem(path: Path, num_classes: int) -> str | None:
    try:
        ids = read_as_stored(path)
    except ImageReadError as error:
        return str(error)
    if ids is None:
        state = "cannot be decoded (truncated, corrupt or not an image)" if path.exists() else "does not exist"
        return f"{path}: {state}"
    if ids.ndim == 3:
        ids = ids[..., 0]
    invalid = invalid_label_ids(ids, num_classes)
    return describe_invalid_ids(path, invalid, num_classes) if invalid else None


def find_mask_problems(mask_paths: Sequence[str | Path], num_classes: int, what: str = "checking masks",
                       workers: int = 4) -> list[str]:
    """Decode every mask (threads; OpenCV releases the GIL) and return one line per bad file.

    Args:
        mask_paths: label-id PNGs (single channel, or channels equal as the datasets read them).
        num_classes: K; ids must be in ``0..K-1`` or IGNORE_LABEL.
        what: progress-bar label.
        workers: reader threads.

    Returns:
        Problems in the order of ``mask_paths`` (unreadable files and files with ids outside the classes).
    """
    paths = [Path(path) for path in mask_paths]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(lambda path: _mask_problem(path, num_classes), paths), total=len(paths),
                            desc=what, unit="mask", disable=len(paths) < 100, leave=False))
    return [problem for problem in results if problem is not None]


def summarize_mask_problems(problems: Sequence[str], total: int) -> str:
    """One line for an error: how many of ``total`` masks are bad, and the first FILES_LISTED problems."""
    shown = "; ".join(problems[:FILES_LISTED])
    more = f"; and {len(problems) - FILES_LISTED} more" if len(problems) > FILES_LISTED else ""
    return f"{len(problems)} of {total} masks are not valid label-id masks: {shown}{more}"
