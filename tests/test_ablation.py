"""The ablation script's CPU smoke run: both models trained and evaluated by the same commands, one table."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import config
import eval as evaluation
import network
import train

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "ablation_upernet_vs_pfnet.py"


@pytest.mark.workflow
def test_smoke_ablation_prints_the_table(tmp_path):
    out = tmp_path / "ablation"
    completed = subprocess.run([sys.executable, str(SCRIPT), "--out",
                                str(out), "--smoke", "--bench_device", "cpu"],
                               cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                               timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    log = completed.stdout + completed.stderr
    assert "--joint_edge_loss_pfnet: upernet_r50 has no edge maps; training on the segmentation loss alone" in log

    table = (out / "ablation.md").read_text()
    assert table in completed.stdout + "\n"
    lines = table.splitlines()
    assert lines[0] == "| | upernet_r50 | pfnet_r50 |"
    results = json.loads((out / "ablation.json").read_text())
    class_names = [row["name"] for row in results["pfnet_r50"]["metrics"]["classes"]]
    assert len(class_names) == 16
    assert [line.split(" | ")[0] for line in lines[2:]] == (
        ["| mIoU"] + [f"| IoU {name}" for name in class_names]
        + ["| parameters (M)", "| GFLOPs (64²)", "| images/s (cpu, fp32)"])
    for arch, parameters in [("upernet_r50", "31.1"), ("pfnet_r50", "33.0")]:
        metrics = json.loads((out / "eval" / arch / "metrics.json").read_text())
        assert results[arch]["metrics"]["miou"] == metrics["miou"] and metrics["protocol"]["flip"] is False
        assert results[arch]["parameters"] == sum(p.numel() for p in network.get_model(arch, 16).parameters())
        assert results[arch]["flops"] > 1e9 and results[arch]["fp32_seconds"] > 0
    miou_row = lines[2].split(" | ")
    assert miou_row[1] == f"{100 * results['upernet_r50']['metrics']['miou']:.2f}"
    assert lines[-3] == "| parameters (M) | 31.1 | 33.0 |"

    # The identical recipe: the two runs' saved flags differ only in the model.
    configs = [yaml.safe_load((out / "ckpt" / "ablation" / f"iSAID-{arch}" / "config.yaml").read_text())
               for arch in ("upernet_r50", "pfnet_r50")]
    changed = {key for key in configs[0].keys() | configs[1].keys() if configs[0].get(key) != configs[1].get(key)}
    assert changed == {"arch"}
    assert configs[0]["joint_edge_loss_pfnet"] is True and configs[0]["ohem"] is True


def test_recipe_and_protocol_are_the_shipped_ones():
    spec = importlib.util.spec_from_file_location("ablation", SCRIPT)
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    options = argparse.Namespace(smoke=False, data=Path("/data/iSAID"), gpus=1, out=Path("/tmp/ablation"),
                                 train_flags=[])
    command = ablation.train_command(options, "pfnet_r50")
    assert command[:2] == [sys.executable, str(REPO / "train.py")]
    ours, ours_config, _ = train.parse_args(command[2:])
    shipped, shipped_config, _ = train.parse_args(["--config", str(REPO / "configs" / "pointflow" / "isaid_r50.yaml"),
                                                   "--set", "DATASET.ISAID_DIR=/data/iSAID"])
    outputs = {"exp", "ckpt", "tb_path"}
    assert {k: v for k, v in vars(ours).items() if k not in outputs} == (
        {k: v for k, v in vars(shipped).items() if k not in outputs})
    assert ours_config == shipped_config
    command = ablation.eval_command(options, "pfnet_r50", Path("/tmp/best.pth"))
    assert command[:2] == [sys.executable, str(REPO / "eval.py")]
    ours, _ = config.parse_with_config(evaluation.build_parser(), command[2:])
    shipped, _ = config.parse_with_config(evaluation.build_parser(), [
        "--config", str(REPO / "configs" / "pointflow" / "test" / "isaid_r50.yaml"), "--arch", "pfnet_r50",
        "--snapshot", "/tmp/best.pth", "--dataset_dir", "/data/iSAID"])
    assert {k for k in vars(ours) if getattr(ours, k) != getattr(shipped, k)} == {"out_dir", "overwrite"}
    assert ablation.EVAL_SIZE == shipped.resize_scale
