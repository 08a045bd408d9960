"""Benchmark evaluation and large-tile prediction: throughput and peak memory.

Each measurement runs in a fresh child process, so its peak resident memory (``ru_maxrss``, which
includes the Python/torch runtime and the model) is its own. Weights are random (speed and memory
do not depend on them). Timings on a shared machine are noisy: compare ratios from one run.

    python bench/bench_eval.py eval-modes --size 896 --images 2          # whole vs sliding (513/342)
    python bench/bench_eval.py predict-tile --height 6000 --width 6000   # GeoTIFF in, GeoTIFF out
    python bench/bench_eval.py predict-tile --height 6000 --width 6000 --format png
    python bench/bench_eval.py all --out bench/results_eval.json          # the set quoted in the README
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_child(arguments: list[str]) -> dict:
    """Run this script with ``arguments`` in a child; return its JSON line plus its peak RSS in MiB."""
    process = subprocess.Popen([sys.executable, __file__, *arguments], stdout=subprocess.PIPE, cwd=REPO)
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"child {arguments} failed with exit code {process.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)  # Linux reports KiB
    return result


def child_eval_mode(args: argparse.Namespace) -> None:
    """Child: segment ``--images`` random images of ``--size`` in one mode; print images/s."""
    import torch

    import network
    from utils.inference import infer_logits

    torch.manual_seed(0)
    model = network.get_model(args.arch, 6).eval().to(args.device)
    images = torch.randn(args.images + 1, 3, args.size, args.size, device=args.device)
    sliding = args.mode == "sliding"
    options = {"window": args.window, "stride": math.ceil(args.window * (1 - args.overlap)),
               "batch_size": args.batch_size} if sliding else {}
    infer_logits(model, images[:1], **options)  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for index in range(1, args.images + 1):
        infer_logits(model, images[index : index + 1], **options).argmax(1).cpu()
    seconds = time.perf_counter() - start
    result = {"mode": args.mode, "size": args.size, "images_per_s": round(args.images / seconds, 4),
              "threads": torch.get_num_threads(), "device": args.device, **options}
    if args.device.startswith("cuda"):
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(result))


def child_predict(args: argparse.Namespace) -> None:
    """Child: run predict.py on the prepared tile; print the wall time."""
    import torch

    import predict

    start = time.perf_counter()
    predict.main([args.tile, "--snapshot", args.snapshot, "--out_dir", args.out_dir, "--window", str(args.window),
                  "--batch_size", str(args.batch_size), "--device", args.device, "--overwrite"])
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": round(seconds, 1), "threads": torch.get_num_threads()}))


def write_tile(path: Path, height: int, width: int) -> None:
    """A random uint8 RGB tile, GeoTIFF (written in row blocks) or PNG."""
    import numpy as np

    rng = np.random.default_rng(0)
    if path.suffix == ".tif":
        import rasterio
        from rasterio.transform import from_origin
        from rasterio.windows import Window

        profile = {"driver": "GTiff", "height": height, "width": width, "count": 3, "dtype": "uint8",
                   "crs": "EPSG:32633", "transform": from_origin(360000.0, 5810000.0, 0.05, 0.05),
                   "tiled": True, "blockxsize": 512, "blockysize": 512}
        with rasterio.open(path, "w", **profile) as dst:
            for top in range(0, height, 1024):
                rows = min(1024, height - top)
                dst.write(rng.integers(0, 256, (3, rows, width), dtype=np.uint8), window=Window(0, top, width, rows))
    else:
        from PIL import Image

        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, compress_level=1)


def bench_predict_tile(height: int, width: int, fmt: str, window: int, batch_size: int, device: str,
                       arch: str) -> dict:
    """Prepare a tile and a checkpoint, run predict.py in a child; report time and peak RSS."""
    import torch

    import network
    from utils.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        tile = temp / f"tile.{fmt}"
        write_tile(tile, height, width)
        torch.manual_seed(0)
        save_checkpoint(temp / "model.pth", {"state_dict": network.get_model(arch, 6).state_dict()})
        result = run_child(["_predict", "--tile", str(tile), "--snapshot", str(temp / "model.pth"),
                            "--out_dir", str(temp / "out"), "--window", str(window),
                            "--batch_size", str(batch_size), "--device", device])
    stride = math.ceil(window * (1 - 1 / 3))
    windows = (math.ceil(max(height - window, 0) / stride) + 1) * (math.ceil(max(width - window, 0) / stride) + 1)
    return {"tile": f"{height}x{width}", "format": fmt, "window": window, "stride": stride, "windows": windows,
            "batch_size": batch_size, "device": device, **result,
            "windows_per_s": round(windows / result["seconds"], 3)}


def bench_eval_modes(size: int, images: int, window: int, batch_size: int, device: str, arch: str) -> list[dict]:
    results = []
    for mode in ("whole", "sliding"):
        results.append(run_child(["_eval_mode", "--mode", mode, "--size", str(size), "--images", str(images),
                                  "--window", str(window), "--batch_size", str(batch_size), "--device", device,
                                  "--arch", arch]))
    results[1]["speed_vs_whole"] = round(results[1]["images_per_s"] / results[0]["images_per_s"], 3)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("eval-modes", "predict-tile", "all", "_eval_mode", "_predict"),
                        help="what to measure (names starting with _ are the child processes)")
    parser.add_argument("--arch", default="pfnet_r50", help="model (default pfnet_r50)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--size", type=int, default=896, help="eval-modes: square image size (default 896)")
    parser.add_argument("--images", type=int, default=2, help="eval-modes: timed images per mode (default 2)")
    parser.add_argument("--window", type=int, default=None,
                        help="sliding window (default: 513 for eval-modes as the original eval.py, 896 for predict)")
    parser.add_argument("--overlap", type=float, default=1 / 3, help="window overlap fraction (default 1/3)")
    parser.add_argument("--batch_size", type=int, default=1, help="windows per forward pass (default 1)")
    parser.add_argument("--height", type=int, default=6000, help="predict-tile: tile height (default 6000)")
    parser.add_argument("--width", type=int, default=6000, help="predict-tile: tile width (default 6000)")
    parser.add_argument("--format", choices=("tif", "png"), default="tif", help="predict-tile: tile format")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--mode", choices=("whole", "sliding"), help=argparse.SUPPRESS)
    parser.add_argument("--tile", help=argparse.SUPPRESS)
    parser.add_argument("--snapshot", help=argparse.SUPPRESS)
    parser.add_argument("--out_dir", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.command == "_eval_mode":
        return child_eval_mode(args)
    if args.command == "_predict":
        return child_predict(args)
    results = []

    def report(result: dict) -> None:
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")

    if args.command in ("eval-modes", "all"):
        for result in bench_eval_modes(args.size, args.images, args.window or 513, args.batch_size, args.device,
                                       args.arch):
            report(result)
    if args.command == "predict-tile":
        report(bench_predict_tile(args.height, args.width, args.format, args.window or 896, args.batch_size,
                                  args.device, args.arch))
    if args.command == "all":
        # 3000 -> 6000 rows at a fixed 3000 width: same strip, twice the area; then the 6000 x 6000 goal
        for height, width, fmt in ((3000, 3000, "tif"), (6000, 3000, "tif"), (3000, 3000, "png"),
                                   (6000, 6000, "tif")):
            report(bench_predict_tile(height, width, fmt, args.window or 896, args.batch_size, args.device,
                                      args.arch))


if __name__ == "__main__":
    main()
