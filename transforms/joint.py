"""Joint geometric transforms of an image and its mask, on numpy arrays with OpenCV.

Every transform is called as ``transform(image, mask) -> (image, mask)`` with ``image`` (H, W, C)
uint8 and ``mask`` (H, W) uint8 label ids; images are interpolated (bicubic, or area averaging when
shrinking, close to Pillow's antialiased bicubic of the original), masks always with nearest
neighbour, so label values never mix.  Randomness comes from Python's ``random`` module, which
PyTorch seeds in every DataLoader worker.  Transforms with ``uses_centroid = True`` also accept
``centroid=(x, y)`` (class-uniform sampling): ``Compose`` hands it to its first transform only, since
its coordinates refer to the untransformed image.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import cv2
import numpy as np

Pair = tuple[np.ndarray, np.ndarray]


def resize_pair(image: np.ndarray, mask: np.ndarray, width: int, height: int) -> Pair:
    """Resize an image (bicubic up, area down) and its mask (nearest) to ``width`` x ``height`` pixels."""
    if mask.shape == (height, width):
        return image, mask
    shrinking = width <= mask.shape[1] and height <= mask.shape[0]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    if resized.ndim == 2:
        resized = resized[..., None]
    # INTER_NEAREST_EXACT samples at pixel centres like Pillow's NEAREST and the image interpolations;
    # plain INTER_NEAREST would shift the mask by up to half a source pixel.
    return resized, cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)


class Compose:
    """Apply joint transforms in order; a centroid goes to the first transform if it uses one."""

    def __init__(self, transforms: Sequence[Callable[..., Pair]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, mask: np.ndarray, centroid: tuple[int, int] | None = None) -> Pair:
        if image.shape[:2] != mask.shape:
            raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} sizes differ")
        for position, transform in enumerate(self.transforms):
            if position == 0 and centroid is not None and getattr(transform, "uses_centroid", False):
                image, mask = transform(image, mask, centroid=centroid)
            else:
                image, mask = transform(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(transform) for transform in self.transforms) + ")"


class Resize:
    """Stretch to ``size`` x ``size`` pixels, aspect ratio not kept (the original ``Resize``)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Pair:
        return resize_pair(image, mask, self.size, self.size)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Pair:
        if random.random() < self.p:
            return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
        return image, mask

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomVerticalFlip:
    """Mirror top-bottom with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Pair:
        if random.random() < self.p:
            return np.ascontiguousarray(image[::-1]), np.ascontiguousarray(mask[::-1])
        return image, mask

    def __repr__(self) -> str:
        return f"RandomVerticalFlip(p={self.p})"


class RandomRotate90:
    """Rotate counter-clockwise by k * 90 degrees, k uniform in {0, 1, 2, 3} (the original
    ``RandomRotateThreeDegree``); exact, no interpolation.  A non-square input swaps height and width."""

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Pair:
        turns = random.randint(0, 3)
        if turns == 0:
            return image, mask
        return np.ascontiguousarray(np.rot90(image, turns)), np.ascontiguousarray(np.rot90(mask, turns))

    def __repr__(self) -> str:
        return "RandomRotate90()"


class RandomScaleCrop:
    """Random rescale then a ``size`` x ``size`` random crop, padding with ignore when too small.

    The original ``RandomSizeAndCrop`` + ``RandomCrop(nopad=False)``: scale ``s = U(scale_min,
    scale_max)`` (times ``pre_size / shorter side`` when ``pre_size`` is set); resize to
    ``(int(w * s), int(h * s))``; an input of exactly the crop size is returned as is; a side shorter
    than the crop is padded by ``(size - side) // 2 + 1`` on both ends (image 0, mask ``ignore_index``);
    then a uniformly random window.  With a centroid (scaled along), the window contains it.
    """

    uses_centroid = True

    def __init__(self, size: int, scale_min: float = 0.5, scale_max: float = 2.0, ignore_index: int = 255,
                 pre_size: int | None = None) -> None:
        if not 0 < scale_min <= scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {scale_min}, {scale_max}")
        self.size = size
        self.scale_min = scale_min
        self.scale_max = scale_max
        self.ignore_index = ignore_index
        self.pre_size = pre_size

    def __call__(self, image: np.ndarray, mask: np.ndarray, centroid: tuple[int, int] | None = None) -> Pair:
        height, width = mask.shape
        scale = 1.0 if self.pre_size is None else self.pre_size / min(height, width)
        scale *= random.uniform(self.scale_min, self.scale_max)
        image, mask = resize_pair(image, mask, int(width * scale), int(height * scale))
        if centroid is not None:
            centroid = (int(centroid[0] * scale), int(centroid[1] * scale))
        return self._crop(image, mask, centroid)

    def _crop(self, image: np.ndarray, mask: np.ndarray, centroid: tuple[int, int] | None) -> Pair:
        height, width = mask.shape
        if (height, width) == (self.size, self.size):
            return image, mask
        pad_y = (self.size - height) // 2 + 1 if height < self.size else 0
        pad_x = (self.size - width) // 2 + 1 if width < self.size else 0
        if pad_y or pad_x:
            image = cv2.copyMakeBorder(image, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_CONSTANT, value=0)
            if image.ndim == 2:
                image = image[..., None]
            mask = cv2.copyMakeBorder(mask, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_CONSTANT, value=self.ignore_index)
            height, width = mask.shape
            if centroid is not None:
                centroid = (centroid[0] + pad_x, centroid[1] + pad_y)
        if centroid is None:
            left = random.randint(0, width - self.size)
            top = random.randint(0, height - self.size)
        else:
            left = min(width - self.size, max(0, random.randint(centroid[0] - self.size, centroid[0])))
            top = min(height - self.size, max(0, random.randint(centroid[1] - self.size, centroid[1])))
        window = (slice(top, top + self.size), slice(left, left + self.size))
        return np.ascontiguousarray(image[window]), np.ascontiguousarray(mask[window])

    def __repr__(self) -> str:
        return (f"RandomScaleCrop({self.size}, scale=[{self.scale_min}, {self.scale_max}], "
                f"ignore_index={self.ignore_index}, pre_size={self.pre_size})")
