"""Class-uniform sampling (NVIDIA's centroid sampler, shipped but never wired in the original).

For every mask, cut into tiles of ``tile_size`` pixels, and for every class present in a tile, record a
centroid: the integer centre of mass of that class inside the tile plus the tile offset.  Each epoch
then has ``len(dataset)`` entries: ``per_class = int(N * pct / K)`` centroids drawn for every class
that has any, and plain random images for the rest.  The dataset crops around a drawn centroid (its
random-scale-and-crop transform keeps the centroid inside the crop), so rare classes are seen more.

Differences from NVIDIA's ``datasets/uniform.py``, made so that it works on the prepared patches:

* an image side shorter than ``tile_size`` counts as one tile (NVIDIA used only full tiles, so 896 px
  patches with its default 1024 px tiles gave no centroid at all);
* classes without any centroid give their share to random images, so the epoch length is always
  ``len(dataset)`` (NVIDIA's epoch silently shrank);
* the epoch is shuffled, drawn from a generator seeded by (seed, epoch) and sharded over
  distributed ranks like the original ``DistributedSampler`` (wrap-around padding, ``rank::world``);
* centroids are cached in a JSON file named by a fingerprint of the masks (names, sizes,
  modification times), the class count and the tile size; changed data gives a new fingerprint, and a
  corrupt cache file (e.g. truncated by a crash) is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from datasets.base import SegmentationFolder
from utils.atomic import atomic_write_bytes
from utils.image_io import read_as_stored

Centroid = tuple[int, int]
"""(x, y) pixel position in the untransformed image."""
CentroidTable = dict[int, list[tuple[int, Centroid]]]
"""class id -> list of (item index, centroid)."""

_CACHE_VERSION = 1
logger = logging.getLogger(__name__)


def tile_offsets(height: int, width: int, tile_size: int) -> list[tuple[int, int]]:
    """Top-left (x, y) offsets of the tiles of an image; a side shorter than a tile is one tile."""
    rows = range(0, max(1, height // tile_size) * tile_size, tile_size) if height >= tile_size else [0]
    cols = range(0, max(1, width // tile_size) * tile_size, tile_size) if width >= tile_size else [0]
    return [(x, y) for y in rows for x in cols]


def mask_centroids(mask: np.ndarray, num_classes: int, tile_size: int) -> dict[int, list[Centroid]]:
    """Centroids of every class (ids < ``num_classes``; 255 skipped) in every tile of one (H, W) mask."""
    found: dict[int, list[Centroid]] = {}
    for x_offset, y_offset in tile_offsets(*mask.shape, tile_size):
        tile = mask[y_offset:y_offset + tile_size, x_offset:x_offset + tile_size].astype(np.int64)
        rows, cols = np.indices(tile.shape)
        flat = tile.ravel()
        counts = np.bincount(flat, minlength=256)
        row_sums = np.bincount(flat, weights=rows.ravel(), minlength=256)
        col_sums = np.bincount(flat, weights=cols.ravel(), minlength=256)
        for class_id in np.flatnonzero(counts[:num_classes]).tolist():
            centre_x = int(col_sums[class_id] / counts[class_id]) + x_offset
            centre_y = int(row_sums[class_id] / counts[class_id]) + y_offset
            found.setdefault(class_id, []).append((centre_x, centre_y))
    return found


def data_fingerprint(mask_paths: Sequence[Path], num_classes: int, tile_size: int) -> str:
    """Hex digest identifying a set of masks (names, sizes, modification times) and the settings."""
    digest = hashlib.sha256(f"v{_CACHE_VERSION}|{num_classes}|{tile_size}".encode())
    for path in mask_paths:
        stat = os.stat(path)
        digest.update(f"|{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _read_mask(path: Path) -> np.ndarray:
    mask = read_as_stored(path)
    if mask is None or mask.ndim != 2:
        raise ValueError(f"{path}: not a single-channel label-id mask")
    return mask


def compute_centroids(mask_paths: Sequence[Path], num_classes: int, tile_size: int,
                      workers: int | None = None) -> CentroidTable:
    """Centroid table of a list of masks (item index = position in ``mask_paths``); threads read in parallel."""
    def one(path: Path) -> dict[int, list[Centroid]]:
        return mask_centroids(_read_mask(path), num_classes, tile_size)

    table: CentroidTable = {class_id: [] for class_id in range(num_classes)}
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for index, found in enumerate(pool.map(one, mask_paths)):
            for class_id, centroids in found.items():
                table[class_id].extend((index, centroid) for centroid in centroids)
    return table


def _read_cache(cache_file: Path) -> CentroidTable | None:
    """The centroid table stored in ``cache_file``, or None (with a warning) if it is unreadable or corrupt."""
    try:
        stored = json.loads(cache_file.read_text())
        return {int(class_id): [(int(index), (int(centroid[0]), int(centroid[1]))) for index, centroid in entries]
                for class_id, entries in stored.items()}
    except (OSError, ValueError, TypeError, AttributeError, IndexError) as error:
        logger.warning("centroid cache %s is unreadable or corrupt (%s: %s); recomputing it", cache_file,
                       type(error).__name__, error)
        return None


def load_or_compute_centroids(dataset: SegmentationFolder, tile_size: int, cache_dir: str | Path | None = None,
                              workers: int | None = None) -> CentroidTable:
    """Centroid table of a dataset, read from the cache when its fingerprint matches, else computed and saved.

    A corrupt cache file is recomputed and replaced, with a logged warning.

    Args:
        dataset: any ``SegmentationFolder`` (its ``items`` give the masks).
        tile_size: tile side in pixels (original ``--class_uniform_tile``, default 1024).
        cache_dir: folder of the cache files (default ``{root}/.cache``); an unwritable folder only
            costs a warning.
        workers: reader threads.
    """
    mask_paths = [mask for _, mask in dataset.items]
    fingerprint = data_fingerprint(mask_paths, dataset.num_classes, tile_size)
    cache_folder = Path(cache_dir) if cache_dir is not None else dataset.root / ".cache"
    cache_file = cache_folder / f"centroids_{dataset.split}_{fingerprint}.json"
    if cache_file.is_file():
        cached = _read_cache(cache_file)
        if cached is not None:
            return cached
    table = compute_centroids(mask_paths, dataset.num_classes, tile_size, workers)
    try:
        atomic_write_bytes(cache_file, json.dumps({str(class_id): entries for class_id, entries in table.items()})
                           .encode())
    except OSError as error:
        logger.warning("could not cache class centroids in %s (%s); they will be recomputed next time",
                       cache_folder, error)
    return table


def _draw(rng: np.random.Generator, population: Sequence, count: int) -> list:
    """``count`` items of ``population`` in a random order, wrapping around when count > len."""
    order = rng.permutation(len(population))
    return [population[order[i % len(population)]] for i in range(count)]


def build_epoch(num_items: int, centroids: CentroidTable, num_classes: int, class_uniform_pct: float,
                rng: np.random.Generator) -> list[tuple[int, Centroid | None]]:
    """One epoch of ``num_items`` entries ``(item index, centroid or None)``, shuffled.

    ``per_class = int(num_items * pct / num_classes)`` centroids per class that has any; the remaining
    entries are random images (no centroid).
    """
    per_class = int(num_items * class_uniform_pct / num_classes)
    epoch: list[tuple[int, Centroid | None]] = []
    for class_id in range(num_classes):
        if centroids.get(class_id) and per_class > 0:
            epoch.extend(_draw(rng, centroids[class_id], per_class))
    epoch.extend((index, None) for index in _draw(rng, list(range(num_items)), num_items - len(epoch)))
    return [epoch[i] for i in rng.permutation(len(epoch))]


class ClassUniformSampler(Sampler):
    """Sampler yielding ``(index, centroid or None)`` keys for ``SegmentationFolder.__getitem__``.

    Deterministic for a given ``seed`` and epoch (call ``set_epoch`` every epoch); every rank builds
    the same epoch and takes its share ``[rank::world_size]`` after wrap-around padding.

    Args:
        dataset: the training dataset.
        class_uniform_pct: fraction of the epoch drawn around class centroids (original 0.5).
        class_uniform_tile: tile side in pixels for the centroids (original 1024).
        seed: base seed.
        rank, world_size: distributed shard of this process.
        cache_dir: centroid cache folder (default ``{root}/.cache``).
    """

    def __init__(self, dataset: SegmentationFolder, class_uniform_pct: float = 0.5, class_uniform_tile: int = 1024,
                 seed: int = 0, rank: int = 0, world_size: int = 1, cache_dir: str | Path | None = None) -> None:
        if not 0.0 <= class_uniform_pct <= 1.0:
            raise ValueError(f"class_uniform_pct must be in [0, 1], got {class_uniform_pct}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.num_items = len(dataset)
        self.num_classes = dataset.num_classes
        self.pct = class_uniform_pct
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.centroids = load_or_compute_centroids(dataset, class_uniform_tile, cache_dir)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__iter__`` yields next."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_items / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, Centroid | None]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        epoch = build_epoch(self.num_items, self.centroids, self.num_classes, self.pct, rng)
        padded = [epoch[i % len(epoch)] for i in range(len(self) * self.world_size)]
        return iter(padded[self.rank::self.world_size])
