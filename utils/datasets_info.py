"""What evaluation and prediction need from a dataset: its (image, mask) files, class names, palette."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DATASET_NAMES = ("iSAID", "Posdam", "potsdam", "Vaihingen")

_ISPRS_NAMES = ["impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"]
_ISPRS_PALETTE = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)]
_TABLES = {
    "isaid": (
        ["background", "ship", "store_tank", "baseball_diamond", "tennis_court", "basketball_court",
         "Ground_Track_Field", "Bridge", "Large_Vehicle", "Small_Vehicle", "Helicopter", "Swimming_pool",
         "Roundabout", "Soccer_ball_field", "plane", "Harbor"],
        [(0, 0, 0), (0, 0, 63), (0, 63, 63), (0, 63, 0), (0, 63, 127), (0, 63, 191), (0, 63, 255), (0, 127, 63),
         (0, 127, 127), (0, 0, 127), (0, 0, 191), (0, 0, 255), (0, 191, 127), (0, 127, 191), (0, 127, 255),
         (0, 100, 155)],
        "_instance_color_RGB.png", "./data/iSAID",
    ),
    "posdam": (_ISPRS_NAMES, _ISPRS_PALETTE, "_gray_mask.png", "./data/posdam896"),
    "potsdam": (_ISPRS_NAMES, _ISPRS_PALETTE, "_gray_mask.png", "./data/posdam896"),
    "vaihingen": (_ISPRS_NAMES, _ISPRS_PALETTE, "_gray_mask.png", "./data/vaihingen768"),
}


def dataset_table(name: str) -> tuple[list[str], np.ndarray]:
    """(class names, (K, 3) uint8 RGB palette) of ``iSAID``, ``Posdam``/``potsdam`` or ``Vaihingen``."""
    key = name.lower()
    if key not in _TABLES:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
    names, palette, _, _ = _TABLES[key]
    return list(names), np.array(palette, dtype=np.uint8)


def load_split(name: str, split: str, root: str | None) -> tuple[list[tuple[str, str]], list[str], np.ndarray]:
    """(image, mask) file pairs of ``{root}/{split}/images`` and ``masks``, class names and palette.

    Raises:
        FileNotFoundError: the folder is missing, empty, or an image has no mask.
    """
    names, palette = dataset_table(name)
    _, _, mask_suffix, default_root = _TABLES[name.lower()]
    split_dir = Path(root or default_root) / split
    image_dir, mask_dir = split_dir / "images", split_dir / "masks"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir} not found: pass --dataset_dir (root of {split}/images, {split}/masks)")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() == ".png")
    if not images:
        raise FileNotFoundError(f"no .png images in {image_dir}")
    items = [(str(p), str(mask_dir / f"{p.stem}{mask_suffix}")) for p in images]
    missing = [mask for _, mask in items if not os.path.isfile(mask)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} masks missing, e.g. {missing[0]}")
    return items, names, palette
