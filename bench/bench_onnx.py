#!/usr/bin/env python3
"""Benchmark: onnxruntime (CPU, default providers) against the optimised PyTorch path, as a ratio per size.

Exports a randomly initialised model (seed 0; speed does not depend on the weights) with
``tools/export_onnx.py``'s exporter into ``--work-dir`` (reused by later runs: exporting takes minutes), then
times, alternating call by call so that a slow spell on a shared machine hits both alike, the PyTorch model
after ``network.optimize_for_inference`` (the eval.py / predict.py default) and an onnxruntime session on
the exported file, both with ``--threads`` intra-op threads, at each ``--sizes`` square input (batch 1).
Prints and (``--json``) writes the median milliseconds, the ratio PyTorch / onnxruntime (above 1:
onnxruntime is faster) and the largest logit difference relative to max|logit|.

    python bench/bench_onnx.py                       # PFNet-R50, 16 classes, 512² and 896², 2 threads
    python bench/bench_onnx.py --sizes 512 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import network  # noqa: E402
from bench.measure import NUM_CLASSES, build_model, time_alternating  # noqa: E402
from evaluation.onnx_backend import OnnxModel  # noqa: E402
from evaluation.onnx_export import export_onnx, onnx_metadata  # noqa: E402
from utils.atomic import atomic_write_bytes  # noqa: E402


def exported_model(arch: str, work_dir: Path) -> tuple[torch.nn.Module, Path]:
    """(the eval-mode model of seed 0, its ONNX file in ``work_dir``), exporting only when the file is missing."""
    model = build_model(arch, torch.device("cpu")).eval()
    path = work_dir / f"{network.model_entry(arch).name}_{NUM_CLASSES}cls_seed0.onnx"
    if not path.is_file():
        print(f"exporting {arch} to {path} (minutes on a 2-core CPU; reused by later runs)", flush=True)
        options = network.model_defaults(arch)
        export_onnx(model, path, onnx_metadata(num_classes=NUM_CLASSES, arch=arch, options=options,
                                               snapshot="random seed 0"))
    return model, path


def compare(model: torch.nn.Module, onnx_model: OnnxModel, sizes: list[int], warmup: int,
            repeats: int) -> list[dict]:
    """One result per size: median ms of both backends, their ratio and the relative logit difference.

    Args:
        model: eval-mode float32 model; it runs as ``network.optimize_for_inference(model)``.
        onnx_model: the exported same model.
        sizes: square input sides in pixels (batch 1).
    """
    optimized = network.optimize_for_inference(model)
    results = []
    for size in sizes:
        images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.inference_mode():
            expected = optimized(images)
        difference = float((onnx_model(images) - expected).abs().max() / expected.abs().max())

        def run_pytorch() -> torch.Tensor:
            with torch.inference_mode():
                return optimized(images)

        medians = time_alternating({"pytorch": run_pytorch, "onnxruntime": lambda: onnx_model(images)},
                                   warmup, repeats)
        results.append({"size": size, "pytorch_ms": 1000 * medians["pytorch"],
                        "onnxruntime_ms": 1000 * medians["onnxruntime"],
                        "ratio": medians["pytorch"] / medians["onnxruntime"],
                        "max_difference_relative": difference})
    return results


def format_results(results: list[dict], arch: str, threads: int) -> str:
    """A Markdown table of :func:`compare`'s results."""
    lines = [f"{arch}, batch 1, {threads} threads each",
             "| input | optimised PyTorch ms | onnxruntime ms | PyTorch / onnxruntime | max diff / max abs logit |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['size']}² | {r['pytorch_ms']:.0f} | {r['onnxruntime_ms']:.0f} | {r['ratio']:.2f}x | "
              f"{r['max_difference_relative']:.1e} |" for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    """Command line: export (or reuse) the model, time both backends, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="pfnet_r50", help="registered model (default pfnet_r50)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 896], help="square input sides (default 512 896)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of both backends (default 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds, median reported (default 5)")
    parser.add_argument("--work-dir", default="/tmp/pfnet_bench_onnx",
                        help="folder for the exported file, kept for later runs (default /tmp/pfnet_bench_onnx)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if min(args.sizes) < 32 or args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--sizes must be >= 32, --threads and --repeats >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    model, path = exported_model(args.arch, Path(args.work_dir))
    results = compare(model, OnnxModel(path, threads=args.threads), args.sizes, args.warmup, args.repeats)
    print(format_results(results, args.arch, args.threads))
    if args.json:
        atomic_write_bytes(args.json, json.dumps({"arch": args.arch, "threads": args.threads, "results": results},
                                                 indent=2).encode())
    return results


if __name__ == "__main__":
    main()
