"""Each baseline family through the user's commands on tiny synthetic Potsdam data: train.py (1 epoch, the PFNet
recipe's flags) in a subprocess, then eval.py on its checkpoint and predict.py on an image through their ``main``
(in this process, sparing two interpreter starts per model)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_data import tiny_run_flags

import eval as evaluation
import predict

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# end-to-end runs of the entry points: `make test` runs them, `make test-fast` leaves them out
pytestmark = [pytest.mark.workflow, pytest.mark.usefixtures("one_thread")]


def run_train(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *flags], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def potsdam_root(tiny_potsdam):
    return tiny_potsdam


def with_arch(flags: list[str], arch: str) -> list[str]:
    flags = list(flags)
    flags[flags.index("--arch") + 1] = arch
    return flags


# One model of each family, the lightest; UperNet-R50 is trained and evaluated by the ablation smoke test.
@pytest.mark.parametrize("arch", ["upernet_r18", "pspnet_d16_r50", "deeplabv3plus_r50"])
def test_train_one_epoch_then_eval_and_predict(tmp_path, potsdam_root, arch):
    # The PFNet recipe's flags (--joint_edge_loss_pfnet, point-flow options) as a script would pass them.
    trained = run_train(*with_arch(tiny_run_flags(potsdam_root, tmp_path), arch), "--max_epoch", "1",
                  "--bs_mult", "4", "--num_workers", "0", "--exp", "baseline")
    assert trained.returncode == 0, trained.stderr[-3000:]
    log = trained.stdout + trained.stderr
    assert f"--joint_edge_loss_pfnet: {arch} has no edge maps; training on the segmentation loss alone" in log
    run_dir = tmp_path / "ckpt" / "baseline" / f"Posdam-{arch}"
    records = [json.loads(line) for line in (run_dir / "log.jsonl").open()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert len(train_records) == 2  # 8 patches, batch 4
    assert all(r["loss"] == r["seg_loss"] and not any(k.startswith("edge_loss") for k in r) for r in train_records)
    [best] = run_dir.glob("best_epoch_0_mean-iu_*.pth")

    assert evaluation.main(["--dataset", "Posdam", "--dataset_dir", str(potsdam_root), "--split", "test",
                            "--snapshot", str(best), "--arch", arch, "--out_dir", str(tmp_path / "eval"), "-im",
                            "whole", "--single_scale", "--no_flip", "--resize_scale", "64", "--num_workers", "0",
                            "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["arch"] == arch and metrics["images"] == 4 and metrics["pixels"] == 4 * 64 * 64
    # The official protocol on the 64 px test patches scores what training's validation scored.
    assert metrics["miou"] == pytest.approx(metrics["checkpoint_mean_iu"], abs=1e-4)

    image = sorted((potsdam_root / "test" / "images").iterdir())[0]
    assert predict.main([str(image), "--snapshot", str(best), "--arch", arch, "--dataset", "Posdam",
                  "--out_dir", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    [mask_path] = (tmp_path / "pred").glob("*.png")
    mask = np.asarray(Image.open(mask_path))
    assert mask.shape == (64, 64) and mask.max() < 6
