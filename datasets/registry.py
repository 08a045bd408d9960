"""Registry of the benchmark datasets: name -> class, and the ``get_dataset`` entry point."""

from pathlib import Path

from datasets.base import JointTransform, SegmentationFolder
from datasets.isaid import ISAIDDataset
from datasets.isprs import PotsdamDataset, VaihingenDataset

DATASETS: dict[str, type[SegmentationFolder]] = {
    "isaid": ISAIDDataset,
    "posdam": PotsdamDataset,
    "potsdam": PotsdamDataset,
    "vaihingen": VaihingenDataset,
}
"""Lower-case name -> dataset class ("posdam" is the original's spelling of Potsdam)."""


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
