"""One evaluator for training's validation and eval.py, in the spirit of detectron2's
``inference_on_dataset(model, loader, evaluator)``: the caller's ``predict_fn`` turns a batch into class ids
(its own protocol: whole image or sliding windows, scales, flips), the evaluator accumulates the (K, K)
confusion matrix, sums it over the processes and summarises it (:func:`evaluation.metrics.metrics_summary`).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from tqdm import tqdm

from engine.distributed import all_reduce_sum
from evaluation.metrics import ConfusionMatrix, metrics_summary


class SegmentationEvaluator:
    """Confusion matrix of predicted against true class ids, over batches and processes.

    Args:
        class_names: the K class names, in id order.
        device: where the matrix is accumulated (the predictions' device avoids copies).
        exclude_classes: class ids left out of the means (see :func:`metrics_summary`).
    """

    def __init__(self, class_names: Sequence[str], device: torch.device | str | None = None,
                 exclude_classes: Iterable[int] = ()):
        self.class_names = list(class_names)
        self.device = device
        self.exclude_classes = list(exclude_classes)
        self.reset()

    def reset(self) -> None:
        """Forget every batch processed so far."""
        self.confusion = ConfusionMatrix(len(self.class_names), device=self.device)
        self.images = 0

    def process(self, predictions: torch.Tensor, masks: torch.Tensor) -> None:
        """Add one batch: ``predictions`` (N, H, W) class ids, ``masks`` (N, H, W) true ids (255 ignored)."""
        self.confusion.update(predictions, masks)
        self.images += len(predictions)

    def running_miou(self) -> float:
        """mIoU of this process's batches so far (for a progress bar; no communication)."""
        return self.confusion.compute(self.exclude_classes)["miou"]

    def evaluate(self) -> dict:
        """:func:`metrics_summary` of the confusion matrix summed over all processes (one all-reduce; every
        process must call it)."""
        matrix = all_reduce_sum(self.confusion.matrix.clone())
        return metrics_summary(matrix, self.class_names, self.exclude_classes)


def inference_on_dataset(predict_fn: Callable[[dict], torch.Tensor], loader: Iterable[dict],
                         evaluator: SegmentationEvaluator, *,
                         after_batch: Callable[[dict, torch.Tensor], None] | None = None,
                         max_batches: int | None = None, desc: str = "evaluating",
                         disable_progress: bool | None = None) -> dict:
    """Score ``predict_fn`` on every batch of ``loader`` with ``evaluator`` (reset first).

    Args:
        predict_fn: batch (a dict with ``mask`` (N, H, W) int64 and the caller's inputs) -> predicted class ids
            (N, H, W), on any device.
        loader: the batches (this process's shard under several processes).
        evaluator: accumulates and summarises.
        after_batch: called with each batch and its predictions (dumps, report samples, panels).
        max_batches: stop after this many batches (None: all).
        desc: progress-bar label; a shown bar gives the running mIoU of this process.
        disable_progress: tqdm's ``disable`` (None: tqdm decides).

    Returns:
        ``evaluator.evaluate()``: the summary over all processes.
    """
    evaluator.reset()
    progress = tqdm(loader, desc=desc, unit="batch", disable=disable_progress, dynamic_ncols=True, leave=False)
    for index, batch in enumerate(progress):
        predictions = predict_fn(batch)
        evaluator.process(predictions, batch["mask"])
        if not progress.disable:
            progress.set_description(f"{desc}: mIoU {100 * evaluator.running_miou():.2f}")
        if after_batch is not None:
            after_batch(batch, predictions)
        if max_batches is not None and index + 1 >= max_batches:
            break
    return evaluator.evaluate()
