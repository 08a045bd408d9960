"""The text log of train.py and eval.py: one logger writing to the console and to the run's log file.

Lines read ``MM-DD HH:MM:SS message``. The console goes through ``tqdm.write`` (standard output), so progress
bars stay intact. Under torchrun only the main process (global rank 0) writes INFO lines and the log file;
the other processes print warnings and errors only. Where the files go: ``train.log`` in train.py's run
folder, ``eval_{date}.log`` in eval.py's output folder (docs/training.md, docs/evaluation.md).
"""
from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

LOGGER_NAME = "pfnet"
_LINE_FORMAT = logging.Formatter("%(asctime)s %(message)s", datefmt="%m-%d %H:%M:%S")


class _TqdmHandler(logging.Handler):
    """Console handler that prints through ``tqdm.write`` so progress bars stay intact."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record))


def setup_logger(log_file: Path | None, is_main: bool) -> logging.Logger:
    """The ``pfnet`` logger, its earlier handlers replaced: INFO to the console and ``log_file`` (appended to,
    UTF-8, its folder created) on the main process; warnings and errors to the console elsewhere.

    Args:
        log_file: the run's log file, or None for the console only.
        is_main: whether this is the main process (global rank 0, or the only process).

    Returns:
        The logger; release its file with :func:`close_logger`.
    """
    logger = logging.getLogger(LOGGER_NAME)
    close_logger(logger)
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    console = _TqdmHandler()
    console.setFormatter(_LINE_FORMAT)
    logger.addHandler(console)
    if log_file is not None and is_main:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(_LINE_FORMAT)
        logger.addHandler(file_handler)
    return logger


def close_logger(logger: logging.Logger) -> None:
    """Close and remove the handlers :func:`setup_logger` attached (the log file is released; no-op without)."""
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
