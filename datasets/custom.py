"""Your own labelled imagery, described by a YAML file instead of code (``--dataset custom --dataset_spec FILE``).

The description file ("spec") names the image and mask folders (or globs), how an image finds its
mask, the classes (names, and colours or ids), the mask values to ignore and the splits.  A complete
example is ``docs/examples/custom_dataset.yaml``; docs/data_custom.md explains every key.

``load_spec(path)`` reads and checks a spec (every problem is a ``SpecError`` naming the file and the
key, with the fix); ``CustomDataset.from_spec(path)`` gives the dataset class of that spec, whose
class names and palette come from it.  ``tools/prepare_dataset.py custom --spec FILE --out DIR`` writes
the prepared ``{out}/{split}/images|masks`` folders this class reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml

from datasets.base import SegmentationFolder
from datasets.classes import IGNORE_LABEL
from utils.palette import default_palette

MASK_FORMATS = ("colour", "ids")
"""``colour``: RGB masks, one colour per class; ``ids``: single-channel 8-bit masks, one value per class."""
SPLIT_MODES = ("folders", "lists", "fraction")
"""How images are assigned to splits: sub-folders of ``images``/``masks``, list files of stems, or a seeded
random share of the images."""
SCALING_RULES = ("dataset",)
"""Scaling of non-8-bit images: one per-band range for the whole dataset (from the training images, saved as
``{out}/scaling.json``; values within 0..255 are kept). The data tools never stretch image by image."""
_KNOWN_KEYS = {"name", "images", "masks", "image_suffix", "mask_suffix", "mask_format", "classes", "ignore",
               "split_by", "splits", "seed", "patch_size", "stride", "bands", "scaling"}


class SpecError(ValueError):
    """A dataset description file is missing, malformed or inconsistent; the message names the file and key."""


@dataclass(frozen=True)
class ClassSpec:
    """One class of a spec: its name, its RGB colour in the masks (colour masks) or its value (id masks)."""

    name: str
    color: tuple[int, int, int] | None
    value: int | None


@dataclass(frozen=True)
class DatasetSpec:
    """A checked dataset description (see ``load_spec``); paths are absolute (relative ones are read from the
    spec file's folder).

    Attributes:
        path: the spec file.
        name: display name (logs, reports).
        images, masks: folders, or glob patterns (``*`` in the last part), of the raw images and masks.
        image_suffix, mask_suffix: pairing rule: an image ``{key}{image_suffix}.*`` pairs with the mask
            ``{key}{mask_suffix}.*`` (both default ``""``: same stem).
        mask_format: one of ``MASK_FORMATS``.
        classes: in label-id order.
        ignore: mask colours (RGB) or values written as 255 (ignored in training and evaluation).
        split_by: one of ``SPLIT_MODES``.
        splits: split name -> sub-folder name (``folders``), list file (``lists``) or share in (0, 1]
            (``fraction``).
        seed: seed of the ``fraction`` assignment.
        patch_size, stride: preparation window and step in pixels (None: whole images; stride defaults
            to the window).
        bands: three 1-based image bands fed as the model's channels (None: 1, 2, 3).
        scaling: one of ``SCALING_RULES``, or ``(low, high)``: that range to 0..255 for every band.
    """

    path: Path
    name: str
    images: str
    masks: str
    image_suffix: str
    mask_suffix: str
    mask_format: str
    classes: tuple[ClassSpec, ...]
    ignore: tuple
    split_by: str
    splits: dict[str, Any]
    seed: int
    patch_size: int | None
    stride: int | None
    bands: tuple[int, int, int] | None
    scaling: str | tuple[float, float]

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in label-id order."""
        return tuple(item.name for item in self.classes)

    @property
    def palette(self) -> np.ndarray:
        """(K, 3) uint8 RGB: the classes' mask colours, or their ``color`` keys for id masks (else generic)."""
        fallback = default_palette(len(self.classes))
        return np.asarray([item.color if item.color is not None else fallback[index]
                           for index, item in enumerate(self.classes)], np.uint8)


def _fail(path: Path, key: str, problem: str, fix: str) -> SpecError:
    return SpecError(f"{path}: {key}: {problem}; {fix}")


def _colour(path: Path, key: str, value: Any) -> tuple[int, int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(c, int) and 0 <= c <= 255 for c in value)):
        raise _fail(path, key, f"{value!r} is not an RGB colour", "write three integers 0-255, e.g. [255, 0, 0]")
    return tuple(value)


