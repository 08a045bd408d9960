"""``python -m bench --suggest``: the fastest correct configuration for the CPU this runs on, measured on the spot.

Candidates, each at 1 thread and at torch's default thread count (one per physical core):

- ``pytorch fp32``: the model after ``network.optimize_for_inference`` (eval.py's and predict.py's default);
- ``pytorch bf16``: the same with ``dtype=torch.bfloat16`` (``--precision bf16``), only where the CPU computes
  bf16 natively (AVX512-BF16 or AMX-BF16: ``engine.cpu_precision``); emulated bf16 is several times slower
  than fp32 and is listed as skipped;
- each ``--onnx`` file (``tools/export_onnx.py``; fp32, fp16 or ``--int8``) run by onnxruntime's CPU provider.

The PyTorch candidates run a randomly initialised model (seed 0; speed does not depend on the weights): the
first ``--onnx`` file's arch, options and class count from its metadata, so that all rows time the same network,
else ``--arch`` with 16 classes; every candidate runs on one seeded ``--eval-sizes[0]`` square image. A candidate is
*correct* when at least :data:`AGREEMENT` of its argmax pixels equal its reference's: the eager float32 model for
PyTorch, the first float32 file among ``--onnx`` for ONNX files (a file is its own reference; with no float32
file the others are "unchecked" and never suggested). Times are medians of ``--repeats`` calls after
``--warmup``, the candidates of one thread count called in turn.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import network
from engine.cpu_precision import cpu_capability, emulated_precision_note

AGREEMENT = 0.99
"""Smallest share of argmax pixels equal to the reference for a candidate to count as correct."""


@dataclass
class Candidate:
    """One configuration: how to run it, what to compare it with, and (after measuring) how it did."""
    backend: str
    precision: str
    threads: int
    run: Callable[[torch.Tensor], torch.Tensor] | None
    reference: str
    how: str
    note: str = ""
    ms: float | None = None
    agreement: float | None = None

    @property
    def correct(self) -> bool:
        return self.agreement is not None and self.agreement >= AGREEMENT


def onnx_precision(path: Path) -> str:
    """``int8`` / ``fp16`` / ``fp32`` of an exported file, from its metadata or, failing that, its weights."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    precision = {entry.key: entry.value for entry in proto.metadata_props}.get("precision")
    if precision:
        return precision
    return "fp16" if any(init.data_type == onnx.TensorProto.FLOAT16 for init in proto.graph.initializer) else "fp32"


