"""Atomic file output: write to a temporary file beside the target, then ``os.replace`` it.

A reader never sees a half-written file, and an interrupted run leaves the previous file intact.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path in the target's folder; on success move it onto ``path``.

    The temporary name keeps the target's suffix, so writers that pick a format from the
    extension (PIL, rasterio) behave as for the real name. On error the temporary file is removed.
    """
    target = Path(path)
    temp_name = temporary_path_beside(target)
    try:
        yield temp_name
        os.replace(temp_name, target)
    finally:
        if os.path.exists(temp_name):
            os.remove(temp_name)


def temporary_path_beside(path: str | os.PathLike) -> str:
    """Create an empty hidden file in ``path``'s folder (created if needed) whose name ends with
    ``.tmp`` plus the target's suffix, and return its name. The caller replaces or removes it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(handle)
    return temp_name
