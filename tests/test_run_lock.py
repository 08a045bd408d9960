"""utils.run_lock with real processes: a holder killed with kill -9, a holder's child that outlives it."""
import io
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from script_run import REPO

from utils.run_lock import LOCK_FILE, FolderBusyError, lock_folder

HOLD = """
import os, sys, time
from utils.run_lock import lock_folder
lock = lock_folder(sys.argv[1], "holder", 0, hint="")
child = os.fork() if sys.argv[2] == "fork" else None
if child == 0:  # the child keeps the lock's file open and outlives its parent
    time.sleep(60)
    os._exit(0)
print("held", child or os.getpid(), flush=True)
time.sleep(0 if child else 60)
"""


def start_holder(folder, mode: str) -> tuple[subprocess.Popen, int]:
    """A process that takes ``folder``'s lock; with ``mode`` "fork" it ends at once and its forked child keeps
    the lock. Returns the process and the pid that keeps the lock."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), mode], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    word, keeper = holder.stdout.readline().split()
    assert word == "held"
    return holder, int(keeper)


def test_live_holder_is_named_and_a_killed_holder_is_taken_over(tmp_path):
    holder, _ = start_holder(tmp_path, "sleep")
    with pytest.raises(FolderBusyError) as refused:
        lock_folder(tmp_path, "test", 0, hint="try later")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path} is in use by holder (pid {holder.pid} on {socket.gethostname()}, started ")
    assert message.endswith(" UTC); try later")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    messages = io.StringIO()
    lock = lock_folder(tmp_path, "test", 0, hint="", messages=messages)
    assert f"locked by holder (pid {holder.pid}" in messages.getvalue()
    assert "which has ended: taking the lock over" in messages.getvalue()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_lock_kept_by_the_child_of_an_ended_holder_is_taken_over(tmp_path):
    parent, child = start_holder(tmp_path, "fork")
    try:
        parent.wait()  # ended; its forked child still holds the flock
        messages = io.StringIO()
        start = time.monotonic()
        lock = lock_folder(tmp_path, "test", 0, hint="", messages=messages)
        assert time.monotonic() - start < 5  # one more look, one poll later
        assert f"locked by holder (pid {parent.pid}" in messages.getvalue()
        lock.release()
    finally:
        os.kill(child, signal.SIGKILL)
