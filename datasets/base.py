"""Common mechanics of the benchmark datasets: the facts each declares, folder layout, checks, reading, samples.

This module, and every dataset module built on it, imports without torch: the data tools and their
worker processes read the facts (class names, palette, mask suffix, patch geometry) from the dataset
classes and must not pay for importing torch.  torch is imported when the first sample is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

import numpy as np

from datasets.classes import IGNORE_LABEL
from datasets.edges import boundary_target
from datasets.file_check import DataFileError
from utils.image_io import ImageReadError, read_as_stored, read_image

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel mean of the input normalisation (RGB order, images scaled to [0, 1])."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of the input normalisation (RGB order)."""

JointTransform = Callable[..., tuple[np.ndarray, np.ndarray]]
"""``transform(image (H, W, 3) uint8 RGB, mask (H, W) uint8, centroid=None) -> (image, mask)``."""


class DatasetNotFoundError(FileNotFoundError):
    """The prepared dataset folder is missing, empty or incomplete; the message says how to fix it."""


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 tensor: scaled to [0, 1], minus ImageNet mean, over std."""
    import torch

    # Channel by channel straight into the (3, H, W) output: the same float32 operations in the same order
    # (so the same bits) as ((image / 255) - mean) / std on the whole image, without its three temporary
    # (H, W, 3) float arrays and the transposing copy (3.7x faster at 896 x 896: 8 ms instead of 30 ms).
    planes = np.empty((3, *image.shape[:2]), np.float32)
    for channel, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):
        plane = planes[channel]
        np.divide(image[..., channel], np.float32(255.0), out=plane, dtype=np.float32)
        np.subtract(plane, np.float32(mean), out=plane)
        np.divide(plane, np.float32(std), out=plane)
    return torch.from_numpy(planes)


TRAIN_PIPELINES = ("isaid", "isprs")
"""Training pipelines of ``transforms.build_train_transform``, named after the datasets the original built them for."""


class SegmentationFolder:
    """Image/mask pairs from ``{root}/{split}/images/*.png`` and ``{root}/{split}/masks/{stem}{mask_suffix}.png``.

    Every fact about a benchmark is a class variable of its subclass, declared once there; the
    registry (``datasets.registry``), the configuration's dataset roots, train.py's validation split,
    eval.py's default split, the data tools and the help texts all read them:

    * ``name``: display name; ``aliases``: the ``--dataset`` names (case-insensitive), the first being
      the spelling shown in help texts;
    * ``root_key`` / ``default_root``: the ``cfg.DATASET`` key of the prepared root and its default;
    * ``splits``: the splits ``tools/prepare_dataset.py`` writes; ``val_split``: the one the original
      validated on (train.py's validation and eval.py's default ``--split``);
    * ``class_names`` (label-id order; ``num_classes`` follows), ``palette`` ((K, 3) uint8 RGB);
    * ``mask_suffix``: mask file stem suffix; ``prepare_name``: the ``prepare_dataset.py`` sub-command;
    * ``patch_size`` / ``patch_stride``: the preparation's default window and step in pixels
      (``patch_size = None``: whole images);
    * ``train_pipeline``: one of ``TRAIN_PIPELINES`` (see ``transforms.build_train_transform``).

    A subclass that declares ``aliases`` is registered (``datasets.registry``); intermediate classes do not.
    Masks hold label ids ``0..K-1`` and ``255`` (ignore) in a single 8-bit channel, as written by
    ``tools/prepare_dataset.py``.

    ``dataset[i]`` (or ``dataset[(i, (x, y))]`` from the class-uniform sampler, see
    ``datasets/uniform.py``) returns a dict:

    * ``"image"``: (3, H, W) float32, ImageNet-normalised RGB;
    * ``"mask"``: (H, W) int64 label ids (255 = ignore);
    * ``"edge"``: (1, H, W) float32 in {0, 1}, only with ``with_edge=True`` (``datasets.edges``);
    * ``"name"``: the image file stem.

    Args:
        root: prepared dataset root.
        split: sub-folder, e.g. ``"train"``, ``"val"``, ``"test"`` (or ``"val_ori"`` / ``"test_ori"``).
        joint_transform: applied to (image (H, W, 3) uint8 RGB, mask (H, W) uint8) before
            normalisation, e.g. ``transforms.build_train_transform(...)``; receives the sampler's
            centroid as ``centroid=`` when there is one.
        with_edge: also return the boundary target of the transformed mask.
        edge_thickness: contour width of the boundary target in pixels (original ``--thicky`` 8).

    Raises:
        DatasetNotFoundError: missing or empty folder, or images without their mask.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]]
    root_key: ClassVar[str]
    default_root: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]
    val_split: ClassVar[str]
    prepare_name: ClassVar[str]
    num_classes: ClassVar[int]
    ignore_label: ClassVar[int] = IGNORE_LABEL
    class_names: ClassVar[tuple[str, ...]]
    palette: ClassVar[np.ndarray]
    mask_suffix: ClassVar[str]
    patch_size: ClassVar[int | None]
    patch_stride: ClassVar[int | None]
    train_pipeline: ClassVar[str]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "class_names" in cls.__dict__:
            cls.num_classes = len(cls.class_names)
        if "palette" in cls.__dict__:
            cls.palette = np.asarray(cls.palette, np.uint8)

    def __init__(self, root: str | Path, split: str = "train", *, joint_transform: JointTransform | None = None,
                 with_edge: bool = False, edge_thickness: int = 8) -> None:
        self.root = Path(root)
        self.split = split
        self.joint_transform = joint_transform
        self.with_edge = with_edge
        self.edge_thickness = edge_thickness
        self.items: list[tuple[Path, Path]] = self._find_items()
        self._valid_values = np.zeros(256, bool)
        self._valid_values[: self.num_classes] = True
        self._valid_values[self.ignore_label] = True

    def _prepare_hint(self) -> str:
        return (f"prepare it with `python tools/prepare_dataset.py {self.prepare_name} --raw RAW_DIR "
                f"--out {self.root}` (docs/data.md), or point the dataset root at it "
                f"(--dataset_dir DIR, or --set DATASET.{self.root_key}=DIR)")

    def _find_items(self) -> list[tuple[Path, Path]]:
        """List (image, mask) pairs, checking the layout first (torchgeo-style ``_verify``)."""
        images_dir = self.root / self.split / "images"
        masks_dir = self.root / self.split / "masks"
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise DatasetNotFoundError(f"{self.name}: {folder} does not exist; {self._prepare_hint()}")
        images = sorted(path for path in images_dir.glob("*.png") if not path.name.startswith("."))
        if not images:
            raise DatasetNotFoundError(f"{self.name}: {images_dir} holds no .png images; {self._prepare_hint()}")
        items = [(image, masks_dir / f"{image.stem}{self.mask_suffix}.png") for image in images]
        missing = [mask for _, mask in items if not mask.is_file()]
        if missing:
            listed = ", ".join(path.name for path in missing[:3])
            raise DatasetNotFoundError(
                f"{self.name}: {len(missing)} of {len(items)} images in {images_dir} have no mask in {masks_dir} "
                f"(expected e.g. {listed}); each image X.png needs X{self.mask_suffix}.png. "
                f"Re-run the preparation to complete it, or remove the unpaired images")
        return items

    def __len__(self) -> int:
        return len(self.items)

    def read_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read item ``index`` untransformed: (image (H, W, 3) uint8 RGB, mask (H, W) uint8).

        Raises:
            DataFileError: unreadable file, mask not single-channel 8-bit, wrong size or values outside
                {0..K-1, 255}; one line naming the file (also from DataLoader workers).
        """
        image_path, mask_path = self.items[index]
        try:
            image = read_image(image_path)
            mask = read_as_stored(mask_path)
        except ImageReadError as error:
            raise DataFileError(str(error)) from None
        if mask is None:
            raise DataFileError(f"{mask_path}: cannot be read (missing, truncated or not an image)")
        if mask.ndim != 2 or mask.dtype != np.uint8:
            raise DataFileError(f"{mask_path}: expected a single-channel 8-bit label-id mask, found {mask.dtype} "
                                f"{mask.shape}; colour masks must be converted with tools/prepare_dataset.py")
        if mask.shape != image.shape[:2]:
            raise DataFileError(f"{mask_path}: mask size {mask.shape} differs from its image {image.shape[:2]}")
        if not self._valid_values[mask].all():
            bad = sorted(set(np.unique(mask).tolist()) - set(np.flatnonzero(self._valid_values).tolist()))
            raise DataFileError(f"{mask_path}: label ids {bad} are not classes of {self.name} "
                                f"(0..{self.num_classes - 1}, {self.ignore_label} = ignore)")
        return image, mask

    def __getitem__(self, key: int | tuple[int, tuple[int, int] | None]) -> dict[str, torch.Tensor | str]:
        import torch

        index, centroid = key if isinstance(key, tuple) else (key, None)
        image, mask = self.read_pair(index)
        if self.joint_transform is not None and centroid is not None:
            image, mask = self.joint_transform(image, mask, centroid=centroid)
        elif self.joint_transform is not None:
            image, mask = self.joint_transform(image, mask)
        sample = {
            "image": normalize_image(image),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "name": self.items[index][0].stem,
        }
        if self.with_edge:
            sample["edge"] = torch.from_numpy(boundary_target(mask, self.edge_thickness))[None]
        return sample

    @classmethod
    def colorize(cls, mask: np.ndarray) -> np.ndarray:
        """(H, W) label ids -> (H, W, 3) uint8 RGB with the dataset palette; ignore (255) is black."""
        table = np.zeros((256, 3), np.uint8)
        table[: cls.num_classes] = cls.palette
        return table[np.asarray(mask, np.uint8)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, items={len(self)})"