def _value(path: Path, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
        raise _fail(path, key, f"{value!r} is not a mask value", "write an integer 0-255")
    return value


def _classes(path: Path, entries: Any, mask_format: str) -> tuple[ClassSpec, ...]:
    if not isinstance(entries, list) or not entries:
        raise _fail(path, "classes", "missing or empty", "list the classes in label-id order, e.g. "
                    "[{name: background, color: [0, 0, 0]}, {name: building, color: [255, 0, 0]}]")
    if len(entries) > IGNORE_LABEL:
        raise _fail(path, "classes", f"{len(entries)} classes", f"at most {IGNORE_LABEL} classes fit 8-bit masks")
    classes, seen_names, seen_codes = [], {}, {}
    code_key = "color" if mask_format == "colour" else "id"
    for index, entry in enumerate(entries):
        key = f"classes[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise _fail(path, key, f"{entry!r} has no name", "write {name: NAME, " + code_key + ": ...}")
        if code_key not in entry:
            raise _fail(path, key, f"class {entry['name']!r} has no {code_key!r}",
                        f"give its {'RGB colour in the masks' if code_key == 'color' else 'value in the masks'}"
                        f" (mask_format: {mask_format})")
        color = _colour(path, f"{key}.color", entry["color"]) if "color" in entry else None
        value = _value(path, f"{key}.id", entry["id"]) if mask_format == "ids" else None
        code = color if mask_format == "colour" else value
        if entry["name"] in seen_names:
            raise _fail(path, key, f"name {entry['name']!r} is also classes[{seen_names[entry['name']]}]",
                        "give each class its own name")
        if code in seen_codes:
            shown = list(code) if mask_format == "colour" else code
            raise _fail(path, f"{key}.{code_key}", f"{entry['name']!r} has the same {code_key} {shown} as "
                        f"classes[{seen_codes[code]}]", f"give each class its own {code_key}")
        seen_names[entry["name"]], seen_codes[code] = index, index
        classes.append(ClassSpec(entry["name"], color, value))
    return tuple(classes)


def _ignore(path: Path, raw: Any, mask_format: str, classes: tuple[ClassSpec, ...]) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _fail(path, "ignore", f"{raw!r} is not a list",
                    "write e.g. [[255, 255, 255]] (colour masks) or [0] (id masks)")
    codes = {(item.color if mask_format == "colour" else item.value): item.name for item in classes}
    parsed = []
    for index, entry in enumerate(raw):
        key = f"ignore[{index}]"
        code = _colour(path, key, entry) if mask_format == "colour" else _value(path, key, entry)
        if code in codes:
            raise _fail(path, key, f"{entry!r} is also the code of class {codes[code]!r}",
                        "a mask value is either a class or ignored, not both")
        parsed.append(code)
    return tuple(parsed)


def _splits(path: Path, split_by: Any, splits: Any) -> dict[str, Any]:
    if split_by not in SPLIT_MODES:
        raise _fail(path, "split_by", f"{split_by!r} is not one of {SPLIT_MODES}",
                    "folders (images/train, images/val, ...), lists (files of image stems) or fraction (seeded)")
    if not isinstance(splits, dict) or "train" not in splits:
        raise _fail(path, "splits", f"{splits!r} has no train split", "write e.g. {train: 0.8, val: 0.2} "
                    "(fraction), {train: train.txt, val: val.txt} (lists) or {train: train, val: val} (folders)")
    for name, value in splits.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise _fail(path, "splits", f"split name {name!r} is not a plain word", "use names like train, val, test")
        if split_by == "fraction":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise _fail(path, f"splits.{name}", f"{value!r} is not a share in (0, 1]", "write e.g. 0.2")
        elif not isinstance(value, str) or not value:
            what = "folder name" if split_by == "folders" else "file"
            raise _fail(path, f"splits.{name}", f"{value!r} is not a {what}",
                        "write a path relative to the spec file" if split_by == "lists" else "write a sub-folder name")
    if split_by == "fraction" and sum(splits.values()) > 1 + 1e-9:
        raise _fail(path, "splits", f"the shares add up to {sum(splits.values()):g}", "make them add up to at most 1")
    if split_by == "lists":
        return {name: str(path.parent / value) for name, value in splits.items()}
    return dict(splits)


def _positive_or_none(path: Path, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(path, key, f"{value!r} is not a positive number of pixels", "write e.g. 512, or leave it out")
    return value


def _bands(path: Path, value: Any) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(band, int) and not isinstance(band, bool) and band >= 1 for band in value)):
        raise _fail(path, "bands", f"{value!r} is not three 1-based band numbers", "write e.g. [4, 1, 2] for IR-R-G")
    return tuple(value)


