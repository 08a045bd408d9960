"""bench/bench_eval.py runs end to end in its --smoke mode (sizes tiny; no timing is asserted)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import network

# end-to-end runs of the entry points: `make test` runs them, `make test-fast` leaves them out
pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]


def start_bench(*arguments: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "bench" / "bench_eval.py"), *arguments], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish(process: subprocess.Popen) -> list[dict]:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    return [json.loads(line) for line in stdout.splitlines()]


def test_smoke_eval_modes_and_predict_tile(tmp_path):
    pytest.importorskip("rasterio", reason="the tile is a GeoTIFF: rasterio (optional) not installed")
    # the two commands run side by side: most of their time is starting Python and torch in each child
    eval_modes = start_bench("eval-modes", "--smoke", "--out", str(tmp_path / "eval.json"))
    tile = start_bench("predict-tile", "--smoke", "--classes", "16", "--out", str(tmp_path / "tile.json"))
    whole, sliding = finish(eval_modes)
    (tile_row,) = finish(tile)
    assert json.loads((tmp_path / "eval.json").read_text()) == [whole, sliding]
    assert json.loads((tmp_path / "tile.json").read_text()) == [tile_row]

    weights_mib = 4 * sum(p.numel() for p in network.get_model("pfnet_r50", 6).parameters()) / 2**20
    for row, mode in ((whole, "whole"), (sliding, "sliding")):
        assert row["mode"] == mode and row["size"] == 64 and row["classes"] == 6
        assert row["optimized"] is True and row["threads"] == 1 and row["images_per_s"] > 0
        # optimize_for_inference copies the model, so both copies were resident for a while
        assert row["peak_rss_mib"] > 2 * weights_mib
    assert (sliding["window"], sliding["stride"], sliding["batch_size"]) == (48, 32, 1)  # ceil(48 * 2/3) = 32
    assert sliding["speed_vs_whole"] == round(sliding["images_per_s"] / whole["images_per_s"], 3)
    assert "window" not in whole

    assert (tile_row["tile"], tile_row["format"], tile_row["classes"]) == ("72x100", "tif", 16)
    assert (tile_row["window"], tile_row["stride"], tile_row["optimized"]) == (48, 32, True)
    # rows start at 0 and 24 (72 - 48), columns at 0, 32 and 52 (100 - 48): 2 x 3 windows
    assert tile_row["windows"] == 6
    assert tile_row["windows_per_s"] == round(6 / tile_row["seconds"], 3)
    assert tile_row["peak_rss_mib"] > weights_mib and math.isfinite(tile_row["seconds"])
