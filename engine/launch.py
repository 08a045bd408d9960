"""torchrun with one closing line instead of its traceback when a process fails.

``python -m engine.launch`` takes torchrun's flags and command unchanged, e.g.::

    python -m engine.launch --standalone --nproc_per_node=2 train.py --device cpu ...

When a training process stops (a bad validation mask, a missing checkpoint, ...), it has already printed its
one-line reason; torchrun itself would then print a Python traceback of its own ``ChildFailedError`` with a
failure table. This launcher prints one line naming the process that failed first and its exit status
instead, and exits with that status (1 for a process ended by a signal).
"""
from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with ``argv`` (default: this process's arguments).

    Returns:
        0 when every process succeeded, else the exit status of the process that failed first (1 if a signal
        ended it).
    """
    try:
        torchrun_main(sys.argv[1:] if argv is None else argv)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        print(f"launch: {error.name} stopped in process {rank} with exit status {failure.exitcode} (its message "
              "is above; the other processes were stopped)", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
