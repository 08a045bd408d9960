"""LoveDA: synthetic raw layout, preparation (label mapping pixel by pixel, domains, windows) and the
raw -> prepare -> train -> eval -> predict workflow as a user runs it."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from datasets import LoveDADataset, get_dataset
from tools import ToolError
from tools.make_synthetic_data import make_synthetic
from tools.prepare_dataset import PrepareOptions, prepare

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
TINY_MODEL = ["--arch", "pfnet_r50", "--maxpool_size", "2", "--avgpool_size", "2", "--edge_points", "8"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """8 synthetic images of 64 px: 6 train, 2 val, Urban and Rural in each split."""
    return make_synthetic("loveda", tmp_path_factory.mktemp("loveda") / "raw", seed=1, num_images=8, size=SIZE)


def _expected_labels(raw_mask: np.ndarray) -> np.ndarray:
    """mmsegmentation's reduce_zero_label, written out: 0 -> 255, k -> k - 1."""
    return np.where(raw_mask == 0, 255, raw_mask.astype(np.int64) - 1).astype(np.uint8)


def test_synthetic_raw_layout_has_both_domains_and_no_data(raw):
    masks = sorted(raw.glob("*/*/masks_png/*.png"))
    assert {path.relative_to(raw).parts[:2] for path in masks} == {
        ("Train", "Urban"), ("Train", "Rural"), ("Val", "Urban"), ("Val", "Rural")}
    values = set()
    for path in masks:
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == (SIZE, SIZE)
        values |= set(np.unique(mask).tolist())
        assert (path.parent.parent / "images_png" / path.name).is_file()
    assert 0 in values and values <= set(range(8)) and len(values) >= 5


def test_prepare_maps_no_data_and_classes_pixel_by_pixel(raw, tmp_path):
    summary = prepare("loveda", raw, tmp_path / "out", PrepareOptions(workers=1, progress=False))
    assert summary.patches == 8
    for split, folder in (("train", "Train"), ("val", "Val")):
        for domain in ("Urban", "Rural"):
            for raw_mask_path in sorted((raw / folder / domain / "masks_png").glob("*.png")):
                stem = f"{domain.lower()}_{raw_mask_path.stem}"
                prepared = cv2.imread(str(tmp_path / "out" / split / "masks" / f"{stem}_gray_mask.png"),
                                      cv2.IMREAD_UNCHANGED)
                raw_mask = cv2.imread(str(raw_mask_path), cv2.IMREAD_UNCHANGED)
                np.testing.assert_array_equal(prepared, _expected_labels(raw_mask))
                image = cv2.imread(str(tmp_path / "out" / split / "images" / f"{stem}.png"))
                np.testing.assert_array_equal(image, cv2.imread(str(raw / folder / domain / "images_png"
                                                                    / raw_mask_path.name)))
    dataset = get_dataset("LoveDA", "val", tmp_path / "out")
    assert len(dataset) == 2 and set(np.unique(dataset[0]["mask"].numpy()).tolist()) <= set(range(7)) | {255}


def test_domain_choice_and_windows(raw, tmp_path):
    prepare("loveda", raw, tmp_path / "rural", PrepareOptions(domain="rural", patch_size=32, workers=1, progress=False))
    names = sorted(path.name for path in (tmp_path / "rural" / "train" / "images").iterdir())
    assert len(names) == 3 * 4 and all(name.startswith("rural_") for name in names)
    assert "rural_1_0_32_32_64.png" in names
    raw_mask = cv2.imread(str(raw / "Train" / "Rural" / "masks_png" / "1.png"), cv2.IMREAD_UNCHANGED)
    window = cv2.imread(str(tmp_path / "rural" / "train" / "masks" / "rural_1_0_32_32_64_gray_mask.png"),
                        cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(window, _expected_labels(raw_mask)[0:32, 32:64])


def test_unknown_mask_values_and_missing_splits_are_refused(raw, tmp_path):
    broken = tmp_path / "broken"
    for path in raw.rglob("*.png"):
        target = broken / path.relative_to(raw)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    bad = broken / "Val" / "Urban" / "masks_png" / "6.png"
    mask = cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)
    mask[:2, :2] = 9
    cv2.imwrite(str(bad), mask)
    with pytest.raises(ToolError, match=r"6.png: 4 of 4096 pixels hold values outside \[0, 1, 2, 3, 4, 5, 6, 7\]"):
        prepare("loveda", broken, tmp_path / "out", PrepareOptions(workers=1, progress=False))
    shutil.rmtree(broken / "Val")
    with pytest.raises(ToolError, match=r"Val/Urban/images_png does not exist.*LoveDA.s Val.zip.*docs/data_custom.md"):
        prepare("loveda", broken, tmp_path / "out2", PrepareOptions(domain="urban", workers=1, progress=False))


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    completed = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def _official_isaid_checkpoint(path: Path) -> dict:
    """A 16-class PFNet-R50 in the official snapshots' format (``module.`` keys, numpy mean_iu)."""
    import torch

    import network

    torch.manual_seed(0)
    model = network.get_model("pfnet_r50", 16, pretrained=None, maxpool_size=2, avgpool_size=2, edge_points=8)
    state = {f"module.{key}": value for key, value in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 63, "mean_iu": np.float64(0.66)}, path)
    return state


