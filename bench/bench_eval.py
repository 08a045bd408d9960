"""Benchmark evaluation and large-tile prediction: throughput and peak memory.

Both go through ``evaluation.segmenter.Segmenter``, as eval.py and predict.py do. Each measurement runs in a
fresh child process, so its peak resident memory (``ru_maxrss``, which
includes the Python/torch runtime and the model) is its own. Weights are random (speed and memory
do not depend on them). The model goes through ``network.optimize_for_inference`` as eval.py and
predict.py do by default (``--no_optimize``: the model as built). Timings on a shared machine are
noisy: compare ratios from one run.

    python bench/bench_eval.py eval-modes --size 896 --images 2          # whole vs sliding (513/343)
    python bench/bench_eval.py predict-tile --height 6000 --width 6000   # GeoTIFF in, GeoTIFF out
    python bench/bench_eval.py predict-tile --height 6000 --width 6000 --format png --classes 16
    python bench/bench_eval.py all --out bench/results_eval.json          # eval-modes + four tiles
    python bench/bench_eval.py all --smoke --out /tmp/smoke.json          # tiny sizes: checks it runs
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

from utils.atomic import atomic_write_bytes  # noqa: E402  (needs the repository on sys.path)

# --smoke: sizes small enough for every measurement to finish in seconds (the code paths stay the same)
SMOKE = {"size": 64, "images": 1, "eval_window": 48, "height": 72, "width": 100, "tile_window": 48}


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


def optimize_flags(args: argparse.Namespace) -> list[str]:
    """``--no_optimize`` for a child process when this run was given it, else nothing."""
    return ["--no_optimize"] if args.no_optimize else []


def child_eval_mode(args: argparse.Namespace) -> None:
    """Child: segment ``--images`` random (3, size, size) images in one mode; print images/s as a JSON line."""
    import torch

    import network
    from evaluation.segmenter import Protocol, Segmenter, generic_classes

    torch.manual_seed(0)
    model = network.get_model(args.arch, args.classes).eval().to(args.device)
    if not args.no_optimize:
        model = network.optimize_for_inference(model)  # the plain copy is dropped, as in eval.py
    images = torch.randn(args.images + 1, 3, args.size, args.size, device=args.device)
    sliding = args.mode == "sliding"
    protocol = Protocol(window=args.window if sliding else None, overlap=args.overlap, blend="mean",
                        batch=args.batch_size)
    segmenter = Segmenter(model, generic_classes(args.classes), protocol, args.device)
    options = {"window": protocol.window, "stride": protocol.step, "batch_size": protocol.batch} if sliding else {}
    segmenter.logits(images[:1])  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for index in range(1, args.images + 1):
        segmenter.logits(images[index : index + 1]).argmax(1).cpu()
    seconds = time.perf_counter() - start
    result = {"mode": args.mode, "size": args.size, "classes": args.classes, "optimized": not args.no_optimize,
              "images_per_s": round(args.images / seconds, 4), "threads": torch.get_num_threads(),
              "device": args.device, **options}
    if args.device.startswith("cuda"):
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(result))


def child_predict(args: argparse.Namespace) -> None:
    """Child: segment the prepared tile as predict.py does (its protocol, a mask of the tile's format); print the
    wall time, loading the checkpoint included, as a JSON line."""
    import dataclasses

    import torch

    from evaluation.segmenter import DEFAULT_PROTOCOL, Segmenter

    start = time.perf_counter()
    protocol = dataclasses.replace(DEFAULT_PROTOCOL, window=args.window, batch=args.batch_size)
    segmenter = Segmenter.from_checkpoint(args.snapshot, device=args.device, protocol=protocol,
                                          optimize=not args.no_optimize)
    tile, out_dir = Path(args.tile), Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    segmenter.predict_raster(tile, out_dir / f"{tile.stem}_pred{tile.suffix}")
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": round(seconds, 1), "threads": torch.get_num_threads()}))


def write_tile(path: Path, height: int, width: int) -> None:
    """A random uint8 RGB tile of (height, width), GeoTIFF (written in row blocks) or PNG."""
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


def bench_predict_tile(height: int, width: int, fmt: str, args: argparse.Namespace, window: int) -> dict:
    """Write a random tile and a random K-class checkpoint, run predict.py on them in a child.

    Returns:
        One result row: tile size, format, K, window/stride/window count, seconds, windows/s, peak RSS (MiB).
    """
    import torch

    import network
    from utils.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        tile = temp / f"tile.{fmt}"
        write_tile(tile, height, width)
        torch.manual_seed(0)
        save_checkpoint(temp / "model.pth", {"state_dict": network.get_model(args.arch, args.classes).state_dict()})
        result = run_child(["_predict", "--tile", str(tile), "--snapshot", str(temp / "model.pth"),
                            "--out_dir", str(temp / "out"), "--window", str(window),
                            "--batch_size", str(args.batch_size), "--device", args.device,
                            *optimize_flags(args)])
    stride = math.ceil(window * (1 - 1 / 3))
    windows = (math.ceil(max(height - window, 0) / stride) + 1) * (math.ceil(max(width - window, 0) / stride) + 1)
    return {"tile": f"{height}x{width}", "format": fmt, "classes": args.classes, "optimized": not args.no_optimize,
            "window": window, "stride": stride, "windows": windows, "batch_size": args.batch_size,
            "device": args.device, **result, "windows_per_s": round(windows / result["seconds"], 3)}


def bench_eval_modes(args: argparse.Namespace, size: int, images: int, window: int) -> list[dict]:
    """Whole-image and sliding-window (``window``, overlap ``args.overlap``) inference on ``images`` random
    (3, size, size) images, each mode in its own child.

    Returns:
        Two result rows (whole, sliding): images/s and peak RSS (MiB); the sliding row adds its speed
        relative to whole.
    """
    results = []
    for mode in ("whole", "sliding"):
        results.append(run_child(["_eval_mode", "--mode", mode, "--size", str(size), "--images", str(images),
                                  "--window", str(window), "--overlap", str(args.overlap),
                                  "--batch_size", str(args.batch_size), "--device", args.device,
                                  "--arch", args.arch, "--classes", str(args.classes),
                                  *optimize_flags(args)]))
    results[1]["speed_vs_whole"] = round(results[1]["images_per_s"] / results[0]["images_per_s"], 3)
    return results


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark and of its child processes (hidden)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("eval-modes", "predict-tile", "all", "_eval_mode", "_predict"),
                        help="what to measure (names starting with _ are the child processes)")
    parser.add_argument("--arch", default="pfnet_r50", help="model (default pfnet_r50)")
    parser.add_argument("--classes", type=int, default=6,
                        help="class count K of the random model (default 6, Potsdam/Vaihingen; iSAID has 16)")
    parser.add_argument("--no_optimize", action="store_true",
                        help="run the model as built instead of network.optimize_for_inference (eval.py's and "
                             "predict.py's default)")
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
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny sizes to check the benchmark runs: eval-modes {SMOKE['size']}^2 with window "
                             f"{SMOKE['eval_window']}; one {SMOKE['height']}x{SMOKE['width']} tile with window "
                             f"{SMOKE['tile_window']} (also for 'all'); overrides the size flags")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--mode", choices=("whole", "sliding"), help=argparse.SUPPRESS)
    parser.add_argument("--tile", help=argparse.SUPPRESS)
    parser.add_argument("--snapshot", help=argparse.SUPPRESS)
    parser.add_argument("--out_dir", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    """Run the measurement named on the command line; print one JSON line per result (and ``--out``)."""
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
            atomic_write_bytes(args.out, (json.dumps(results, indent=2) + "\n").encode())

    if args.smoke:
        eval_size, eval_images, eval_window = SMOKE["size"], SMOKE["images"], SMOKE["eval_window"]
        tiles = [(SMOKE["height"], SMOKE["width"], args.format)]
        tile_window = SMOKE["tile_window"]
    else:
        eval_size, eval_images, eval_window = args.size, args.images, args.window or 513
        tile_window = args.window or 896
        if args.command == "predict-tile":
            tiles = [(args.height, args.width, args.format)]
        else:
            # 3000 -> 6000 rows at a fixed 3000 width: same strip, twice the area; then the 6000 x 6000 goal
            tiles = [(3000, 3000, "tif"), (6000, 3000, "tif"), (3000, 3000, "png"), (6000, 6000, "tif")]
    if args.command in ("eval-modes", "all"):
        for result in bench_eval_modes(args, eval_size, eval_images, eval_window):
            report(result)
    if args.command in ("predict-tile", "all"):
        for height, width, fmt in tiles:
            report(bench_predict_tile(height, width, fmt, args, tile_window))


if __name__ == "__main__":
    main()
