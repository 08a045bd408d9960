"""Inference on images of any size: whole image, batched sliding windows, multi-scale and D4 test-time augmentation.

All functions take an eval-mode model mapping (N, 3, h, w) normalised images to (N, K, h, w) logits
(any such callable: a ``torch.nn.Module``, an ONNX session wrapper) and run it on the device of the
input tensors. Test-time augmentation follows the original ``eval.py``: for every (scale, transform)
pair the logits are mapped back (transform undone, resized to the input size with bilinear,
``align_corners=True``) and the **raw logits are averaged** (no softmax) before the argmax. The
transforms are the group that the chosen generators (horizontal flip, vertical flip, 90-degree
rotation; :func:`dihedral_transforms`) generate inside the dihedral group D4: aerial imagery has no up.

:func:`predict_large_image` segments tiles of any size (e.g. 30000 x 30000 px orthomosaics) with memory
bounded by the window, not the tile: it works in bands of a few windows across and strips of one window
along, and keeps only the logits that windows still to come will add to. Overlapping windows are
blended uniformly (``"mean"``, the original's sliding mode) or with Gaussian weights that fall off
towards the window's border (``"gaussian"``).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from datasets import normalize_image
from evaluation.pipeline import RunNow, WriteBehind, read_ahead


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


BLENDS = ("mean", "gaussian")
GAUSSIAN_SIGMA = 1 / 8
"""Standard deviation of the ``"gaussian"`` window weights, as a fraction of the window side (as nnU-Net)."""


def window_weights(height: int, width: int, blend: str) -> torch.Tensor | None:
    """(height, width) float32 weights of one window's logits in the overlap blend; None for ``"mean"``.

    ``"gaussian"``: ``exp(-d^2 / (2 sigma^2))`` per axis (d = distance to the window's centre, sigma =
    ``GAUSSIAN_SIGMA`` x side), the outer product of both axes, 1 at the centre and never 0.
    """
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if blend == "mean":
        return None
    axes = []
    for length in (height, width):
        distance = torch.arange(length, dtype=torch.float64) - (length - 1) / 2
        axes.append(torch.exp(-(distance**2) / (2 * (GAUSSIAN_SIGMA * length) ** 2)))
    return torch.outer(axes[0], axes[1]).float()


@torch.inference_mode()
def sliding_window_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    window: int,
    stride: int,
    batch_size: int = 1,
    blend: str = "mean",
) -> torch.Tensor:
    """Logits averaged over overlapping square windows.

    Windows of ``window`` pixels (clipped to the image when it is smaller) start every ``stride``
    pixels, the last one shifted back to end at the border; ``batch_size`` windows go through the
    model at once. With ``blend="mean"`` every pixel's logits are the sum over the windows covering it
    divided by their number (the original divided by a counter indexed on the wrong axes; this does
    not); with ``"gaussian"`` a weighted mean with :func:`window_weights`.

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
    weights = window_weights(window_h, window_w, blend)
    weights = None if weights is None else weights.to(images.device)
    counts = torch.zeros(height, width, dtype=torch.float32, device=images.device)
    for top, left in boxes:
        counts[top : top + window_h, left : left + window_w] += 1 if weights is None else weights
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
                weighted = logits if weights is None else logits * weights
                logit_sum[image_index, :, top : top + window_h, left : left + window_w] += weighted
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


Transform = tuple[bool, int]
"""A D4 element ``(mirror, quarter_turns)``: mirror left-right first (if set), then rotate by
``quarter_turns`` x 90 degrees counter-clockwise (``torch.rot90`` on the last two axes)."""
IDENTITY: Transform = (False, 0)
HFLIP: Transform = (True, 0)
VFLIP: Transform = (True, 2)  # a left-right mirror turned by 180 degrees is the top-bottom mirror


