"""eval.py end to end: the original protocol with the real PFNet-R50 on small image/mask files."""
import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_fixtures import assert_clear_decisions_match, blocky_image, calibrated_pfnet
from PIL import Image

import eval as evaluation
from utils.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
NAMES = ["a", "b", "c"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_and_checkpoint(tmp_path_factory):
    model = calibrated_pfnet(6)
    path = tmp_path_factory.mktemp("runs") / "vaihingen" / "r50" / "best.pth"
    save_checkpoint(path, {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                           "epoch": 7, "mean_iu": np.float64(0.61), "command": "train"})
    return model, path


@pytest.fixture(scope="module")
def vaihingen_root(tmp_path_factory):
    """Vaihingen layout: test/images/{n}.png and test/masks/{n}_gray_mask.png; sizes differ from 64."""
    root = tmp_path_factory.mktemp("vaihingen768")
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (root / "test" / folder).mkdir(parents=True)
    for index, name in enumerate(NAMES):
        height, width = 48 + 8 * index, 72 - 8 * index
        image = blocky_image(rng, height, width)
        mask = rng.integers(0, 6, size=(height, width), dtype=np.uint8)
        mask[:4] = 255
        Image.fromarray(image).save(root / "test" / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "test" / "masks" / f"{name}_gray_mask.png")
    return root


def reference_confusion(model, root, resize):
    """The original protocol written out independently: PIL bicubic/nearest, ToTensor+Normalize, argmax.

    Returns the confusion matrix (6, 6) and each image's logits (6, resize, resize) by name.
    """
    matrix = np.zeros((6, 6), dtype=np.int64)
    logits = {}
    for name in NAMES:
        image = Image.open(root / "test" / "images" / f"{name}.png").convert("RGB")
        image = image.resize((resize, resize), Image.BICUBIC)
        mask = Image.open(root / "test" / "masks" / f"{name}_gray_mask.png").resize((resize, resize), Image.NEAREST)
        pixels = ((np.asarray(image).astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1)
        with torch.no_grad():
            logits[name] = model(torch.from_numpy(pixels.copy())[None])[0]
        prediction = logits[name].argmax(0).numpy()
        truth = np.asarray(mask).astype(np.int64)
        valid = truth < 6
        matrix += np.bincount(6 * truth[valid] + prediction[valid], minlength=36).reshape(6, 6)
    return matrix, logits


def run_eval(root, checkpoint, out_dir, *extra):
    return evaluation.main([
        "--dataset", "Vaihingen", "--dataset_dir", str(root), "--split", "test", "--snapshot", str(checkpoint),
        "--arch", "network.pointflow_resnet_with_max_avg_pool.DeepR50_PF_maxavg_deeply", "--out_dir", str(out_dir),
        "--num_workers", "0", "--device", "cpu", *extra,
    ])


def test_original_protocol_confusion_and_outputs(tmp_path, model_and_checkpoint, vaihingen_root):
    model, checkpoint = model_and_checkpoint
    out = tmp_path / "out"
    run_eval(vaihingen_root, checkpoint, out, "-im", "whole", "--single_scale", "--no_flip", "--resize_scale", "64",
             "--dump_images", "--dump_side_by_side", "--report_samples", "2", "--no_optimize")
    expected, logits = reference_confusion(model, vaihingen_root, 64)
    predictions = {name: image_logits.argmax(0).numpy() for name, image_logits in logits.items()}
    result = json.loads((out / "metrics.json").read_text())
    assert result["confusion_matrix"] == expected.tolist()
    iou = np.diag(expected) / (expected.sum(0) + expected.sum(1) - np.diag(expected))
    assert result["miou"] == pytest.approx(np.nanmean(iou))
    assert result["overall_accuracy"] == pytest.approx(np.trace(expected) / expected.sum())
    assert result["pixels"] == expected.sum() > 3 * 50 * 64
    assert result["checkpoint_epoch"] == 7 and result["checkpoint_mean_iu"] == pytest.approx(0.61)
    assert result["images"] == 3
    assert result["protocol"]["resize_scale"] == 64 and result["protocol"]["flip"] is False

    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert rows[5]["name"] == "clutter"
    for name in NAMES:
        colour = Image.open(out / "rgb" / f"{name}_color.png")
        assert colour.mode == "P"
        np.testing.assert_array_equal(np.asarray(colour), predictions[name])
        np.testing.assert_array_equal(np.asarray(Image.open(out / "pred" / f"{name}.png")), predictions[name])
        assert Image.open(out / "compose" / f"{name}_compose.png").size == (64, 64)
        assert Image.open(out / "diff" / f"{name}_diff.png").size == (64, 64)
        assert Image.open(out / "side_by_side" / f"{name}.png").size == (3 * 64 + 2 * 4, 64)
    assert (out / "report.html").read_text().count("<tr>") == 7
    for figure in ("report_iou.png", "report_confusion.png", "report_samples.png"):  # tests/test_report.py: content
        assert Image.open(out / figure).size[0] > 0
    assert list(out.glob("eval_*.log"))


def test_refuses_to_overwrite_results(tmp_path, model_and_checkpoint, vaihingen_root, capsys):
    _, checkpoint = model_and_checkpoint
    out = tmp_path / "out"
    args = ("-im", "whole", "--single_scale", "--no_flip", "--resize_scale", "32")
    run_eval(vaihingen_root, checkpoint, out, *args)
    with pytest.raises(SystemExit):
        run_eval(vaihingen_root, checkpoint, out, *args)
    assert "--overwrite" in capsys.readouterr().err
    run_eval(vaihingen_root, checkpoint, out, *args, "--overwrite")


def test_class_count_mismatch_is_explained(tmp_path, model_and_checkpoint, vaihingen_root, capsys):
    _, checkpoint = model_and_checkpoint
    isaid_root = tmp_path / "isaid"
    (isaid_root / "val" / "images").mkdir(parents=True)
    (isaid_root / "val" / "masks").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(isaid_root / "val" / "images" / "P0001.png")
    mask_path = isaid_root / "val" / "masks" / "P0001_instance_color_RGB.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(mask_path)
    with pytest.raises(SystemExit):
        evaluation.main(["--dataset", "iSAID", "--dataset_dir", str(isaid_root), "--snapshot", str(checkpoint),
                         "--arch", "pfnet_r50", "--out_dir", str(tmp_path / "out"), "--device", "cpu"])
    message = capsys.readouterr().err
    assert "trained for 6 classes but 16 are expected" in message
    assert not (tmp_path / "out").exists()  # the checkpoint is checked before any output (or log) is created


def test_bad_sliding_step_is_refused_before_outputs(tmp_path, model_and_checkpoint, vaihingen_root, capsys):
    _, checkpoint = model_and_checkpoint
    with pytest.raises(SystemExit):
        run_eval(vaihingen_root, checkpoint, tmp_path / "out", "--window", "40", "--sliding_overlap", "1")
    assert "--overlap 1.0 leaves a window step of 0 px" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sliding_flip_multiscale_with_exclusion(tmp_path, model_and_checkpoint, vaihingen_root):
    _, checkpoint = model_and_checkpoint
    out = tmp_path / "out"
    run_eval(vaihingen_root, checkpoint, out, "--scales", "0.75,1.0", "--window", "40", "--stride", "24",
             "--batch_size", "4", "--exclude-classes", "clutter,0")
    result = json.loads((out / "metrics.json").read_text())
    assert result["protocol"] == {**result["protocol"], "inference_mode": "sliding", "scales": [0.75, 1.0],
                                  "flip": True, "crop_size": 40, "stride": 24}
    ious = [row["iou"] for row in result["classes"]]
    kept = [value for index, value in enumerate(ious) if index not in (0, 5) and value is not None]
    assert result["miou"] == pytest.approx(sum(kept) / len(kept))
    assert result["excluded_classes"] == ["impervious_surfaces", "clutter"]
    # images keep their own sizes without --resize_scale: 48x72 + 56x64 + 64x56 minus the 4 ignored rows
    assert result["pixels"] == 44 * 72 + 52 * 64 + 60 * 56


def test_eroded_masks_replace_full_masks(tmp_path, model_and_checkpoint, vaihingen_root):
    _, checkpoint = model_and_checkpoint
    eroded = tmp_path / "eroded"
    eroded.mkdir()
    for name in NAMES:
        full = np.asarray(Image.open(vaihingen_root / "test" / "masks" / f"{name}_gray_mask.png"))
        mask = np.full_like(full, 255)
        mask[10:20, 10:15] = full[10:20, 10:15]  # 50 scored pixels per image
        Image.fromarray(mask).save(eroded / f"{name}_gray_mask.png")
    out = tmp_path / "out"
    run_eval(vaihingen_root, checkpoint, out, "-im", "whole", "--single_scale", "--no_flip",
             "--eroded_masks", str(eroded))
    assert json.loads((out / "metrics.json").read_text())["pixels"] == 150


def test_boundary_ignore_drops_border_band(tmp_path, model_and_checkpoint):
    _, checkpoint = model_and_checkpoint
    root = tmp_path / "two_regions"
    (root / "test" / "images").mkdir(parents=True)
    (root / "test" / "masks").mkdir(parents=True)
    Image.fromarray(np.full((20, 24, 3), 90, dtype=np.uint8)).save(root / "test" / "images" / "t.png")
    mask = np.zeros((20, 24), dtype=np.uint8)
    mask[:, 12:] = 1
    Image.fromarray(mask).save(root / "test" / "masks" / "t_gray_mask.png")
    out = tmp_path / "out"
    evaluation.main(["--dataset", "Vaihingen", "--dataset_dir", str(root), "--split", "test", "--snapshot",
                     str(checkpoint), "--arch", "pfnet_r50", "--out_dir", str(out), "--num_workers", "0",
                     "-im", "whole", "--single_scale", "--no_flip", "--boundary_ignore", "2", "--device", "cpu"])
    # radius 2 removes columns 10..13 (4 of 24) on every row
    assert json.loads((out / "metrics.json").read_text())["pixels"] == 20 * 20


def test_output_folder_inferred_like_the_original():
    args = argparse.Namespace(out_dir=None, snapshot="runs/ckpts/exp1/r50/best.pth", exp_name=None, ckpt_path=None,
                              split="val", weights=None)
    assert evaluation.output_dir(args) == Path("ckpts/exp1/val")
    args.ckpt_path, args.snapshot = "results", "iSAID_r50.pth"
    assert evaluation.output_dir(args) == Path("results/val")


def test_official_script_runs(tmp_path, model_and_checkpoint, vaihingen_root):
    _, checkpoint = model_and_checkpoint
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(vaihingen_root, data / "vaihingen768")
    script = REPO / "scripts" / "pointflow" / "test" / "test_vaihingen768_pfnet_r50.sh"
    completed = subprocess.run(
        ["sh", str(script), str(checkpoint), str(tmp_path / "results"), "--num_workers", "0", "--device", "cpu",
         "--resize_scale", "64", "--report_samples", "0"],
        cwd=tmp_path, env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "Running inference on" in completed.stdout and "mIoU" in completed.stdout
    # output root / the checkpoint's grandparent folder / split, as the original
    assert (tmp_path / "results" / "vaihingen" / "test" / "metrics.json").is_file()


def test_fixture_model_predicts_several_classes(model_and_checkpoint, vaihingen_root):
    model, _ = model_and_checkpoint
    _, logits = reference_confusion(model, vaihingen_root, 64)
    predicted = np.concatenate([image_logits.argmax(0).numpy().ravel() for image_logits in logits.values()])
    assert len(np.unique(predicted)) >= 3


def test_optimized_default_and_bf16_paths(tmp_path, model_and_checkpoint, vaihingen_root):
    model, checkpoint = model_and_checkpoint
    expected, logits = reference_confusion(model, vaihingen_root, 64)
    protocol = ("-im", "whole", "--single_scale", "--no_flip", "--resize_scale", "64")
    run_eval(vaihingen_root, checkpoint, tmp_path / "default", *protocol, "--dump_images")
    for name in NAMES:
        predicted = np.asarray(Image.open(tmp_path / "default" / "pred" / f"{name}.png"))
        assert_clear_decisions_match(predicted, logits[name])
    run_eval(vaihingen_root, checkpoint, tmp_path / "bf16", *protocol, "--precision", "bf16")
    bf16 = np.array(json.loads((tmp_path / "bf16" / "metrics.json").read_text())["confusion_matrix"])
    # Same pixels counted; predictions move on under 10% of them (this random model's logits are close
    # together, so bf16 rounding flips more pixels than on a trained model; a broken path flips most).
    assert bf16.sum() == expected.sum()
    assert 0 < np.abs(bf16 - expected).sum() / 2 <= 0.10 * expected.sum()
