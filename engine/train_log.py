"""Training records: a JSON-lines log and TensorBoard, written by the main process only.

Every record goes to the JSON-lines file (one object per line, ``null`` for undefined numbers) and,
as scalars, to TensorBoard; the human-readable lines go to the text log (``engine.text_log``).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from evaluation.report import Sample, figure_pixels, titled_panels


def _json_safe(value):
    """NaN and infinities -> None; tensors and NumPy scalars -> Python numbers; containers recursively."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (torch.Tensor, np.generic)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLog:
    """JSON-lines log plus TensorBoard scalars and images for one run (inert when ``enabled`` is False).

    Args:
        jsonl_path: JSON-lines file, appended to (a resumed run continues it).
        tensorboard_dir: TensorBoard event folder, or None for no TensorBoard.
        enabled: False on processes other than the main one.
    """

    def __init__(self, jsonl_path: Path, tensorboard_dir: Path | None, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._writer = None
        if not enabled:
            return
        jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(jsonl_path, "a", encoding="utf-8")
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # imported here: slow, main process only

            self._writer = SummaryWriter(log_dir=os.fspath(tensorboard_dir))

    def record(self, kind: str, step: int, values: dict) -> None:
        """Append ``{"kind": kind, "step": step, **values}`` to the JSON-lines file and log numeric
        values as TensorBoard scalars ``{kind}/{name}`` (lists as ``{kind}/{name}/{index}``)."""
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"kind": kind, "step": step, **_json_safe(values)}) + "\n")
        self._jsonl.flush()
        if self._writer is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{kind}/{name}", value, step)

    def scalars(self, tag: str, values: dict[str, float], step: int) -> None:
        """TensorBoard scalars ``{tag}/{name}`` only (e.g. per-class IoU by class name)."""
        if self.enabled and self._writer is not None:
            for name, value in values.items():
                if value is not None and math.isfinite(value):
                    self._writer.add_scalar(f"{tag}/{name}", value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """TensorBoard image from a uint8 (H, W, 3) array."""
        if self.enabled and self._writer is not None:
            self._writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        """Close the JSON-lines file and the TensorBoard writer, flushing both (nothing to do when disabled)."""
        if self._jsonl is not None:
            self._jsonl.close()
        if self._writer is not None:
            self._writer.close()


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised float (3, H, W) image -> uint8 (H, W, 3) RGB."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    rgb = (image.detach().float().cpu() * std_t + mean_t).clamp(0, 1) * 255
    return rgb.round().to(torch.uint8).permute(1, 2, 0).numpy()


def prediction_panel(image: torch.Tensor, truth: torch.Tensor, prediction: torch.Tensor, palette: np.ndarray,
                     class_names: Sequence[str], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Image, coloured truth and coloured prediction with column titles, the pixel accuracy and the class
    legend (the eval report's figure, :func:`evaluation.report.titled_panels`): uint8 (H, W, 3) RGB.

    Args:
        image: normalised float (3, H, W).
        truth, prediction: (H, W) class ids (255 ignored, drawn black).
        palette: (K, 3) uint8 RGB.
        class_names: K names for the legend.
        mean, std: the normalisation applied to ``image``.
    """
    sample = Sample("validation image", denormalize(image, mean, std),
                    truth.detach().cpu().numpy().astype(np.uint8), prediction.detach().cpu().numpy().astype(np.uint8))
    return figure_pixels(titled_panels([sample], palette, class_names))
