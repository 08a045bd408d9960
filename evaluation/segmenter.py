"""One inference object: a model, the classes it predicts and the protocol it is run with.

:class:`Segmenter` is what eval.py, predict.py, the onnxruntime backend and the benchmarks run; in Python::

    from evaluation.segmenter import Protocol, Segmenter

    segmenter = Segmenter.from_checkpoint("last.pth", protocol=Protocol(window=512, flip=True))
    class_ids = segmenter.predict_array(image)                    # (H, W, 3) uint8 -> (H, W) uint8
    segmenter.predict_raster("tile.tif", "tile_pred.tif")         # streamed, memory bounded by the window

The model comes from a checkpoint (``evaluation.restore.restore_model``: arch and options from the given
options, else the checkpoint's saved configuration, else the registry's recommended ones) or from an ONNX
file (``evaluation.onnx_backend.OnnxModel``). The classes and palette come from the caller (a dataset's),
else the checkpoint (``evaluation.restore.saved_class_table``) or the ONNX metadata, else generic ones. Images
are normalised by ``datasets.normalize_image`` (ImageNet mean and std, the only normalisation here). The
computations are those of :mod:`evaluation.inference`, which stays the set of building blocks.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluation.cli import check_batch_size, parse_scales, window_stride
from evaluation.inference import BLENDS, NODATA_CLASS, infer_logits, predict_large_image
from evaluation.onnx_backend import OnnxModel
from evaluation.restore import restore_model, saved_class_table, speed_options
from network.options import MODEL_OPTION_FLAGS, ResolvedModel
from utils.image_io import ImageReadError, RasterSource, open_raster
from utils.palette import default_palette
from utils.raster_io import CogSink, PaletteMaskSink

MODEL_OPTIONS = ("arch", *MODEL_OPTION_FLAGS)
"""Keyword options of :meth:`Segmenter.from_checkpoint` that choose the model (None = not given)."""

ClassTable = tuple[list[str], np.ndarray]
"""(K class names, (K, 3) uint8 RGB palette)."""


@dataclass(frozen=True)
class Protocol:
    """How images are segmented: windows, test-time augmentation, blending, batching.

    Attributes:
        window: sliding-window side in pixels; None = the whole image in one pass.
        stride: window step in pixels; None = from ``overlap``.
        overlap: without ``stride``: a fraction (<= 1) of the window, step ``ceil(window x (1 - overlap))``,
            or pixels (> 1), step ``window - overlap`` (see ``evaluation.cli.window_stride``).
        scales: test-time scales; the logits of every scale are averaged.
        flip, vflip, rot90: the D4 test-time transforms (``evaluation.inference.dihedral_transforms``).
        blend: weights of overlapping windows, ``"mean"`` or ``"gaussian"``.
        batch: windows (whole images, without a window) per forward pass.

    The defaults are predict.py's (:data:`DEFAULT_PROTOCOL`) but for the window; eval.py's follow the
    original (513 px windows, flip, uniform blend: its flags).

    Raises:
        ValueError: a value out of range (the message names the matching command-line flag).
    """

    window: int | None = None
    stride: int | None = None
    overlap: float = 1 / 3
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    vflip: bool = False
    rot90: bool = False
    blend: str = "gaussian"
    batch: int = 1

    def __post_init__(self):
        if self.blend not in BLENDS:
            raise ValueError(f"--blend must be one of {', '.join(BLENDS)}, got {self.blend!r}")
        if not self.scales or not all(0 < scale < math.inf for scale in self.scales):
            raise ValueError(f"--scales must be positive numbers, got {self.scales}")
        check_batch_size(self.batch)
        _ = self.step  # checks window, stride and overlap

    @property
    def step(self) -> int | None:
        """The window step in pixels (None without a window)."""
        return None if self.window is None else window_stride(self.window, self.stride, self.overlap)

    @property
    def transforms(self) -> dict:
        """``flip``, ``vflip`` and ``rot90``, as the keyword arguments of ``evaluation.inference``."""
        return {"flip": self.flip, "vflip": self.vflip, "rot90": self.rot90}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Protocol:
        """The protocol of the shared inference flags (``evaluation.cli``); eval.py's ``--inference_mode whole``
        drops the window and ``--single_scale`` keeps scale 1 only.

        Raises:
            ValueError: a malformed or out-of-range flag, named.
        """
        scales = parse_scales(args.scales)
        if getattr(args, "single_scale", False):
            scales = (1.0,)
        whole = getattr(args, "inference_mode", "sliding") == "whole"
        return cls(window=None if whole else args.window, stride=None if whole else args.stride,
                   overlap=args.overlap, scales=scales, flip=args.flip, vflip=args.vflip, rot90=args.rot90,
                   blend=args.blend, batch=args.batch_size)


DEFAULT_PROTOCOL = Protocol(window=896)
"""predict.py's protocol: 896 px windows overlapping by a third, Gaussian blend, no test-time augmentation."""


