"""Inference on images of any size: whole image, batched sliding windows, multi-scale and flip.

All functions take an eval-mode model mapping (N, 3, h, w) normalised images to (N, K, h, w) logits
and run it on the device of the input tensors. Test-time augmentation follows the original
``eval.py``: for every (scale, flip) pair the logits are resized back to the input size (bilinear,
``align_corners=True``) and the **raw logits are averaged** (no softmax) before the argmax.

:func:`predict_large_image` segments tiles too large for memory (e.g. 6000 x 6000 or 4000 x 13000):
it reads, accumulates and writes in strips, so its memory is bounded by one strip of windows across
the tile's shorter side, whatever the tile's area.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from datasets import normalize_image


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering ``[0, length)``; the last window is shifted back inside.

    An axis shorter than the window gets one window ``[0, length)`` (the window is clipped, no
    padding). Otherwise ``ceil((length - window) / stride) + 1`` windows, as the original.
    """
    if stride <= 0 or window <= 0:
        raise ValueError(f"window ({window}) and stride ({stride}) must be positive")
    if stride > window:
        raise ValueError(f"stride {stride} larger than window {window} would leave pixels uncovered")
    if length <= window:
        return [0]
    return list(range(0, length - window, stride)) + [length - window]


def forward_logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """One forward pass: (N, 3, H, W) -> (N, K, H, W) logits, resized to the input size if needed."""
    logits = model(images)
    if not isinstance(logits, torch.Tensor):
        raise TypeError("the model returned a tuple: put it in eval mode (model.eval()) before inference")
    return resize_logits(logits, images.shape[-2:])


def resize_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear (``align_corners=True``, as the original) resize of (N, K, h, w) logits to ``size``."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)


@torch.inference_mode()
def sliding_window_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    window: int,
    stride: int,
    batch_size: int = 1,
) -> torch.Tensor:
    """Logits averaged over overlapping square windows.

    Windows of ``window`` pixels (clipped to the image when it is smaller) start every ``stride``
    pixels, the last one shifted back to end at the border; ``batch_size`` windows go through the
    model at once. Every pixel's logits are the sum over the windows covering it divided by their
    number (the original divided by a counter indexed on the wrong axes; this does not).

    Args:
        images: (N, 3, H, W) normalised images.

    Returns:
        (N, K, H, W) float32 logits.
    """
    num_images, _, height, width = images.shape
    window_h, window_w = min(window, height), min(window, width)
    lefts = window_starts(width, window, stride)
    boxes = [(top, left) for top in window_starts(height, window, stride) for left in lefts]
    logit_sum = None
    counts = torch.zeros(height, width, dtype=torch.float32, device=images.device)
    for top, left in boxes:
        counts[top : top + window_h, left : left + window_w] += 1
    for image_index in range(num_images):
        for first in range(0, len(boxes), batch_size):
            batch_boxes = boxes[first : first + batch_size]
            crops = torch.stack(
                [images[image_index, :, top : top + window_h, left : left + window_w] for top, left in batch_boxes]
            )
            crop_logits = forward_logits(model, crops).float()
            if logit_sum is None:
                logit_sum = images.new_zeros((num_images, crop_logits.shape[1], height, width), dtype=torch.float32)
            for (top, left), logits in zip(batch_boxes, crop_logits):
                logit_sum[image_index, :, top : top + window_h, left : left + window_w] += logits
    return logit_sum / counts


