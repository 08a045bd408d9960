"""Export a segmentation model to an ONNX file that runs without PyTorch (onnxruntime, TensorRT, OpenVINO).

The file has one input, ``images`` (N, 3, H, W) float32 normalised images (RGB scaled to [0, 1], minus
the ImageNet mean, over its std: ``datasets.normalize_image``), and one output, ``logits`` (N, K, H, W)
float32. N, H and W are dynamic (H and W from 33 up). With ``fp16`` the weights and the computation are
float16 between a cast after the input and a cast before the output, so the interface stays float32.

The ONNX metadata (``metadata_props``) records what a consumer needs to read the output: ``num_classes``,
``class_names`` and ``palette`` (JSON, when known), ``input_mean`` / ``input_std`` (JSON), ``arch``, the
model options and the checkpoint's file name.

The Deepness profile (:class:`DeepnessModel`, :func:`deepness_metadata`) makes a file the QGIS plugin Deepness
(PUTvision/qgis-plugin-deepness) runs as it is. It follows the plugin's own reading of a model, in
``src/deepness/processing/models/model_base.py`` (metadata keys, input shape, preprocessing: uint8 tiles
(N, H, W, C) -> ``* 1/255`` -> optional ``standardization_mean``/``_std`` -> NCHW), ``segmentor.py`` and
``map_processor/map_processor_segmentation.py`` (output (N, K, H, W); values under ``seg_thresh`` set to 0;
argmax over K), ``deepness_dockwidget.py`` (the tile size is the input's last dimension, so H and W are
fixed; a symbolic batch lets the user choose it) and the metadata table of
``docs/source/creators/creators_add_metadata_to_model.rst``.
"""
from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from datasets import IMAGENET_MEAN, IMAGENET_STD
from utils.atomic import atomic_path

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
# Smallest height and width of the exported graph: from 33 px every stage of a stride-32 trunk is at least
# 2 x 2 (the tracer specialises resizes of 1-pixel maps, so smaller inputs are refused, not mis-computed).
MIN_SIZE = 33
# The example traced: batch 2 (sizes 1 would be specialised), odd multiples of 8 that differ (the graph must
# not learn that H equals W or that either is a multiple of 16).
EXAMPLE_SHAPE = (2, 3, 72, 104)
DEEPNESS_OUTPUT = "probabilities"
"""Output of a Deepness-profile file: per-class softmax probabilities (N, K, H, W)."""


class Float16Model(nn.Module):
    """Runs ``model`` in float16 behind a float32 interface: images are cast to float16, logits back to float32.

    Shapes: images (N, 3, H, W) float32 -> logits (N, K, H, W) float32.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).half()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.half()).float()


class DeepnessModel(nn.Module):
    """What Deepness feeds and expects: RGB in [0, 1] in, per-class probabilities out; the ImageNet
    normalisation is inside the graph.

    Shapes: images (N, 3, H, W) float32 in [0, 1] -> probabilities (N, K, H, W) float32 (softmax over K).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model((images - self.mean) / self.std), dim=1)


