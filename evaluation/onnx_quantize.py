"""int8 ONNX for CPUs: onnxruntime static quantisation of an exported float32 file, calibrated on real windows.

``quantize_onnx(fp32_path, int8_path, windows)`` rewrites the file in QDQ form (QuantizeLinear /
DequantizeLinear pairs that onnxruntime fuses into integer kernels): per-channel int8 weights, uint8
activations whose ranges come from the ``windows`` (min / max over them). Only the operator types of
:data:`QUANTIZED_OP_TYPES` are quantised: the convolutions, which hold almost all of the model's arithmetic.
Everything else stays float32, in particular the point-flow modules' selection path (TopK, the max-pool index
arithmetic, Gather / GatherElements / ScatterElements, the Exp / Reciprocal sigmoid, Softmax, the
point-affinity MatMuls), and so do the convolutions that feed the top-k and the sigmoid
(:func:`selection_feeding_nodes`). Quantising the MatMuls too lowered the mask agreement with float32 for no
speed gain (docs/deployment.md gives the measurements).

The windows are drawn by :func:`calibration_windows`: ``count`` seeded windows of the training images
(``{root}/train/images`` of a prepared dataset, or a folder of images), read by ``utils.image_io`` and
normalised by ``datasets.normalize_image``, exactly as eval.py and predict.py feed the model.

The file keeps the float32 file's metadata plus ``precision`` ("int8") and ``calibration`` (JSON: source
folder, image count, windows, window side, seed, method), so ``evaluation.onnx_backend.OnnxModel`` and
``predict.py --backend onnxruntime`` run it unchanged.
"""
from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from datasets import normalize_image
from utils.atomic import atomic_path
from utils.image_io import IMAGE_SUFFIXES, read_image

QUANTIZED_OP_TYPES = ("Conv",)
"""Operator types given int8 inputs; every other operator (the point selection included) stays float32."""
SELECTION_OP_TYPES = ("TopK", "Exp")
"""The ops whose float inputs decide which points a point-flow module takes: the top-k over the edge logits and
the Exp of the sigmoid formula over the point matcher's logits (certainties down to 1e-37)."""
CALIBRATION_METHOD = "MinMax"
"""onnxruntime's calibration method: the activation range is the min / max seen over the windows."""
DEFAULT_WINDOWS = 32
DEFAULT_WINDOW = 512
DEFAULT_SEED = 0


def calibration_images(folder: str | os.PathLike) -> list[Path]:
    """The images to calibrate on: ``{folder}/train/images`` of a prepared dataset, else ``folder``'s own images.

    Args:
        folder: a prepared dataset root (``tools/prepare_dataset.py``'s output) or a folder of images.

    Returns:
        The image files (suffixes of ``utils.image_io.IMAGE_SUFFIXES``), sorted by name.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ValueError: it holds no image (the message names the folder).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--calibration: {folder} is not a folder; give a prepared dataset root or a "
                                "folder of training images")
    images_folder = folder / "train" / "images" if (folder / "train" / "images").is_dir() else folder
    images = sorted(path for path in images_folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"--calibration: no images ({', '.join(IMAGE_SUFFIXES)}) in {images_folder}; give a "
                         "prepared dataset root or a folder of training images")
    return images


def calibration_windows(images: list[Path], count: int, window: int = DEFAULT_WINDOW,
                        seed: int = DEFAULT_SEED) -> Iterator[np.ndarray]:
    """``count`` windows drawn at random (seeded) from ``images``, normalised as the model's input.

    Each window picks an image uniformly, then a ``window`` x ``window`` crop (the whole side when the image is
    smaller) at a uniform position. Images are read one window at a time (no cache: memory stays one image).

    Args:
        images: image files (any format ``utils.image_io.read_image`` reads).
        count: number of windows.
        window: crop side in pixels.
        seed: seed of the draws (the same seed gives the same windows).

    Yields:
        (1, 3, h, w) float32 arrays: RGB / 255 minus the ImageNet mean over its std (``datasets.normalize_image``).
    """
    generator = np.random.default_rng(seed)
    for _ in range(count):
        pixels = read_image(images[int(generator.integers(len(images)))])
        height, width = min(window, pixels.shape[0]), min(window, pixels.shape[1])
        top = int(generator.integers(pixels.shape[0] - height + 1))
        left = int(generator.integers(pixels.shape[1] - width + 1))
        yield normalize_image(pixels[top : top + height, left : left + width]).numpy()[np.newaxis]


def selection_feeding_nodes(proto) -> list[str]:
    """Names of the quantisable nodes (:data:`QUANTIZED_OP_TYPES`) whose outputs reach a selection op
    (:data:`SELECTION_OP_TYPES`) through float ops only: the convolutions that compute the edge logits and the
    point matcher's logits. Their outputs quantised to 256 levels could tie at the top-k boundary and would
    flatten the small certainties, so they are excluded and run in float32 (six small convolutions in PFNet-R50:
    no measurable cost in speed).

    Args:
        proto: the float32 ``onnx.ModelProto``.
    """
    producers = {output: node for node in proto.graph.node for output in node.output}
    found: list[str] = []
    pending = [name for node in proto.graph.node if node.op_type in SELECTION_OP_TYPES for name in node.input]
    seen: set[str] = set()
    while pending:
        node = producers.get(pending.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in QUANTIZED_OP_TYPES:
            found.append(node.name)
        elif node.op_type != "Shape":  # a Shape's output does not depend on its input's values
            pending.extend(node.input)
    return sorted(found)


def _data_reader(input_name: str, windows: Iterator[np.ndarray]):
    """An onnxruntime ``CalibrationDataReader`` feeding ``windows`` one by one as ``input_name``."""
    from onnxruntime.quantization import CalibrationDataReader

    class WindowReader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            window = next(windows, None)
            return None if window is None else {input_name: window}

    return WindowReader()


def quantize_onnx(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, windows: Iterator[np.ndarray],
                  calibration: dict) -> None:
    """Write the int8 (QDQ) form of an exported float32 file, atomically.

    Args:
        fp32_path: the float32 ``.onnx`` file (``evaluation.onnx_export.export_onnx``).
        int8_path: the file to write (replaced if it exists).
        windows: (1, 3, h, w) float32 normalised calibration windows (:func:`calibration_windows`).
        calibration: facts stored as the ``calibration`` metadata entry (JSON), e.g. the source folder.

    Raises:
        ValueError: ``windows`` is empty.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from evaluation.onnx_export import INPUT_NAME

    first = next(windows, None)
    if first is None:
        raise ValueError("no calibration windows")
    reader = _data_reader(INPUT_NAME, itertools.chain([first], windows))
    source = onnx.load(os.fspath(fp32_path))
    excluded = selection_feeding_nodes(source)
    with atomic_path(int8_path) as temp_name:
        quantize_static(os.fspath(fp32_path), temp_name, reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OP_TYPES), nodes_to_exclude=excluded, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod[CALIBRATION_METHOD])
        proto = onnx.load(temp_name)
        entries = {entry.key: entry.value for entry in (*source.metadata_props, *proto.metadata_props)}
        entries["precision"] = "int8"
        entries["calibration"] = json.dumps({**calibration, "method": CALIBRATION_METHOD,
                                             "quantized_op_types": list(QUANTIZED_OP_TYPES),
                                             "float_nodes": excluded,
                                             "weights": "int8 per channel", "activations": "uint8 per tensor"},
                                            sort_keys=True)
        del proto.metadata_props[:]
        for key, value in entries.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, temp_name)

