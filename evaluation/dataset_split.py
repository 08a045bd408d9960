"""What evaluation and prediction need from a dataset: its (image, mask) files, class names, palette."""
from __future__ import annotations

import numpy as np

from datasets import dataset_class, get_dataset
from datasets.registry import DATASET_NAMES, DATASETS

__all__ = ["DATASET_NAMES", "dataset_table", "default_split", "load_split"]


def dataset_table(name: str, spec: str | None = None) -> tuple[list[str], np.ndarray]:
    """(class names, (K, 3) uint8 RGB palette) of dataset ``name`` (``spec``: its description file, ``custom``)."""
    cls = dataset_class(name, spec)
    return list(cls.class_names), np.asarray(cls.palette, dtype=np.uint8)


def default_split(name: str) -> str:
    """The split the original validated dataset ``name`` on (``val`` for iSAID, ``test`` for Potsdam, ...)."""
    return DATASETS[name.lower()].val_split


def load_split(name: str, split: str, root: str,
               spec: str | None = None) -> tuple[list[tuple[str, str]], list[str], np.ndarray]:
    """(image, mask) file pairs of ``{root}/{split}``, class names and palette of dataset ``name``.

    Raises:
        datasets.DatasetNotFoundError: missing or incomplete folder (the message says how to prepare it).
    """
    dataset = get_dataset(name, split, root, spec=spec)
    names, palette = dataset_table(name, spec)
    return [(str(image), str(mask)) for image, mask in dataset.items], names, palette
