"""bench/bench_split.py --smoke: runs end to end, reports a consistent ratio, both runs write the same files."""

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from file_trees import tree_digest

# end-to-end runs of the entry points: `make test` runs them, `make test-fast` leaves them out
pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]


def test_smoke_run_prints_and_writes_the_speedup(tmp_path):
    report_path = tmp_path / "split.json"
    completed = subprocess.run([sys.executable, "bench/bench_split.py", "--smoke", "--work-dir", str(tmp_path / "work"),
                                "--json", str(report_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(report_path.read_text())
    # 4 images of 900 x 900 (3 train, 1 val); 800 px windows with stride 600 start at 0 and 100: 4 each.
    assert (report["images"], report["size"], report["patches"], report["workers"]) == (4, 900, 16, 2)
    raw_images = sorted((tmp_path / "work").glob("raw_*/*/images/P????.png"))
    assert len(raw_images) == 4 and all(cv2.imread(str(path)).shape == (900, 900, 3) for path in raw_images)
    assert report["speedup"] == report["seconds_1_worker"] / report["seconds_n_workers"]
    assert report["seconds_1_worker"] > 0 and report["seconds_n_workers"] > 0
    printed = re.search(r"1 worker ([\d.]+) s, 2 workers ([\d.]+) s; speed-up ([\d.]+)x", completed.stdout)
    assert printed is not None, completed.stdout
    assert float(printed.group(3)) == round(report["speedup"], 2)
    assert float(printed.group(1)) == round(report["seconds_1_worker"], 2)
    one, two = tree_digest(tmp_path / "work" / "out_w1"), tree_digest(tmp_path / "work" / "out_w2")
    assert len(one) == 2 * 16 + 1, "16 image patches, 16 mask patches and the recorded patch geometry"
    assert one == two
