"""Export a segmentation model to an ONNX file that runs without PyTorch (onnxruntime, TensorRT, OpenVINO).

The file has one input, ``images`` (N, 3, H, W) float32 normalised images (RGB scaled to [0, 1], minus
the ImageNet mean, over its std: ``datasets.normalize_image``), and one output, ``logits`` (N, K, H, W)
float32. N, H and W are dynamic (H and W from 33 up). With ``fp16`` the weights and the computation are
float16 between a cast after the input and a cast before the output, so the interface stays float32.

The ONNX metadata (``metadata_props``) records what a consumer needs to read the output: ``num_classes``,
``class_names`` and ``palette`` (JSON, when known), ``input_mean`` / ``input_std`` (JSON), ``arch``, the
model options and the checkpoint's file name.
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


class Float16Model(nn.Module):
    """Runs ``model`` in float16 behind a float32 interface: images are cast to float16, logits back to float32.

    Shapes: images (N, 3, H, W) float32 -> logits (N, K, H, W) float32.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).half()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.half()).float()


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
                opset: int = DEFAULT_OPSET) -> None:
    """Export an eval-mode float32 model to ``path`` (written atomically; an existing file is replaced).

    The model is traced with ``torch.onnx.export(..., dynamo=True)`` on a (2, 3, 72, 104) example with batch,
    height and width dynamic; the result is checked with ``onnx.checker`` before it is written.

    Args:
        model: eval-mode model on the CPU: images (N, 3, H, W) -> logits (N, K, H, W).
        path: the ``.onnx`` file.
        metadata: ``metadata_props`` entries (see :func:`onnx_metadata`).
        fp16: store weights and compute in float16 (the interface stays float32; see :class:`Float16Model`).
        opset: ONNX opset, at least 18.

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
    with torch.no_grad():
        program = torch.export.export(traced, (torch.zeros(EXAMPLE_SHAPE),),
                                      dynamic_shapes=({0: dynamic, 2: dynamic, 3: dynamic},))
    onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                     output_names=[OUTPUT_NAME], verbose=False)
    proto = onnx_program.model_proto
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    with atomic_path(path) as temp_name:
        onnx.save(proto, temp_name)
