"""PFNet speed benchmark: eval latency, train step time and peak memory against this machine's matmul rate.

Each configuration (a row of the table) lives in its own spawned worker process, so its peak memory is
its own: peak resident set size on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. The parent asks the
workers of one task and size for one timed call each, in turn, ``--warmup`` untimed rounds then
``--repeats`` timed ones; a slow spell caused by other processes on a shared machine therefore hits all
configurations alike and their ratios stay meaningful. Figures are medians. Achieved GFLOP/s use the
model's FLOPs from ``torch.utils.flop_counter`` (convolutions and matrix products, counted on the plain
float32 path) and are shown as a fraction of the matmul rate measured in the same run.

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
import traceback
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Callable

import torch
import torch.nn.functional as F

import network
from bench.measure import NUM_CLASSES, build_model, count_flops, peak_memory_bytes, timed
from engine.cpu_precision import cpu_capability
from utils.atomic import atomic_write_bytes

EVAL_CONFIGS = ("original", "channels_last", "fold_bn", "fold_bn+channels_last", "split_concat", "split_concat+fuse",
                "split_concat+resize_after_conv", "optimized", "bf16", "fp16", "compile", "compile+bf16")
TRAIN_CONFIGS = ("fp32", "channels_last", "amp", "checkpoint", "amp+checkpoint", "compile")
DEFAULT_EVAL = {"cpu": ("original", "channels_last", "fold_bn", "fold_bn+channels_last", "optimized", "bf16"),
                "cuda": ("original", "channels_last", "fold_bn+channels_last", "optimized", "bf16", "fp16")}
DEFAULT_TRAIN = {"cpu": ("fp32", "channels_last", "amp", "checkpoint", "amp+checkpoint"),
                 "cuda": ("fp32", "channels_last", "amp", "checkpoint", "amp+checkpoint")}
# optimize_for_inference switches of each eval configuration ("original" is the model as built);
# "optimized" is its defaults: fold_bn, channels_last, split_concat, and in float32 on CPU resize_after_conv and
# fuse; "split_concat" is the three lossless switches without the last two.
UNFUSED = dict(fuse=False, resize_after_conv=False)
EVAL_OPTIONS: dict[str, dict] = {
    "channels_last": dict(fold_bn=False, split_concat=False, **UNFUSED),
    "fold_bn": dict(channels_last=False, split_concat=False, **UNFUSED),
    "fold_bn+channels_last": dict(split_concat=False, **UNFUSED),
    "split_concat": UNFUSED,
    "split_concat+fuse": dict(resize_after_conv=False),
    "split_concat+resize_after_conv": dict(fuse=False),
    "optimized": {},
    "bf16": dict(dtype=torch.bfloat16),
    "fp16": dict(dtype=torch.float16),
    "compile": dict(compile=True),
    "compile+bf16": dict(compile=True, dtype=torch.bfloat16),
}


@dataclass
class Result:
    """One row of the table: a task ("eval" or "train") in one configuration at one size, and the CPU
    kernels (:func:`engine.cpu_precision.cpu_capability`) and torch threads of the process that ran it."""
    task: str
    config: str
    batch: int
    size: int
    seconds: list[float]
    flops: int
    peak_bytes: int
    cpu: str
    threads: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, warmup: int, repeats: int) -> float:
    """Achieved GFLOP/s of an (n, n) @ (n, n) matrix product (2 n^3 FLOPs), median of ``repeats`` calls."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds = [timed(lambda: a @ b, device) for _ in range(warmup + repeats)][warmup:]
    return 2 * n**3 / statistics.median(seconds) / 1e9


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
    plus binary cross-entropy on the edge maps (PFNet's three; none for models without edge outputs). ``amp``
    autocasts to bfloat16 on CPU and float16 (with gradient scaling) on CUDA; ``checkpoint`` recomputes the
    activations of layer0 to layer3 in the backward pass (``network.enable_activation_checkpointing``);
    ``compile`` compiles the model's forward.
    """
    model = build_model(arch, device).train()
    generator = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, NUM_CLASSES, (batch, size, size), generator=generator).to(device)
    edges = (torch.rand(batch, 1, size, size, generator=generator) > 0.9).float().to(device)
    if config in ("checkpoint", "amp+checkpoint"):
        network.enable_activation_checkpointing(model)
    if config == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if config == "compile" else model
    amp_dtype = (torch.bfloat16 if device.type == "cpu" else torch.float16) if "amp" in config else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        precision = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        with precision:
            outputs = forward(images)
            logits, edge_logits = outputs if isinstance(outputs, tuple) else (outputs, [])
            loss = F.cross_entropy(logits.float(), labels)
            loss = loss + sum(F.binary_cross_entropy_with_logits(e.float(), edges) for e in edge_logits)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.item()
    return step


def make_runner(task: str, arch: str, config: str, device: torch.device, batch: int,
                size: int) -> Callable[[], object]:
    """The timed call of one table row, on a freshly built model and random input."""
    if task == "train":
        return train_runner(arch, config, device, batch, size)
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    return eval_runner(build_model(arch, device), config, images)


def config_worker(connection: Connection, task: str, arch: str, config: str, device_name: str, batch: int,
                  size: int, threads: int) -> None:
    """Worker process of one row: builds its runner, then answers the parent's requests until "stop".

    Requests: "time" (seconds of one call), "flops" (FLOPs of one call), "peak" (peak bytes so far),
    "cpu" (the CPU capability and the torch threads of this process).
    Every answer is ``(ok, value)``; a failure answers ``(False, traceback text)`` and ends the worker.
    """
    try:
        torch.set_num_threads(threads)
        device = torch.device(device_name)
        # As train.py without --deterministic: cuDNN picks the fastest convolution algorithms (in the warm-up).
        torch.backends.cudnn.benchmark = device.type == "cuda"
        run = make_runner(task, arch, config, device, batch, size)
        requests = {"time": lambda: timed(run, device), "flops": lambda: count_flops(run),
                    "peak": lambda: peak_memory_bytes(device),
                    "cpu": lambda: (cpu_capability(), torch.get_num_threads())}
        connection.send((True, None))
        while (request := connection.recv()) != "stop":
            connection.send((True, requests[request]()))
    except Exception:  # the parent re-raises it with the row's name
        connection.send((False, traceback.format_exc()))


class ConfigProcess:
    """Parent-side handle of a :func:`config_worker`, started at construction.

    ``receive()`` returns the worker's next answer (the first one says that it is ready), ``ask(request)``
    sends a request and returns its answer.
    """

    def __init__(self, task: str, arch: str, config: str, device: torch.device, batch: int, size: int):
        self.name = f"{task} {config} {batch}x{size}x{size}"
        self.connection, child_end = get_context("spawn").Pipe()
        self.process = get_context("spawn").Process(
            target=config_worker, daemon=True,
            args=(child_end, task, arch, config, str(device), batch, size, torch.get_num_threads()))
        self.process.start()

    def receive(self):
        ok, value = self.connection.recv()
        if not ok:
            raise RuntimeError(f"benchmark worker for {self.name} failed:\n{value}")
        return value

    def ask(self, request: str):
        self.connection.send(request)
        return self.receive()

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # a failed worker has already ended
            self.connection.send("stop")
        self.process.join()


def measure_group(task: str, arch: str, configs: list[str], device: torch.device, batch: int, size: int,
                  warmup: int, repeats: int, probe: Callable[[], None]) -> list[Result]:
    """Rows of one task and input size, timed round-robin across their worker processes; ``probe`` runs
    in this process after each timed round (the matmul reference, under the same load)."""
    plain = "original" if task == "eval" else "fp32"
    workers: dict[str, ConfigProcess] = {}
    try:
        for config in dict.fromkeys(configs + [plain]):
            workers[config] = ConfigProcess(task, arch, config, device, batch, size)
        for worker in workers.values():  # they build their models side by side
            worker.receive()
        # The FLOP count is the plain float32 path's first (untimed) call.
        flops = workers[plain].ask("flops")
        if plain not in configs:
            workers.pop(plain).close()
        seconds: dict[str, list[float]] = {config: [] for config in configs}
        for round_index in range(warmup + repeats):
            for config in configs:
                elapsed = workers[config].ask("time")
                if round_index >= warmup:
                    seconds[config].append(elapsed)
            if round_index >= warmup:
                probe()
        return [Result(task, config, batch, size, seconds[config], flops, workers[config].ask("peak"),
                       *workers[config].ask("cpu")) for config in configs]
    finally:
        for worker in workers.values():
            worker.close()


def machine_description(device: torch.device) -> str:
    """CPU model, cores and threads used, torch version, CPU capability, and the GPU's name on CUDA."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = (f"{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, {cpu_capability()}")
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def measure(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, float], list[Result]]:
    """Every (task, size) group of rows, and the matmul rates measured between their rounds.

    Returns (median matmul GFLOP/s by dtype name, rows). The matmul reference is sampled once before the
    groups and once after every timed round, so it saw the same machine load as the rows did.
    """
    dtypes = (torch.float32, torch.bfloat16 if device.type == "cpu" else torch.float16)
    samples: dict[str, list[float]] = {str(dtype).removeprefix("torch."): [] for dtype in dtypes}

    def probe() -> None:
        for dtype in dtypes:
            samples[str(dtype).removeprefix("torch.")].append(
                matmul_rate(device, dtype, args.matmul_size, warmup=1, repeats=3))

    probe()
    groups = [("eval", args.eval_batch, size, args.eval_configs) for size in args.eval_sizes]
    groups += [("train", args.train_batch, args.train_size, args.train_configs)]
    results = []
    for task, batch, size, configs in groups:
        if configs:
            print(f"[bench] {task} {batch}x{size}x{size}: {', '.join(configs)}", file=sys.stderr, flush=True)
            results += measure_group(task, args.arch, configs, device, batch, size, args.warmup, args.repeats,
                                     probe)
    return {name: statistics.median(rates) for name, rates in samples.items()}, results


