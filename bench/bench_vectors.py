"""Peak memory of vectorising a class-id mask into a GeoPackage against the mask's size: it must stay bounded.

Each size first writes a synthetic mask GeoTIFF strip by strip (6 classes drawn on a grid of 24 px cells,
neighbouring cells of a class forming larger regions, with 1% single-pixel specks), then, in a fresh child
process, runs ``utils.vector_io.write_geopackage`` on it and reports the child's resident set size before
(after the imports and a first read of the mask, so GDAL's drivers are loaded) and its peak (``VmHWM``).
The growth is what the streamed polygoniser holds: a strip of rows and its polygons plus the polygons still
open at the current seam, and the GeoPackage writer's buffers; never the whole mask (an 8000² mask alone is
61 MiB).

    python bench/bench_vectors.py                          # 2000² and 8000²
    python bench/bench_vectors.py --sizes 2000,4000 --json /tmp/vectors.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BLOB = 24
"""Side in pixels of the cells of the coarse grid the classes are drawn on (neighbours of a class merge)."""


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB, from ``/proc/self/status``."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def write_mask(path: Path, size: int, seed: int = 0) -> None:
    """A size x size uint8 GeoTIFF of blob-shaped class ids 0..5 (UTM, 0.5 m pixels), written 512 rows at a time."""
    import numpy as np
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 6, size=(size // BLOB + 2, size // BLOB + 2)).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=1, dtype="uint8", nodata=255,
                       crs="EPSG:32633", transform=Affine(0.5, 0, 400000, 0, -0.5, 5800000), tiled=True,
                       compress="deflate") as dataset:
        for top in range(0, size, 512):
            rows = min(512, size - top)
            block = coarse[np.arange(top, top + rows)[:, None] // BLOB, np.arange(size)[None, :] // BLOB]
            specks = rng.random(block.shape) < 0.01
            block[specks] = rng.integers(0, 6, size=int(specks.sum()))
            dataset.write(block, 1, window=Window(0, top, size, rows))


def child(mask: str, out: str) -> None:
    """Vectorise ``mask`` into ``out`` and print JSON: RSS after imports, peak RSS, features, seconds."""
    import pyogrio.raw  # noqa: F401  (the libraries loaded before the baseline: their size does not grow)
    import rasterio.features  # noqa: F401

    from utils.vector_io import open_mask, write_geopackage

    with open_mask(mask) as dataset:  # GDAL's one-time set-up (drivers, the GTiff reader) before the baseline
        dataset.read(1, window=((0, 1), (0, 1)))
    before, _ = rss_mib()
    start = time.perf_counter()
    count = write_geopackage(mask, out, [f"class_{index}" for index in range(6)], 255)
    _, peak = rss_mib()
    print(json.dumps({"rss_before_mib": round(before, 1), "peak_rss_mib": round(peak, 1),
                      "growth_mib": round(peak - before, 1), "features": count,
                      "seconds": round(time.perf_counter() - start, 1)}))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: one child per size; prints a Markdown table, optionally writes JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,8000", help="mask sides in pixels, comma-separated")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in map(int, args.sizes.split(",")):
            mask = Path(folder) / f"mask_{size}.tif"
            write_mask(mask, size)
            command = [sys.executable, __file__, "--child", str(mask), str(Path(folder) / f"{size}.gpkg")]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append({"size": size, **json.loads(result.stdout.strip().splitlines()[-1])})
    print("| mask | features | seconds | RSS before MiB | peak RSS MiB | growth MiB |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['size']}² | {row['features']} | {row['seconds']} | {row['rss_before_mib']} | "
              f"{row['peak_rss_mib']} | {row['growth_mib']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
