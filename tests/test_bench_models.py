"""The per-model benchmark table (``python -m bench --models``) in its tiny CI mode (no timing asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import network
from bench.run import parse_args
from engine.cpu_precision import cpu_capability

# end-to-end runs of the entry points: `make test` runs them, `make test-fast` leaves them out
pytestmark = pytest.mark.workflow

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_smoke_model_table_rows(tmp_path):
    json_path = tmp_path / "models.json"
    completed = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--threads", "1", "--models", "upernet_r18",
                                "--json", str(json_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "| model | original name | parameters (M) | input | GFLOPs | fp32 ms | bf16 ms | peak memory MB |" in (
        completed.stdout)
    assert "| upernet_r18 | network.uper_resnet.UperNetDeepR18_deeply | 12.7 | 64² |" in completed.stdout
    assert f"| {cpu_capability()} | 1 |" in completed.stdout
    [row] = json.loads(json_path.read_text())["models"]
    model = network.get_model("upernet_r18", 16).eval()
    assert row["parameters"] == sum(p.numel() for p in model.parameters()) and row["size"] == 64
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 64, 64))
    assert row["flops"] == counter.get_total_flops()
    assert row["fp32_seconds"] > 0 and row["bf16_seconds"] > 0
    assert (row["cpu"], row["threads"]) == (cpu_capability(), 1)
    assert row["peak_bytes"] > 2 * 4 * row["parameters"]  # the model and its optimised copy, float32


def test_model_names_are_checked_and_default_to_every_model(capsys):
    assert parse_args(["--models"]).models == network.list_models()
    with pytest.raises(SystemExit):
        parse_args(["--models", "upernet_r34"])
    assert "--models: unknown model 'upernet_r34'" in capsys.readouterr().err