def compute_dtype(config: str, device_type: str) -> str:
    """Name of the dtype the convolutions of a row run in (the matmul rate it is compared with)."""
    if config in ("bf16", "compile+bf16") or ("amp" in config and device_type == "cpu"):
        return "bfloat16"
    if config == "fp16" or "amp" in config:
        return "float16"
    return "float32"


def format_table(peaks: dict[str, float], results: list[Result], machine: str, device_type: str) -> str:
    """A Markdown table of the rows: achieved GFLOP/s as a fraction of the float32 matmul rate and of the
    matmul rate in the row's own compute dtype, both measured in the same run; each row says which CPU kernels
    (and native bf16/fp16 instructions) and how many torch threads ran it."""
    lines = [f"Machine: {machine}",
             "Matmul rate: " + ", ".join(f"{name} {rate:.0f} GFLOP/s" for name, rate in peaks.items()), "",
             "| task | input | config | median ms | images/s | GFLOP/s | % fp32 matmul | % own-dtype matmul "
             "| speed-up | peak memory MB | CPU | threads |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    baselines: dict[tuple[str, int], float] = {}
    for row in results:
        baseline = baselines.setdefault((row.task, row.size), row.median)
        rate = row.flops / row.median / 1e9
        own_peak = peaks.get(compute_dtype(row.config, device_type))
        own = f"{100 * rate / own_peak:.0f}%" if own_peak else "-"
        lines.append(f"| {row.task} | {row.batch}x{row.size}² | {row.config} | {1e3 * row.median:.0f} | "
                     f"{row.batch / row.median:.2f} | {rate:.0f} | {100 * rate / peaks['float32']:.0f}% | {own} | "
                     f"{baseline / row.median:.2f}x | {row.peak_bytes / 2**20:.0f} | {row.cpu} | {row.threads} |")
    flops = sorted({f"{r.task} {r.batch}x{r.size}² {r.flops / 1e9:.1f}" for r in results})
    lines += ["", "speed-up: against the first row of the same task and input. GFLOP per call: " + ", ".join(flops)]
    return "\n".join(lines)


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
                        help="train configurations, first is the baseline; give none to skip training "
                             f"(default: {' '.join(DEFAULT_TRAIN['cpu'])})")
    parser.add_argument("--models", nargs="*", default=None, metavar="ARCH",
                        help="print the per-model table instead (parameters, GFLOPs at --model-size, latency in "
                             "fp32 and bf16, peak memory; bench/models.py); no names: every registered model")
    parser.add_argument("--model-size", type=int, default=896, help="square input side of the per-model table")
    parser.add_argument("--compile", action="store_true",
                        help="add the torch.compile configurations (compile, compile+bf16; train compile)")
    parser.add_argument("--matmul-size", type=int, default=2048,
                        help="n of the n x n matmul reference (float32 and bfloat16 on CPU / float16 on CUDA)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each configuration first")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each configuration (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the raw results to this JSON file")
    parser.add_argument("--suggest", action="store_true",
                        help="measure the candidate configurations on this machine (PyTorch fp32, native bf16, the "
                             "--onnx files; 1 thread and the default) and print the fastest correct one "
                             "(bench/suggest.py); at the first --eval-sizes")
    parser.add_argument("--onnx", nargs="*", default=[], metavar="FILE",
                        help="with --suggest: exported files to include (fp32, fp16, int8 from tools/export_onnx.py)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny CI mode (figures not meaningful): 64x64 eval, 2x64x64 train, 256 matmul, "
                             "64x64 per-model table, no warm-up, 2 repeats")
    args = parser.parse_args(argv)
    if args.onnx and not args.suggest:
        parser.error("--onnx is read only with --suggest; add --suggest")
    missing = [path for path in args.onnx if not os.path.isfile(path)]
    if missing:
        parser.error(f"--onnx: no such file: {missing[0]}")
    device_type = torch.device(args.device).type
    if args.models == []:
        args.models = network.list_models()
    for arch in args.models or []:
        try:
            network.model_entry(arch)
        except KeyError as error:
            parser.error(f"--models: {error.args[0]}")
    if args.smoke:
        args.eval_sizes, args.train_size, args.matmul_size, args.warmup, args.repeats = [64], 64, 256, 0, 2
        args.model_size = 64
        args.eval_configs = args.eval_configs or ["original", "optimized"]
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
    if args.suggest:
        from bench.suggest import suggest

        return suggest(args)
    device = torch.device(args.device)
    machine = machine_description(device)
    if args.models is not None:
        return model_table(args, device, machine)
    peaks, results = measure(args, device)
    table = format_table(peaks, results, machine, device.type)
    print(table)
    if args.json:
        payload = {"machine": machine, "matmul_gflops": peaks, "argv": sys.argv[1:],
                   "results": [asdict(r) | {"median": r.median} for r in results]}
        atomic_write_bytes(args.json, json.dumps(payload, indent=1).encode())
    return table


def model_table(args: argparse.Namespace, device: torch.device, machine: str) -> str:
    """The per-model table of ``--models``: print it, write ``--json`` if asked, return it."""
    from bench.models import format_model_table, measure_models

    rows = measure_models(args.models, args.model_size, device, args.warmup, args.repeats)
    table = format_model_table(rows, machine)
    print(table)
    if args.json:
        payload = {"machine": machine, "argv": sys.argv[1:], "models": [asdict(row) for row in rows]}
        atomic_write_bytes(args.json, json.dumps(payload, indent=1).encode())
    return table
