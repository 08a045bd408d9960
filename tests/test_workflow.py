"""The chain a user runs, as subprocesses with default flags: prepare -> train -> eval -> predict.

eval.py and predict.py are given no model flags: the arch and the point-flow options must come from the
configuration train.py saved in the checkpoint (before, eval.py rebuilt the model with other options
and reported the mIoU of another model without a word).
"""
import json

import numpy as np
import pytest
from PIL import Image
from script_run import run_script as run
from train_data import make_tiny_potsdam

# end-to-end runs of the entry points: `make test` runs them, `make test-fast` leaves them out
pytestmark = pytest.mark.workflow

TINY_OPTIONS = {"maxpool_size": 2, "avgpool_size": 3, "edge_points": 8, "match_dim": 16}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch Potsdam run with non-default point-flow options; returns (base folder, data root, best checkpoint)."""
    base = tmp_path_factory.mktemp("workflow")
    root = make_tiny_potsdam(base)
    model_flags = [item for name, value in TINY_OPTIONS.items() for item in (f"--{name}", str(value))]
    result = run("train.py", "--dataset", "Posdam", "--set", f"DATASET.POSDAM_DIR={root}", "--crop_size", "64",
                 "--bs_mult", "4", "--max_epoch", "2", "--num_workers", "0", "--device", "cpu", "--lr", "0.01",
                 "--joint_edge_loss_pfnet", *model_flags, "--ckpt", str(base / "ckpt"), "--tb_path", str(base / "tb"))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = base / "ckpt" / "default" / "Posdam-pfnet_r50"
    best = next(run_dir.glob("best_epoch_*.pth"))
    return base, root, best


def test_eval_rebuilds_the_trained_model_from_the_checkpoint(trained):
    base, root, best = trained
    out = base / "eval"
    result = run("eval.py", "--dataset", "Posdam", "--dataset_dir", str(root), "--split", "test", "--snapshot",
                 str(best), "--inference_mode", "whole", "--single_scale", "--no_flip", "--device", "cpu",
                 "--num_workers", "0", "--out_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["arch"] == "pfnet_r50" and metrics["model_options"] == TINY_OPTIONS
    assert metrics["model_option_sources"] == {"arch": "checkpoint", **{name: "checkpoint" for name in TINY_OPTIONS}}
    assert "maxpool_size 2 (checkpoint)" in result.stdout
    assert 0.0 <= metrics["miou"] <= 1.0


def test_eval_flag_contradicting_the_checkpoint_wins_with_a_warning(trained):
    base, root, best = trained
    out = base / "eval_contradicted"
    result = run("eval.py", "--dataset", "Posdam", "--dataset_dir", str(root), "--split", "test", "--snapshot",
                 str(best), "--edge_points", "4", "--inference_mode", "whole", "--single_scale", "--no_flip",
                 "--device", "cpu", "--num_workers", "0", "--out_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"--edge_points 4 contradicts the value 8 saved in {best}" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_options"]["edge_points"] == 4 and metrics["model_option_sources"]["edge_points"] == "flag"


def test_predict_needs_neither_arch_nor_model_flags(trained):
    base, root, best = trained
    image = next((root / "test" / "images").iterdir())
    out = base / "predict"
    result = run("predict.py", str(image), "--snapshot", str(best), "--dataset", "Posdam", "--window", "64",
                 "--device", "cpu", "--out_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "edge_points 8 (checkpoint)" in result.stdout
    mask = np.asarray(Image.open(out / f"{image.stem}_pred.png"))
    assert mask.shape == (64, 64) and mask.max() < 6
