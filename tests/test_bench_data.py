"""bench/bench_data.py in its tiny CI mode, and the normalisation it sped up (bit for bit the old formula)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.base import IMAGENET_MEAN, IMAGENET_STD, normalize_image

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.workflow
def test_smoke_run_reports_both_pipelines(tmp_path):
    report_path = tmp_path / "data.json"
    result = subprocess.run([sys.executable, "bench/bench_data.py", "--smoke", "--json", str(report_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| pipeline | input | workers | images/s | images/s per worker |" in result.stdout
    report = json.loads(report_path.read_text())
    assert {(row["pipeline"], row["workers"], row["size"]) for row in report["rows"]} == {("iSAID", 1, 64),
                                                                                         ("Posdam", 1, 64)}
    for row in report["rows"]:
        assert row["images_per_s"] > 0 and row["images_per_s_per_worker"] == row["images_per_s"]
    for stages in report["stages_ms"].values():
        assert set(stages) == {"decode", "augment", "normalize", "edge"} and min(stages.values()) > 0


def test_normalize_image_equals_the_whole_image_formula():
    rng = np.random.default_rng(0)
    every_value = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
    for image in (every_value, rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)):
        expected = (image.astype(np.float32) / 255.0 - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(
            IMAGENET_STD, np.float32)
        normalized = normalize_image(image)
        assert normalized.dtype == torch.float32 and normalized.is_contiguous()
        assert torch.equal(normalized, torch.from_numpy(np.ascontiguousarray(expected.transpose(2, 0, 1))))
