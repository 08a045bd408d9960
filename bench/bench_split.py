#!/usr/bin/env python3
"""Benchmark: cutting iSAID-sized images into patches with 1 worker vs N workers, printed as a ratio.

Generates synthetic iSAID images of exactly ``--size`` x ``--size`` pixels once (kept in ``--work-dir``
for later runs), then runs ``split_isaid`` (800 x 800, overlap 200, the tool's defaults) with
``--workers 1`` and with ``--workers N`` into fresh folders (alternating, ``--repeat`` times, best time
kept), checks that both wrote identical files and prints the wall times and the speed-up, next to a
control: the speed-up of a pure CPU loop with as many processes, i.e. the parallelism the machine offers
at that moment.  Timings on a shared machine are noisy: compare ratios from one run, not across runs.
The goal is a speed-up of at least 1.8x with 2 workers on 2 idle cores.

    python bench/bench_split.py                 # 20 images of 4000 x 4000, 1 vs 2 workers
    python bench/bench_split.py --smoke         # 4 images of 900 x 900: checks the script (seconds)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.make_synthetic_data import make_synthetic  # noqa: E402
from tools.split_iSAID import split_isaid  # noqa: E402
from utils.atomic import atomic_write_bytes  # noqa: E402

SMOKE_IMAGES, SMOKE_SIZE = 4, 900


def _digest(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*.png"))}


def _busy_loop(iterations: int) -> int:
    total = 0
    for value in range(iterations):
        total += value * value
    return total


def cpu_headroom(workers: int, tasks: int = 8, iterations: int = 3_000_000) -> float:
    """Speed-up of a pure CPU loop with ``workers`` processes vs 1: what the machine allows right now."""
    start = time.perf_counter()
    for _ in range(tasks):
        _busy_loop(iterations)
    serial = time.perf_counter() - start
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_busy_loop, 1).result()
        start = time.perf_counter()
        list(pool.map(_busy_loop, [iterations] * tasks))
        parallel = time.perf_counter() - start
    return serial / parallel


def _raw_data(work_dir: Path, images: int, size: int) -> Path:
    """Synthetic iSAID tree of ``images`` images of ``size`` x ``size`` pixels, generated on first use."""
    raw = work_dir / f"raw_{images}x{size}px_square"
    done = raw / ".complete"
    if not done.exists():
        shutil.rmtree(raw, ignore_errors=True)
        print(f"generating {images} synthetic iSAID images of {size} x {size} px in {raw} ...", flush=True)
        make_synthetic("isaid", raw, seed=0, num_images=images, size=size, fixed_size=True)
        done.touch()
    return raw


def main(argv: list[str] | None = None) -> None:
    """Command line: time ``split_isaid`` with 1 and N workers, print (and optionally save) the speed-up.

    Leaves the two output trees in ``{work-dir}/out_w1`` and ``{work-dir}/out_w{N}``; exits with an
    error if they differ.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20, help="number of images (default 20)")
    parser.add_argument("--size", type=int, default=4000, help="side of every image in pixels (default 4000)")
    parser.add_argument("--workers", type=int, default=2, help="worker count compared with 1 (default 2)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="alternate 1-worker and N-worker runs this many times and keep each best time "
                             "(default 2; damps noise from other load)")
    parser.add_argument("--work-dir", default="outputs/bench_split", help="folder for the generated data and outputs")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny run ({SMOKE_IMAGES} images of {SMOKE_SIZE} px, one repeat, short control) "
                             "to check the script")
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be >= 2 (it is compared with 1 worker)")
    images, size, repeat = (SMOKE_IMAGES, SMOKE_SIZE, 1) if args.smoke else (args.images, args.size, args.repeat)
    work_dir = Path(args.work_dir)
    raw = _raw_data(work_dir, images, size)
    megapixels = images * size * size / 1e6
    seconds: dict[int, float] = {}
    patches = 0
    for round_index in range(repeat):
        for workers in (1, args.workers):
            out = work_dir / f"out_w{workers}"
            shutil.rmtree(out, ignore_errors=True)
            summary = split_isaid(raw, out, sets=("train", "val"), workers=workers, progress=False)
            seconds[workers] = min(seconds.get(workers, float("inf")), summary.seconds)
            patches = summary.patches
            print(f"run {round_index + 1}, workers={workers}: {summary.inputs} images ({megapixels:.0f} Mpx), "
                  f"{summary.patches} patches, {summary.seconds:.2f} s", flush=True)
    if _digest(work_dir / "out_w1") != _digest(work_dir / f"out_w{args.workers}"):
        sys.exit("error: outputs differ between worker counts")
    control = cpu_headroom(args.workers, iterations=300_000 if args.smoke else 3_000_000)
    speedup = seconds[1] / seconds[args.workers]
    print(f"control: a pure CPU loop speeds up {control:.2f}x with {args.workers} processes "
          "on this machine now (other load lowers both figures)")
    print(f"best of {repeat}: 1 worker {seconds[1]:.2f} s, {args.workers} workers {seconds[args.workers]:.2f} s; "
          f"speed-up {speedup:.2f}x (identical outputs)")
    if args.json:
        report = {"images": images, "size": size, "patches": patches, "workers": args.workers, "repeat": repeat,
                  "seconds_1_worker": seconds[1], "seconds_n_workers": seconds[args.workers],
                  "speedup": speedup, "control_speedup": control, "identical_outputs": True}
        atomic_write_bytes(args.json, json.dumps(report, indent=1).encode())


if __name__ == "__main__":
    main()
