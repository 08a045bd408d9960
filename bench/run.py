"""PFNet speed benchmark: eval latency, train step time and peak memory against this machine's matmul rate.

Every figure is a median of ``--repeats`` timed calls after ``--warmup`` untimed ones. Within a task and
size, the configurations are timed round-robin (one call of each per round), so a slow spell caused by
other processes on a shared machine hits all of them alike and their ratios stay meaningful. Achieved
GFLOP/s use the model's FLOPs from ``torch.utils.flop_counter`` (convolutions and matrix products) and are
shown beside the float32 (and low-precision) matmul rate measured in the same run. Peak memory is measured
for each configuration in a fresh process: peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA.

Run ``python -m bench --help``; ``python -m bench --smoke`` is the tiny CI mode.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import network

EVAL_CONFIGS = ("original", "channels_last", "fold_bn", "optimized", "optimized+split", "bf16", "fp16",
                "compile", "compile+bf16")
TRAIN_CONFIGS = ("fp32", "channels_last", "amp", "compile")
DEFAULT_EVAL = {"cpu": ("original", "channels_last", "fold_bn", "optimized", "optimized+split", "bf16"),
                "cuda": ("original", "channels_last", "optimized", "optimized+split", "bf16", "fp16")}
DEFAULT_TRAIN = {"cpu": ("fp32", "channels_last", "amp"), "cuda": ("fp32", "channels_last", "amp")}
# optimize_for_inference switches of each eval configuration ("original" is the model as built).
EVAL_OPTIONS: dict[str, dict] = {
    "channels_last": dict(fold_bn=False, channels_last=True),
    "fold_bn": dict(fold_bn=True, channels_last=False),
    "optimized": {},
    "optimized+split": dict(split_concat=True),
    "bf16": dict(dtype=torch.bfloat16),
    "fp16": dict(dtype=torch.float16),
    "compile": dict(compile=True),
    "compile+bf16": dict(compile=True, dtype=torch.bfloat16),
}
NUM_CLASSES = 16


@dataclass
class Result:
    """One row of the table: a task ("eval" or "train") in one configuration at one size."""
    task: str
    config: str
    batch: int
    size: int
    seconds: list[float]
    flops: int
    peak_bytes: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


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


def time_round_robin(runners: dict[str, Callable[[], object]], device: torch.device, warmup: int,
                     repeats: int) -> dict[str, list[float]]:
    """Seconds of ``repeats`` calls of every runner, timed one call of each per round after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in runners.values():
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            seconds[name].append(timed(fn, device))
    return seconds


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, warmup: int, repeats: int) -> float:
    """Achieved GFLOP/s of an (n, n) @ (n, n) matrix product (2 n^3 FLOPs), median of ``repeats``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds = time_round_robin({"matmul": lambda: a @ b}, device, warmup, repeats)["matmul"]
    return 2 * n**3 / statistics.median(seconds) / 1e9


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs that ``torch.utils.flop_counter`` sees in one call of ``fn`` (forward and, if run, backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def build_model(arch: str, device: torch.device) -> torch.nn.Module:
    """A randomly initialised model on ``device`` (speed does not depend on the weights' values)."""
    torch.manual_seed(0)
    return network.get_model(arch, NUM_CLASSES).to(device)


def eval_runner(model: torch.nn.Module, config: str, images: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A no-argument call of ``model`` (eval mode, no grad) under ``config`` on ``images``."""
    if config == "original":
        runner = model.eval()
    else:
        runner = network.optimize_for_inference(model.eval(), **EVAL_OPTIONS[config])

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return runner(images)
    return run


def train_runner(arch: str, config: str, device: torch.device, batch: int, size: int) -> Callable[[], float]:
    """A no-argument SGD step of a fresh model in train mode on random images and labels.

    The loss is a stand-in with the training loss's shape of computation: cross-entropy on the logits
    plus binary cross-entropy on the three edge maps. ``amp`` autocasts to bfloat16 on CPU and float16
    (with gradient scaling) on CUDA; ``compile`` compiles the model's forward.
    """
    model = build_model(arch, device).train()
    generator = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, NUM_CLASSES, (batch, size, size), generator=generator).to(device)
    edges = (torch.rand(batch, 1, size, size, generator=generator) > 0.9).float().to(device)
    if config == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if config == "compile" else model
    amp_dtype = (torch.bfloat16 if device.type == "cpu" else torch.float16) if config == "amp" else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        precision = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        with precision:
            logits, edge_logits = forward(images)
            loss = F.cross_entropy(logits.float(), labels)
            loss = loss + sum(F.binary_cross_entropy_with_logits(e.float(), edges) for e in edge_logits)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.item()
    return step


def make_runner(task: str, arch: str, config: str, device: torch.device, batch: int, size: int,
                model: torch.nn.Module | None = None) -> Callable[[], object]:
    """The timed call of one table row; eval rows reuse ``model`` when given."""
    if task == "train":
        return train_runner(arch, config, device, batch, size)
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    return eval_runner(model if model is not None else build_model(arch, device), config, images)


def peak_memory_worker(task: str, arch: str, config: str, device_name: str, batch: int, size: int,
                       threads: int) -> int:
    """In a fresh process: peak bytes of two calls of one row (CPU: peak RSS; CUDA: max allocated)."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run = make_runner(task, arch, config, device, batch, size)
    for _ in range(2):
        run()
    synchronize(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes (Linux ``VmHWM``; ``ru_maxrss`` elsewhere).

    ``VmHWM`` belongs to the process's own address space, whereas ``ru_maxrss`` may carry over the peak
    of the forked parent across ``exec`` on Linux.
    """
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        import resource  # Unix only
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux/BSD
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def peak_memory(task: str, arch: str, config: str, device: torch.device, batch: int, size: int) -> int:
    """Run :func:`peak_memory_worker` in a new (spawned) process so peaks of rows do not mix."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(peak_memory_worker, task, arch, config, str(device), batch, size,
                           torch.get_num_threads()).result()


def machine_description(device: torch.device) -> str:
    """CPU model, cores and threads used, torch version, and the GPU's name on CUDA."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = (f"{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}")
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def measure(args: argparse.Namespace, device: torch.device) -> tuple[dict, list[Result]]:
    """Matmul rates, then every (task, size) group of rows; returns (peaks, rows)."""
    low_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    peaks = {"float32": matmul_rate(device, torch.float32, args.matmul_size, args.warmup, args.repeats),
             str(low_dtype).removeprefix("torch."): matmul_rate(device, low_dtype, args.matmul_size,
                                                                args.warmup, args.repeats)}
    groups = [("eval", args.eval_batch, size, args.eval_configs) for size in args.eval_sizes]
    groups += [("train", args.train_batch, args.train_size, args.train_configs)] if args.train_configs else []
    results = []
    for task, batch, size, configs in groups:
        if not configs:
            continue
        print(f"[bench] {task} {batch}x{size}x{size}: {', '.join(configs)}", file=sys.stderr, flush=True)
        model = build_model(args.arch, device) if task == "eval" else None
        runners = {c: make_runner(task, args.arch, c, device, batch, size, model) for c in configs}
        # FLOPs of the model's own computation, counted on the plain float32 path (a row's runner if any).
        plain = "original" if task == "eval" else "fp32"
        flops = count_flops(runners.get(plain) or make_runner(task, args.arch, plain, device, batch, size, model))
        seconds = time_round_robin(runners, device, args.warmup, args.repeats)
        for config in configs:
            peak = peak_memory(task, args.arch, config, device, batch, size) if args.memory else None
            results.append(Result(task, config, batch, size, seconds[config], flops, peak))
    return peaks, results


def format_table(peaks: dict, results: list[Result], machine: str) -> str:
    """A Markdown table of the rows, GFLOP/s as a fraction of the float32 matmul rate of the same run."""
    fp32_peak = peaks["float32"]
    low_name, low_peak = next((k, v) for k, v in peaks.items() if k != "float32")
    lines = [f"Machine: {machine}",
             f"Matmul rate: float32 {fp32_peak:.0f} GFLOP/s, {low_name} {low_peak:.0f} GFLOP/s", "",
             "| task | input | config | median ms | images/s | GFLOP/s | % fp32 matmul | speed-up | peak memory MB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    baselines: dict[tuple[str, int], float] = {}
    for row in results:
        baseline = baselines.setdefault((row.task, row.size), row.median)
        rate = row.flops / row.median / 1e9
        memory = f"{row.peak_bytes / 2**20:.0f}" if row.peak_bytes is not None else "-"
        lines.append(f"| {row.task} | {row.batch}x{row.size}² | {row.config} | {1e3 * row.median:.0f} | "
                     f"{row.batch / row.median:.2f} | {rate:.0f} | {100 * rate / fp32_peak:.0f}% | "
                     f"{baseline / row.median:.2f}x | {memory} |")
    lines.append("")
    lines.append("speed-up: against the first config of the same task and input; FLOPs per call: "
                 + ", ".join(sorted({f'{r.task} {r.batch}x{r.size}² {r.flops / 1e9:.1f} G' for r in results})))
    return "\n".join(lines)


def write_json_atomic(path: str, payload: dict) -> None:
    """Write ``payload`` as JSON through a temporary file and ``os.replace``."""
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as handle:
        json.dump(payload, handle, indent=1)
    os.replace(handle.name, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device to benchmark (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--arch", default="pfnet_r50", help="model name for network.get_model (16 classes)")
    parser.add_argument("--eval-sizes", type=int, nargs="*", default=[512, 896],
                        help="square eval input sizes in pixels")
    parser.add_argument("--eval-batch", type=int, default=1, help="images per eval forward")
    parser.add_argument("--eval-configs", nargs="*", choices=EVAL_CONFIGS, default=None,
                        help="eval configurations; the first is the speed-up baseline "
                             f"(default: cpu {' '.join(DEFAULT_EVAL['cpu'])}; cuda {' '.join(DEFAULT_EVAL['cuda'])})")
    parser.add_argument("--train-size", type=int, default=512, help="square train crop size in pixels")
    parser.add_argument("--train-batch", type=int, default=2, help="images per train step (>= 2)")
    parser.add_argument("--train-configs", nargs="*", choices=TRAIN_CONFIGS, default=None,
                        help="train configurations, first is the baseline; none to skip training "
                             f"(default: {' '.join(DEFAULT_TRAIN['cpu'])})")
    parser.add_argument("--compile", action="store_true",
                        help="add the torch.compile configurations (compile, compile+bf16; train compile)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n float32 matmul reference")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each configuration first")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each configuration (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the per-configuration peak-memory processes")
    parser.add_argument("--json", default=None, help="also write the raw results to this JSON file")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny CI mode (figures not meaningful): 64x64 eval, 2x64x64 train, 256 matmul, no warm-up, 2 repeats")
    args = parser.parse_args(argv)
    device_type = torch.device(args.device).type
    if args.smoke:
        args.eval_sizes, args.train_size, args.matmul_size, args.warmup, args.repeats = [64], 64, 256, 0, 2
        args.eval_configs = args.eval_configs or ["original", "optimized", "bf16"]
        args.train_configs = args.train_configs if args.train_configs is not None else ["fp32"]
    args.eval_configs = list(args.eval_configs if args.eval_configs is not None else DEFAULT_EVAL[device_type])
    args.train_configs = list(args.train_configs if args.train_configs is not None else DEFAULT_TRAIN[device_type])
    if args.compile:
        args.eval_configs += [c for c in ("compile", "compile+bf16") if c not in args.eval_configs]
        args.train_configs += [] if "compile" in args.train_configs else ["compile"]
    if args.train_configs and args.train_batch < 2:
        parser.error("--train-batch must be >= 2: PFNet's PSP module batch-normalises a 1x1 bin in train mode")
    return args


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark, print the Markdown table and return it."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peaks, results = measure(args, device)
    machine = machine_description(device)
    table = format_table(peaks, results, machine)
    print(table)
    if args.json:
        write_json_atomic(args.json, {"machine": machine, "matmul_gflops": peaks, "argv": sys.argv[1:],
                                      "results": [asdict(r) | {"median": r.median} for r in results]})
    return table
