"""Colouring class-id masks with a dataset palette, blends, error maps and side-by-side panels.

Class ids are uint8 (H, W) arrays; a palette is a (K, 3) uint8 RGB array (``dataset.palette``).
The ignore label 255 is drawn black.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from utils.atomic import atomic_path

IGNORE_LABEL = 255


def full_palette(palette: np.ndarray) -> np.ndarray:
    """(K, 3) palette -> (256, 3) lookup table, black beyond K (so 255 = ignore is black)."""
    palette = np.asarray(palette, dtype=np.uint8)
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) > 256:
        raise ValueError(f"a palette is a (K <= 256, 3) RGB array, got shape {palette.shape}")
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = palette
    return table


def colorize(class_ids: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """uint8 (H, W) class ids -> uint8 (H, W, 3) RGB colours."""
    return full_palette(palette)[np.asarray(class_ids, dtype=np.uint8)]


def palette_image(class_ids: np.ndarray, palette: np.ndarray) -> Image.Image:
    """uint8 (H, W) class ids -> PIL 'P' image: pixel values stay the class ids, shown in colour."""
    image = Image.fromarray(np.asarray(class_ids, dtype=np.uint8)).convert("P")
    image.putpalette(full_palette(palette).reshape(-1).tolist())
    return image


def blend(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Mix two uint8 (H, W, 3) images: ``(1 - alpha) * image + alpha * colours``."""
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def error_map(overlay: np.ndarray, prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """White where the prediction is right or the truth is ignored, ``overlay`` where it is wrong.

    Args:
        overlay: uint8 (H, W, 3), e.g. the blend of image and coloured prediction.
        prediction, truth: (H, W) class ids.
    """
    wrong = (prediction != truth) & (truth != IGNORE_LABEL)
    result = np.full_like(overlay, 255)
    result[wrong] = overlay[wrong]
    return result


def side_by_side(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Join uint8 (H, W, 3) panels of equal height left to right, separated by white gaps."""
    height = panels[0].shape[0]
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    pieces = []
    for index, panel in enumerate(panels):
        if panel.shape[0] != height:
            raise ValueError(f"panel {index} is {panel.shape[0]} px high, expected {height}")
        pieces += [spacer, panel] if index else [panel]
    return np.concatenate(pieces, axis=1)


def save_image(path: str | os.PathLike, image: np.ndarray | Image.Image) -> None:
    """Write a PNG (or any PIL format by extension) atomically."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    with atomic_path(path) as temp_path:
        image.save(temp_path)


def default_palette(num_classes: int) -> np.ndarray:
    """Distinct colours for K classes when no dataset palette is known: (K, 3) uint8.

    The bit-interleaving scheme of the PASCAL VOC colour map (class 0 black).
    """
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for class_id in range(num_classes):
        code, colour = class_id, [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((code >> channel) & 1) << bit
            code >>= 3
        palette[class_id] = colour
    return palette
