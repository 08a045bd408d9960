"""Shared machinery of the data tools: safe file output, image reading, worker pool and run summary.

Every tool turns its inputs into a list of independent jobs (one per source image), runs them with
``run_jobs`` in a process pool and prints one progress bar and one summary.  A job reports problems
with its input by raising ``InputError``; ``run_jobs`` either stops at the first one
(``on_error="error"``) or skips that input and lists it at the end (``on_error="skip"``).
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing
import os
import re
import shutil
import signal
import struct
import sys
import threading
import time
import zipfile
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from utils import image_io
from utils.atomic import WriteError, atomic_write_bytes
from utils.image_io import MAX_IMAGE_PIXELS
from utils.source_policy import STRICT_SOURCES, SourcePolicy

ON_ERROR_CHOICES = ("error", "skip")
_EXIF_ORIENTATION = 0x0112
EXAMPLES_SHOWN = 3
_PR_SET_PDEATHSIG = 1
_PARENT_POLL_SECONDS = 1.0


class InputError(Exception):
    """A problem with one input file; the message names the file and says how to fix it."""


class ToolError(RuntimeError):
    """A run could not start (bad arguments, unrecognised layout, output inside the input) or stopped
    at bad input with ``on_error="error"``; the message says what to change."""


@dataclass
class JobResult:
    """What one job did: files written, finished outputs found and kept, patches, notes for the user."""

    name: str
    written: int = 0
    existing: int = 0
    patches: int = 0
    warnings: list[str] = field(default_factory=list)
    ignored_alpha: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class RunSummary:
    """Totals of one tool run, printed at the end (``str(summary)``).

    ``skipped`` lists inputs left out because of errors, ``warnings`` problems that did not stop the
    run (unknown colours written under a policy), ``notes`` plain information (tiles found, exclusions).
    """

    tool: str
    inputs: int = 0
    written: int = 0
    existing: int = 0
    patches: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ignored_alpha: list[str] = field(default_factory=list)

    def add(self, result: JobResult) -> None:
        """Fold one job's result into the totals."""
        self.inputs += 1
        self.written += result.written
        self.existing += result.existing
        self.patches += result.patches
        self.warnings.extend(result.warnings)
        self.ignored_alpha.extend(result.ignored_alpha)
        if result.error is not None:
            self.skipped.append(result.error)

    def __str__(self) -> str:
        patches = f"{self.patches} patches, " if self.patches else ""
        lines = [f"{self.tool}: {self.inputs} inputs, {self.written} files written, "
                 f"{self.existing} finished outputs kept, {patches}{self.seconds:.1f} s"]
        lines.extend(self.notes)
        if self.ignored_alpha:
            lines.append(f"{count_with_examples(self.ignored_alpha, 'mask(s)')} had a fully opaque alpha channel, "
                         "ignored")
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s):")
            lines.extend(f"  {message}" for message in self.warnings)
        if self.skipped:
            lines.append(f"{len(self.skipped)} input(s) skipped because of errors:")
            lines.extend(f"  {message}" for message in self.skipped)
        return "\n".join(lines)