def random_model(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    """(eval-mode model of seed 0, its description): the first ``--onnx`` file's network, else ``--arch``."""
    import json

    import onnx

    arch, classes, options = args.arch, 16, {}
    if args.onnx:
        metadata = {entry.key: entry.value
                    for entry in onnx.load(args.onnx[0], load_external_data=False).metadata_props}
        arch, classes = metadata["arch"], int(metadata["num_classes"])
        options = json.loads(metadata.get("model_options", "{}"))
    torch.manual_seed(0)
    described = f"{arch} {options or ''} {classes} classes".replace("  ", " ")
    return network.get_model(arch, classes, pretrained=None, **options).eval(), described


def pytorch_candidates(model: torch.nn.Module, threads: int) -> list[Candidate]:
    """fp32 and (native only) bf16 of the optimised model at ``threads`` torch threads."""
    def runner(optimized: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(images: torch.Tensor) -> torch.Tensor:
            torch.set_num_threads(threads)
            with torch.inference_mode():
                return optimized(images).float()
        return run

    fp32 = network.optimize_for_inference(copy.deepcopy(model))
    found = [Candidate("pytorch", "fp32", threads, runner(fp32), "eager fp32", f"predict.py (defaults), "
                       f"OMP_NUM_THREADS={threads}")]
    note = emulated_precision_note("bf16", "cpu")
    if note is None:
        bf16 = network.optimize_for_inference(copy.deepcopy(model), dtype=torch.bfloat16)
        found.append(Candidate("pytorch", "bf16", threads, runner(bf16), "eager fp32",
                               f"predict.py --precision bf16, OMP_NUM_THREADS={threads}"))
    else:
        found.append(Candidate("pytorch", "bf16", threads, None, "", "", note="skipped: emulated on this CPU"))
    return found


def onnx_candidates(paths: list[Path], threads: int) -> list[Candidate]:
    """One candidate per file at ``threads`` intra-op threads; the first fp32 file is every file's reference."""
    from evaluation.onnx_backend import OnnxModel

    precisions = [onnx_precision(path) for path in paths]
    reference = next((str(path) for path, precision in zip(paths, precisions) if precision == "fp32"), "")
    return [Candidate("onnxruntime", precision, threads, OnnxModel(path, threads=threads), reference,
                      f"predict.py --backend onnxruntime --onnx {path} (onnxruntime's own thread count, one "
                      f"per core; this row ran {threads})", note=path.name)
            for path, precision in zip(paths, precisions)]


def measure(candidates: list[Candidate], images: torch.Tensor, expected: dict[str, torch.Tensor], warmup: int,
            repeats: int) -> None:
    """Fill each runnable candidate's median ms and its argmax agreement with ``expected[reference]``."""
    runnable = [candidate for candidate in candidates if candidate.run is not None]
    seconds: dict[int, list[float]] = {id(candidate): [] for candidate in runnable}
    for round_index in range(warmup + repeats):
        for candidate in runnable:
            start = time.perf_counter()
            logits = candidate.run(images)
            if round_index >= warmup:
                seconds[id(candidate)].append(time.perf_counter() - start)
            if round_index == 0:
                if candidate.reference not in expected and candidate.precision == "fp32":
                    expected[candidate.reference] = logits.argmax(1)
                reference = expected.get(candidate.reference)
                if reference is not None:
                    candidate.agreement = float((logits.argmax(1) == reference).float().mean())
    for candidate in runnable:
        candidate.ms = 1e3 * statistics.median(seconds[id(candidate)])


def suggest(args: argparse.Namespace) -> str:
    """Measure every candidate on this machine, print the table and the suggestion, and return them."""
    size = args.eval_sizes[0]
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    model, described = random_model(args)
    default_threads = torch.get_num_threads()
    with torch.inference_mode():
        expected = {"eager fp32": model(images).argmax(1)}
    candidates: list[Candidate] = []
    for threads in sorted({1, default_threads}):
        group = pytorch_candidates(model, threads) + onnx_candidates([Path(path) for path in args.onnx], threads)
        measure(group, images, expected, args.warmup, args.repeats)
        candidates += group
    torch.set_num_threads(default_threads)
    capability = cpu_capability()
    lines = [f"CPU: {capability}; PyTorch runs {described} (random weights); {size}² batch 1",
             "| backend | precision | threads | median ms | equal argmax vs reference | correct | note |",
             "|---|---|---:|---:|---:|---|---|"]
    for candidate in candidates:
        ms = f"{candidate.ms:.0f}" if candidate.ms is not None else "-"
        agreement = f"{100 * candidate.agreement:.2f} %" if candidate.agreement is not None else "unchecked"
        lines.append(f"| {candidate.backend} | {candidate.precision} | {candidate.threads} | {ms} | {agreement} | "
                     f"{'yes' if candidate.correct else 'no'} | {candidate.note} |")
    correct = [candidate for candidate in candidates if candidate.correct and candidate.ms is not None]
    best = min(correct, key=lambda candidate: candidate.ms)
    lines.append(f"fastest correct configuration on this CPU ({capability}): {best.backend} {best.precision}, "
                 f"{best.threads} thread{'s' if best.threads > 1 else ''}, {best.ms:.0f} ms at {size}²: {best.how}")
    if not args.onnx:
        lines.append("(pass --onnx FILE [FILE ...] to include exported files, e.g. an fp32 and an --int8 export)")
    text = "\n".join(lines)
    print(text)
    return text