def dihedral_transforms(hflip: bool = False, vflip: bool = False, rot90: bool = False) -> tuple[Transform, ...]:
    """The test-time transforms generated by the chosen D4 generators, identity first.

    none: identity; ``hflip``: + mirror; ``vflip``: + top-bottom mirror; both flips: + the 180-degree
    turn (4); ``rot90``: the four rotations; ``rot90`` with a flip: all 8 elements of D4.
    """
    if rot90 and (hflip or vflip):
        return tuple((mirror, turns) for mirror in (False, True) for turns in range(4))
    if rot90:
        return tuple((False, turns) for turns in range(4))
    transforms = [IDENTITY]
    if hflip:
        transforms.append(HFLIP)
    if vflip:
        transforms.append(VFLIP)
    if hflip and vflip:
        transforms.append((False, 2))
    return tuple(transforms)


def apply_transform(images: torch.Tensor, transform: Transform) -> torch.Tensor:
    """(N, C, H, W) -> the transformed images ((N, C, W, H) after an odd number of quarter turns)."""
    mirror, turns = transform
    if mirror:
        images = images.flip(-1)
    return torch.rot90(images, turns, dims=(-2, -1)) if turns else images


def undo_transform(logits: torch.Tensor, transform: Transform) -> torch.Tensor:
    """Map (N, K, h, w) logits of transformed images back to the original orientation."""
    mirror, turns = transform
    if turns:
        logits = torch.rot90(logits, -turns, dims=(-2, -1))
    return logits.flip(-1) if mirror else logits