def natural_key(name: str) -> list:
    """Sort key ordering embedded numbers by value ("P2" before "P10"), like natsort."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def count_with_examples(items: Sequence[str], what: str) -> str:
    """``"3 mask(s) (a.png, b.png, c.png)"``: a count and the first EXAMPLES_SHOWN items (``... and N more``)."""
    shown = ", ".join(str(item) for item in items[:EXAMPLES_SHOWN])
    more = f" and {len(items) - EXAMPLES_SHOWN} more" if len(items) > EXAMPLES_SHOWN else ""
    return f"{len(items)} {what} ({shown}{more})"


def report_input_problems(summary_notes: list[str], problem: str, items: Sequence[str], fix: str,
                          on_error: str) -> None:
    """Report inputs found wrong while listing the jobs (before any work): count and examples.

    With ``on_error="error"`` the run stops; with ``"skip"`` the message goes to ``summary_notes`` and
    those inputs are left out.

    Args:
        summary_notes: where the message goes when skipping (the run summary's notes).
        problem: what is wrong, after the count ("mask(s) without an image").
        items: the offending files.
        fix: what the user can do.
        on_error: ``"error"`` or ``"skip"``.

    Raises:
        ToolError: with ``on_error="error"`` and any ``items``.
    """
    if not items:
        return
    message = f"{count_with_examples(items, problem)}"
    if on_error == "error":
        raise ToolError(f"{message}; {fix}, or run with --on-error skip to leave them out")
    summary_notes.append(f"{message}: left out (--on-error skip)")


def default_workers() -> int:
    """Number of CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_output_outside_input(source: Path, output: Path) -> None:
    """Refuse an output folder equal to, or inside, the input folder (raw data is never written to).

    Raises:
        ToolError: naming both folders.
    """
    source_real, output_real = Path(source).resolve(), Path(output).resolve()
    if output_real == source_real or source_real in output_real.parents:
        raise ToolError(f"output folder {output} is inside the input folder {source}; the tools never write "
                        "into the source tree. Choose an output folder outside it.")


def unpack_zip(archive: Path, folder: Path) -> None:
    """Unpack ``archive`` into ``folder`` (created; must not exist), refusing any member that would land outside
    it (an absolute path, ``..``, a drive or a symbolic link). Members go to a hidden folder beside ``folder``
    first, renamed to ``folder`` when complete, so an interrupted unpack leaves no half folder under its name.

    Raises:
        ToolError: not a zip file, or an unsafe member; the message names the archive and the member.
    """
    staging = folder.with_name(f".{folder.name}.unpacking")
    try:
        with zipfile.ZipFile(archive) as opened:
            for member in opened.infolist():
                name = member.filename.replace("\\", "/")
                is_link = (member.external_attr >> 16) & 0o170000 == 0o120000
                if name.startswith("/") or ":" in name or ".." in name.split("/") or is_link:
                    raise ToolError(f"{archive}: member {member.filename!r} would be written outside {folder}; "
                                    "unpack the archive yourself after checking where its files go")
            shutil.rmtree(staging, ignore_errors=True)
            opened.extractall(staging)
    except (zipfile.BadZipFile, OSError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ToolError(f"{archive}: cannot be unpacked ({error}); re-download it") from None
    staging.rename(folder)


def atomic_write_image(path: Path, image: np.ndarray) -> None:
    """Encode ``image`` (H, W) or (H, W, 3) uint8, BGR order, in the format of ``path``'s suffix; write atomically."""
    ok, encoded = cv2.imencode(path.suffix, image)
    if not ok:
        raise OSError(f"OpenCV could not encode {path} (array {image.shape} {image.dtype})")
    atomic_write_bytes(path, encoded.tobytes())


def atomic_copy(source: Path, target: Path) -> None:
    """Copy a file's bytes to ``target`` atomically."""
    atomic_write_bytes(target, Path(source).read_bytes())


def png_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of a PNG from its header without decoding it; None if ``path`` is not a PNG."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(24)
    except OSError:
        return None
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", header[16:24])
    return height, width


def header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of an image from its header, without decoding the pixels; None if unknown.

    PNG headers are parsed directly; other formats (the ISPRS ``.tif`` tiles) through Pillow, whose
    ``Image.open`` reads only the header.  Pillow's decompression-bomb limit is lifted for this read
    only (no pixels are decoded; the process is single-threaded).  None for files Pillow cannot open
    and for images with an EXIF orientation other than 1, whose decoded size OpenCV may rotate.
    """
    size = png_size(path)
    if size is not None:
        return size
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as image:
            if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                return None
            width, height = image.size
    except (OSError, ValueError):
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return height, width


def check_pixel_count(path: Path) -> tuple[int, int] | None:
    """Refuse an image whose header claims more than MAX_IMAGE_PIXELS pixels, before decoding it.

    Returns:
        The header's (height, width), as :func:`header_size` gives it (None if unknown).

    Raises:
        InputError: naming the file, the size in its header and the limit.
    """
    size = header_size(path)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise InputError(f"{path}: its header claims {size[1]} x {size[0]} = {size[0] * size[1]} pixels, more than "
                         f"the limit of {MAX_IMAGE_PIXELS} (a decompression bomb or a corrupt header); "
                         "re-download it, or run with --on-error skip")
    return size


def read_image(path: Path, bands: tuple[int, ...] | None = None, scaling: image_io.ImageScaling | None = None,
               policy: SourcePolicy = STRICT_SOURCES) -> np.ndarray:
    """Read an image as (H, W, 3) uint8, BGR order, through ``utils.image_io`` (``bands``: 1-based band choice,
    ``scaling``: the rule for non-8-bit data, ``policy``: what a GDAL input may read); only the channel order
    and the error type are the tools' own.

    Raises:
        InputError: if the file is missing, truncated, corrupt or not an image, lacks a chosen band, is
            larger than MAX_IMAGE_PIXELS, or is refused by ``policy``.
    """
    check_pixel_count(path)
    try:
        return np.ascontiguousarray(image_io.read_image(path, bands, scaling, policy)[..., ::-1])
    except image_io.SourcePolicyError as error:
        raise InputError(str(error)) from None
    except image_io.ImageReadError as error:
        raise InputError(f"{error}; re-download or re-extract it, or run with --on-error skip") from None


def _read_mask_as_stored(path: Path) -> np.ndarray:
    """A mask's pixels as stored (``cv2.IMREAD_UNCHANGED``: any channel count and bit depth).

    Raises:
        InputError: if the file is missing, truncated, corrupt or not an image, or is larger than MAX_IMAGE_PIXELS.
    """
    check_pixel_count(path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        state = ("cannot be decoded (truncated, corrupt or not an image)" if Path(path).exists()
                 else "does not exist")
        raise InputError(f"{path}: {state}; re-download or re-extract it, or run with --on-error skip")
    return image


def drop_opaque_alpha(path: Path, image: np.ndarray) -> tuple[np.ndarray, bool]:
    """A mask read unchanged, (H, W) or (H, W, C), without its alpha channel; whether it had one.

    Raises:
        InputError: the mask is not 8-bit, or its alpha channel makes pixels transparent (the tools would
            ignore that, so the labels would not be what the file shows).
    """
    if image.dtype != np.uint8:
        raise InputError(f"{path}: masks must be 8-bit, found {image.dtype}; save the labels as 8-bit images")
    if image.ndim != 3 or image.shape[2] != 4:
        return image, False
    transparent = int((image[..., 3] != 255).sum())
    if transparent:
        raise InputError(f"{path}: the mask's alpha channel makes {transparent} pixels transparent or translucent, "
                         "which the tools would ignore; save the mask without alpha (flattened), or run with "
                         "--on-error skip")
    return np.ascontiguousarray(image[..., :3]), True


def read_colour_mask(path: Path) -> tuple[np.ndarray, bool]:
    """Read an 8-bit colour mask as (H, W, 3) BGR, and whether an opaque alpha channel was dropped.

    Raises:
        InputError: unreadable, not 8-bit, or with transparent pixels (see :func:`drop_opaque_alpha`).
    """
    image, had_alpha = drop_opaque_alpha(path, _read_mask_as_stored(path))
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return image, had_alpha


def read_label_image(path: Path) -> tuple[np.ndarray, bool]:
    """Read a single-channel uint8 label-id image (H, W), and whether an opaque alpha channel was dropped;
    a 3-channel file with equal channels is accepted.

    Raises:
        InputError: if unreadable, not a gray 8-bit image, or with transparent pixels.
    """
    image, had_alpha = drop_opaque_alpha(path, _read_mask_as_stored(path))
    if image.ndim == 3:
        if not ((image == image[..., :1]).all()):
            raise InputError(f"{path}: expected a gray label-id image but its channels differ; "
                             "convert colour labels first (tools/convert_isprs_mask2graymask.py)")
        image = np.ascontiguousarray(image[..., 0])
    return image, had_alpha


def output_is_complete(path: Path, height: int | None, width: int | None) -> bool:
    """Whether a finished output of a previous run can be kept: it exists, its header gives (height, width)
    (None: any size) and, for a PNG, every chunk passes its CRC check (a truncated or zeroed file fails).

    Pixels are not decompressed, so a resume over many finished patches stays fast.
    """
    if not path.is_file():
        return False
    png = png_size(path)
    size = png if png is not None else header_size(path)
    if size is None or (height is not None and size != (height, width)):
        return False
    if png is None:
        return True
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception:  # Pillow raises many types (SyntaxError, OSError, struct.error) for a damaged PNG
        return False
    return True


def _init_worker(parent_pid: int) -> None:
    cv2.setNumThreads(1)
    exit_with_parent(parent_pid)


def exit_with_parent(parent_pid: int) -> None:
    """Make this worker process end when ``parent_pid`` dies (e.g. the tool was killed with kill -9).

    Linux: the kernel sends SIGTERM on the parent's death (``prctl(PR_SET_PDEATHSIG)``). Elsewhere a
    daemon thread checks every second whether the parent is gone and ends the process.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0:
            if os.getppid() != parent_pid:  # the parent died before the request took effect
                os._exit(1)
            return
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="parent-watch").start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)


