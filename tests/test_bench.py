"""The benchmark harness runs end to end in its tiny CI mode (no timing is asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import network
from bench.run import parse_args
from engine.cpu_precision import cpu_capability

# end-to-end runs of the entry points: `make test` runs them, `make test-fast` leaves them out
pytestmark = pytest.mark.workflow

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_table_and_json(tmp_path):
    json_path = tmp_path / "bench.json"
    completed = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--threads", "1", "--json", str(json_path)],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "| task | input | config | median ms |" in completed.stdout
    assert "| speed-up | peak memory MB | CPU | threads |" in completed.stdout
    report = json.loads(json_path.read_text())
    rows = {(r["task"], r["config"]): r for r in report["results"]}
    assert set(rows) == {("eval", "original"), ("eval", "optimized"), ("train", "fp32")}
    assert report["matmul_gflops"]["float32"] > 0
    parameter_bytes = 4 * sum(p.numel() for p in network.get_model("pfnet_r50", 16).parameters())
    for (task, config), row in rows.items():
        assert len(row["seconds"]) == 2 and min(row["seconds"]) > 0
        assert row["flops"] > 0
        assert (row["cpu"], row["threads"]) == (cpu_capability(), 1)  # the kernels and threads that ran the row
        # Each row ran in its own process holding the model's float32 weights (at least once more for the
        # optimised copy, and with gradients and momentum buffers when training).
        copies = {"original": 1, "optimized": 2, "fp32": 3}[config]
        assert row["peak_bytes"] > copies * parameter_bytes, (task, config)
    assert rows["eval", "original"]["flops"] == rows["eval", "optimized"]["flops"]
    # Forward + backward of a batch of 2 costs well over twice the single-image forward.
    assert rows["train", "fp32"]["flops"] > 4 * rows["eval", "original"]["flops"]


def test_train_batch_below_two_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--train-batch", "1"])
    assert "--train-batch must be >= 2" in capsys.readouterr().err


def test_memory_bench_smoke_is_flat_and_complete(tmp_path):
    json_path = tmp_path / "memory.json"
    completed = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "bench_memory.py"), "--smoke", "--whole",
                                "--json", str(json_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "| tile | window / stride | K | windows |" in completed.stdout
    small, large = json.loads(json_path.read_text())["results"]
    assert (small["size"], large["size"]) == (300, 900) and small["complete"] and large["complete"]
    # the 900² tile holds 9 times the pixels and runs 13 times the windows; its peak stays within allocator
    # noise of the 300² one (the real figures, 2000² to 30000², are in bench/RESULTS.md)
    assert large["peak_rss_mib"] - small["peak_rss_mib"] < 20
    assert large["windows"] > 10 * small["windows"]


def test_parity_variation_measures_this_cpu_within_the_tests_bound(tmp_path):
    json_path = tmp_path / "variation.json"
    completed = subprocess.run([sys.executable, "bench/parity_variation.py", "--kernels", "default", "--threads", "1",
                                "--json", str(json_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert "| default, OMP_NUM_THREADS=1 | " + cpu_capability() + " | 1 |" in completed.stdout
    [row] = json.loads(json_path.read_text())
    deviations = [row[column] for column in ("a_logits", "u_logits", "p_logits", "a_edge_logits", "a_certainty",
                                             "a_point_flow", "a_trunk")]
    assert all(0 <= deviation <= 1e-4 for deviation in deviations)  # the parity tests' bound (parity_case.py)
    # within the bound no point of case A can move: its closest calls are further apart (test_model.py)
    assert row["run_to_run"] == 0 and row["points_moved"] == 0


def test_suggest_measures_this_cpu_and_names_the_fastest_correct_configuration():
    completed = subprocess.run([sys.executable, "-m", "bench", "--suggest", "--smoke", "--arch", "upernet_r18"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].startswith(f"CPU: {cpu_capability()}; PyTorch runs upernet_r18")
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| pytorch ")]
    assert {(cells[1].strip(), int(cells[2])) for cells in rows} >= {("fp32", 1)}
    assert all(cells[4].strip() == "100.00 %" for cells in rows if cells[1].strip() == "fp32")
    (suggestion,) = [line for line in lines if line.startswith("fastest correct configuration on this CPU")]
    assert f"({cpu_capability()})" in suggestion and "predict.py" in suggestion


def test_suggest_onnx_flag_needs_suggest_and_an_existing_file(tmp_path):
    for flags, message in ((["--onnx", str(tmp_path / "a.onnx")], "--onnx is read only with --suggest"),
                           (["--suggest", "--onnx", str(tmp_path / "a.onnx")], "--onnx: no such file")):
        completed = subprocess.run([sys.executable, "-m", "bench", *flags], cwd=REPO_ROOT, capture_output=True,
                                   text=True, timeout=120)
        assert completed.returncode == 2 and message in completed.stderr, completed.stderr


# --- bench.original_speed: the original's code imported from a checkout, beside ours --------------------------

FAKE_ORIGINAL = {
    "network/__init__.py": "",
    "network/resnet_d.py": """
import torch.nn as nn
class Bottleneck: pass
class ResNet(nn.Module):
    def __init__(self, block, layers):
        super().__init__()
        self.built_with = (block, layers)
def resnet50(pretrained=True):
    raise FileNotFoundError('./pretrained_models/resnet50-deep.pth')
""",
    "network/pointflow_resnet_with_max_avg_pool.py": """
from apex import amp
from config import cfg
from network import resnet_d as Resnet_Deep
@amp.float_function
def DeepR50_PF_maxavg_deeply(num_classes, criterion, reduce_dim, max_pool_size, avgpool_size, edge_points):
    trunk = Resnet_Deep.resnet50()
    trunk.settings = (num_classes, criterion, reduce_dim, max_pool_size, avgpool_size, edge_points, cfg.MODEL.BNFUNC)
    return trunk
""",
}


def test_original_is_built_from_its_checkout_and_ours_is_restored(tmp_path):
    from torch import nn

    from bench.original_speed import build_original
    for name, text in FAKE_ORIGINAL.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    ours = sys.modules["network"]
    built = build_original(tmp_path, 16, network.model_defaults("pfnet_r50"))
    # the stand-ins: apex's decorator, the batch-norm class of config.cfg, ResNet-50 without the ImageNet file
    assert built.settings == (16, None, 64, 14, 9, 128, nn.BatchNorm2d)
    assert built.built_with[1] == [3, 4, 6, 3]
    assert sys.modules["network"] is ours and network.get_model("pfnet_r50", 2) is not None
    assert "apex" not in sys.modules and str(tmp_path) not in sys.path


def test_original_speed_names_a_checkout_without_the_model(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "bench.original_speed", "--original", str(tmp_path)],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert f"--original {tmp_path}: no network/pointflow_resnet_with_max_avg_pool.py there" in completed.stderr
