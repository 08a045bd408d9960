"""Does predict.py's read-ahead / write-behind pipeline hide the I/O behind the model?

Three timings on one GeoTIFF tile (synthetic pixels, written with rasterio), all through
``evaluation.inference.predict_large_image`` writing a COG mask and a probability COG (``utils.raster_io.CogSink``,
as predict.py does):

- **pipeline alone**: a near-zero-cost model (one 1x1 convolution to K classes), so the time is reading,
  normalising, blending, argmax and writing; in Mpx/s;
- **model alone**: the real model's forward passes over the same windows, from pre-normalised crops;
- **total**: the real model through the whole pipeline, pipelined (the default) and serial.

The goal is total ≤ 1.1 × max(model alone, pipeline alone). On a GPU the model's share shrinks and the
pipeline becomes the bound; on a 2-core CPU the threads share the cores with the model's own threads.

    python bench/bench_pipeline.py                       # 1536² tile, UperNet-R18, window 512
    python bench/bench_pipeline.py --size 2048 --arch pfnet_r50 --json /tmp/pipeline.json
    python bench/bench_pipeline.py --threads 1           # the model on one core, the I/O threads on the other
    python bench/bench_pipeline.py --smoke               # tiny sizes: checks it runs (CI)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMOKE = {"size": 192, "window": 96, "arch": "upernet_r18"}
NUM_CLASSES = 6


def write_tile(path: Path, size: int) -> None:
    """A ``size`` x ``size`` RGB GeoTIFF of smooth synthetic pixels (tiled, as orthophotos are)."""
    import numpy as np
    import rasterio

    rows, columns = np.mgrid[0:size, 0:size]
    bands = [(127 + 120 * np.sin((rows * (band + 1) + columns) / 37.0)).astype(np.uint8) for band in range(3)]
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "tiled": True,
               "blockxsize": 256, "blockysize": 256, "crs": "EPSG:32633",
               "transform": rasterio.Affine(0.1, 0, 500000, 0, -0.1, 5800000)}
    with rasterio.open(path, "w", **profile) as handle:
        handle.write(np.stack(bands))


def default_step(window: int) -> int:
    """The window step predict.py uses for ``window`` with its default overlap (``Protocol.step``)."""
    from evaluation.segmenter import Protocol

    return Protocol(window=window).step


def run(model, tile: Path, out: Path, window: int, pipelined: bool) -> float:
    """Seconds of one predict_large_image run of ``model`` over ``tile`` into two COGs under ``out``."""
    from evaluation.inference import predict_large_image
    from utils.image_io import open_raster
    from utils.raster_io import CogSink

    stride = default_step(window)
    with open_raster(tile) as source:
        size = (source.height, source.width)
        mask = CogSink(out / "mask.tif", *size, geo_profile=source.geo_profile, nodata=255)
        probabilities = CogSink(out / "prob.tif", *size, count=NUM_CLASSES, geo_profile=source.geo_profile)
        start = time.perf_counter()
        predict_large_image(model, source.read, size, mask.write, window=window, stride=stride,
                            write_probabilities=probabilities.write, valid_region=source.valid_mask,
                            blend="gaussian", show_progress=False, pipelined=pipelined)
        mask.close()
        probabilities.close()
        return time.perf_counter() - start


def model_alone(model, tile: Path, window: int) -> float:
    """Seconds of the model's forward passes over every window of ``tile``, crops normalised beforehand."""
    import torch

    from datasets import normalize_image
    from evaluation.inference import window_starts
    from utils.image_io import read_image

    image = read_image(tile)
    stride = default_step(window)
    starts = [(top, left) for top in window_starts(image.shape[0], window, stride)
              for left in window_starts(image.shape[1], window, stride)]
    crops = [normalize_image(image[top:top + window, left:left + window])[None] for top, left in starts]
    start = time.perf_counter()
    with torch.inference_mode():
        for crop in crops:
            model(crop)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: print the three timings and the ratio; optionally write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1536, help="tile side in pixels (default 1536)")
    parser.add_argument("--window", type=int, default=512, help="window side in pixels (default 512)")
    parser.add_argument("--arch", default="upernet_r18", help="registered model (default upernet_r18)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads of the model (default: torch's); one fewer than the cores "
                             "leaves a core to the reading and writing threads, as a GPU does")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check that it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)

    import torch

    import network
    from engine.cpu_precision import cpu_capability

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = network.optimize_for_inference(network.get_model(args.arch, NUM_CLASSES, pretrained=None).eval())
    cheap = torch.nn.Conv2d(3, NUM_CLASSES, 1).eval()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        tile = folder / "tile.tif"
        write_tile(tile, args.size)
        run(cheap, tile, folder, args.window, pipelined=True)  # warm-up: GDAL, allocator, kernels
        figures = {
            "pipeline_alone_s": run(cheap, tile, folder, args.window, pipelined=True),
            "pipeline_alone_serial_s": run(cheap, tile, folder, args.window, pipelined=False),
            "model_alone_s": model_alone(model, tile, args.window),
            "total_pipelined_s": run(model, tile, folder, args.window, pipelined=True),
            "total_serial_s": run(model, tile, folder, args.window, pipelined=False),
        }
    bound = max(figures["model_alone_s"], figures["pipeline_alone_s"])
    figures.update({
        "arch": args.arch, "size": args.size, "window": args.window, "cpu": cpu_capability(),
        "threads": torch.get_num_threads(),
        "pipeline_alone_mpx_s": args.size ** 2 / 1e6 / figures["pipeline_alone_s"],
        "total_over_max_parts": figures["total_pipelined_s"] / bound,
        "serial_over_max_parts": figures["total_serial_s"] / bound,
    })
    for key, value in figures.items():
        print(f"{key:>24}: {value:.3f}" if isinstance(value, float) else f"{key:>24}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