def _run_one(job_function: Callable[..., JobResult], job) -> JobResult:
    try:
        return job_function(job)
    except InputError as problem:
        return JobResult(name=str(getattr(job, "name", job)), error=str(problem))


def run_jobs(tool: str, job_function: Callable[..., JobResult], jobs: Sequence, workers: int | None,
             on_error: str = "error", progress: bool = True) -> RunSummary:
    """Run ``job_function(job)`` for every job, in ``workers`` processes, with one progress bar.

    Args:
        tool: name shown on the progress bar and in the summary.
        job_function: picklable top-level function returning a ``JobResult``; raises ``InputError``
            for bad input.
        jobs: picklable job descriptions, each with a ``name`` attribute.
        workers: process count (None: all cores; 1: run in this process).
        on_error: ``"error"`` stops at the first bad input, ``"skip"`` skips it and lists it at the end.
        progress: show a tqdm progress bar.

    Returns:
        The run's totals.

    Raises:
        ToolError: on the first bad input when ``on_error == "error"``.
    """
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ToolError(f"--workers must be at least 1 (1 = no pool), got {workers}")
    summary = RunSummary(tool)
    start = time.perf_counter()
    results = _results(job_function, jobs, min(workers, max(1, len(jobs))))
    with closing(results), tqdm(total=len(jobs), desc=tool, unit="image", disable=not progress or not jobs) as bar:
        for result in results:
            if result.error is not None and on_error == "error":
                raise ToolError(result.error)
            summary.add(result)
            bar.update(1)
    summary.seconds = time.perf_counter() - start
    return summary