def deepness_metadata(*, class_names: Sequence[str], tile_size: int, tiles_overlap: int,
                      resolution_cm: float | None, arch: str, snapshot: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` Deepness reads, every value JSON-encoded as its ``json.loads`` expects.

    Args:
        class_names: K names; stored as ``{"0": name, ...}`` (the plugin sorts the keys as integers and
            requires them consecutive).
        tile_size: tile side in pixels (the input's fixed H and W). Stored as ``tile_size`` (the key the
            plugin's code reads) and ``tiles_size`` (the key its documentation and ``tools/add_model_metadata.py``
            write).
        tiles_overlap: overlap of neighbouring tiles, percent of the tile size.
        resolution_cm: ground resolution of the training imagery in cm per pixel (the plugin resamples the map
            to it); None leaves it to the user.
        arch, snapshot: recorded for provenance (``arch``, ``checkpoint``).

    ``seg_thresh`` is 0: the plugin zeroes probabilities under it before its argmax, so any other value could
    turn an uncertain pixel into class 0 and the mask would differ from predict.py's.
    """
    metadata = {
        "model_type": json.dumps("Segmentor"),
        "class_names": json.dumps({str(index): str(name) for index, name in enumerate(class_names)}),
        "tile_size": json.dumps(int(tile_size)),
        "tiles_size": json.dumps(int(tile_size)),
        "tiles_overlap": json.dumps(int(tiles_overlap)),
        "seg_thresh": json.dumps(0.0),
        "arch": arch,
        "checkpoint": os.path.basename(os.fspath(snapshot)),
        "input_layout": "NCHW float32 RGB in [0, 1] (pixel / 255); ImageNet normalisation inside the graph",
    }
    if resolution_cm is not None:
        metadata["resolution"] = json.dumps(float(resolution_cm))
    return metadata


def onnx_metadata(*, num_classes: int, arch: str, options: dict, snapshot: str | os.PathLike,
                  class_names: Sequence[str] | None = None, palette: np.ndarray | None = None) -> dict[str, str]:
    """The ``metadata_props`` of an exported file: every value a string (JSON for lists and dicts).

    Args:
        num_classes: K, the channels of the ``logits`` output.
        arch: registered model name.
        options: the model options it was built with (``{"maxpool_size": 14, ...}``).
        snapshot: the checkpoint file (only its name is stored).
        class_names: K names, or None when the checkpoint does not say.
        palette: (K, 3) uint8 RGB colours, or None.

    Raises:
        ValueError: ``class_names`` or ``palette`` do not have K entries.
    """
    metadata = {
        "num_classes": str(num_classes),
        "arch": arch,
        "model_options": json.dumps(options, sort_keys=True),
        "checkpoint": os.path.basename(os.fspath(snapshot)),
        "input_name": INPUT_NAME,
        "input_layout": "NCHW float32 RGB: pixel / 255, minus input_mean, over input_std (per channel)",
        "input_mean": json.dumps(list(IMAGENET_MEAN)),
        "input_std": json.dumps(list(IMAGENET_STD)),
        "output_name": OUTPUT_NAME,
    }
    if class_names is not None:
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for a {num_classes}-class model")
        metadata["class_names"] = json.dumps(list(class_names))
    if palette is not None:
        palette = np.asarray(palette)
        if palette.shape != (num_classes, 3):
            raise ValueError(f"palette of shape {palette.shape} for a {num_classes}-class model: expected "
                             f"({num_classes}, 3)")
        metadata["palette"] = json.dumps(palette.astype(int).tolist())
    return metadata


def export_onnx(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str], *, fp16: bool = False,
                opset: int = DEFAULT_OPSET, tile_size: int | None = None, output_name: str = OUTPUT_NAME) -> None:
    """Export an eval-mode float32 model to ``path`` (written atomically; an existing file is replaced).

    The model is traced with ``torch.onnx.export(..., dynamo=True)`` on a (2, 3, 72, 104) example with batch,
    height and width dynamic; the result is checked with ``onnx.checker`` before it is written.

    Args:
        model: eval-mode model on the CPU: images (N, 3, H, W) -> logits (N, K, H, W).
        path: the ``.onnx`` file.
        metadata: ``metadata_props`` entries (see :func:`onnx_metadata`).
        fp16: store weights and compute in float16 (the interface stays float32; see :class:`Float16Model`).
        opset: ONNX opset, at least 18.
        tile_size: fix H and W to this size (only the batch stays dynamic), as Deepness needs; None: dynamic.
        output_name: name of the output (``logits``; ``probabilities`` for :class:`DeepnessModel`).

    Raises:
        ValueError: ``opset`` below 18.
    """
    import onnx

    if opset < DEFAULT_OPSET:
        raise ValueError(f"opset {opset} is too old: the exporter needs 18 or newer")
    traced = Float16Model(model).eval() if fp16 else model.eval()
    # Dim.AUTO rather than named ranges: the trace asserts facts such as "the stride-32 map is not 1 pixel
    # high" that hold for every size from MIN_SIZE up but that the solver cannot prove from a range, and
    # would refuse; the dimensions stay symbolic all the same (tests/test_onnx.py checks the file's inputs).
    dynamic = torch.export.Dim.AUTO
    example = EXAMPLE_SHAPE if tile_size is None else (2, 3, tile_size, tile_size)
    dims = {0: dynamic, 2: dynamic, 3: dynamic} if tile_size is None else {0: dynamic}
    with torch.no_grad():
        program = torch.export.export(traced, (torch.zeros(example),), dynamic_shapes=(dims,))
    onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                     output_names=[output_name], verbose=False)
    proto = onnx_program.model_proto
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    with atomic_path(path) as temp_name:
        onnx.save(proto, temp_name)
