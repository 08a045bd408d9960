"""Two background threads for map-scale prediction: reading ahead and writing behind the model.

:func:`evaluation.inference.predict_large_image` runs three kinds of work per strip of windows: reading and
normalising pixels, the model, and blending, argmax and writing finished blocks. On a GPU the model's share
is small and the rest would be the whole cost if run in series, so the reading runs ahead in one thread
(:func:`read_ahead`) and the writing behind in another (:class:`WriteBehind`), each through a bounded queue:
memory stays that of a few strips, and the calls a writer receives come in exactly the order of a serial
run (the outputs are the same bytes). The threads spend their time in numpy, OpenCV, GDAL and torch, which
release the GIL. An error in either thread is raised in the caller's thread, as it would be in series.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

Item = TypeVar("Item")
POLL_S = 0.1
"""How often a thread blocked on a full or empty queue checks whether the other side has stopped."""
_END = object()


def _put(items: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; whether it was put."""
    while not stop.is_set():
        try:
            items.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


def read_ahead(items: Iterator[Item], depth: int) -> Iterator[Item]:
    """Iterate ``items`` computed in a background thread, at most ``depth`` items ahead of the consumer.

    An exception raised while computing an item is raised by the iteration at that item. Stopping the
    iteration early (an error in the consumer, ``close()``) stops the thread after the item it is computing.

    Raises:
        ValueError: ``depth`` below 1.
    """
    if depth < 1:
        raise ValueError(f"read-ahead depth must be at least 1, got {depth}")
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if not _put(ready, (item, None), stop):
                    return
            _put(ready, (_END, None), stop)
        except BaseException as error:  # handed to the consumer, raised there
            _put(ready, (_END, error), stop)

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


class WriteBehind:
    """Run calls in submission order in a background thread, at most ``depth`` waiting.

    Use as a context manager: leaving the block normally waits for every call and raises the first error
    one raised; leaving it on an error drops the calls not yet run. After a call fails, the later ones are
    not run and the next :meth:`submit` raises that error.
    """

    def __init__(self, depth: int):
        if depth < 1:
            raise ValueError(f"write-behind depth must be at least 1, got {depth}")
        self._calls: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="write-behind", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                call = self._calls.get(timeout=POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if call is _END or self._stop.is_set():
                return
            if self._error is None:
                try:
                    call()
                except BaseException as error:  # raised in the submitting thread
                    self._error = error

    def submit(self, call: Callable[[], None]) -> None:
        """Queue ``call`` (waits while ``depth`` calls are waiting).

        Raises:
            BaseException: the error of an earlier call.
        """
        if self._error is not None:
            raise self._error
        _put(self._calls, call, self._stop)

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            _put(self._calls, _END, self._stop)
        else:
            self._stop.set()
        self._thread.join()
        if error_type is None and self._error is not None:
            raise self._error


class RunNow:
    """:class:`WriteBehind`'s interface for a serial run: each call runs at once, in the caller's thread."""

    def submit(self, call: Callable[[], None]) -> None:
        """Run ``call`` now."""
        call()

    def __enter__(self) -> RunNow:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        return None
