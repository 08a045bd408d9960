"""Metrics against confusion matrices worked out by hand."""
import csv
import json
import math

import pytest
import torch

from evaluation.metrics import (
    ConfusionMatrix,
    confusion_matrix,
    format_table,
    metrics_summary,
    parse_class_list,
    write_metrics_csv,
    write_metrics_json,
)

# 2x4 example; 255 is ignored. Pairs (truth, pred): (0,0) (0,1) (1,1) (2,2) (2,0) (1,1) (0,0)
TARGET = torch.tensor([[0, 0, 1, 255], [2, 2, 1, 0]])
PRED = torch.tensor([[0, 1, 1, 2], [2, 0, 1, 0]])
HAND_MATRIX = [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
NAMES3 = ["road", "building", "tree"]


def test_confusion_matrix_by_hand_skips_ignore_label():
    assert confusion_matrix(PRED, TARGET, 3).tolist() == HAND_MATRIX


def test_accumulates_over_batches():
    meter = ConfusionMatrix(3)
    meter.update(PRED[:1], TARGET[:1])
    meter.update(PRED[1:], TARGET[1:])
    assert meter.matrix.tolist() == HAND_MATRIX


def test_scores_by_hand():
    scores = ConfusionMatrix(3)
    scores.update(PRED, TARGET)
    result = scores.compute()
    # IoU = tp / (row + col - tp): 2/(3+3-2), 2/(2+3-2), 1/(2+1-1)
    assert result["iou"] == pytest.approx([0.5, 2 / 3, 0.5])
    # F1 = 2tp / (row + col)
    assert result["f1"] == pytest.approx([4 / 6, 4 / 5, 2 / 3])
    assert result["precision"] == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert result["recall"] == pytest.approx([2 / 3, 1.0, 0.5])
    assert result["miou"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert result["overall_accuracy"] == pytest.approx(5 / 7)
    assert result["fwiou"] == pytest.approx(3 / 7 * 0.5 + 2 / 7 * 2 / 3 + 2 / 7 * 0.5)
    assert result["pixels"] == 7


def test_class_absent_from_truth_and_prediction_does_not_count():
    meter = ConfusionMatrix(4)
    meter.update(PRED, TARGET)
    result = meter.compute()
    assert math.isnan(result["iou"][3]) and math.isnan(result["f1"][3])
    assert result["miou"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)


def test_class_only_predicted_counts_as_zero():
    pred = PRED.clone()
    pred[1, 3] = 3  # truth 0 predicted as class 3, which never occurs in the truth
    meter = ConfusionMatrix(4)
    meter.update(pred, TARGET)
    result = meter.compute()
    # class 0: tp 1, row 3, col 2 -> 1/4; class 3: tp 0, col 1 -> 0
    assert result["iou"] == pytest.approx([0.25, 2 / 3, 0.5, 0.0])
    assert result["miou"] == pytest.approx((0.25 + 2 / 3 + 0.5 + 0.0) / 4)


def test_exclusion_changes_means_only():
    meter = ConfusionMatrix(3)
    meter.update(PRED, TARGET)
    result = meter.compute(exclude_classes=[2])
    assert result["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert result["mean_f1"] == pytest.approx((4 / 6 + 4 / 5) / 2)
    assert result["overall_accuracy"] == pytest.approx(5 / 7)
    assert result["iou"][2] == pytest.approx(0.5)


def test_parse_class_list_ids_and_names():
    assert parse_class_list("2, Road", NAMES3) == [0, 2]
    assert parse_class_list("", NAMES3) == []
    with pytest.raises(ValueError, match="unknown class 'clutter'"):
        parse_class_list("clutter", NAMES3)
    with pytest.raises(ValueError, match="unknown class '7'"):
        parse_class_list("7", NAMES3)


def test_summary_json_csv_and_table(tmp_path):
    summary = metrics_summary(torch.tensor(HAND_MATRIX), NAMES3, exclude_classes=[2])
    assert summary["confusion_matrix"] == HAND_MATRIX
    assert summary["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert summary["mean_accuracy"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert summary["classes"][2]["excluded"] and summary["excluded_classes"] == ["tree"]
    assert [row["truth_pixels"] for row in summary["classes"]] == [3, 2, 2]
    assert [row["predicted_pixels"] for row in summary["classes"]] == [3, 3, 1]

    write_metrics_json(tmp_path / "m.json", summary, extra={"checkpoint": "x.pth"})
    loaded = json.loads((tmp_path / "m.json").read_text())
    assert loaded["checkpoint"] == "x.pth" and loaded["classes"][1]["iou"] == pytest.approx(2 / 3)

    write_metrics_csv(tmp_path / "m.csv", summary)
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert [row["name"] for row in rows[:3]] == NAMES3
    assert float(rows[0]["iou"]) == pytest.approx(0.5)
    miou_row = next(row for row in rows if row["name"] == "miou")
    assert float(miou_row["iou"]) == pytest.approx((0.5 + 2 / 3) / 2)

    table = format_table(summary)
    assert "building" in table and " 66.67" in table and "excluding tree" in table
    assert list(tmp_path.iterdir()) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_undefined_values_are_null_in_json(tmp_path):
    summary = metrics_summary(torch.tensor([[3, 0], [0, 0]]), ["a", "b"])
    assert summary["classes"][1]["iou"] is None
    write_metrics_json(tmp_path / "m.json", summary)
    assert json.loads((tmp_path / "m.json").read_text())["classes"][1]["iou"] is None


def test_erode_class_boundaries_by_hand():
    import numpy as np

    from evaluation.metrics import erode_class_boundaries

    mask = np.zeros((5, 8), dtype=np.int64)
    mask[:, 4:] = 1
    mask[0, 0] = 255  # an ignored pixel is no boundary
    eroded = erode_class_boundaries(mask, 1)
    expected = mask.copy()
    expected[:, 3:5] = 255  # the border between columns 3 and 4 becomes a 2-pixel band
    np.testing.assert_array_equal(eroded, expected)
    assert (erode_class_boundaries(mask, 2)[2] == [0, 0, 255, 255, 255, 255, 1, 1]).all()
    np.testing.assert_array_equal(erode_class_boundaries(mask, 0), mask)
