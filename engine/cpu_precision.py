"""Whether this CPU computes bfloat16 / float16 natively, and the one line that says so when it does not.

PyTorch runs a bf16 or fp16 request on any x86 CPU, but without the instructions for it (AVX512-BF16 or
AMX-BF16 for bf16; AVX512-FP16 or AMX-FP16 for fp16) its kernels convert to float32 and back around every
operation: the first training step of PFNet-R50 under ``--amp bf16`` took 164 s on an AVX2 CPU against
19 s in float32. The flags are read once from ``/proc/cpuinfo`` (Linux); where there is none (macOS,
Windows) or it lists no x86 flags (ARM), nothing is said.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

CPU_INFO = Path("/proc/cpuinfo")
"""Where the CPU's feature flags are read from (tests point it at a file of another CPU's flags)."""
NATIVE_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}
"""``/proc/cpuinfo`` flags of the instructions that compute each half precision natively."""
FLAG_NAMES = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16", "avx512_fp16": "AVX512-FP16",
              "amx_fp16": "AMX-FP16"}


@functools.cache
def cpu_flags(cpu_info: Path) -> frozenset[str] | None:
    """The feature flags of the first CPU that ``cpu_info`` lists (read once per file); None where the file
    is missing or has no x86 ``flags`` line."""
    try:
        text = cpu_info.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def cpu_capability() -> str:
    """The CPU kernels torch uses and the native half-precision instructions present, e.g. ``AVX2``,
    ``AVX512+AVX512-BF16`` or ``AVX512+AVX512-BF16+AMX-BF16+AVX512-FP16`` (torch's
    ``get_cpu_capability()`` alone, where the flags cannot be read)."""
    flags = cpu_flags(CPU_INFO) or frozenset()
    native = [name for flag, name in FLAG_NAMES.items() if flag in flags]
    return "+".join([torch.backends.cpu.get_cpu_capability(), *native])


def emulated_precision_note(precision: str, device: torch.device | str) -> str | None:
    """The warning line for a ``precision`` request this CPU can only emulate; None when there is nothing to say.

    Args:
        precision: ``bf16`` / ``fp16`` (the values of ``--amp`` and ``--precision``); others need no note.
        device: the device the run computes on; only ``cpu`` can be warned about.

    Returns:
        ``precision: bf16 on this CPU (AVX2, no AVX512-BF16/AMX-BF16) is emulated and several times slower
        than fp32; fp32 is the fast path here``, or None (native support, another device, unknown flags).
    """
    if precision not in NATIVE_FLAGS or str(device).partition(":")[0] != "cpu":  # (a bad name fails later)
        return None
    flags = cpu_flags(CPU_INFO)
    if flags is None or flags & set(NATIVE_FLAGS[precision]):
        return None
    missing = "/".join(FLAG_NAMES[flag] for flag in NATIVE_FLAGS[precision])
    return (f"precision: {precision} on this CPU ({cpu_capability()}, no {missing}) is emulated and several "
            "times slower than fp32; fp32 is the fast path here")
