"""The process-group runtime of train.py, eval.py and predict.py (engine/distributed.py): one meaning of
``--device`` for all three, a bad device refused as a usage error, and eval.py refusing several processes."""
import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_script
import predict
from engine.distributed import resolve_device


@pytest.fixture
def with_cuda(monkeypatch):
    """A machine that reports CUDA (resolve_device only names the device; no GPU is touched)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.parametrize(("device", "local_rank", "world_size", "expected"), [
    ("cuda", 0, 1, "cuda:0"),
    ("cuda:1", 0, 1, "cuda:1"),  # one process keeps the GPU it names
    ("cuda:1", 2, 4, "cuda:2"),  # several processes: each its own GPU
    ("cuda", 3, 4, "cuda:3"),
    ("auto", 1, 2, "cuda:1"),
    ("cpu", 1, 2, "cpu"),
    ("mps", 0, 1, "mps"),
])
def test_device_names_with_cuda(with_cuda, device, local_rank, world_size, expected):
    assert resolve_device(device, local_rank, world_size) == torch.device(expected)


def test_device_names_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", 1, 2) == torch.device("cpu")
    with pytest.raises(ValueError, match="--device cuda:0 was given but CUDA is not available; use --device cpu"):
        resolve_device("cuda:0")


@pytest.mark.parametrize("script", ["eval", "predict"])
def test_a_bad_device_is_a_usage_error_naming_the_flag(tmp_path, capsys, script):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    snapshot = str(tmp_path / "absent.pth")  # never read: the device is checked first
    argv = (["--dataset", "Posdam", "--dataset_dir", str(tmp_path), "--snapshot", snapshot, "--out_dir",
             str(tmp_path / "out")] if script == "eval" else
            [str(tmp_path / "a.png"), "--snapshot", snapshot, "--out_dir", str(tmp_path / "out")])
    main = eval_script.main if script == "eval" else predict.main
    with pytest.raises(SystemExit) as refused:
        main([*argv, "--device", "gpu0"])
    assert refused.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        ": error: argument --device: 'gpu0' is not a device; choose from auto, cpu, cuda, cuda:N")
    assert not (tmp_path / "out").exists()


def test_eval_under_torchrun_with_several_processes_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit) as refused:
        eval_script.main(["--dataset", "Posdam", "--dataset_dir", str(tmp_path), "--snapshot", "x.pth",
                          "--out_dir", str(tmp_path / "out"), "--device", "cpu"])
    assert refused.value.code == 2
    assert "eval.py runs as one process, but torchrun started 2: run it as python eval.py" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