@pytest.mark.workflow
def test_workflow_raw_prepare_finetune_eval_predict(raw, tmp_path):
    """Fine-tuning an official 16-class iSAID checkpoint onto LoveDA's 7 classes is the documented command:
    train.py --snapshot OFFICIAL.pth --snapshot_partial (docs/data_custom.md)."""
    official = _official_isaid_checkpoint(tmp_path / "isaid_official.pth")
    data = tmp_path / "LoveDA"
    _run([str(REPO / "tools" / "prepare_dataset.py"), "loveda", "--raw", str(raw), "--out", str(data),
          "--workers", "1"], tmp_path)
    assert len(list((data / "train" / "images").glob("*.png"))) == 6
    _run([str(REPO / "train.py"), "--dataset", "LoveDA", "--set", f"DATASET.LOVEDA_DIR={data}", *TINY_MODEL,
          "--crop_size", str(SIZE), "--max_epoch", "1", "--bs_mult", "3", "--num_workers", "0", "--device", "cpu",
          "--joint_edge_loss_pfnet", "--ckpt", str(tmp_path / "ckpt"), "--tb_path", str(tmp_path / "tb"),
          "--exp", "tiny", "--snapshot", str(tmp_path / "isaid_official.pth"), "--snapshot_partial"], tmp_path)
    run_dir = tmp_path / "ckpt" / "tiny" / "LoveDA-pfnet_r50"
    checkpoint = run_dir / "last.pth"
    classifier = "head.conv_last.1"
    assert f"weights from {tmp_path / 'isaid_official.pth'} (2 tensors skipped)" in (run_dir / "train.log").read_text()
    import torch
    tuned = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert tuned[f"module.{classifier}.weight"].shape[0] == 7 and official[f"module.{classifier}.weight"].shape[0] == 16
    trunk = "module.layer4.0.conv1.weight"
    # the trunk starts from the official weights (a 1-epoch run moves them by at most a few SGD steps)
    assert (tuned[trunk] - official[trunk]).abs().max() < 0.05 * official[trunk].abs().max()
    _run([str(REPO / "eval.py"), "--dataset", "LoveDA", "--dataset_dir", str(data), "--snapshot", str(checkpoint),
          *TINY_MODEL, "--inference_mode", "whole", "--single_scale", "--no_flip", "--num_workers", "0",
          "--device", "cpu", "--out_dir", str(tmp_path / "eval"), "--report_samples", "1"], tmp_path)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["images"] == 2
    assert [row["name"] for row in metrics["classes"]] == list(LoveDADataset.class_names)
    assert list(LoveDADataset.class_names) == ["background", "building", "road", "water", "barren", "forest",
                                               "agriculture"]
    image = raw / "Val" / "Urban" / "images_png" / "6.png"
    # no --dataset: the class count and the official palette come from the checkpoint
    _run([str(REPO / "predict.py"), str(image), "--snapshot", str(checkpoint), "--out_dir", str(tmp_path / "pred"),
          *TINY_MODEL, "--window", str(SIZE), "--device", "cpu"], tmp_path)
    with Image.open(tmp_path / "pred" / "6_pred.png") as mask:
        assert mask.mode == "P" and mask.size == (SIZE, SIZE)
        palette = np.asarray(mask.getpalette()[: 7 * 3]).reshape(7, 3)
        assert set(np.unique(np.asarray(mask)).tolist()) <= set(range(7))
    np.testing.assert_array_equal(palette, LoveDADataset.palette)
    assert LoveDADataset.palette.tolist()[:2] == [[255, 255, 255], [255, 0, 0]]
