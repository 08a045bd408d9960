"""The evaluator shared by training's validation and eval.py (evaluation/evaluator.py), and the loss meter
(engine/meter.py): hand-computed confusion matrices and means, summed over real processes, and the same
mIoU from train.py's validation and from eval.py on the same checkpoint and split."""
import json
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.meter import ScalarMeter
from evaluation.evaluator import SegmentationEvaluator, inference_on_dataset

CLASSES = ["road", "roof", "tree"]
# Two batches of truth and prediction (255 = ignored). Counted by hand, rows truth, columns prediction:
# truth 0 -> predicted 0 once, 1 once; truth 1 -> 1 twice; truth 2 -> 2 once; the 255 pixel is skipped.
MASKS = [torch.tensor([[[0, 0, 1]]]), torch.tensor([[[1, 2, 255]]])]
PREDICTIONS = [torch.tensor([[[0, 1, 1]]]), torch.tensor([[[1, 2, 0]]])]
MATRIX = [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
# IoU = tp / (truth + predicted - tp): road 1 / (2 + 1 - 1), roof 2 / (2 + 3 - 2), tree 1 / 1
IOU = [0.5, 2 / 3, 1.0]


def test_evaluator_counts_and_scores_as_computed_by_hand():
    evaluator = SegmentationEvaluator(CLASSES)
    summary = inference_on_dataset(lambda batch: batch["prediction"],
                                   [{"mask": m, "prediction": p} for m, p in zip(MASKS, PREDICTIONS)], evaluator)
    assert summary["confusion_matrix"] == MATRIX
    assert [row["iou"] for row in summary["classes"]] == pytest.approx(IOU)
    assert summary["miou"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert summary["pixels"] == 5 and evaluator.images == 2
    # a second pass starts afresh; an excluded class leaves the mean, not the matrix
    excluding = SegmentationEvaluator(CLASSES, exclude_classes=[2])
    again = inference_on_dataset(lambda batch: batch["prediction"],
                                 [{"mask": m, "prediction": p} for m, p in zip(MASKS, PREDICTIONS)], excluding)
    assert again["confusion_matrix"] == MATRIX and again["miou"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_meter_gives_weighted_means_and_nan_without_weight():
    meter = ScalarMeter()
    meter.update({"loss": torch.tensor(6.0), "edge": 1.0}, weight=3)
    meter.update({"loss": torch.tensor(2.0), "edge": 3.0}, weight=1)
    assert meter.means() == {"loss": 2.0, "edge": 1.0}
    empty = ScalarMeter(names=("val_loss",))  # a process without batches still reports the term
    assert empty.means()["val_loss"] != empty.means()["val_loss"]  # nan: no labelled pixel


def _two_processes(rank: int, port: int, results) -> None:
    """Process ``rank`` of 2 (gloo): scores batch ``rank`` and adds a loss sum with its weight."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        evaluator = SegmentationEvaluator(CLASSES)
        evaluator.process(PREDICTIONS[rank], MASKS[rank])
        meter = ScalarMeter()
        meter.update({"val_loss": [6.0, 2.0][rank]}, weight=[3, 1][rank])
        lonely = ScalarMeter(names=("val_loss",))  # process 1 has no batch, as an empty validation shard
        if rank == 0:
            lonely.update({"val_loss": 4.0}, weight=2)
        results[rank] = (evaluator.evaluate()["confusion_matrix"], meter.means(), lonely.means())
    finally:
        dist.destroy_process_group()


def test_evaluator_and_meter_sum_over_processes():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_two_processes, args=(port, results), nprocs=2)
    for rank in (0, 1):
        matrix, means, lonely = results[rank]
        assert matrix == MATRIX  # each process holds half the pixels; both get the whole matrix
        assert means == {"val_loss": (6.0 + 2.0) / (3 + 1)}
        assert lonely == {"val_loss": 4.0 / 2}


def test_training_validation_and_eval_py_give_the_same_miou(trained_upernet, reference_data, tmp_path):
    """train.py validated its last epoch on Potsdam's test split (128 px patches, resized to --crop_size 128:
    unchanged); eval.py scores last.pth on that split with the same protocol: whole image, one scale, no flip."""
    import eval as eval_script  # here, not at the top: the spawned processes above import this module

    _, _, root = reference_data
    records = [json.loads(line) for line in (trained_upernet.checkpoint.parent / "log.jsonl").read_text().splitlines()]
    validation = [record for record in records if record["kind"] == "val"][-1]
    args, config = eval_script.parse_with_config(eval_script.build_parser(), [
        "--dataset", "Posdam", "--dataset_dir", str(root), "--split", "test", "--snapshot",
        str(trained_upernet.checkpoint), "-im", "whole", "--single_scale", "--no_flip", "--no_optimize",
        "--device", "cpu", "--num_workers", "0", "--out_dir", str(tmp_path / "eval")])
    summary = eval_script.evaluate(args, config)
    assert summary["pixels"] == validation["pixels"]
    assert summary["miou"] == pytest.approx(validation["miou"], abs=1e-9)
    assert [row["iou"] for row in summary["classes"]] == pytest.approx(list(validation["iou"].values()), abs=1e-9)
