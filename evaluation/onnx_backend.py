"""An exported ONNX file run by onnxruntime, as a callable model for the inference pipeline.

``OnnxModel(path)(images)`` maps (N, 3, H, W) float32 normalised images to (N, K, H, W) float32 logits
like an eval-mode PyTorch model, so ``evaluation.inference`` (sliding windows, blending, scales, flips,
strips of large GeoTIFF tiles) runs unchanged on it, as ``evaluation.segmenter.Segmenter.from_onnx``. The
class count, class names and palette come from the file's metadata (written by ``tools/export_onnx.py``).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from evaluation.onnx_export import INPUT_NAME, MIN_SIZE, OUTPUT_NAME


class OnnxModel:
    """An onnxruntime session over an exported segmentation model.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads of the session (None: onnxruntime's default, one per core).
        providers: onnxruntime execution providers in order of preference (None: onnxruntime's default for
            the installed build, e.g. CUDA then CPU for onnxruntime-gpu).

    Attributes:
        num_classes: K, from the metadata.
        class_names: K names, or None when the file does not record them.
        palette: (K, 3) uint8 RGB colours, or None.
        metadata: every ``metadata_props`` entry.

    Raises:
        ImportError: onnxruntime is not installed (the message says how to install it).
        FileNotFoundError: no such file.
        ValueError: the file is not an exported segmentation model (no ``images`` input, ``logits``
            output or ``num_classes`` metadata).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None):
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError("the onnxruntime backend needs onnxruntime: pip install onnxruntime") from error
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for unreadable files
            raise ValueError(f"{path} is not a model onnxruntime can load: {error}") from error
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        inputs = [node.name for node in self.session.get_inputs()]
        outputs = [node.name for node in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME] or "num_classes" not in self.metadata:
            raise ValueError(f"{path} is not a segmentation model from tools/export_onnx.py (inputs {inputs}, "
                             f"outputs {outputs}); export the checkpoint with tools/export_onnx.py")
        self.num_classes = int(self.metadata["num_classes"])
        self.class_names = json.loads(self.metadata["class_names"]) if "class_names" in self.metadata else None
        palette = self.metadata.get("palette")
        self.palette = np.asarray(json.loads(palette), dtype=np.uint8) if palette else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float32 normalised images -> (N, K, H, W) float32 logits on the images' device.

        Raises:
            ValueError: H or W below 33 px, the smallest size the exported graph computes correctly.
        """
        if min(images.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"the exported model needs images of at least {MIN_SIZE} x {MIN_SIZE} px, got "
                             f"{tuple(images.shape[-2:])}; segment larger images or windows")
        feed = images.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: feed})
        return torch.from_numpy(logits).to(images.device)


BACKENDS = ("pytorch", "onnxruntime")


def add_backend_flags(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--onnx``: run an exported file with onnxruntime instead of a checkpoint with PyTorch."""
    group = parser.add_argument_group("backend")
    group.add_argument("--backend", choices=BACKENDS, default="pytorch",
                       help="pytorch (default): build the model from --snapshot; onnxruntime: run the --onnx file "
                            "from tools/export_onnx.py (onnxruntime's default providers; --device, the model and "
                            "speed flags do not apply)")
    group.add_argument("--onnx", default=None, help="exported model (.onnx) for --backend onnxruntime")


def check_backend_flags(args: argparse.Namespace) -> None:
    """Refuse a backend without its model file, or with the other backend's (before anything is read).

    Raises:
        ValueError: the message names the flags to pass.
    """
    if args.backend == "onnxruntime":
        if not args.onnx:
            raise ValueError("--backend onnxruntime needs --onnx FILE (written by tools/export_onnx.py)")
        if args.snapshot or args.weights:
            raise ValueError("--snapshot / --weights are not read with --backend onnxruntime (the --onnx file holds "
                             "the model); drop one of them")
    elif args.onnx:
        raise ValueError("--onnx is read only with --backend onnxruntime; add --backend onnxruntime")
    elif not args.snapshot and not args.weights:
        raise ValueError("--snapshot is required (or --weights NAME, or run an exported model: --backend "
                         "onnxruntime --onnx FILE)")
