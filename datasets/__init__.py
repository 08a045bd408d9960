"""Datasets of the three benchmarks and their registry.

``get_dataset("iSAID" | "Posdam" | "potsdam" | "Vaihingen", split, root, ...)`` builds one; names are
case-insensitive.  The class tables live in the torch-free ``datasets.classes`` (shared with ``tools/``).
"""

from pathlib import Path

from datasets.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetNotFoundError,
    JointTransform,
    SegmentationFolder,
    normalize_image,
)
from datasets.edges import boundary_target
from datasets.isaid import ISAIDDataset
from datasets.isprs import PotsdamDataset, VaihingenDataset

DATASETS: dict[str, type[SegmentationFolder]] = {
    "isaid": ISAIDDataset,
    "posdam": PotsdamDataset,
    "potsdam": PotsdamDataset,
    "vaihingen": VaihingenDataset,
}
"""Registry: lower-case name -> dataset class ("posdam" is the original's spelling of Potsdam)."""


def dataset_class(name: str) -> type[SegmentationFolder]:
    """The dataset class registered under ``name`` (case-insensitive).

    Raises:
        KeyError: unknown name, listing the known ones.
    """
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: iSAID, Posdam (or potsdam), Vaihingen") from None


def get_dataset(name: str, split: str, root: str | Path, *, joint_transform: JointTransform | None = None,
                with_edge: bool = False, edge_thickness: int = 8) -> SegmentationFolder:
    """Build dataset ``name`` on ``{root}/{split}``; see ``SegmentationFolder`` for the items returned."""
    return dataset_class(name)(root, split, joint_transform=joint_transform, with_edge=with_edge,
                               edge_thickness=edge_thickness)


__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetNotFoundError",
    "ISAIDDataset",
    "PotsdamDataset",
    "SegmentationFolder",
    "VaihingenDataset",
    "boundary_target",
    "dataset_class",
    "get_dataset",
    "normalize_image",
]
