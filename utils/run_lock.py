"""One run at a time per output folder: a lock file in the folder, held with ``fcntl.flock``.

The holder writes who it is (command, process id, host, start time) into ``{folder}/.run.lock`` and
removes the file when it releases the lock. The kernel releases a ``flock`` when its process ends, even
by ``kill -9``, so a killed run blocks nobody: the next run gets the lock, finds the killed run's
details in the file and says that it takes the lock over. A lock still held although the process named
in the file has ended on this host (a child process that inherited the file outlived it) is stale too:
after a second look, one poll later, the file is replaced and the new run goes on.

A second run either refuses at once with one line naming the folder and the holder
(:class:`FolderBusyError`), or waits up to a number of seconds, saying so once, and refuses after that.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from utils.atomic import process_alive

LOCK_FILE = ".run.lock"
POLL_SECONDS = 0.5


def utc_timestamp() -> str:
    """The current time as ``"2026-12-07 03:50:01 UTC"``."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


class FolderBusyError(OSError):
    """Another run holds the output folder's lock; the message names the folder and that run."""


@dataclass(frozen=True)
class Holder:
    """The run that holds (or held) a folder's lock, as written in its lock file."""

    command: str
    pid: int
    host: str
    started: str

    def describe(self) -> str:
        """``"predict.py (pid 123 on host, started 2026-12-07 03:50:01 UTC)"``."""
        return f"{self.command} (pid {self.pid} on {self.host}, started {self.started})"

    def ended_here(self) -> bool:
        """Whether this run was on this host and its process has ended."""
        return self.host == socket.gethostname() and not process_alive(self.pid)


@dataclass
class FolderLock:
    """A held lock: ``path`` is the lock file, ``descriptor`` the open file that holds the ``flock``."""

    path: Path
    descriptor: int | None

    def release(self) -> None:
        """Remove the lock file (if it is still this lock's) and drop the lock; safe to call twice."""
        if self.descriptor is None:
            return
        if _names_this_file(self.path, self.descriptor):
            self.path.unlink()
        os.close(self.descriptor)
        self.descriptor = None


def _read_holder(descriptor: int) -> Holder | None:
    """The holder written in an open lock file, or None (empty: a holder that has not written yet; unreadable)."""
    try:
        return Holder(**json.loads(os.pread(descriptor, 4096, 0)))
    except (ValueError, TypeError):
        return None


def _names_this_file(path: Path, descriptor: int) -> bool:
    """Whether ``path`` still names the file open as ``descriptor`` (a releasing holder removes its file)."""
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False


def _try_lock(path: Path) -> tuple[int | None, Holder | None]:
    """(the open lock file, its previous holder) if the lock was free, else (None, the current holder).

    Raises:
        OSError: the lock file cannot be created; the message names it.
    """
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise OSError(error.errno, f"cannot create the lock file {path}: {error.strerror}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(descriptor)
        os.close(descriptor)
        return None, holder
    if not _names_this_file(path, descriptor):  # locked the file of a run that has just released it: retry
        os.close(descriptor)
        return _try_lock(path)
    return descriptor, _read_holder(descriptor)


def _say_taking_over(folder: str | os.PathLike, holder: Holder, messages: TextIO) -> None:
    print(f"warning: {folder} was locked by {holder.describe()}, which has ended: taking the lock over",
          file=messages)


def lock_folder(folder: str | os.PathLike, command: str, wait_seconds: float, hint: str,
                messages: TextIO | None = None) -> FolderLock:
    """Take ``folder``'s lock for this process (the folder must exist).

    Args:
        folder: the output folder.
        command: what this run is, written for others to read ("predict.py").
        wait_seconds: how long to wait for another run to finish with the folder (0: refuse at once).
        hint: what the user can do when refused, ending the message ("pass --lock_timeout SECONDS to wait").
        messages: where the waiting and take-over messages go (default ``sys.stderr``).

    Returns:
        The held lock; call :meth:`FolderLock.release` when done (a killed process releases it too).

    Raises:
        FolderBusyError: another live run still holds the lock after ``wait_seconds``.
        OSError: the lock file cannot be created in ``folder``.
    """
    messages = messages or sys.stderr
    path = Path(folder) / LOCK_FILE
    deadline = time.monotonic() + wait_seconds
    waiting_said, suspect = False, None
    while True:
        descriptor, holder = _try_lock(path)
        if descriptor is not None:
            break
        if holder is not None and holder.ended_here():
            if holder == suspect:  # held by a survivor of a run that has ended, two looks apart: stale
                _say_taking_over(folder, holder, messages)
                path.unlink(missing_ok=True)
                continue
            suspect = holder
        elif time.monotonic() >= deadline:
            who = holder.describe() if holder is not None else "another run (starting)"
            raise FolderBusyError(f"{folder} is in use by {who}; {hint}")
        elif not waiting_said:
            who = holder.describe() if holder is not None else "another run"
            print(f"waiting up to {wait_seconds:g} s for {who} to finish with {folder}", file=messages, flush=True)
            waiting_said = True
        time.sleep(POLL_SECONDS)
    if holder is not None:  # its process ended without releasing the lock (killed)
        _say_taking_over(folder, holder, messages)
    own = Holder(command, os.getpid(), socket.gethostname(), utc_timestamp())
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(asdict(own)) + "\n").encode(), 0)
    except OSError:  # a full disk: the lock holds all the same, others see "another run (starting)"
        pass
    return FolderLock(path, descriptor)
