"""make gpu-check on a machine without a GPU: it says so and stops at once, writing nothing."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.gpu_check import wheel_python_tag

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run for real")
def test_make_gpu_check_fails_fast_without_a_gpu(tmp_path):
    out = tmp_path / "gpu_out"
    start = time.perf_counter()
    result = subprocess.run(["make", "--no-print-directory", "gpu-check", f"OUT={out}", f"GPU_PYTHON={sys.executable}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert result.returncode != 0
    assert "gpu-check: no CUDA GPU on this machine" in result.stderr
    assert "nothing was run" in result.stderr and "Traceback" not in result.stderr
    assert elapsed < 60  # importing torch, nothing more
    assert not out.exists()


def test_make_gpu_check_needs_an_output_folder():
    result = subprocess.run(["make", "--no-print-directory", "gpu-check", f"GPU_PYTHON={sys.executable}"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "give the output folder, e.g. make gpu-check OUT=gpu_out" in result.stderr


def test_wheel_python_tags_tell_binary_from_pure_wheels():
    assert wheel_python_tag("rasterio-1.4.4-cp311-cp311-manylinux_2_28_x86_64.whl") == "cp311"
    assert wheel_python_tag("easydict-1.14-py3-none-any.whl") is None
    assert wheel_python_tag("click_plugins-1.1.1.2-py2.py3-none-any.whl") is None
