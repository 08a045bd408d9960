"""The data tools' job pool: run independent jobs (one per source image) in worker processes, with one progress
bar, the on-error rule and one run summary.

Every tool turns its inputs into a list of jobs and runs them with :func:`run_jobs`. A job reports a problem with
its input by raising :class:`~tools._errors.InputError`; ``run_jobs`` either stops at the first one
(``on_error="error"``, a :class:`~tools._errors.ToolError`) or skips that input and lists it in the summary
(``on_error="skip"``). Inputs found wrong while listing the jobs, before any work, go through
:func:`report_input_problems` under the same rule.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import cv2
from tqdm import tqdm

from tools._errors import InputError, ToolError
from utils.cores import usable_cores
from utils.on_error import ON_ERROR_CHOICES

EXAMPLES_SHOWN = 3
"""Items named in a message about many files; the rest are counted (``... and N more``)."""
_PR_SET_PDEATHSIG = 1
_PARENT_POLL_SECONDS = 1.0


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
    run (unknown colours written under a policy), ``notes`` plain information (tiles found, exclusions);
    ``seconds`` is the wall-clock time of the pool.
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
    """Worker processes a tool uses by default: every core this process may use (``utils.cores``)."""
    return usable_cores()


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
        ToolError: on the first bad input when ``on_error == "error"``, or ``workers`` below 1.
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
