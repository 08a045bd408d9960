"""What evaluation and prediction need from a dataset: its (image, mask) files, class names, palette."""
from __future__ import annotations

import numpy as np

from datasets import dataset_class, get_dataset

DATASET_NAMES = ("iSAID", "Posdam", "potsdam", "Vaihingen")
def dataset_table(name: str) -> tuple[list[str], np.ndarray]:
    """(class names, (K, 3) uint8 RGB palette) of ``iSAID``, ``Posdam``/``potsdam`` or ``Vaihingen``."""
    cls = dataset_class(name)
    return list(cls.class_names), np.asarray(cls.palette, dtype=np.uint8)


def load_split(name: str, split: str, root: str) -> tuple[list[tuple[str, str]], list[str], np.ndarray]:
    """(image, mask) file pairs of ``{root}/{split}``, class names and palette of dataset ``name``.

    Raises:
        datasets.DatasetNotFoundError: missing or incomplete folder (the message says how to prepare it).
    """
    dataset = get_dataset(name, split, root)
    names, palette = dataset_table(name)
    return [(str(image), str(mask)) for image, mask in dataset.items], names, palette
