"""bench/bench_pipeline.py runs and reports the three timings and their ratio (figures: bench/RESULTS.md)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.workflow


def test_smoke_run_reports_pipeline_model_and_total(tmp_path):
    completed = subprocess.run([sys.executable, str(REPO / "bench" / "bench_pipeline.py"), "--smoke", "--json",
                                str(tmp_path / "pipeline.json")], cwd=REPO, capture_output=True, text=True,
                               timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert completed.returncode == 0, completed.stderr[-2000:]
    figures = json.loads((tmp_path / "pipeline.json").read_text())
    for key in ("pipeline_alone_s", "model_alone_s", "total_pipelined_s", "total_serial_s"):
        assert figures[key] > 0
    bound = max(figures["model_alone_s"], figures["pipeline_alone_s"])
    assert figures["total_over_max_parts"] == figures["total_pipelined_s"] / bound
    assert figures["cpu"] and figures["threads"] == 1