@torch.inference_mode()
def infer_logits(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    vflip: bool = False,
    rot90: bool = False,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 1,
    blend: str = "mean",
) -> torch.Tensor:
    """Mean raw logits over scales and the D4 transforms that the chosen flags generate.

    Args:
        model: eval-mode segmentation model on the device of ``images``.
        images: (N, 3, H, W) normalised images.
        scales: input scale factors; each scaled image is segmented, its logits resized back to (H, W).
        flip: horizontal (left-right) flip, as the original; ``vflip``: vertical flip; ``rot90``: the
            90/180/270-degree rotations (see :func:`dihedral_transforms`). Transforms are undone on the logits.
        window: sliding-window size in pixels of the scaled image; ``None`` = whole image in one pass.
        stride: window step in pixels (required with ``window``).
        batch_size: windows per forward pass (sliding only).
        blend: overlap weights of the sliding windows (:func:`sliding_window_logits`).

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
        for transform in dihedral_transforms(flip, vflip, rot90):
            inputs = apply_transform(scaled, transform)
            if window is None:
                logits = forward_logits(model, inputs).float()
            else:
                logits = sliding_window_logits(model, inputs, window, stride, batch_size, blend)
            logits = resize_logits(undo_transform(logits, transform), size)
            logit_sum = logits.clone() if logit_sum is None else logit_sum.add_(logits)
            passes += 1
    return logit_sum / passes


ReadRegion = Callable[[int, int, int, int], np.ndarray]
"""``(top, left, height, width) -> uint8 (height, width, 3)`` RGB pixels of the tile."""
ValidRegion = Callable[[int, int, int, int], np.ndarray]
"""``(top, left, height, width) -> bool (height, width)``: False where the tile has no data."""
WriteBlock = Callable[[int, int, np.ndarray], None]
"""``(top, left, block)``: class ids uint8 (h, w), or probabilities uint8 (K, h, w)."""
NODATA_CLASS = 255
"""Class id written where the input has no valid data (also the ignore label of the datasets)."""
BAND_WINDOWS = 4
"""Windows per band across the tile in :func:`predict_large_image` (memory ~ K x window x this many windows)."""
READ_AHEAD_STRIPS = 2
"""Strips read and normalised ahead of the model by :func:`predict_large_image` (memory: their pixels)."""
WRITE_BEHIND_STRIPS = 2
"""Finished strips waiting for their writer in :func:`predict_large_image` (memory: their uint8 blocks)."""


class _Oriented:
    """Reads and writes in strip coordinates (outer = along the strips, inner = across); transposes for wide tiles."""

    def __init__(self, transposed: bool):
        self.transposed = transposed

    def region(self, read: Callable, outer: int, inner: int, outer_size: int, inner_size: int) -> np.ndarray:
        if not self.transposed:
            return read(outer, inner, outer_size, inner_size)
        values = read(inner, outer, inner_size, outer_size)
        return values.swapaxes(0, 1)

    def block(self, write: WriteBlock, outer: int, inner: int, values: np.ndarray) -> None:
        if not self.transposed:
            write(outer, inner, values)
        else:
            write(inner, outer, np.ascontiguousarray(values.swapaxes(-1, -2)))


def band_ranges(starts: list[int], window: int, length: int, band_windows: int) -> list[tuple[int, int, list[int]]]:
    """Split an axis covered by windows at ``starts`` into bands of ``band_windows`` windows.

    Returns ``(first pixel, end pixel, window starts)`` per band: the band's output pixels and every window
    reaching them (windows across a band border belong to both bands and are computed for each).
    """
    bands = []
    for first in range(0, len(starts), band_windows):
        begin = 0 if first == 0 else starts[first]
        end = starts[first + band_windows] if first + band_windows < len(starts) else length
        bands.append((begin, end, [start for start in starts if start < end and start + window > begin]))
    return bands


@dataclass
class _StripWork:
    """One strip of one band, read and normalised ahead of the model (see :func:`_read_strips`).

    ``span_begin`` and ``span`` give the band's columns that its windows cover (the logit buffer's width);
    ``batches`` holds (window starts across, normalised crops (n, 3, h, w) in strip orientation) per batch of
    windows with a valid pixel; ``finished`` is the number of the strip's first rows no later window reaches.
    """

    band_begin: int
    band_end: int
    span_begin: int
    span: int
    outer: int
    first_in_band: bool
    finished: int
    windows: int
    valid: np.ndarray | None
    batches: list[tuple[list[int], torch.Tensor]]


def _read_strips(read_region: ReadRegion, valid_region: ValidRegion | None, orient: _Oriented,
                 outer_starts: list[int], bands: list[tuple[int, int, list[int]]], outer_window: int,
                 inner_window: int, batch_size: int, pin: bool) -> Iterator[_StripWork]:
    """Band by band, strip by strip: read the pixels, find the windows with a valid pixel and normalise them
    in batches of ``batch_size`` (in pinned memory with ``pin``, for non-blocking copies to a GPU)."""
    for band_begin, band_end, band_starts in bands:
        span_begin, span_end = band_starts[0], band_starts[-1] + inner_window
        for strip_index, outer in enumerate(outer_starts):
            pixels = orient.region(read_region, outer, span_begin, outer_window, span_end - span_begin)
            valid = (None if valid_region is None else
                     orient.region(valid_region, outer, span_begin, outer_window, span_end - span_begin))
            useful = [inner for inner in band_starts
                      if valid is None or valid[:, inner - span_begin : inner - span_begin + inner_window].any()]
            batches = []
            for first in range(0, len(useful), batch_size):
                batch_starts = useful[first : first + batch_size]
                crops = torch.stack([
                    normalize_image(np.ascontiguousarray(
                        pixels[:, inner - span_begin : inner - span_begin + inner_window]))
                    for inner in batch_starts
                ])
                if orient.transposed:
                    crops = crops.transpose(2, 3).contiguous()
                batches.append((batch_starts, crops.pin_memory() if pin else crops))
            is_last = strip_index == len(outer_starts) - 1
            finished = outer_window if is_last else outer_starts[strip_index + 1] - outer
            yield _StripWork(band_begin, band_end, span_begin, span_end - span_begin, outer, strip_index == 0,
                             finished, len(band_starts), valid, batches)


@torch.inference_mode()
def predict_large_image(
    model: Callable[[torch.Tensor], torch.Tensor],
    read_region: ReadRegion,
    image_size: tuple[int, int],
    write_block: WriteBlock,
    *,
    window: int,
    stride: int,
    batch_size: int = 1,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    vflip: bool = False,
    rot90: bool = False,
    blend: str = "mean",
    valid_region: ValidRegion | None = None,
    write_probabilities: WriteBlock | None = None,
    band_windows: int = BAND_WINDOWS,
    device: torch.device | str = "cpu",
    show_progress: bool = True,
    pipelined: bool = True,
) -> tuple[int, ...]:
    """Segment a tile of any size with memory bounded by the window size, not the tile's.

    The tile is covered by the windows of :func:`sliding_window_logits`. Strips of one window run along the
    tile's longer side; across it the windows are grouped into bands of ``band_windows`` windows. Band by
    band, strip by strip, the uint8 pixels of the strip are read, its windows are normalised and segmented
    ``batch_size`` at a time (test-time augmentation per window: ``scales``, ``flip``/``vflip``/``rot90``
    as :func:`infer_logits`), weighted (:func:`window_weights`) and summed into a float32 buffer of
    (K, window, band span). Pixels no later window reaches are final: their argmax is written and the
    buffer moves on. A window crossing a band border is computed for both bands (about 1 / band_windows
    more forward passes when the overlap is under half a window); each pixel still sums exactly the
    windows covering it, in the same order, so with ``"mean"`` the class ids are bit-identical to
    summing over the whole tile at once. Windows without a valid pixel are skipped and invalid pixels get
    ``NODATA_CLASS``.

    With ``pipelined`` (the default) reading and normalising run up to :data:`READ_AHEAD_STRIPS` strips
    ahead of the model in one thread, and writing finished blocks up to :data:`WRITE_BEHIND_STRIPS` strips
    behind it in another (:mod:`evaluation.pipeline`): the writers receive the same calls in the same order
    as without, so the outputs are the same bytes. On CUDA the crops are read into pinned memory and copied
    without blocking.

    Args:
        model: eval-mode model on ``device`` (any callable (N, 3, h, w) -> (N, K, h, w) logits).
        read_region: ``(top, left, height, width) -> uint8 (height, width, 3)`` RGB pixels.
        image_size: (H, W) of the tile.
        write_block: ``(top, left, class_ids)`` receives each finished block, uint8 (h, w).
        blend: ``"mean"`` (uniform average, the original) or ``"gaussian"`` window weights.
        valid_region: ``(top, left, height, width) -> bool (height, width)``; None = every pixel valid.
        write_probabilities: receives ``(top, left, uint8 (K, h, w))`` per finished block: the softmax of the
            blended logits times 255, rounded (0 under nodata); None = not computed. Blocks without a valid
            pixel before the first window ran wait until K is known (a tile without any gets none).
        band_windows: windows per band across the tile.
        pipelined: read ahead and write behind in two threads (False: everything in the calling thread).

    Returns:
        The shape of the logit buffer, (K, rows, columns) in strip orientation (for tests and logs).
    """
    height, width = image_size
    orient = _Oriented(transposed=width > height)
    outer_length, inner_length = (width, height) if orient.transposed else (height, width)
    outer_window, inner_window = min(window, outer_length), min(window, inner_length)
    outer_starts = window_starts(outer_length, window, stride)
    bands = band_ranges(window_starts(inner_length, window, stride), inner_window, inner_length, band_windows)
    weights = window_weights(outer_window, inner_window, blend)
    if weights is not None:
        weights = weights.to(device)
    total = len(outer_starts) * sum(len(band_starts) for _, _, band_starts in bands)
    strips = _read_strips(read_region, valid_region, orient, outer_starts, bands, outer_window, inner_window,
                          batch_size, pin=torch.device(device).type == "cuda")
    if pipelined:
        strips = read_ahead(strips, READ_AHEAD_STRIPS)
    writer = WriteBehind(WRITE_BEHIND_STRIPS) if pipelined else RunNow()
    # closed on an error too, so that the error message is the last line printed
    with tqdm(total=total, desc="windows", unit="win", disable=not show_progress) as progress, writer, \
            closing(strips):
        buffer_shape = ()
        num_classes, waiting = None, []  # all-nodata probability blocks met before the first forward pass
        logit_buffer = weight_buffer = None
        for strip in strips:
            if strip.first_in_band:
                logit_buffer = weight_buffer = None
            for batch_starts, crops in strip.batches:
                crop_logits = infer_logits(model, crops.to(device, non_blocking=True), scales=scales, flip=flip,
                                           vflip=vflip, rot90=rot90)
                if orient.transposed:
                    crop_logits = crop_logits.transpose(2, 3)
                if num_classes is None:
                    num_classes = crop_logits.shape[1]
                    if num_classes > 256:
                        raise ValueError(f"{num_classes} classes do not fit a uint8 class-id mask")
                    for block_outer, block_inner, shape in waiting:
                        zeros = np.zeros((num_classes, *shape), np.uint8)
                        writer.submit(partial(orient.block, write_probabilities, block_outer, block_inner, zeros))
                if logit_buffer is None:
                    logit_buffer = torch.zeros((num_classes, outer_window, strip.span), dtype=torch.float32,
                                               device=device)
                    weight_buffer = torch.zeros((outer_window, strip.span), dtype=torch.float32, device=device)
                for inner, logits in zip(batch_starts, crop_logits):
                    columns = slice(inner - strip.span_begin, inner - strip.span_begin + inner_window)
                    if weights is None:
                        logit_buffer[:, :, columns] += logits
                        weight_buffer[:, columns] += 1
                    else:
                        logit_buffer[:, :, columns] += logits * weights
                        weight_buffer[:, columns] += weights
            progress.update(strip.windows)
            finished, band_columns = strip.finished, (strip.band_begin - strip.span_begin,
                                                      strip.band_end - strip.span_begin)
            class_ids, probabilities = _finished_blocks(logit_buffer, weight_buffer, strip.valid, finished,
                                                        *band_columns, write_probabilities is not None)
            writer.submit(partial(orient.block, write_block, strip.outer, strip.band_begin, class_ids))
            if probabilities is not None:
                writer.submit(partial(orient.block, write_probabilities, strip.outer, strip.band_begin,
                                      probabilities))
            elif write_probabilities is not None:  # no valid pixel yet in this band
                shape = (finished, strip.band_end - strip.band_begin)
                if num_classes is None:
                    waiting.append((strip.outer, strip.band_begin, shape))
                else:
                    writer.submit(partial(orient.block, write_probabilities, strip.outer, strip.band_begin,
                                          np.zeros((num_classes, *shape), np.uint8)))
            if logit_buffer is not None:
                buffer_shape = tuple(logit_buffer.shape)
                kept = outer_window - finished
                logit_buffer[:, :kept] = logit_buffer[:, finished:].clone()
                logit_buffer[:, kept:] = 0
                weight_buffer[:kept] = weight_buffer[finished:].clone()
                weight_buffer[kept:] = 0
    return buffer_shape


def _finished_blocks(logit_buffer: torch.Tensor | None, weight_buffer: torch.Tensor | None,
                     valid: np.ndarray | None, rows: int, column_begin: int, column_end: int,
                     with_probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The first ``rows`` buffer rows of the band's columns as uint8 class ids (h, w) and, when asked for and a
    window has run in this band, uint8 probabilities (K, h, w); all ``NODATA_CLASS`` and None before any has."""
    shape = (rows, column_end - column_begin)
    if logit_buffer is None:  # no valid pixel yet in this band: all nodata (probabilities: the caller's)
        return np.full(shape, NODATA_CLASS, np.uint8), None
    logits = logit_buffer[:, :rows, column_begin:column_end]
    class_ids = logits.argmax(0).to(torch.uint8).cpu().numpy()
    invalid = None if valid is None else ~valid[:rows, column_begin:column_end]
    if invalid is not None:
        class_ids[invalid] = NODATA_CLASS
    if not with_probabilities:
        return class_ids, None
    weight_sum = weight_buffer[:rows, column_begin:column_end].clamp_min(torch.finfo(torch.float32).tiny)
    probabilities = torch.softmax(logits / weight_sum, dim=0).mul(255).round().to(torch.uint8).cpu().numpy()
    if invalid is not None:
        probabilities[:, invalid] = 0
    return class_ids, probabilities
