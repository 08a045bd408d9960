"""Peak memory of map-scale prediction against the tile's size: it must stay flat for a fixed window.

Each tile size runs ``evaluation.inference.predict_large_image`` in a fresh child process and reports the
child's peak resident set size (``VmHWM`` of ``/proc/self/status``: Python, torch, model, buffers), and
its RSS before the first window. The tile is synthetic (pixels computed per region, as a windowed
GeoTIFF read hands them out) and the model a pointwise convolution with K outputs, so the figures are
those of the inference machinery, not of a network (PFNet adds the same, size-independent, activations
per window) or of a file reader; the finished class-id blocks are checked for shape and dropped.

By default a tile stops after the first three strips of its second band of windows: the first band
holds no window of a band before it, so its buffers are one window narrower; from the second band on
every band allocates buffers of the same shape, and every strip of a band reuses them. Those windows
have thus reached the whole run's peak (``--whole`` runs every window).

    python bench/bench_memory.py                         # 2000², 8000², 16000², 30000², window 512
    python bench/bench_memory.py --whole                 # every tile to its end (hours on 2 shared cores)
    python bench/bench_memory.py --sizes 2000,4000 --window 512 --json /tmp/memory.json
    python bench/bench_memory.py --smoke                 # tiny sizes: checks it runs (CI)
    python bench/bench_memory.py --command --sizes 1000,3000   # the full predict.py command (see below)

``--command`` measures the real command instead: ``python predict.py TILE --snapshot CKPT --out_dir OUT
--window 512`` on a random uint8 RGB GeoTIFF of each size (tiled, georeferenced) with a randomly initialised
``--arch`` checkpoint of ``--classes`` classes (default UperNet-R18, 16 classes), writing the default
Cloud-Optimized GeoTIFF (overviews, read-back check); the peak RSS is the child's ``ru_maxrss`` (``wait4``),
everything included: Python, torch, the model, GDAL's block cache, the COG copy.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMOKE = {"sizes": "300,900", "window": 128}


class WindowLimit(Exception):
    """Raised by the counting model once the planned windows have run."""


def planned_windows(size: int, window: int, stride: int) -> int:
    """Windows up to the third strip of the second band of a ``size`` x ``size`` tile (all if it has one band)."""
    from evaluation.inference import BAND_WINDOWS, band_ranges, window_starts

    strips = window_starts(size, window, stride)
    bands = band_ranges(strips, min(window, size), size, BAND_WINDOWS)
    if len(bands) == 1:
        return len(strips) * len(bands[0][2])
    return len(strips) * len(bands[0][2]) + min(3, len(strips)) * len(bands[1][2])


def peak_rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB, from ``/proc/self/status``."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024  # kB
    return fields["VmRSS"], fields["VmHWM"]


def child(args: argparse.Namespace) -> None:
    """Child: predict one synthetic ``size`` x ``size`` tile; print a JSON line with its memory and speed."""
    import numpy as np
    import torch

    from evaluation.inference import predict_large_image

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    convolution = torch.nn.Conv2d(3, args.classes, 1).eval()
    windows = [0]
    stride = math.ceil(args.window * (1 - args.overlap))
    limit = None if args.whole else planned_windows(args.size, args.window, stride)

    def model(images: torch.Tensor) -> torch.Tensor:
        if limit is not None and windows[0] >= limit:
            raise WindowLimit
        windows[0] += images.shape[0]
        return convolution(images)

    size = args.size

    def read_region(top: int, left: int, height: int, width: int) -> np.ndarray:
        rows = np.arange(top, top + height, dtype=np.int64)[:, None]
        columns = np.arange(left, left + width, dtype=np.int64)[None]
        ramp = ((rows * 7 + columns * 3) % 256).astype(np.uint8)
        return np.stack([ramp, ramp[::-1] if height > 1 else ramp, 255 - ramp], axis=2)

    written = [0]

    def write_block(top: int, left: int, class_ids: np.ndarray) -> None:
        assert class_ids.dtype == np.uint8 and top + class_ids.shape[0] <= size and left + class_ids.shape[1] <= size
        written[0] += class_ids.size

    rss_before, _ = peak_rss_mib()
    start = time.perf_counter()
    try:
        predict_large_image(model, read_region, (size, size), write_block, window=args.window, stride=stride,
                            blend=args.blend, show_progress=False)
        complete = True
        assert written[0] == size * size, "every pixel is written exactly once"
    except WindowLimit:
        complete = False
    seconds = time.perf_counter() - start
    _, peak = peak_rss_mib()
    print(json.dumps({"size": size, "window": args.window, "stride": stride, "classes": args.classes,
                      "blend": args.blend, "windows": windows[0], "complete": complete,
                      "rss_before_mib": round(rss_before, 1),
                      "peak_rss_mib": round(peak, 1), "seconds": round(seconds, 1),
                      "strip_buffer_before_mib": round(args.classes * args.window * size * 4 / 2**20, 1)}))


def run_sizes(args: argparse.Namespace) -> list[dict]:
    """Run one child per size; return their results."""
    results = []
    for size in (int(value) for value in args.sizes.split(",")):
        command = [sys.executable, __file__, "--child", "--size", str(size), "--window", str(args.window),
                   "--overlap", str(args.overlap), "--classes", str(args.classes), "--blend", args.blend,
                   "--threads", str(args.threads), *(["--whole"] if args.whole else [])]
        completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if completed.returncode != 0:
            sys.exit(f"error: the {size}² child failed: {completed.stderr.strip().splitlines()[-1]}")
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
        row = results[-1]
        windows = f"{row['windows']}" + ("" if row["complete"] else " (stopped)")
        print(f"| {size}² | {row['window']} / {row['stride']} | {row['classes']} | {windows} | "
              f"{row['rss_before_mib']:.0f} | {row['peak_rss_mib']:.0f} | {row['strip_buffer_before_mib']:.0f} | "
              f"{row['seconds']:.1f} |", flush=True)
    return results


def run_command_sizes(args: argparse.Namespace) -> list[dict]:
    """``--command``: run predict.py on a random GeoTIFF of each size; return the peak RSS and seconds of each."""
    import os
    import tempfile

    import torch

    import network
    from bench.bench_eval import write_tile
    from utils.checkpoint import save_checkpoint

    results = []
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        torch.manual_seed(0)
        checkpoint = temp / "model.pth"
        save_checkpoint(checkpoint, {"state_dict": network.get_model(args.arch, args.classes).state_dict()})
        for size in (int(value) for value in args.sizes.split(",")):
            tile = temp / f"tile_{size}.tif"
            write_tile(tile, size, size)
            command = [sys.executable, "predict.py", str(tile), "--snapshot", str(checkpoint), "--arch", args.arch,
                       "--out_dir", str(temp / f"out_{size}"), "--window", str(args.window)]
            start = time.perf_counter()
            process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            stderr = process.stderr.read().decode()
            _, status, usage = os.wait4(process.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                sys.exit(f"error: predict.py on the {size}² tile failed: {stderr.strip().splitlines()[-1]}")
            row = {"size": size, "window": args.window, "arch": args.arch, "classes": args.classes,
                   "threads": args.threads, "gdal_cachemax": os.environ.get("GDAL_CACHEMAX", "default"),
                   "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "seconds": round(time.perf_counter() - start, 1)}
            results.append(row)
            print(f"| {size}² | {args.arch} | {args.classes} | {args.window} | {row['gdal_cachemax']} | "
                  f"{row['peak_rss_mib']:.0f} | {row['seconds']:.1f} | {args.threads} |", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    """Parse the flags; run the children (or, with ``--child``, one measurement)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,8000,16000,30000", help="comma-separated tile sides in pixels")
    parser.add_argument("--window", type=int, default=512, help="window side in pixels (default 512)")
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction (default 0.25)")
    parser.add_argument("--classes", type=int, default=16, help="classes K of the logit buffer (default 16, iSAID)")
    parser.add_argument("--blend", choices=("mean", "gaussian"), default="gaussian", help="blend (default gaussian)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (default 1)")
    parser.add_argument("--whole", action="store_true",
                        help="run every window of every tile (default: stop after three strips of the second band, "
                             "where the run's peak has been reached; see the module docstring)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--smoke", action="store_true", help=f"tiny run for CI: {SMOKE}")
    parser.add_argument("--command", action="store_true",
                        help="measure the full predict.py command instead (see the module doc)")
    parser.add_argument("--arch", default="upernet_r18", help="with --command: the random model (default upernet_r18)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    if args.smoke:
        args.sizes, args.window = SMOKE["sizes"], SMOKE["window"]
    if args.command:
        print("| tile | model | K | window | GDAL_CACHEMAX | peak RSS MiB | seconds | threads |")
        print("|---|---|---:|---:|---|---:|---:|---:|")
        results = run_command_sizes(args)
    else:
        print("| tile | window / stride | K | windows | RSS before MiB | peak RSS MiB | old strip buffer MiB "
              "| seconds |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        results = run_sizes(args)
    if args.json:
        from utils.atomic import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps({"results": results}, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
