"""Per-model table: parameters, GFLOPs, eval latency in float32 and bfloat16, peak memory.

Each model is measured in its own spawned process, so its peak memory is its own (see
:func:`bench.measure.peak_memory_bytes`). Latency is the median wall time of one image through
``network.optimize_for_inference`` (the path eval.py and predict.py take), float32 and bfloat16 autocast;
the FLOPs are ``torch.utils.flop_counter``'s count of one plain float32 forward (convolutions and matrix
products). Weights are random: speed does not depend on them.

``python -m bench --models`` prints the table for every registered model (``--help``).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from multiprocessing import get_context

import torch

import network
from bench.measure import build_model, count_flops, peak_memory_bytes, timed
from engine.cpu_precision import cpu_capability


@dataclass
class ModelRow:
    """One model's figures; ``size`` is the side of the square input in pixels, times in seconds; ``cpu`` and
    ``threads``: the CPU kernels (:func:`engine.cpu_precision.cpu_capability`) and torch threads that ran it."""
    arch: str
    parameters: int
    size: int
    flops: int
    fp32_seconds: float
    bf16_seconds: float
    peak_bytes: int
    cpu: str
    threads: int


def latency(model: torch.nn.Module, images: torch.Tensor, warmup: int, repeats: int) -> float:
    """Median seconds of one no-grad call of ``model`` on ``images`` after ``warmup`` untimed calls."""
    def call() -> None:
        with torch.inference_mode():
            model(images)
    seconds = [timed(call, images.device) for _ in range(warmup + repeats)][warmup:]
    return statistics.median(seconds)


def measure_model(arch: str, size: int, device_name: str, warmup: int, repeats: int, threads: int) -> ModelRow:
    """Figures of ``arch`` (16 classes) on a (1, 3, size, size) input; meant to run in a fresh process.

    The peak memory is taken after the float32 runs, before the bfloat16 copy is built.
    """
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    model = build_model(arch, device).eval()
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        flops = count_flops(lambda: model(images))
    fp32_seconds = latency(network.optimize_for_inference(model), images, warmup, repeats)
    peak = peak_memory_bytes(device)
    bf16_seconds = latency(network.optimize_for_inference(model, dtype=torch.bfloat16), images, warmup, repeats)
    return ModelRow(arch, sum(p.numel() for p in model.parameters()), size, flops, fp32_seconds, bf16_seconds, peak,
                    cpu_capability(), torch.get_num_threads())


def measure_models(archs: list[str], size: int, device: torch.device, warmup: int, repeats: int) -> list[ModelRow]:
    """One :class:`ModelRow` per arch, each measured in a spawned child process."""
    rows = []
    for arch in archs:
        with get_context("spawn").Pool(1) as pool:
            rows.append(pool.apply(measure_model, (arch, size, str(device), warmup, repeats, torch.get_num_threads())))
    return rows


def format_model_table(rows: list[ModelRow], machine: str) -> str:
    """A Markdown table of the rows, with the machine they were measured on."""
    lines = [f"Machine: {machine}", "",
             "| model | original name | parameters (M) | input | GFLOPs | fp32 ms | bf16 ms | peak memory MB | CPU "
             "| threads |",
             "|---|---|---:|---|---:|---:|---:|---:|---|---:|"]
    for row in rows:
        aliases = network.model_entry(row.arch).aliases
        original = aliases[0] if aliases else "-"
        lines.append(f"| {row.arch} | {original} | {row.parameters / 1e6:.1f} | {row.size}² | {row.flops / 1e9:.1f} | "
                     f"{1e3 * row.fp32_seconds:.0f} | {1e3 * row.bf16_seconds:.0f} | {row.peak_bytes / 2**20:.0f} | "
                     f"{row.cpu} | {row.threads} |")
    lines += ["", "GFLOPs: one float32 forward (torch.utils.flop_counter; a multiply-add counts 2). Latency: median "
              "of one image through network.optimize_for_inference; peak memory: the process after the float32 runs."]
    return "\n".join(lines)