def _scaling(path: Path, value: Any) -> str | tuple[float, float]:
    if value in SCALING_RULES:
        return value
    if (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
            and value[0] < value[1]):
        return float(value[0]), float(value[1])
    raise _fail(path, "scaling", f"{value!r} is not a scaling rule", f"write one of {SCALING_RULES} or [LOW, HIGH] "
                "(e.g. [0, 10000]) for 16-bit or float images; 8-bit images are used as they are")


def load_spec(path: str | Path) -> DatasetSpec:
    """Read and check a dataset description file (nothing is read but the file itself).

    Raises:
        SpecError: missing or unparsable file, unknown key, missing key, a class without name or code,
            two classes with one colour or value, an ignored code that is a class, bad splits.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise SpecError(f"dataset spec {path} does not exist; pass the YAML file describing your data "
                        "(example: docs/examples/custom_dataset.yaml)")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML ({error}); fix the syntax") from None
    if not isinstance(content, dict):
        raise SpecError(f"{path}: expected a YAML mapping of keys (name, images, masks, classes, splits, ...)")
    unknown = sorted(set(content) - _KNOWN_KEYS)
    if unknown:
        raise _fail(path, unknown[0], "unknown key", f"the keys are {', '.join(sorted(_KNOWN_KEYS))}")
    for key in ("images", "masks"):
        if not isinstance(content.get(key), str) or not content[key]:
            raise _fail(path, key, "missing", f"name the folder (or glob) of the {key}, relative to the spec file")
    mask_format = content.get("mask_format", "colour")
    if mask_format not in MASK_FORMATS:
        raise _fail(path, "mask_format", f"{mask_format!r} is not one of {MASK_FORMATS}",
                    "colour for RGB-coded masks, ids for single-channel class values")
    classes = _classes(path, content.get("classes"), mask_format)
    suffixes = {key: content.get(key, "") or "" for key in ("image_suffix", "mask_suffix")}
    for key, value in suffixes.items():
        if not isinstance(value, str):
            raise _fail(path, key, f"{value!r} is not text", 'write e.g. "_label"')
    seed = content.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _fail(path, "seed", f"{seed!r} is not an integer", "write e.g. 0")
    return DatasetSpec(
        path=path, name=str(content.get("name", path.stem)),
        images=str(path.parent / content["images"]), masks=str(path.parent / content["masks"]),
        image_suffix=suffixes["image_suffix"], mask_suffix=suffixes["mask_suffix"], mask_format=mask_format,
        classes=classes, ignore=_ignore(path, content.get("ignore"), mask_format, classes),
        split_by=content.get("split_by", "fraction"), splits=_splits(path, content.get("split_by", "fraction"),
                                                                      content.get("splits")),
        seed=seed, patch_size=_positive_or_none(path, "patch_size", content.get("patch_size")),
        stride=_positive_or_none(path, "stride", content.get("stride")),
        bands=_bands(path, content.get("bands")), scaling=_scaling(path, content.get("scaling", "dataset")),
    )


class CustomDataset(SegmentationFolder):
    """A dataset described by a spec file; ``CustomDataset.from_spec(path)`` is the class to instantiate.

    On disk (after ``tools/prepare_dataset.py custom --spec FILE --out DIR``)::

        {root}/{split}/images/{key}.png
        {root}/{split}/masks/{key}_gray_mask.png   (label ids in spec order, 255 = ignore)

    Training validates on ``val``.
    """

    name: ClassVar[str] = "custom"
    aliases: ClassVar[tuple[str, ...]] = ("custom",)
    root_key: ClassVar[str] = "CUSTOM_DIR"
    default_root: ClassVar[str] = "./data/custom"
    splits: ClassVar[tuple[str, ...]] = ("train", "val")
    val_split: ClassVar[str] = "val"
    prepare_name: ClassVar[str] = "custom"
    mask_suffix: ClassVar[str] = "_gray_mask"
    patch_size: ClassVar[int | None] = None
    patch_stride: ClassVar[int | None] = None
    train_pipeline: ClassVar[str] = "isprs"
    spec: ClassVar[DatasetSpec]

    @classmethod
    def from_spec(cls, path: str | Path) -> type[CustomDataset]:
        """The dataset class of the spec at ``path``: its name, class names, palette and splits.

        Raises:
            SpecError: see ``load_spec``.
        """
        spec = load_spec(path)
        return type(f"CustomDataset[{spec.name}]", (cls,), {
            "name": spec.name, "class_names": spec.class_names, "palette": spec.palette,
            "splits": tuple(spec.splits), "spec": spec,
        })

    def _prepare_hint(self) -> str:
        return (f"prepare it with `python tools/prepare_dataset.py custom --spec SPEC.yaml --out {self.root}`, "
                f"or point the dataset root at it (cfg DATASET.{self.root_key}, eval.py --dataset_dir)")
