"""Measuring helpers shared by the benchmarks: wall time with the device's queue drained, FLOPs, peak memory,
and the randomly initialised models they time (speed does not depend on the weights' values)."""
from __future__ import annotations

import statistics
import sys
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import network

NUM_CLASSES = 16
"""Classes of the benchmarked models (iSAID's 16)."""


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (CUDA); no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of ``fn``, including its queued device work."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_alternating(runners: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds of each CPU runner, calling them in turn: ``warmup`` untimed then ``repeats`` timed rounds
    (alternating calls, so that a slow spell on a shared machine hits every runner alike)."""
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(warmup + repeats):
        for name, runner in runners.items():
            elapsed = timed(runner, torch.device("cpu"))
            if round_index >= warmup:
                seconds[name].append(elapsed)
    return {name: statistics.median(values) for name, values in seconds.items()}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs that ``torch.utils.flop_counter`` sees in one call of ``fn`` (forward and, if run, backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def build_model(arch: str, device: torch.device) -> torch.nn.Module:
    """A randomly initialised model on ``device`` (speed does not depend on the weights' values)."""
    torch.manual_seed(0)
    return network.get_model(arch, NUM_CLASSES).to(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: ``max_memory_allocated`` on CUDA, peak resident set size on CPU.

    The CPU figure is Linux's ``VmHWM``, which belongs to this process's own address space
    (``ru_maxrss`` may carry the forking parent's peak across ``exec``); ``ru_maxrss`` elsewhere.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        import resource  # Unix only
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux/BSD
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