def generic_classes(num_classes: int) -> ClassTable:
    """``class_0`` ... and ``utils.palette.default_palette``: for models that do not name their classes."""
    return [f"class_{index}" for index in range(num_classes)], default_palette(num_classes)


def require_valid_pixels(path: str | os.PathLike, source: RasterSource) -> None:
    """Raises ImageReadError naming ``path`` when the sampled pixels of ``source`` are all nodata."""
    if source.sample_valid_fraction == 0:
        raise ImageReadError(f"{path} has no valid pixels (all nodata or alpha 0): nothing to segment")


class Segmenter:
    """A segmentation model with its classes and protocol, ready for arrays, batches and rasters.

    Args:
        model: eval-mode callable (N, 3, h, w) normalised images -> (N, K, h, w) logits, on ``device``.
        classes: (K class names, (K, 3) uint8 RGB palette).
        protocol: how images are segmented (default :data:`DEFAULT_PROTOCOL`).
        device: where the model runs and the images go.
        resolved: for a checkpoint, the arch and options and where each came from; None otherwise.
        extras: for a checkpoint, its other entries (epoch, mean_iu, config, ...); {} otherwise.

    Attributes:
        class_names, palette, num_classes: the classes; the mask values are class ids 0..K-1 (and
            ``NODATA_CLASS`` where an input has no data).
    """

    def __init__(self, model, classes: ClassTable, protocol: Protocol | None = None,
                 device: torch.device | str = "cpu", *, resolved: ResolvedModel | None = None,
                 extras: dict | None = None):
        self.model = model
        self.class_names = list(classes[0])
        self.palette = np.asarray(classes[1], dtype=np.uint8)
        self.protocol = protocol or DEFAULT_PROTOCOL
        self.device = device
        self.resolved = resolved
        self.extras = extras or {}

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return len(self.class_names)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: torch.device | str = "cpu",
                        precision: str = "fp32", protocol: Protocol | None = None,
                        classes: ClassTable | None = None, optimize: bool = True, trusted_pickle: bool = False,
                        **model_options) -> Segmenter:
        """The model of a checkpoint (train.py's or an official PFSegNets one).

        Args:
            path: the ``.pth`` file.
            device: torch device of the model.
            precision: ``fp32``, ``bf16`` or ``fp16`` (see ``evaluation.restore.restore_model``).
            protocol: default :data:`DEFAULT_PROTOCOL`.
            classes: the classes the caller expects (a dataset's); the checkpoint must have as many.
                None: those saved in the checkpoint, else generic ones.
            optimize: run the model through ``network.optimize_for_inference`` (the scripts' default).
            trusted_pickle: allow arbitrary pickled objects (only for checkpoints you trust).
            **model_options: ``arch`` and the model options (``maxpool_size``, ...); None or left out = the
                checkpoint's saved value, else the registry's recommended one.

        Raises:
            TypeError: an unknown model option. utils.checkpoint.CheckpointMismatchError: another class
                count or architecture. FileNotFoundError / ValueError: see ``utils.checkpoint``.
        """
        unknown = sorted(set(model_options) - set(MODEL_OPTIONS))
        if unknown:
            raise TypeError(f"unknown model option(s) {', '.join(unknown)}; known: {', '.join(MODEL_OPTIONS)}")
        flags = argparse.Namespace(**{name: model_options.get(name) for name in MODEL_OPTIONS})
        restored = restore_model(flags, path, None if classes is None else len(classes[0]), device=device,
                                 trusted_pickle=trusted_pickle, optimize=optimize, precision=precision)
        if classes is None:
            classes = saved_class_table(restored.extras) or generic_classes(restored.num_classes)
        return cls(restored.model, classes, protocol, device, resolved=restored.resolved, extras=restored.extras)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, *, protocol: Protocol | None = None,
                  classes: ClassTable | None = None, device: torch.device | str = "cpu",
                  threads: int | None = None, providers: list[str] | None = None) -> Segmenter:
        """A file written by ``tools/export_onnx.py``, run by onnxruntime (``OnnxModel``).

        Args:
            classes: the classes the caller expects (a dataset's); the file must predict as many. None: the
                file's metadata, else generic ones.
            device: where the logits are returned (onnxruntime picks its own providers).
            threads, providers: see ``evaluation.onnx_backend.OnnxModel``.

        Raises:
            ValueError: another class count than ``classes``; or see ``OnnxModel`` (also FileNotFoundError,
                ImportError).
        """
        model = OnnxModel(path, threads=threads, providers=providers)
        count = model.num_classes
        if classes is not None and len(classes[0]) != count:
            raise ValueError(f"class-count mismatch: {path} predicts {count} classes but --dataset has "
                             f"{len(classes[0])}")
        if classes is None:
            names, palette = generic_classes(count)
            classes = (model.class_names or names, model.palette if model.palette is not None else palette)
        return cls(model, classes, protocol, device)

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, classes: ClassTable | None = None,
                  protocol: Protocol | None = None) -> Segmenter:
        """The segmenter the flags of eval.py or predict.py describe: ``--backend onnxruntime --onnx FILE``, else
        ``--snapshot`` with the model, speed and run flags; ``protocol`` default :meth:`Protocol.from_args`."""
        protocol = protocol or Protocol.from_args(args)
        if getattr(args, "backend", "pytorch") == "onnxruntime":
            return cls.from_onnx(args.onnx, protocol=protocol, classes=classes, device=args.device)
        return cls.from_checkpoint(args.snapshot, device=args.device, protocol=protocol, classes=classes,
                                   trusted_pickle=args.trusted_pickle, **speed_options(args),
                                   **{name: getattr(args, name, None) for name in MODEL_OPTIONS})

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean logits over the protocol's scales, transforms and windows (``evaluation.inference.infer_logits``).

        Args:
            batch: (N, 3, H, W) normalised images (``datasets.normalize_image``), on any device.

        Returns:
            (N, K, H, W) float32 logits on ``device``.
        """
        protocol = self.protocol
        return infer_logits(self.model, batch.to(self.device), scales=protocol.scales, **protocol.transforms,
                            window=protocol.window, stride=protocol.step, batch_size=protocol.batch,
                            blend=protocol.blend)

    def segment(self, read_region, size: tuple[int, int], write_block, *, valid_region=None,
                write_probabilities=None, show_progress: bool = True) -> None:
        """Stream a tile of ``size`` (H, W) through ``evaluation.inference.predict_large_image`` with the protocol
        (the callbacks are that function's). Without a window the whole tile is one window (no blending)."""
        protocol = self.protocol
        window, stride, blend = protocol.window, protocol.step, protocol.blend
        if window is None:
            window, stride, blend = max(size), max(size), "mean"
        predict_large_image(self.model, read_region, size, write_block, window=window, stride=stride,
                            batch_size=protocol.batch, scales=protocol.scales, **protocol.transforms,
                            blend=blend, valid_region=valid_region,
                            write_probabilities=write_probabilities, device=self.device,
                            show_progress=show_progress)

    def predict_array(self, image: np.ndarray, return_probabilities: bool = False, valid: np.ndarray | None = None,
                      show_progress: bool = False):
        """Segment an image held in memory, of any size, as predict.py segments a file.

        Args:
            image: (H, W, 3) uint8 RGB.
            return_probabilities: also return the probabilities.
            valid: (H, W) bool, False where the image has no data (class ``NODATA_CLASS`` there); None = all valid.

        Returns:
            (H, W) uint8 class ids; with ``return_probabilities`` also (K, H, W) float32 probabilities, the
            softmax of the blended logits in steps of 1/255 (the values of predict.py's probability GeoTIFF
            over 255; 0 where ``valid`` is False).

        Raises:
            ValueError: not an (H, W, 3) uint8 array, or ``valid`` of another size.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"predict_array needs an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
        size = image.shape[:2]
        if valid is not None and valid.shape != size:
            raise ValueError(f"valid has shape {valid.shape}, the image {size}")
        class_ids = np.zeros(size, np.uint8)
        probabilities = np.zeros((self.num_classes, *size), np.uint8) if return_probabilities else None

        def write_block(top, left, block):
            class_ids[top : top + block.shape[0], left : left + block.shape[1]] = block

        def write_probabilities(top, left, block):
            probabilities[:, top : top + block.shape[1], left : left + block.shape[2]] = block

        self.segment(lambda top, left, height, width: image[top : top + height, left : left + width], size,
                     write_block, show_progress=show_progress,
                     valid_region=None if valid is None else
                     lambda top, left, height, width: valid[top : top + height, left : left + width],
                     write_probabilities=write_probabilities if return_probabilities else None)
        if not return_probabilities:
            return class_ids
        return class_ids, probabilities.astype(np.float32) / 255

    def predict_raster(self, src: str | os.PathLike, dst: str | os.PathLike,
                       probabilities: str | os.PathLike | None = None, *, read_options: dict | None = None,
                       show_progress: bool = True) -> None:
        """Segment an image file of any size into a mask file, streamed window by window.

        ``dst`` ending in ``.tif`` is a Cloud-Optimized GeoTIFF of class ids with ``src``'s georeference, the
        palette and nodata ``NODATA_CLASS``; any other is a palette PNG (a georeference is dropped, with a
        warning). ``probabilities``: also a GeoTIFF of one uint8 band per class (softmax x 255). Each output is
        published atomically; on any failure none of them is left.

        Args:
            src: the image (any format of ``utils.image_io.open_raster``).
            read_options: ``bands``, ``scaling`` and ``policy`` of ``open_raster`` (``evaluation.cli.band_options``).

        Raises:
            ImageReadError: unreadable pixels, bands out of range or no valid pixel. utils.atomic.WriteError: an
                output could not be written.
        """
        src, dst = Path(src), Path(dst)
        with open_raster(src, **(read_options or {})) as source:
            require_valid_pixels(src, source)
            if dst.suffix != ".tif" and source.geo_profile is not None:
                print(f"warning: {src} is georeferenced but {dst} is a PNG: the georeference is dropped "
                      "(use --format tif to keep it)", file=sys.stderr)
            size = (source.height, source.width)
            sinks = []
            try:  # on any failure every unfinished output is dropped: nothing partial is left
                if dst.suffix == ".tif":
                    sinks.append(CogSink(dst, *size, geo_profile=source.geo_profile, nodata=NODATA_CLASS,
                                         palette=self.palette))
                else:
                    sinks.append(PaletteMaskSink(dst, *size, self.palette))
                if probabilities is not None:
                    sinks.append(CogSink(probabilities, *size, count=self.num_classes,
                                         geo_profile=source.geo_profile, band_descriptions=self.class_names,
                                         mask_all_zero=True))
                self.segment(source.read, size, sinks[0].write, valid_region=source.valid_mask,
                             write_probabilities=sinks[1].write if len(sinks) > 1 else None,
                             show_progress=show_progress)
                for sink in sinks:
                    sink.close()
            except BaseException:
                for sink in sinks:
                    sink.abort()
                raise
