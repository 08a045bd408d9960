"""Per-dataset training and evaluation pipelines, as the original ``datasets/__init__.py`` builds them."""

from __future__ import annotations

from datasets.base import SegmentationFolder
from datasets.classes import IGNORE_LABEL
from datasets.registry import dataset_class
from transforms.joint import Compose, RandomHorizontalFlip, RandomRotate90, RandomScaleCrop, RandomVerticalFlip, Resize
from transforms.photometric import ColorJitter, RandomGaussianBlur


def _dataset(dataset: str | type[SegmentationFolder]) -> type[SegmentationFolder]:
    return dataset if isinstance(dataset, type) else dataset_class(dataset)


def build_train_transform(dataset: str | type[SegmentationFolder], crop_size: int, scale_min: float = 0.5,
                          scale_max: float = 2.0, with_aug: bool = False, color_aug: float = 0.0,
                          gaussian_blur: bool = True, pre_size: int | None = None) -> Compose:
    """Training pipeline of a dataset (name or class) on (image (H, W, 3) uint8, mask (H, W) uint8) -> crop_size^2.

    The dataset's ``train_pipeline`` picks the geometry:

    * ``"isaid"`` (iSAID): resize to ``crop_size``^2, horizontal flip, vertical flip, k * 90 degree rotation
      (``with_aug`` and the scale range are ignored, as in the original);
    * ``"isprs"`` (Potsdam, Vaihingen, LoveDA, custom datasets): resize to ``crop_size``^2 (or, with
      ``with_aug``, random scale in [scale_min, scale_max] then a random ``crop_size`` crop padded with 255),
      horizontal flip, k * 90 degree rotation (no vertical flip, as in the original);
    * then on the image only: colour jitter of strength ``color_aug`` if > 0 (original default 0) and a
      Gaussian blur with sigma in [0.15, 1.3] (the original's always-on ``--gblur``).

    Normalisation to a tensor happens in the dataset.
    """
    if _dataset(dataset).train_pipeline == "isaid":
        geometry = [Resize(crop_size), RandomHorizontalFlip(), RandomVerticalFlip(), RandomRotate90()]
    else:
        first = (RandomScaleCrop(crop_size, scale_min, scale_max, IGNORE_LABEL, pre_size) if with_aug
                 else Resize(crop_size))
        geometry = [first, RandomHorizontalFlip(), RandomRotate90()]
    appearance = [ColorJitter(color_aug, color_aug, color_aug, min(color_aug, 0.5))] if color_aug > 0 else []
    if gaussian_blur:
        appearance.append(RandomGaussianBlur())
    return Compose(geometry + appearance)


def build_eval_transform(dataset: str | type[SegmentationFolder], crop_size: int | None = None) -> Compose:
    """Evaluation pipeline: resize image (bicubic) and mask (nearest) to ``crop_size``^2, as the
    original's validation and ``--resize_scale``; ``None`` keeps the native size (same for every dataset)."""
    _dataset(dataset)
    return Compose([Resize(crop_size)] if crop_size else [])
