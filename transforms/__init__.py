"""Joint image + mask transforms on numpy / OpenCV and the per-dataset pipelines built from them."""

from transforms.joint import (
    Compose,
    RandomHorizontalFlip,
    RandomRotate90,
    RandomScaleCrop,
    RandomVerticalFlip,
    Resize,
    resize_pair,
)
from transforms.photometric import ColorJitter, RandomGaussianBlur
from transforms.pipelines import build_eval_transform, build_train_transform

__all__ = [
    "ColorJitter",
    "Compose",
    "RandomGaussianBlur",
    "RandomHorizontalFlip",
    "RandomRotate90",
    "RandomScaleCrop",
    "RandomVerticalFlip",
    "Resize",
    "build_eval_transform",
    "build_train_transform",
    "resize_pair",
]
