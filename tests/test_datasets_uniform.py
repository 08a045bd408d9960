"""Class-uniform sampling: centroids, epochs, determinism, sharding, on-disk cache, centroid crops."""

import json
import logging
import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

import datasets.uniform as uniform
from datasets import get_dataset
from datasets.uniform import ClassUniformSampler, build_epoch, load_or_compute_centroids, mask_centroids
from transforms import Compose, RandomScaleCrop


def test_centroids_per_tile_by_hand():
    mask = np.zeros((16, 24), np.uint8)
    mask[2:6, 10:14] = 1           # tile (8, 0): rows 2..5, cols 10..13 -> (x=11, y=3)
    mask[9:10, 1:4] = 2            # tile (0, 8): row 9, cols 1..3 -> (2, 9)
    mask[9:11, 20:21] = 2          # tile (16, 8): rows 9..10, col 20 -> (20, 9)
    mask[0:8, 0:8][mask[0:8, 0:8] == 0] = 255   # ignore is never a class
    found = mask_centroids(mask, num_classes=3, tile_size=8)
    assert sorted(found[1]) == [(11, 3)]
    assert sorted(found[2]) == [(2, 9), (20, 9)]
    assert 255 not in found
    # Background (0) appears in all tiles but the first, whose zeros became 255.
    assert len(found[0]) == 5


def test_image_smaller_than_a_tile_is_one_tile():
    mask = np.zeros((30, 50), np.uint8)
    mask[10:20, 40:50] = 4
    # Background: x = (30 * 1225 - 10 * 445) / 1400 = 23.07, y = (50 * 435 - 10 * 145) / 1400 = 14.5.
    assert mask_centroids(mask, 5, tile_size=1024) == {0: [(23, 14)], 4: [(44, 14)]}


def test_epoch_composition_and_determinism():
    centroids = {0: [(i, (1, 1)) for i in range(10)], 1: [(3, (5, 5))], 2: []}
    epoch = build_epoch(10, centroids, 3, 0.6, np.random.default_rng(0))
    assert len(epoch) == 10
    with_centroid = Counter(entry[0] for entry in epoch if entry[1] is not None and entry[1] == (5, 5))
    assert with_centroid == Counter({3: 2}), "per_class = int(10 * 0.6 / 3) = 2 draws of class 1"
    assert sum(entry[1] is None for entry in epoch) == 6, "class 2 has no centroid: its share goes to random images"
    assert epoch == build_epoch(10, centroids, 3, 0.6, np.random.default_rng(0))
    assert epoch != build_epoch(10, centroids, 3, 0.6, np.random.default_rng(1))


@pytest.fixture()
def folder(tmp_path) -> Path:
    """Seven 64 x 64 items; class 2 (rare) appears only in item 4, as a 6 x 6 block at rows 40.., cols 50.."""
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "masks").mkdir()
    for index in range(7):
        labels = np.zeros((64, 64), np.uint8)
        labels[:, 32:] = 1
        if index == 4:
            labels[40:46, 50:56] = 2
        image = np.repeat((labels * 100)[..., None], 3, axis=2).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "train" / "images" / f"t{index}.png"), image)
        cv2.imwrite(str(tmp_path / "train" / "masks" / f"t{index}_gray_mask.png"), labels)
    return tmp_path


def test_sampler_is_deterministic_and_shards_cover_the_epoch(folder):
    dataset = get_dataset("Vaihingen", "train", folder)
    full = list(ClassUniformSampler(dataset, 0.9, 32, seed=5))
    assert full == list(ClassUniformSampler(dataset, 0.9, 32, seed=5))
    assert sum(entry[1] == (52, 42) for entry in full) == 1, "int(7 * 0.9 / 6) = 1 draw of the rare class"
    shards = [list(ClassUniformSampler(dataset, 0.9, 32, seed=5, rank=rank, world_size=3)) for rank in range(3)]
    assert [len(shard) for shard in shards] == [3, 3, 3]
    interleaved = [shards[i % 3][i // 3] for i in range(9)]
    assert interleaved == full + full[:2], "rank r takes entries r, r + 3, ... of the wrap-padded epoch"
    sampler = ClassUniformSampler(dataset, 0.9, 32, seed=5)
    sampler.set_epoch(1)
    assert list(sampler) != full


def test_centroid_cache_is_reused_and_rebuilt_when_data_change(folder, monkeypatch):
    dataset = get_dataset("Vaihingen", "train", folder)
    first = load_or_compute_centroids(dataset, 32)
    cache_files = list((folder / ".cache").glob("centroids_train_*.json"))
    assert len(cache_files) == 1

    def fail(*args, **kwargs):
        raise AssertionError("should have been read from the cache")

    monkeypatch.setattr(uniform, "compute_centroids", fail)
    assert load_or_compute_centroids(dataset, 32) == first
    monkeypatch.undo()
    mask_path = folder / "train" / "masks" / "t0_gray_mask.png"
    labels = np.full((64, 64), 3, np.uint8)
    cv2.imwrite(str(mask_path), labels)
    os.utime(mask_path, ns=(1, 1))
    changed = load_or_compute_centroids(get_dataset("Vaihingen", "train", folder), 32)
    assert changed != first and (0, (15, 15)) in changed[3]
    assert len(list((folder / ".cache").glob("centroids_train_*.json"))) == 2


def test_truncated_centroid_cache_is_rebuilt_with_a_warning(folder, caplog):
    dataset = get_dataset("Vaihingen", "train", folder)
    first = load_or_compute_centroids(dataset, 32)
    (cache_file,) = (folder / ".cache").glob("centroids_train_*.json")
    text = cache_file.read_text()
    cache_file.write_text(text[: len(text) // 2])
    with caplog.at_level(logging.WARNING, logger="datasets.uniform"):
        rebuilt = load_or_compute_centroids(dataset, 32)
    assert rebuilt == first
    assert (4, (52, 42)) in rebuilt[2]
    assert any("corrupt" in record.getMessage() and cache_file.name in record.getMessage()
               for record in caplog.records)
    assert cache_file.read_text() == text, "the cache file was rewritten whole"
    assert json.loads(cache_file.read_text())["2"] == [[4, [52, 42]]]


def test_centroid_crop_contains_the_rare_class(folder):
    crop = Compose([RandomScaleCrop(24, scale_min=1.0, scale_max=1.25, ignore_index=255)])
    dataset = get_dataset("Vaihingen", "train", folder, joint_transform=crop)
    sampler = ClassUniformSampler(dataset, 0.9, 32, seed=0)
    rare = [key for key in sampler.centroids[2]]
    assert rare == [(4, (52, 42))]
    for _ in range(20):
        sample = dataset[rare[0]]
        assert sample["mask"].shape == (24, 24)
        assert (sample["mask"] == 2).any()
