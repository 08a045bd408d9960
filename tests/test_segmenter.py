"""``evaluation.segmenter``, and the inference entry points built on it keep their outputs bit for bit: predict.py's
mask and probability GeoTIFFs and eval.py's metrics.json, on models trained by train.py (tests/trained_models.py).

The expected outputs are computed here with the building blocks of ``evaluation.inference``
(``predict_large_image``, ``infer_logits``) called with explicit arguments, on the model as
``evaluation.restore.restore_model`` builds it: independent of ``evaluation.segmenter``. The entry points run
through their ``main`` in this process (their command lines as a user types them; no process is under test).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from trained_models import read_raster

import eval as evaluation
import predict
from datasets import normalize_image
from evaluation.dataset_split import load_split
from evaluation.inference import infer_logits, predict_large_image
from evaluation.metrics import metrics_summary
from evaluation.restore import restore_model
from evaluation.segmenter import DEFAULT_PROTOCOL, Protocol, Segmenter, generic_classes
from network.options import add_model_flags
from utils.image_io import open_raster, read_image

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.workflow]

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


def expected_tile_outputs(model, tile: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) class ids and (K, H, W) uint8 probabilities of ``tile`` by ``predict_large_image`` with
    :data:`PREDICT_PROTOCOL`, read as predict.py reads it."""
    with open_raster(tile) as source:
        height, width = source.height, source.width
        mask = np.full((height, width), 77, np.uint8)
        probabilities = np.full((num_classes, height, width), 77, np.uint8)

        def write_mask(top, left, block):
            mask[top : top + block.shape[0], left : left + block.shape[1]] = block

        def write_probabilities(top, left, block):
            probabilities[:, top : top + block.shape[1], left : left + block.shape[2]] = block

        predict_large_image(model, source.read, (height, width), write_mask, valid_region=source.valid_mask,
                            write_probabilities=write_probabilities, device="cpu", show_progress=False,
                            **PREDICT_PROTOCOL)
    return mask, probabilities


def test_predict_writes_the_masks_and_probabilities_of_the_inference_functions(trained, tmp_path):
    pytest.importorskip("rasterio", reason="GeoTIFF tiles need rasterio (optional)")
    reference, model = trained
    tile = reference.tiles[0]
    assert predict.main([str(tile), "--snapshot", str(reference.checkpoint), "--out_dir", str(tmp_path),
                         "--probabilities", "--device", "cpu", *PREDICT_FLAGS]) == 0

    mask, probabilities = expected_tile_outputs(model, tile, len(reference.class_names))
    written_mask = read_raster(tmp_path / f"{tile.stem}_pred.tif")
    written_probabilities = read_raster(tmp_path / f"{tile.stem}_prob.tif")
    assert len(np.unique(probabilities)) > 5  # the trained models' certainties vary across the tile
    np.testing.assert_array_equal(written_mask, mask[None])
    np.testing.assert_array_equal(written_probabilities, probabilities)


@pytest.mark.parametrize("mode", sorted(EVAL_RUNS))
def test_eval_scores_the_predictions_of_the_inference_functions(trained, reference_data, mode, tmp_path):
    reference, model = trained
    _, _, root = reference_data
    flags, protocol, recorded = EVAL_RUNS[mode]
    assert evaluation.main(["--dataset", "Posdam", "--dataset_dir", str(root), "--snapshot", str(reference.checkpoint),
                            "--out_dir", str(tmp_path), "--num_workers", "0", "--device", "cpu", *flags]) == 0
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


def test_segmenter_on_arrays_and_batches_equals_the_inference_functions(trained):
    reference, model = trained
    tile = reference.tiles[0]
    protocol = Protocol(window=96, stride=64, batch=2, scales=(0.75, 1.0), flip=True)
    segmenter = Segmenter.from_checkpoint(reference.checkpoint, protocol=protocol)
    # the classes train.py saved in the checkpoint, the arch and options it saved
    assert segmenter.class_names == list(reference.class_names) and segmenter.num_classes == 6
    assert segmenter.palette.shape == (6, 3) and segmenter.resolved.arch == reference.arch

    class_ids, probabilities = segmenter.predict_array(read_image(tile), return_probabilities=True)
    mask, expected_probabilities = expected_tile_outputs(model, tile, 6)
    np.testing.assert_array_equal(class_ids, mask)
    assert probabilities.dtype == np.float32 and probabilities.shape == (6, 256, 256)
    np.testing.assert_array_equal(probabilities, expected_probabilities.astype(np.float32) / 255)
    np.testing.assert_array_equal(segmenter.predict_array(read_image(tile)), mask)

    # a batch: the sliding windows and test-time augmentation of infer_logits, bit for bit
    batch = torch.stack([normalize_image(read_image(path)[:80, :120]) for path in reference.tiles[:2]])
    expected = infer_logits(model, batch, window=96, stride=64, batch_size=2, scales=(0.75, 1.0), flip=True,
                            blend="gaussian")
    assert torch.equal(segmenter.logits(batch), expected)

    # no window: the whole image in one pass, as infer_logits without a window
    whole = Segmenter(segmenter.model, (segmenter.class_names, segmenter.palette), Protocol(flip=True))
    assert torch.equal(whole.logits(batch), infer_logits(model, batch, flip=True))
    pixels = read_image(tile)[:100, :72]  # taller than wide: predict_large_image's strips run down it
    np.testing.assert_array_equal(whole.predict_array(pixels),
                                  infer_logits(model, normalize_image(pixels)[None], flip=True).argmax(1)[0].numpy())


def test_protocol_and_options_are_checked_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="--stride must be between 1 and --window"):
        Protocol(window=64, stride=80)
    with pytest.raises(ValueError, match="--blend"):
        Protocol(blend="max")
    with pytest.raises(ValueError, match="--scales"):
        Protocol(scales=(1.0, 0.0))
    with pytest.raises(ValueError, match="--batch_size"):
        Protocol(batch=0)
    assert Protocol(window=96).step == 64 and Protocol().step is None  # ceil(96 x 2/3)
    assert (DEFAULT_PROTOCOL.window, DEFAULT_PROTOCOL.blend, DEFAULT_PROTOCOL.step) == (896, "gaussian", 598)
    with pytest.raises(TypeError, match="unknown model option"):
        Segmenter.from_checkpoint(tmp_path / "missing.pth", maxpool=4)
    segmenter = Segmenter(torch.nn.Identity(), generic_classes(3))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        segmenter.predict_array(np.zeros((8, 8), np.uint8))
