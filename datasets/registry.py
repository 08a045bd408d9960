"""Registry of the datasets: every ``SegmentationFolder`` subclass in a module of this package that declares
``aliases`` is found here, so adding a benchmark is adding its file (``datasets/loveda.py`` is an example).

``DATASETS`` maps each lower-case alias to its class; ``DATASET_NAMES`` lists the aliases as spelled
for ``--dataset`` choices; ``get_dataset`` builds one.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import datasets
from datasets.base import JointTransform, SegmentationFolder

_NOT_DATASET_MODULES = frozenset({"base", "classes", "edges", "file_check", "registry", "uniform"})
"""Modules of the package that hold machinery, not datasets (``uniform`` needs torch at import)."""


def _registered_classes() -> tuple[type[SegmentationFolder], ...]:
    """Import every dataset module of the package (by name); the subclasses declaring ``aliases``, in module
    order and, within a module, in definition order."""
    for name in sorted(module.name for module in pkgutil.iter_modules(datasets.__path__)):
        if name not in _NOT_DATASET_MODULES and not name.startswith("_"):
            importlib.import_module(f"datasets.{name}")

    def declared_below(parent: type[SegmentationFolder]) -> list[type[SegmentationFolder]]:
        found = []
        for cls in parent.__subclasses__():
            found += [cls] if "aliases" in cls.__dict__ else []
            found += declared_below(cls)
        return found

    found = declared_below(SegmentationFolder)
    # the benchmarks first, then the datasets described by a file (``custom``)
    return tuple(sorted(found, key=lambda cls: hasattr(cls, "from_spec")))


DATASET_CLASSES: tuple[type[SegmentationFolder], ...] = _registered_classes()
"""One entry per dataset, whatever its number of aliases."""
DATASETS: dict[str, type[SegmentationFolder]] = {
    alias.lower(): cls for cls in DATASET_CLASSES for alias in cls.aliases
}
"""Lower-case name -> dataset class ("posdam" is the original's spelling of Potsdam)."""
DATASET_NAMES: tuple[str, ...] = tuple(alias for cls in DATASET_CLASSES for alias in cls.aliases)
"""Every ``--dataset`` name as spelled in the help texts (e.g. ``Posdam`` and ``potsdam``)."""


def names_text() -> str:
    """The datasets for help texts and messages: ``"iSAID, Posdam (or Potsdam, potsdam), Vaihingen, ..."``."""
    def one(cls: type[SegmentationFolder]) -> str:
        first, *others = cls.aliases
        return f"{first} (or {', '.join(others)})" if others else first
    return ", ".join(one(cls) for cls in DATASET_CLASSES)


def class_counts_text() -> str:
    """Each dataset's class count for messages: ``"iSAID 16 classes, Potsdam 6, ..., custom those of its spec"``."""
    counts = ["those of its spec" if hasattr(cls, "from_spec") else str(cls.num_classes) for cls in DATASET_CLASSES]
    return ", ".join(f"{cls.name} {count}{' classes' if index == 0 else ''}"
                     for index, (cls, count) in enumerate(zip(DATASET_CLASSES, counts)))


def val_splits_text() -> str:
    """Each dataset's validation split for help texts: ``"val for iSAID, ...; test for Potsdam, Vaihingen"``."""
    by_split: dict[str, list[str]] = {}
    for cls in DATASET_CLASSES:
        by_split.setdefault(cls.val_split, []).append(cls.name)
    return "; ".join(f"{split} for {', '.join(names)}" for split, names in by_split.items())


def dataset_class(name: str, spec: str | Path | None = None) -> type[SegmentationFolder]:
    """The dataset class registered under ``name`` (case-insensitive).

    Args:
        name: a ``--dataset`` name.
        spec: description file of a dataset built from one (``custom``; see ``datasets/custom.py``);
            ignored by the benchmarks.

    Raises:
        KeyError: unknown name, listing the known ones.
        ValueError: ``custom`` without ``spec``, or a bad spec (the message names the file and key).
    """
    try:
        cls = DATASETS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {names_text()}") from None
    from_spec = getattr(cls, "from_spec", None)
    if from_spec is None:
        return cls
    if spec is None:
        raise ValueError(f"--dataset {name} needs --dataset_spec FILE (a YAML description of the dataset; "
                         "see docs/data_custom.md)")
    return from_spec(spec)


def get_dataset(name: str, split: str, root: str | Path, *, joint_transform: JointTransform | None = None,
                with_edge: bool = False, edge_thickness: int = 8,
                spec: str | Path | None = None) -> SegmentationFolder:
    """Build dataset ``name`` on ``{root}/{split}``; see ``SegmentationFolder`` for the items returned."""
    return dataset_class(name, spec)(root, split, joint_transform=joint_transform, with_edge=with_edge,
                                     edge_thickness=edge_thickness)
