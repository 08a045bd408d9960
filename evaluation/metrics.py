"""Segmentation metrics from a confusion matrix: the one implementation used by training and eval.py.

The confusion matrix ``matrix[t, p]`` counts pixels whose truth is class ``t`` and prediction is
class ``p``; pixels whose label is not in ``[0, num_classes)`` (the ignore label 255) are skipped,
as in the original. Means are nan-means over the classes that occur in the truth or the prediction
(a class absent from both has an undefined IoU and does not count), as the original's mIoU.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch

from utils.atomic import atomic_path


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


def parse_class_list(text: str | Iterable[str | int] | None, class_names: Sequence[str]) -> list[int]:
    """Turn ``"5,clutter"`` (ids or class names, case-insensitive) into sorted class ids.

    Raises:
        ValueError: naming the unknown entry and the valid names.
    """
    if text is None or text == "":
        return []
    entries = text.split(",") if isinstance(text, str) else list(text)
    lookup = {name.lower(): index for index, name in enumerate(class_names)}
    class_ids = set()
    for entry in entries:
        token = str(entry).strip()
        if token.isdigit() and int(token) < len(class_names):
            class_ids.add(int(token))
        elif token.lower() in lookup:
            class_ids.add(lookup[token.lower()])
        else:
            raise ValueError(
                f"unknown class {token!r}: give ids 0..{len(class_names) - 1} or names {list(class_names)}"
            )
    return sorted(class_ids)


def metrics_summary(matrix: torch.Tensor, class_names: Sequence[str], exclude_classes: Iterable[int] = ()) -> dict:
    """JSON-ready summary of a (K, K) confusion matrix: per-class rows, means and the matrix itself.

    Undefined values (a class absent from truth and prediction) are ``None``.

    Returns:
        dict with ``classes`` (list of per-class dicts: id, name, iou, f1, precision, recall,
        truth_pixels, predicted_pixels, excluded), ``miou``, ``mean_f1``, ``mean_accuracy`` (nan-mean
        recall over kept classes), ``overall_accuracy``, ``fwiou``, ``pixels``, ``excluded_classes``
        (names) and ``confusion_matrix`` (rows truth, columns prediction).
    """
    if len(class_names) != matrix.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {matrix.shape[0]}-class confusion matrix")
    excluded = sorted(set(exclude_classes))
    scores = scores_from_confusion(matrix, excluded)
    counts = matrix.detach().to(torch.int64).cpu()
    kept_recall = [r for index, r in enumerate(scores["recall"]) if index not in excluded and not math.isnan(r)]
    classes = [
        {
            "id": index,
            "name": name,
            "iou": _finite_or_none(scores["iou"][index]),
            "f1": _finite_or_none(scores["f1"][index]),
            "precision": _finite_or_none(scores["precision"][index]),
            "recall": _finite_or_none(scores["recall"][index]),
            "truth_pixels": int(counts[index].sum()),
            "predicted_pixels": int(counts[:, index].sum()),
            "excluded": index in excluded,
        }
        for index, name in enumerate(class_names)
    ]
    return {
        "classes": classes,
        "miou": _finite_or_none(scores["miou"]),
        "mean_f1": _finite_or_none(scores["mean_f1"]),
        "mean_accuracy": _finite_or_none(sum(kept_recall) / len(kept_recall)) if kept_recall else None,
        "overall_accuracy": _finite_or_none(scores["overall_accuracy"]),
        "fwiou": _finite_or_none(scores["fwiou"]),
        "pixels": scores["pixels"],
        "excluded_classes": [class_names[index] for index in excluded],
        "confusion_matrix": counts.tolist(),
    }


def format_table(summary: dict) -> str:
    """Per-class table (percentages) followed by the means, from :func:`metrics_summary`.

    Precision and recall have their usual meaning (the original's printed table had them swapped).
    Excluded classes are marked with ``*`` and left out of the means.
    """
    def pct(value: float | None) -> str:
        return "    -" if value is None else f"{100 * value:6.2f}"

    total = max(summary["pixels"], 1)
    name_width = max(12, *(len(row["name"]) for row in summary["classes"]))
    lines = [f"{'id':>3}  {'class':<{name_width}}  {'IoU':>6}  {'F1':>6}  {'Prec':>6}  {'Recall':>6}  {'GT %':>6}"]
    for row in summary["classes"]:
        mark = "*" if row["excluded"] else " "
        lines.append(
            f"{row['id']:>3}{mark} {row['name']:<{name_width}}  {pct(row['iou'])}  {pct(row['f1'])}  "
            f"{pct(row['precision'])}  {pct(row['recall'])}  {100 * row['truth_pixels'] / total:6.2f}"
        )
    present = sum(row["iou"] is not None and not row["excluded"] for row in summary["classes"])
    scope = f"nan-mean over {present} classes present"
    if summary["excluded_classes"]:
        scope += f", excluding {', '.join(summary['excluded_classes'])} (*)"
    lines += [
        f"mIoU     {pct(summary['miou'])}   ({scope})",
        f"mean F1  {pct(summary['mean_f1'])}",
        f"mAcc     {pct(summary['mean_accuracy'])}   (mean per-class recall)",
        f"OA       {pct(summary['overall_accuracy'])}   (overall pixel accuracy, all classes)",
        f"FWIoU    {pct(summary['fwiou'])}   (IoU weighted by truth frequency)",
        f"pixels   {summary['pixels']}",
    ]
    return "\n".join(lines)


def write_metrics_json(path: str | os.PathLike, summary: dict, extra: dict | None = None) -> None:
    """Write :func:`metrics_summary` (plus ``extra`` fields such as the command) atomically as JSON."""
    payload = {**summary, **(extra or {})}
    with atomic_path(path) as temp_path, open(temp_path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, allow_nan=False)
        handle.write("\n")


def write_metrics_csv(path: str | os.PathLike, summary: dict) -> None:
    """Write one row per class, then one row per mean, atomically as CSV (empty cell = undefined)."""
    columns = ["id", "name", "iou", "f1", "precision", "recall", "truth_pixels", "predicted_pixels", "excluded"]
    with atomic_path(path) as temp_path, open(temp_path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in summary["classes"]:
            writer.writerow({key: "" if row[key] is None else row[key] for key in columns})
        for key in ("miou", "mean_f1", "mean_accuracy", "overall_accuracy", "fwiou"):
            value = summary[key]
            writer.writerow({"id": "", "name": key, "iou": "" if value is None else value})


def _finite_or_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def erode_class_boundaries(mask: np.ndarray, radius: int, ignore_label: int = 255) -> np.ndarray:
    """Mark pixels within ``radius`` of a class boundary as ``ignore_label`` (ISPRS "eroded" truth).

    A pixel is dropped when the disc of ``radius`` pixels around it holds another class, so a border
    between two classes becomes a band ``2 * radius`` pixels wide; ignored pixels and the image edge
    are no boundary.
    ISPRS scores its benchmark with ``radius=3`` on the full tiles.

    Args:
        mask: (H, W) integer class ids (values <= 255).

    Returns:
        A copy of ``mask`` with the boundary band set to ``ignore_label``.
    """
    if radius <= 0:
        return mask.copy()
    labels = np.asarray(mask).astype(np.uint8)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    # ignored pixels are neutral: 0 cannot raise the max, 255 cannot lower the min
    largest = cv2.dilate(np.where(labels == ignore_label, 0, labels).astype(np.uint8), disc)
    smallest = cv2.erode(labels, disc)
    near_boundary = largest != smallest
    eroded = np.array(mask, copy=True)
    eroded[near_boundary] = ignore_label
    return eroded
