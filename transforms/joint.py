"""Joint geometric transforms of an image and its mask, on numpy arrays with OpenCV.

Every transform is called as ``transform(image, mask) -> (image, mask)`` with ``image`` (H, W, C)
uint8 and ``mask`` (H, W) uint8 label ids; images are interpolated (bicubic, or area averaging when
shrinking, close to Pillow's antialiased bicubic of the original), masks always with nearest
neighbour, so label values never mix.  Randomness comes from Python's ``random`` module, which
PyTorch seeds in every DataLoader worker.

Class-uniform sampling passes a centroid ``(x, y)`` (column, row of a pixel of the untransformed
image) to ``Compose``, which threads it through every transform: each geometric transform has
``with_centroid(image, mask, centroid) -> (image, mask, centroid)`` that maps the point along (a resize
scales it, a flip mirrors it, a rotation turns it, the random crop keeps it inside its window and
shifts it into the window's coordinates); transforms marked ``keeps_geometry = True`` (the
photometric ones) leave it unchanged.  A transform with neither is refused rather than losing the
centroid silently.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import cv2
import numpy as np

Pair = tuple[np.ndarray, np.ndarray]
Centroid = tuple[int, int]
"""(x, y) pixel position: column, row."""
Triple = tuple[np.ndarray, np.ndarray, Centroid | None]
"""(image, mask, centroid or None) as returned by ``with_centroid``."""


def scale_point(point: Centroid, size: tuple[int, int], new_size: tuple[int, int]) -> Centroid:
    """Map an (x, y) pixel of an image of ``size`` (width, height) to the pixel of the image resized to
    ``new_size`` whose centre falls in it (the pixel that samples it when enlarging)."""
    return (min(new_size[0] - 1, int((point[0] + 0.5) * new_size[0] / size[0])),
            min(new_size[1] - 1, int((point[1] + 0.5) * new_size[1] / size[1])))


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
    """Apply joint transforms in order, threading a class-uniform centroid through all of them."""

    def __init__(self, transforms: Sequence[Callable[..., Pair]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, mask: np.ndarray, centroid: Centroid | None = None) -> Pair:
        """Transform (image (H, W, C) uint8, mask (H, W) uint8); ``centroid`` (x, y) steers the crop."""
        image, mask, _ = self.with_centroid(image, mask, centroid)
        return image, mask

    def with_centroid(self, image: np.ndarray, mask: np.ndarray, centroid: Centroid | None) -> Triple:
        """Transform and return the centroid mapped to the output pixels (None stays None).

        Raises:
            ValueError: image and mask sizes differ.
            TypeError: a centroid is given and a transform can neither map it nor keeps the geometry.
        """
        if image.shape[:2] != mask.shape:
            raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} sizes differ")
        for transform in self.transforms:
            if centroid is None:
                image, mask = transform(image, mask)
            elif hasattr(transform, "with_centroid"):
                image, mask, centroid = transform.with_centroid(image, mask, centroid)
            elif getattr(transform, "keeps_geometry", False):
                image, mask = transform(image, mask)
            else:
                raise TypeError(f"{transform!r} cannot map a class-uniform centroid: give it a with_centroid() "
                                "method, or keeps_geometry = True if it does not move pixels")
        return image, mask, centroid

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(transform) for transform in self.transforms) + ")"


class Resize:
    """Stretch to ``size`` x ``size`` pixels, aspect ratio not kept (the original ``Resize``)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Pair:
        """Resized (image (size, size, C), mask (size, size))."""
        return resize_pair(image, mask, self.size, self.size)

    def with_centroid(self, image: np.ndarray, mask: np.ndarray, centroid: Centroid | None) -> Triple:
        """Resize and scale the centroid along."""
        height, width = mask.shape
        if centroid is not None:
            centroid = scale_point(centroid, (width, height), (self.size, self.size))
        return (*self(image, mask), centroid)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Pair:
        """(image (H, W, C), mask (H, W)), mirrored or not."""
        image, mask, _ = self.with_centroid(image, mask, None)
        return image, mask

    def with_centroid(self, image: np.ndarray, mask: np.ndarray, centroid: Centroid | None) -> Triple:
        """Mirror (or not) and move the centroid along."""
        if random.random() >= self.p:
            return image, mask, centroid
        if centroid is not None:
            centroid = (mask.shape[1] - 1 - centroid[0], centroid[1])
        return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1]), centroid

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomVerticalFlip:
    """Mirror top-bottom with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Pair:
        """(image (H, W, C), mask (H, W)), mirrored or not."""
        image, mask, _ = self.with_centroid(image, mask, None)
        return image, mask

    def with_centroid(self, image: np.ndarray, mask: np.ndarray, centroid: Centroid | None) -> Triple:
        """Mirror (or not) and move the centroid along."""
        if random.random() >= self.p:
            return image, mask, centroid
        if centroid is not None:
            centroid = (centroid[0], mask.shape[0] - 1 - centroid[1])
        return np.ascontiguousarray(image[::-1]), np.ascontiguousarray(mask[::-1]), centroid

    def __repr__(self) -> str:
        return f"RandomVerticalFlip(p={self.p})"


class RandomRotate90:
    """Rotate counter-clockwise by k * 90 degrees, k uniform in {0, 1, 2, 3} (the original
    ``RandomRotateThreeDegree``); exact, no interpolation.  A non-square input swaps height and width."""

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Pair:
        """(image, mask) rotated; (H, W) becomes (W, H) for odd k."""
        image, mask, _ = self.with_centroid(image, mask, None)
        return image, mask

    def with_centroid(self, image: np.ndarray, mask: np.ndarray, centroid: Centroid | None) -> Triple:
        """Rotate and turn the centroid along: one counter-clockwise turn sends (x, y) to (y, W - 1 - x)."""
        turns = random.randint(0, 3)
        if turns == 0:
            return image, mask, centroid
        if centroid is not None:
            width = mask.shape[1]
            height = mask.shape[0]
            for _ in range(turns):
                centroid = (centroid[1], width - 1 - centroid[0])
                width, height = height, width
        return np.ascontiguousarray(np.rot90(image, turns)), np.ascontiguousarray(np.rot90(mask, turns)), centroid

    def __repr__(self) -> str:
        return "RandomRotate90()"


class RandomScaleCrop:
    """Random rescale then a ``size`` x ``size`` random crop, padding with ignore when too small.

    The original ``RandomSizeAndCrop`` + ``RandomCrop(nopad=False)``: scale ``s = U(scale_min,
    scale_max)`` (times ``pre_size / shorter side`` when ``pre_size`` is set); resize to
    ``(int(w * s), int(h * s))``; an input of exactly the crop size is returned as is; a side shorter
    than the crop is padded by ``(size - side) // 2 + 1`` on both ends (image 0, mask ``ignore_index``);
    then a uniformly random window.  With a centroid (scaled along), the window start is drawn from
    ``[c - size + 1, c]`` clipped to the image, so the window always contains it (NVIDIA's sampler drew
    from ``[c - size, c]``, which can leave it one pixel outside).
    """

    def __init__(self, size: int, scale_min: float = 0.5, scale_max: float = 2.0, ignore_index: int = 255,
                 pre_size: int | None = None) -> None:
        if not 0 < scale_min <= scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {scale_min}, {scale_max}")
        self.size = size
        self.scale_min = scale_min
        self.scale_max = scale_max
        self.ignore_index = ignore_index
        self.pre_size = pre_size

    def __call__(self, image: np.ndarray, mask: np.ndarray, centroid: Centroid | None = None) -> Pair:
        """(image (size, size, C), mask (size, size)); a centroid (x, y) of the input lies in the window."""
        image, mask, _ = self.with_centroid(image, mask, centroid)
        return image, mask

    def with_centroid(self, image: np.ndarray, mask: np.ndarray, centroid: Centroid | None) -> Triple:
        """Rescale and crop around the centroid; returns it in the crop's pixel coordinates."""
        height, width = mask.shape
        scale = 1.0 if self.pre_size is None else self.pre_size / min(height, width)
        scale *= random.uniform(self.scale_min, self.scale_max)
        new_size = (int(width * scale), int(height * scale))
        image, mask = resize_pair(image, mask, *new_size)
        if centroid is not None:
            centroid = scale_point(centroid, (width, height), new_size)
        return self._crop(image, mask, centroid)

    def _crop(self, image: np.ndarray, mask: np.ndarray, centroid: Centroid | None) -> Triple:
        height, width = mask.shape
        if (height, width) == (self.size, self.size):
            return image, mask, centroid
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
            left = min(width - self.size, max(0, random.randint(centroid[0] - self.size + 1, centroid[0])))
            top = min(height - self.size, max(0, random.randint(centroid[1] - self.size + 1, centroid[1])))
        window = (slice(top, top + self.size), slice(left, left + self.size))
        if centroid is not None:
            centroid = (centroid[0] - left, centroid[1] - top)
        return np.ascontiguousarray(image[window]), np.ascontiguousarray(mask[window]), centroid

    def __repr__(self) -> str:
        return (f"RandomScaleCrop({self.size}, scale=[{self.scale_min}, {self.scale_max}], "
                f"ignore_index={self.ignore_index}, pre_size={self.pre_size})")
