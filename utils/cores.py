"""The CPU cores this process may use: the one count behind every default worker number (data tools, data
loaders). Free of torch, so that the data tools can import it."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """CPU cores this process may run on: ``os.sched_getaffinity`` (a container's or ``taskset``'s limit, not
    the machine's) where the OS has it, else ``os.cpu_count()``; at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