def _results(job_function: Callable[..., JobResult], jobs: Sequence, workers: int) -> Iterator[JobResult]:
    """Yield job results as they finish; leaving the generator early cancels the jobs not started."""
    if workers == 1:
        for job in jobs:
            yield _run_one(job_function, job)
        return
    # Fresh interpreters, not fork: forking a process whose OpenCV thread pool has run can deadlock.
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(os.getpid(),))
    try:
        pending: set[Future] = set()
        queue = iter(jobs)
        # Keep a few jobs per worker in flight so that a stop does not leave many started.
        for job in queue:
            pending.add(executor.submit(_run_one, job_function, job))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                next_job = next(queue, None)
                if next_job is not None:
                    pending.add(executor.submit(_run_one, job_function, next_job))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def run_tool(action: Callable[[], RunSummary]) -> None:
    """Run a tool from its command line: print the summary; bad input or Ctrl-C end with a short message."""
    try:
        summary = action()
    except (ToolError, WriteError) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted: the outputs written so far are complete (atomic writes); run the same command "
                 "again to finish")
    print(summary)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type for counts, sizes and offsets: a whole number >= ``minimum`` (argparse names the flag
    in its error message)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def add_common_arguments(parser, memory: str, problems: str) -> None:
    """Add ``--workers``, ``--overwrite`` and ``--on-error`` to an argparse parser.

    Args:
        parser: the tool's ``argparse.ArgumentParser``.
        memory: what one worker holds in memory, for the ``--workers`` help.
        problems: the bad inputs this tool detects, for the ``--on-error`` help.
    """
    parser.add_argument("--workers", type=positive_int, default=None,
                        help=f"worker processes (default: all {default_workers()} cores; 1 = no pool); each "
                             f"holds {memory}")
    parser.add_argument("--overwrite", action="store_true",
                        help="rewrite outputs that already exist (default: keep finished outputs, so an "
                             "interrupted run resumes where it stopped)")
    parser.add_argument("--on-error", choices=ON_ERROR_CHOICES, default="error",
                        help=f"on {problems}: stop with an error naming the file (default), or skip that "
                             "input and list it at the end")
