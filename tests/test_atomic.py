"""utils.atomic: verified publish (fsync, size, verify callback), one WriteError, stale partial files."""
import errno
import os
import pickle
import subprocess
import sys

import pytest
import torch

from utils import atomic
from utils.atomic import PARTIAL_MARK, WriteError, atomic_path, atomic_write_bytes, remove_stale_partial_files
from utils.checkpoint import read_checkpoint, save_checkpoint


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def listing(folder):
    return sorted(path.name for path in folder.iterdir())


def test_failed_fsync_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_bytes(target, b"previous")
    monkeypatch.setattr(atomic.os, "fsync", no_space)
    with pytest.raises(WriteError) as caught:
        atomic_write_bytes(target, b"new contents")
    assert str(caught.value) == f"could not write {target}: No space left on device"
    assert isinstance(caught.value, OSError)
    assert target.read_bytes() == b"previous"
    assert listing(tmp_path) == ["metrics.json"]


def test_failed_write_inside_the_block_names_the_target(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    with pytest.raises(WriteError, match=f"could not write {target}: No space left on device$"):
        with atomic_path(target) as temp_name, open(temp_name, "w") as handle:
            handle.write("a: 1\n")
            no_space()
    assert listing(tmp_path) == []


def test_empty_output_and_failed_verification_are_refused(tmp_path):
    target = tmp_path / "mask.tif"
    target.write_bytes(b"valid mask")
    with pytest.raises(WriteError, match="empty file"), atomic_path(target):
        pass  # a writer (GDAL on a full disk) that reported success and wrote nothing
    def refuse(name):
        raise ValueError(f"{name} is not a TIFF\nsecond line")

    with pytest.raises(WriteError) as caught, atomic_path(target, verify=refuse) as temp_name:
        with open(temp_name, "wb") as handle:
            handle.write(b"garbage")
    assert "does not read back" in str(caught.value) and "\n" not in str(caught.value)
    assert target.read_bytes() == b"valid mask"
    assert listing(tmp_path) == ["mask.tif"]
    with atomic_path(tmp_path / "empty.txt", allow_empty=True):
        pass
    assert (tmp_path / "empty.txt").read_bytes() == b""


def test_short_write_is_detected(tmp_path):
    target = tmp_path / "patch.png"
    temp_name = atomic.temporary_path_beside(target)
    with open(temp_name, "wb") as handle:  # as if the disk kept only 2 of the 5 bytes
        handle.write(b"12")
    with pytest.raises(WriteError, match="2 of 5 bytes reached the disk"):
        atomic.publish(temp_name, target, expected_size=5)
    assert listing(tmp_path) == []


def test_write_error_survives_pickling_and_an_unwritable_folder(tmp_path):
    error = pickle.loads(pickle.dumps(WriteError("/data/x.png", "No space left on device")))
    assert (error.path, error.reason) == ("/data/x.png", "No space left on device")
    assert str(error) == "could not write /data/x.png: No space left on device"
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(WriteError, match=f"could not write {blocker}/out.png: "):
        atomic_write_bytes(blocker / "out.png", b"x")


def test_checkpoint_disk_full_is_one_write_error(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint(path, {"epoch": 1, "state_dict": {"w": torch.zeros(2)}})
    real_open = open

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            no_space()

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def opener(name, mode="r", *args, **kwargs):
        handle = real_open(name, mode, *args, **kwargs)
        return FullDisk(handle) if PARTIAL_MARK in str(name) and "w" in mode else handle

    monkeypatch.setattr("builtins.open", opener)
    with pytest.raises(WriteError, match=f"could not write {path}: No space left on device$"):
        save_checkpoint(path, {"epoch": 2, "state_dict": {"w": torch.ones(2)}})
    monkeypatch.undo()
    assert read_checkpoint(path)["epoch"] == 1
    assert listing(tmp_path) == ["last.pth"]


def test_only_partial_files_of_ended_processes_are_removed(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_pid = int(finished.stdout)
    dead = tmp_path / f".a.png{PARTIAL_MARK}{dead_pid}-x1.png"
    legacy = tmp_path / f".b.png{PARTIAL_MARK}abc.png"
    alive = tmp_path / f".c.png{PARTIAL_MARK}{os.getpid()}-x2.png"
    keep = tmp_path / "c.png"
    for path in (dead, legacy, alive, keep):
        path.write_bytes(b"x")
    assert remove_stale_partial_files(tmp_path) == 2
    assert listing(tmp_path) == sorted([alive.name, keep.name])
    assert remove_stale_partial_files(tmp_path / "missing") == 0
