"""Atomic, verified file output: write to a temporary file beside the target, check it, then ``os.replace`` it.

A reader never sees a half-written file, and an interrupted run leaves the previous file intact.
Before the rename, :func:`publish` flushes the temporary file to the disk (``fsync``, which is where a
full disk may first show), refuses an empty file, and runs an optional ``verify`` callback (e.g. re-open
the file) for writers that do not raise on their own errors (GDAL through rasterio). Any failure
removes the temporary file, keeps the previous one, and raises :class:`WriteError`, whose message is
one line: the target path and the OS reason. Entry points catch it with :func:`exit_on_write_error`.

Temporary files are hidden and carry ``PARTIAL_MARK`` and the writer's process id in their name
(``.mask.png.partial-<pid>-<random>.png``), so a later run can remove those an interrupted one left
behind: all of them (:func:`remove_partial_files`, for tools that own their output folder) or only
those whose process has ended (:func:`remove_stale_partial_files`).
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

PARTIAL_MARK = ".partial-"

Verify = Callable[[str], None]


class WriteError(OSError):
    """An output file could not be written completely; ``str()`` is one line naming the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"could not write {self.path}: {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.reason)  # crosses process pools (the tools' workers) intact


def _reason(error: BaseException) -> str:
    """The OS reason of ``error`` on one line ("No space left on device"), else its first line."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_path_beside(path: str | os.PathLike) -> str:
    """Create an empty hidden temporary file in ``path``'s folder (created if needed) and return its name.

    The name keeps the target's suffix, so writers that pick a format from the extension (PIL,
    rasterio, OpenCV) behave as for the real name. Finish with :func:`publish` or remove it.

    Raises:
        WriteError: the folder cannot be created or written to.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{target.name}{PARTIAL_MARK}{os.getpid()}-"
        handle, temp_name = tempfile.mkstemp(prefix=prefix, suffix=target.suffix, dir=target.parent)
    except OSError as error:
        raise WriteError(path, _reason(error)) from error
    os.close(handle)
    return temp_name


def _flush_to_disk(name: str | os.PathLike) -> None:
    """``fsync`` a closed file: a full disk or an I/O error of delayed writes is reported here."""
    descriptor = os.open(name, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system can fsync a folder)."""
    try:
        _flush_to_disk(folder)
    except OSError:
        pass


def publish(temp_name: str | os.PathLike, path: str | os.PathLike, verify: Verify | None = None,
            expected_size: int | None = None, allow_empty: bool = False) -> None:
    """Check a finished temporary file and move it onto ``path`` with the usual permissions (0666 minus umask).

    Args:
        temp_name: the temporary file (from :func:`temporary_path_beside`), closed by its writer.
        path: the target; replaced only if every check passes.
        verify: called with ``temp_name`` after the flush; any exception it raises means the file is bad.
        expected_size: the exact byte count the file must have (None: not checked).
        allow_empty: accept a 0-byte file (by default an empty output means the writer lost its data).

    Raises:
        WriteError: the flush, a check or the rename failed; ``temp_name`` has been removed and ``path``
            is as it was.
    """
    try:
        _flush_to_disk(temp_name)
        size = os.path.getsize(temp_name)
        if expected_size is not None and size != expected_size:
            raise WriteError(path, f"{size} of {expected_size} bytes reached the disk (is it full?)")
        if size == 0 and not allow_empty:
            raise WriteError(path, "the writer produced an empty file (is the disk full?)")
        if verify is not None:
            try:
                verify(str(temp_name))
            except Exception as error:
                raise WriteError(path, f"the written file does not read back ({_reason(error)})") from error
        os.chmod(temp_name, 0o666 & ~_current_umask())
        os.replace(temp_name, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_name)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise WriteError(path, _reason(error)) from error
        raise
    _sync_folder(Path(path).parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, verify: Verify | None = None, allow_empty: bool = False,
                expected_size: int | None = None) -> Iterator[str]:
    """Yield a temporary path beside ``path``; when the block succeeds, :func:`publish` it onto ``path``
    (``verify``, ``allow_empty`` and ``expected_size`` as there).

    An ``OSError`` raised in the block (a full disk while writing) becomes a :class:`WriteError` naming
    ``path``. On any error the temporary file is removed and ``path`` is left as it was.
    """
    temp_name = temporary_path_beside(path)
    try:
        yield temp_name
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_name)
        if isinstance(error, WriteError):
            raise
        raise WriteError(path, _reason(error)) from error
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_name)
        raise
    publish(temp_name, path, verify=verify, expected_size=expected_size, allow_empty=allow_empty)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; all ``len(data)`` bytes must reach the disk.

    Raises:
        WriteError: naming ``path`` and the OS reason; ``path`` is left as it was.
    """
    with atomic_path(path, allow_empty=True, expected_size=len(data)) as temp_name, open(temp_name, "wb") as handle:
        handle.write(data)


def _partial_files(folder: str | os.PathLike) -> list[Path]:
    """The temporary files of :func:`temporary_path_beside` in ``folder`` (none if it is not a folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [path for path in folder.iterdir() if path.name.startswith(".") and PARTIAL_MARK in path.name]


def remove_partial_files(folder: str | os.PathLike) -> int:
    """Delete temporary files an interrupted run left in ``folder``; returns how many."""
    stale = _partial_files(folder)
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def _writer_pid(name: str) -> int | None:
    """The process id in a temporary file's name, or None for a name without one."""
    owner = name.split(PARTIAL_MARK, 1)[1].split("-", 1)[0]
    return int(owner) if owner.isdigit() else None


def process_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` runs on this host (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partial_files(folder: str | os.PathLike) -> int:
    """Delete temporary files in ``folder`` whose writer has ended (killed runs); returns how many.

    Files of a process still running (another run writing into the same folder, or this one) are kept.
    """
    removed = 0
    for path in _partial_files(folder):
        pid = _writer_pid(path.name)
        if pid is not None and process_alive(pid):
            continue
        path.unlink(missing_ok=True)
        removed += 1
    return removed


@contextlib.contextmanager
def exit_on_write_error() -> Iterator[None]:
    """For entry points: a :class:`WriteError` ends the process with exit code 1 and its one-line message."""
    try:
        yield
    except WriteError as error:
        sys.exit(f"error: {error}")
