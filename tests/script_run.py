"""Run the project's scripts as a user does: ``python script flags`` in a subprocess from the repository root."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(script: str, *flags: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python script flags`` from the repository root with one intra-op thread; output captured as text."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, script, *flags], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
