"""Datasets of the three benchmarks and their registry.

``datasets.get_dataset("iSAID" | "Posdam" | "potsdam" | "Vaihingen", split, root, ...)`` builds one
(names are case-insensitive); ``datasets.IMAGENET_MEAN`` / ``IMAGENET_STD`` are the input
normalisation.  The class tables live in the torch-free ``datasets.classes``, shared with ``tools/``.

The names below are loaded on first access: the data tools and their worker processes import
``datasets.classes`` and must not pay for importing torch.
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
    "DATASETS": "datasets.registry",
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