def scale_images(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize (N, 3, H, W) images to ``(int(H * scale), int(W * scale))`` (identity at scale 1).

    Bilinear with antialiasing, the filter of PIL's ``BILINEAR`` resize used by the original
    (which resized the 8-bit image; here the normalised float image, so values differ by rounding).
    """
    if scale == 1.0:
        return images
    height, width = images.shape[-2:]
    size = (int(height * scale), int(width * scale))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


@torch.inference_mode()
def infer_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 1,
) -> torch.Tensor:
    """Mean raw logits over scales and (optionally) horizontal flips.

    Args:
        model: eval-mode segmentation model on the device of ``images``.
        images: (N, 3, H, W) normalised images.
        scales: input scale factors; each scaled image is segmented, its logits resized back to (H, W).
        flip: also segment the horizontally flipped image (logits flipped back).
        window: sliding-window size in pixels of the scaled image; ``None`` = whole image in one pass.
        stride: window step in pixels (required with ``window``).
        batch_size: windows per forward pass (sliding only).

    Returns:
        (N, K, H, W) float32 logits.
    """
    if window is not None and stride is None:
        raise ValueError("sliding-window inference needs a stride")
    size = images.shape[-2:]
    logit_sum = None
    passes = 0
    for scale in scales:
        scaled = scale_images(images, scale)
        for flipped in (False, True) if flip else (False,):
            inputs = scaled.flip(-1) if flipped else scaled
            if window is None:
                logits = forward_logits(model, inputs).float()
            else:
                logits = sliding_window_logits(model, inputs, window, stride, batch_size)
            if flipped:
                logits = logits.flip(-1)
            logits = resize_logits(logits, size)
            logit_sum = logits.clone() if logit_sum is None else logit_sum.add_(logits)
            passes += 1
    return logit_sum / passes


ReadRegion = Callable[[int, int, int, int], np.ndarray]
WriteBlock = Callable[[int, int, np.ndarray], None]


@torch.inference_mode()
def predict_large_image(
    model: torch.nn.Module,
    read_region: ReadRegion,
    image_size: tuple[int, int],
    write_block: WriteBlock,
    *,
    window: int,
    stride: int,
    batch_size: int = 1,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: torch.device | str = "cpu",
    show_progress: bool = True,
) -> tuple[int, ...]:
    """Segment a tile of any size in strips, with memory bounded by one strip.

    The tile is covered by the same windows as :func:`sliding_window_logits`. Strips run across the
    tile's shorter side: for each row of windows (a column when the tile is wider than tall) the
    uint8 input strip is read once, its windows are normalised and segmented ``batch_size`` at a time
    (test-time augmentation per window: ``scales`` and ``flip`` as :func:`infer_logits`), and their
    logits are summed into a float32 buffer of ``(K, window, shorter side)``. Pixels no later window
    can reach are final: their argmax is written out and the buffer moves on. The argmax of the sum
    equals the argmax of the overlap average (the count is positive and shared by all classes of a
    pixel). Besides the model, memory holds that buffer and the strip's ``3 x window x shorter side``
    bytes; no float copy of the strip is made.

    Args:
        model: eval-mode model on ``device``.
        read_region: ``(top, left, height, width) -> uint8 (height, width, 3)`` RGB pixels.
        image_size: (H, W) of the tile.
        write_block: ``(top, left, class_ids)`` receives each finished block, uint8 (h, w).

    Returns:
        The shape of the logit buffer, (K, rows, columns) in strip orientation (for tests and logs).
    """
    height, width = image_size
    along_rows = width <= height
    outer_length, inner_length = (height, width) if along_rows else (width, height)
    outer_window, inner_window = min(window, outer_length), min(window, inner_length)
    outer_starts = window_starts(outer_length, window, stride)
    inner_starts = window_starts(inner_length, window, stride)
    logit_buffer = None
    progress = tqdm(total=len(outer_starts) * len(inner_starts), desc="windows", unit="win", disable=not show_progress)
    for strip_index, outer in enumerate(outer_starts):
        if along_rows:
            strip_pixels = read_region(outer, 0, outer_window, inner_length)
        else:
            strip_pixels = read_region(0, outer, inner_length, outer_window)
        for first in range(0, len(inner_starts), batch_size):
            batch_starts = inner_starts[first : first + batch_size]
            if along_rows:
                crop_pixels = [strip_pixels[:, inner : inner + inner_window] for inner in batch_starts]
            else:
                crop_pixels = [strip_pixels[inner : inner + inner_window] for inner in batch_starts]
            # normalised per window (elementwise, so the same values): no float copy of the whole strip
            crops = torch.stack([normalize_image(pixels) for pixels in crop_pixels]).to(device)
            crop_logits = infer_logits(model, crops, scales=scales, flip=flip)
            if not along_rows:
                crop_logits = crop_logits.transpose(2, 3)
            if logit_buffer is None:
                logit_buffer = torch.zeros(
                    (crop_logits.shape[1], outer_window, inner_length), dtype=torch.float32, device=device
                )
                if logit_buffer.shape[0] > 256:
                    raise ValueError(f"{logit_buffer.shape[0]} classes do not fit a uint8 class-id mask")
            for inner, logits in zip(batch_starts, crop_logits):
                logit_buffer[:, :, inner : inner + inner_window] += logits
            progress.update(len(batch_starts))
        is_last = strip_index == len(outer_starts) - 1
        finished = outer_window if is_last else outer_starts[strip_index + 1] - outer
        class_ids = logit_buffer[:, :finished].argmax(0).to(torch.uint8).cpu().numpy()
        if along_rows:
            write_block(outer, 0, class_ids)
        else:
            write_block(0, outer, np.ascontiguousarray(class_ids.T))
        kept = outer_window - finished
        logit_buffer[:, :kept] = logit_buffer[:, finished:].clone()
        logit_buffer[:, kept:] = 0
    progress.close()
    return tuple(logit_buffer.shape)


def parse_scales(text: str) -> tuple[float, ...]:
    """``--scales`` text such as ``"0.5,1.0"`` -> the test-time scale factors, each finite and positive.

    Raises:
        ValueError: a value is not a positive number; the message names ``--scales``.
    """
    try:
        scales = tuple(float(value) for value in text.split(","))
    except ValueError:
        scales = ()
    if not scales or not all(0 < scale < math.inf for scale in scales):
        raise ValueError(f"--scales needs comma-separated positive numbers such as 0.75,1.0, got {text!r}")
    return scales
