"""Image-only training transforms with the joint ``(image, mask) -> (image, mask)`` signature.

They change the (H, W, 3) uint8 RGB image and pass the mask through untouched, so they sit in the
same ``Compose`` as the geometric transforms; ``keeps_geometry = True`` tells ``Compose`` that a
class-uniform centroid passes through them unchanged.
"""

from __future__ import annotations

import random

import cv2
import numpy as np

Pair = tuple[np.ndarray, np.ndarray]


class RandomGaussianBlur:
    """Gaussian blur with sigma uniform in [sigma_min, sigma_max] pixels (original 0.15 to 1.30).

    Matches the original's scikit-image ``gaussian`` (edge pixels replicated, kernel truncated at 4
    sigma), except that the result is rounded to uint8 where the original truncated (which darkened
    every image by half a grey level on average).
    """

    keeps_geometry = True

    def __init__(self, sigma_min: float = 0.15, sigma_max: float = 1.30) -> None:
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Pair:
        """(blurred image (H, W, C) uint8, mask unchanged)."""
        sigma = self.sigma_min + (self.sigma_max - self.sigma_min) * random.random()
        radius = int(4.0 * sigma + 0.5)
        blurred = cv2.GaussianBlur(image.astype(np.float32), (2 * radius + 1, 2 * radius + 1), sigma,
                                   borderType=cv2.BORDER_REPLICATE)
        return np.clip(np.rint(blurred), 0, 255).astype(np.uint8).reshape(image.shape), mask

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(sigma=[{self.sigma_min}, {self.sigma_max}])"


class ColorJitter:
    """Random brightness, contrast, saturation and hue changes in random order (original ``--color_aug``).

    Factors are uniform in ``[max(0, 1 - v), 1 + v]`` for brightness / contrast / saturation and the
    hue shift uniform in ``[-hue, hue]`` of a full turn (``hue <= 0.5``), as in the original.
    """

    keeps_geometry = True

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0) -> None:
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue

    def _draw_steps(self) -> list[tuple[str, float]]:
        """The enabled adjustments with their random amounts, in random order."""
        steps = [(kind, random.uniform(max(0.0, 1 - strength), 1 + strength))
                 for kind, strength in (("brightness", self.brightness), ("contrast", self.contrast),
                                        ("saturation", self.saturation)) if strength > 0]
        if self.hue > 0:
            steps.append(("hue", random.uniform(-self.hue, self.hue)))
        random.shuffle(steps)
        return steps

    @staticmethod
    def _adjust(image: np.ndarray, kind: str, amount: float) -> np.ndarray:
        """One adjustment of a uint8 RGB image, returned as uint8."""
        if kind == "hue":
            hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)
            hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(amount * 256))) % 256
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
        pixels = image.astype(np.float32)
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None]
        if kind == "brightness":
            adjusted = pixels * amount
        elif kind == "contrast":
            adjusted = (pixels - gray.mean()) * amount + gray.mean()
        else:
            adjusted = (pixels - gray) * amount + gray
        return np.clip(np.rint(adjusted), 0, 255).astype(np.uint8)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Pair:
        """(jittered image (H, W, 3) uint8, mask unchanged)."""
        for kind, amount in self._draw_steps():
            image = self._adjust(image, kind, amount)
        return image, mask

    def __repr__(self) -> str:
        return (f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation}, hue={self.hue})")
