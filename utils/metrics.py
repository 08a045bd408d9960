"""Segmentation metrics from a confusion matrix: the one implementation used by training and eval.py.

The confusion matrix ``matrix[t, p]`` counts pixels whose truth is class ``t`` and prediction is
class ``p``; pixels whose label is not in ``[0, num_classes)`` (the ignore label 255) are skipped,
as in the original. Means are nan-means over the classes that occur in the truth or the prediction
(a class absent from both has an undefined IoU and does not count), as the original's mIoU.
"""
from __future__ import annotations

from typing import Iterable

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Count (truth, prediction) pairs with one ``bincount`` on the tensors' device.

    Args:
        pred: predicted class ids, any shape, integer.
        target: truth class ids, same shape as ``pred``; values outside ``[0, num_classes)`` are ignored.
        num_classes: K.

    Returns:
        (K, K) int64 tensor, rows truth, columns prediction.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    valid = (target >= 0) & (target < num_classes)
    flat = target[valid] * num_classes + pred[valid]
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


class ConfusionMatrix:
    """Accumulates a (K, K) confusion matrix over batches.

    Args:
        num_classes: K.
        device: where the matrix lives; updates move predictions there (default: first update's device).
    """

    def __init__(self, num_classes: int, device: torch.device | str | None = None):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: ``pred`` and ``target`` are (N, H, W) class ids (target may hold 255)."""
        counts = confusion_matrix(pred.to(self.matrix.device), target.to(self.matrix.device), self.num_classes)
        self.matrix += counts

    def compute(self, exclude_classes: Iterable[int] = ()) -> dict:
        """Scores of the accumulated matrix; see :func:`scores_from_confusion`."""
        return scores_from_confusion(self.matrix, exclude_classes)


def scores_from_confusion(matrix: torch.Tensor, exclude_classes: Iterable[int] = ()) -> dict:
    """Per-class and mean scores from a (K, K) confusion matrix (rows truth, columns prediction).

    Returns a dict of plain Python values:
        ``iou``, ``f1``, ``precision``, ``recall``: lists of K floats (nan where undefined);
        ``miou``, ``mean_f1``: nan-means over classes not in ``exclude_classes``;
        ``overall_accuracy``: correct / labelled pixels (all classes);
        ``fwiou``: IoU weighted by each class's share of the truth pixels;
        ``pixels``: number of labelled pixels counted.
    """
    m = matrix.detach().to(torch.float64).cpu()
    true_pos = m.diag()
    truth_total = m.sum(dim=1)
    pred_total = m.sum(dim=0)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    union = truth_total + pred_total - true_pos
    iou = torch.where(union > 0, true_pos / union, nan)
    f1_denominator = truth_total + pred_total
    f1 = torch.where(f1_denominator > 0, 2 * true_pos / f1_denominator, nan)
    precision = torch.where(pred_total > 0, true_pos / pred_total, nan)
    recall = torch.where(truth_total > 0, true_pos / truth_total, nan)
    keep = torch.ones(m.shape[0], dtype=torch.bool)
    for class_id in exclude_classes:
        keep[class_id] = False
    total = m.sum()
    frequency = truth_total / total if total > 0 else torch.zeros_like(truth_total)
    return {
        "iou": iou.tolist(),
        "f1": f1.tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "miou": float(iou[keep].nanmean()),
        "mean_f1": float(f1[keep].nanmean()),
        "overall_accuracy": float(true_pos.sum() / total) if total > 0 else float("nan"),
        "fwiou": float((frequency * torch.nan_to_num(iou)).sum()),
        "pixels": int(total),
    }
