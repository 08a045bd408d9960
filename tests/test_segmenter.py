"""The inference entry points keep their outputs bit for bit: predict.py's mask and probability GeoTIFFs and
eval.py's metrics.json, on models trained by train.py (tests/trained_models.py).

The expected outputs are computed here with the building blocks of ``evaluation.inference``
(``predict_large_image``, ``infer_logits``) called with explicit arguments, on the model as
``evaluation.restore.restore_model`` builds it: independent of ``evaluation.segmenter``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from script_run import run_script

from datasets import normalize_image
from evaluation.dataset_split import load_split
from evaluation.inference import infer_logits, predict_large_image
from evaluation.metrics import metrics_summary
from evaluation.restore import restore_model
from network.options import add_model_flags
from utils.image_io import open_raster, read_image

pytestmark = pytest.mark.usefixtures("one_thread")

# A protocol away from every default: two scales, a flip, overlapping windows in batches of two.
PREDICT_FLAGS = ("--window", "96", "--stride", "64", "--batch_size", "2", "--scales", "0.75,1.0", "--flip")
PREDICT_PROTOCOL = {"window": 96, "stride": 64, "batch_size": 2, "scales": (0.75, 1.0), "flip": True,
                    "blend": "gaussian"}
EVAL_RUNS = {
    "sliding": (("--inference_mode", "sliding", "--window", "96", "--stride", "64", "--scales", "0.75,1.0",
                 "--flip", "--blend", "mean"),
                {"window": 96, "stride": 64, "scales": (0.75, 1.0), "flip": True, "blend": "mean"},
                {"inference_mode": "sliding", "scales": [0.75, 1.0], "flip": True, "vflip": False, "rot90": False,
                 "blend": "mean", "crop_size": 96, "stride": 64}),
    "whole": (("--inference_mode", "whole", "--single_scale", "--no_flip", "--vflip"),
              {"scales": (1.0,), "vflip": True},
              {"inference_mode": "whole", "scales": [1.0], "flip": False, "vflip": True, "rot90": False,
               "blend": None, "crop_size": None, "stride": None}),
}


@pytest.fixture(scope="module", params=["trained_pfnet", "trained_upernet"])
def trained(request):
    """Each trained reference model (a ``TrainedModel``) and its model as restore_model builds it by default."""
    reference = request.getfixturevalue(request.param)
    namespace = argparse.ArgumentParser()
    add_model_flags(namespace)
    restored = restore_model(namespace.parse_args([]), reference.checkpoint, device="cpu")
    return reference, restored.model


def read_bands(path: Path) -> np.ndarray:
    """Every band of a GeoTIFF: (bands, H, W)."""
    import rasterio

    with rasterio.open(path) as source:
        return source.read()


def test_predict_writes_the_masks_and_probabilities_of_the_inference_functions(trained, tmp_path):
    pytest.importorskip("rasterio", reason="GeoTIFF tiles need rasterio (optional)")
    reference, model = trained
    tile = reference.tiles[0]
    result = run_script("predict.py", str(tile), "--snapshot", str(reference.checkpoint), "--out_dir",
                        str(tmp_path), "--probabilities", "--device", "cpu", *PREDICT_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]

    with open_raster(tile) as source:
        height, width = source.height, source.width
        mask = np.full((height, width), 77, np.uint8)
        probabilities = np.full((len(reference.class_names), height, width), 77, np.uint8)

        def write_mask(top, left, block):
            mask[top : top + block.shape[0], left : left + block.shape[1]] = block

        def write_probabilities(top, left, block):
            probabilities[:, top : top + block.shape[1], left : left + block.shape[2]] = block

        predict_large_image(model, source.read, (height, width), write_mask, valid_region=source.valid_mask,
                            write_probabilities=write_probabilities, device="cpu", show_progress=False,
                            **PREDICT_PROTOCOL)
    written_mask = read_bands(tmp_path / f"{tile.stem}_pred.tif")
    written_probabilities = read_bands(tmp_path / f"{tile.stem}_prob.tif")
    assert len(np.unique(probabilities)) > 5  # the trained models' certainties vary across the tile
    np.testing.assert_array_equal(written_mask, mask[None])
    np.testing.assert_array_equal(written_probabilities, probabilities)


@pytest.mark.parametrize("mode", sorted(EVAL_RUNS))
def test_eval_scores_the_predictions_of_the_inference_functions(trained, reference_data, mode, tmp_path):
    reference, model = trained
    _, _, root = reference_data
    flags, protocol, recorded = EVAL_RUNS[mode]
    result = run_script("eval.py", "--dataset", "Posdam", "--dataset_dir", str(root), "--snapshot",
                        str(reference.checkpoint), "--out_dir", str(tmp_path), "--num_workers", "0",
                        "--device", "cpu", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((tmp_path / "metrics.json").read_text())

    items, class_names, _ = load_split("Posdam", "test", str(root))
    matrix = np.zeros((len(class_names), len(class_names)), np.int64)
    for image_path, mask_path in items:
        images = normalize_image(read_image(image_path))[None]
        prediction = infer_logits(model, images, **protocol).argmax(1)[0].numpy()
        truth = np.asarray(Image.open(mask_path)).astype(np.int64)
        scored = truth < len(class_names)
        matrix += np.bincount(truth[scored] * len(class_names) + prediction[scored],
                              minlength=len(class_names) ** 2).reshape(matrix.shape)
    expected = metrics_summary(torch.from_numpy(matrix), class_names)
    assert written["images"] == len(items) == 4
    assert written["protocol"] == {**recorded, "resize_scale": None, "eroded_masks": None, "boundary_ignore": 0}
    assert written["confusion_matrix"] == matrix.tolist()
    for key in ("classes", "miou", "mean_f1", "mean_accuracy", "overall_accuracy", "fwiou", "pixels"):
        assert written[key] == expected[key], key
