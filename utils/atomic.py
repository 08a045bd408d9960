"""Atomic file output: write to a temporary file beside the target, then ``os.replace`` it.

A reader never sees a half-written file, and an interrupted run leaves the previous file intact.
Temporary files are hidden and carry ``PARTIAL_MARK`` in their name, so a later run can remove
those an interrupted one left behind (:func:`remove_partial_files`).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

PARTIAL_MARK = ".partial-"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_path_beside(path: str | os.PathLike) -> str:
    """Create an empty hidden temporary file in ``path``'s folder (created if needed) and return its name.

    The name keeps the target's suffix, so writers that pick a format from the extension (PIL,
    rasterio, OpenCV) behave as for the real name. Finish with :func:`publish` or remove it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}{PARTIAL_MARK}", suffix=target.suffix,
                                         dir=target.parent)
    os.close(handle)
    return temp_name


def publish(temp_name: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temporary file the usual permissions (0666 minus the umask) and move it onto ``path``."""
    os.chmod(temp_name, 0o666 & ~_current_umask())
    os.replace(temp_name, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; when the block succeeds, :func:`publish` it onto ``path``.

    On error the temporary file is removed and ``path`` is left as it was.
    """
    temp_name = temporary_path_beside(path)
    try:
        yield temp_name
        publish(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.remove(temp_name)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as temp_name, open(temp_name, "wb") as handle:
        handle.write(data)


def remove_partial_files(folder: str | os.PathLike) -> int:
    """Delete temporary files an interrupted run left in ``folder``; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [path for path in folder.iterdir() if path.name.startswith(".") and PARTIAL_MARK in path.name]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)
