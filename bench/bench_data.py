"""Training data-loading speed: images/s per DataLoader worker process for the iSAID and ISPRS pipelines.

Each row iterates train.py's training DataLoader over prepared synthetic patches (made by
``tools/make_synthetic_data.py`` and ``tools/prepare_dataset.py``) with the official recipes' transforms
at ``--size`` (896 by default): PNG decode, the augmentation pipeline, normalisation, the boundary target
of the edge loss and the batch collation. ``iSAID``: resize, both flips, rot90, Gaussian blur;
``Potsdam``: ``--with_aug`` random scale in [0.5, 2] and crop, flip, rot90, Gaussian blur. The first
batch (worker start-up) is not timed. A stage breakdown in this process (no workers) says where the time
goes. The files are read from the page cache, as from a fast SSD.

Run ``python bench/bench_data.py --help``; ``--smoke`` is the tiny CI mode (figures not meaningful).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets  # noqa: E402
import transforms  # noqa: E402
from datasets.edges import boundary_target  # noqa: E402
from tools.make_synthetic_data import make_synthetic  # noqa: E402
from tools.prepare_dataset import PrepareOptions, prepare  # noqa: E402
from utils.atomic import atomic_write_bytes  # noqa: E402

# train.py --dataset name -> (tools name, train.py flags of the official recipe that shape the pipeline)
PIPELINES = {"iSAID": ("isaid", {}), "Posdam": ("potsdam", {"with_aug": True, "scale_min": 0.5, "scale_max": 2.0})}
BATCH = 4


def prepared_root(base: Path, dataset: str, size: int) -> Path:
    """A prepared dataset of ``size`` x ``size`` training patches under ``base`` (2 raw images, 4 patches each)."""
    tool_name = PIPELINES[dataset][0]
    raw = make_synthetic(tool_name, base / f"raw_{tool_name}", seed=3, num_images=3, size=2 * size, fixed_size=True)
    out = base / tool_name
    prepare(tool_name, raw, out, PrepareOptions(patch_size=size, stride=size, workers=1, progress=False))
    return out


def training_set(dataset: str, root: Path, size: int):
    """The training dataset as train.py builds it (edge target on, thickness 8)."""
    options = PIPELINES[dataset][1]
    transform = transforms.build_train_transform(dataset, size, **options)
    return datasets.get_dataset(dataset, "train", root, joint_transform=transform, with_edge=True, edge_thickness=8)


def loader_rate(train_set, workers: int, images: int, pin_memory: bool) -> float:
    """Images/s of a DataLoader (batch 4, random order with replacement) after its first batch."""
    sampler = RandomSampler(train_set, replacement=True, num_samples=images + BATCH,
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(train_set, batch_size=BATCH, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                        drop_last=True)
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first batch are not timed
    start = time.perf_counter()
    count = sum(len(batch["image"]) for batch in iterator)
    return count / (time.perf_counter() - start)


def stage_times(train_set, samples: int) -> dict[str, float]:
    """Median milliseconds per image of decode, augmentation, normalisation and boundary target (here)."""
    times: dict[str, list[float]] = {"decode": [], "augment": [], "normalize": [], "edge": []}
    for index in range(samples):
        clock = time.perf_counter()
        image, mask = train_set.read_pair(index % len(train_set))
        times["decode"].append(time.perf_counter() - clock)
        clock = time.perf_counter()
        image, mask = train_set.joint_transform(image, mask)
        times["augment"].append(time.perf_counter() - clock)
        clock = time.perf_counter()
        datasets.normalize_image(image)
        torch.from_numpy(mask.astype(np.int64))
        times["normalize"].append(time.perf_counter() - clock)
        clock = time.perf_counter()
        boundary_target(mask, 8)
        times["edge"].append(time.perf_counter() - clock)
    return {stage: 1e3 * statistics.median(values) for stage, values in times.items()}


def measure(args: argparse.Namespace, base: Path) -> dict:
    """Rows (pipeline, size, workers, images/s, images/s per worker) and the per-stage breakdown."""
    torch.set_num_threads(1)  # as in a DataLoader worker
    rows, stages = [], {}
    for dataset in args.pipelines:
        train_set = training_set(dataset, prepared_root(base, dataset, args.size), args.size)
        stages[dataset] = stage_times(train_set, samples=max(4, args.images // 4))
        for workers in args.workers:
            print(f"[bench_data] {dataset} {args.size}² with {workers} worker(s)", file=sys.stderr, flush=True)
            rate = loader_rate(train_set, workers, args.images, pin_memory=torch.cuda.is_available())
            rows.append({"pipeline": dataset, "size": args.size, "workers": workers, "images_per_s": rate,
                         "images_per_s_per_worker": rate / max(workers, 1)})
    return {"rows": rows, "stages_ms": stages, "batch": BATCH, "images": args.images}


def format_table(report: dict) -> str:
    """Markdown: one row per pipeline and worker count, then the stage breakdown."""
    lines = ["| pipeline | input | workers | images/s | images/s per worker |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['pipeline']} | {r['size']}² | {r['workers']} | {r['images_per_s']:.2f} | "
              f"{r['images_per_s_per_worker']:.2f} |" for r in report["rows"]]
    lines += ["", "| pipeline | " + " | ".join(f"{stage} ms" for stage in next(iter(report["stages_ms"].values())))
              + " |", "|---|" + "---:|" * len(next(iter(report["stages_ms"].values())))]
    lines += [f"| {name} | " + " | ".join(f"{value:.1f}" for value in stages.values()) + " |"
              for name, stages in report["stages_ms"].items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/bench_data.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", type=int, default=896, help="training crop size in pixels (square patches)")
    parser.add_argument("--images", type=int, default=32, help="images timed per row (after the first batch)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="DataLoader worker counts, one row each")
    parser.add_argument("--pipelines", nargs="+", choices=sorted(PIPELINES), default=sorted(PIPELINES),
                        help="train.py dataset names whose training pipeline is measured")
    parser.add_argument("--json", type=Path, default=None, help="also write the report to this JSON file")
    parser.add_argument("--smoke", action="store_true", help="tiny CI mode: 64 px patches, 8 images, 1 worker")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.images, args.workers = 64, 8, [1]
    if args.images < BATCH or any(workers < 0 for workers in args.workers):
        parser.error(f"--images must be at least {BATCH} and --workers at least 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Measure, print the Markdown tables and return the report."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as base:
        report = measure(args, Path(base))
    print(format_table(report))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(report, indent=1).encode())
    return report


if __name__ == "__main__":
    main()
