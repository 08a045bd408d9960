"""Datasets of the benchmarks and their registry.

``datasets.get_dataset("iSAID" | "Posdam" | "potsdam" | "Vaihingen" | "LoveDA", split, root, ...)`` builds
one (names are case-insensitive); each dataset class declares its facts (class names, palette, roots,
splits, patch geometry; see ``datasets.base.SegmentationFolder``).  ``datasets.IMAGENET_MEAN`` /
``IMAGENET_STD`` are the input normalisation.

The names below are loaded on first access, and the dataset modules import without torch: the data
tools and their worker processes read the dataset classes and must not pay for importing torch.
"""

import importlib

_EXPORTS = {
    "IMAGENET_MEAN": "datasets.base",
    "IMAGENET_STD": "datasets.base",
    "DatasetNotFoundError": "datasets.base",
    "JointTransform": "datasets.base",
    "SegmentationFolder": "datasets.base",
    "normalize_image": "datasets.base",
    "boundary_target": "datasets.edges",
    "ISAIDDataset": "datasets.isaid",
    "PotsdamDataset": "datasets.isprs",
    "VaihingenDataset": "datasets.isprs",
    "LoveDADataset": "datasets.loveda",
    "DATASETS": "datasets.registry",
    "DATASET_CLASSES": "datasets.registry",
    "DATASET_NAMES": "datasets.registry",
    "dataset_class": "datasets.registry",
    "get_dataset": "datasets.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'datasets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
