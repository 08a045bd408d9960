"""Checkpoint loading (original snapshot format, bare state_dicts, safe unpickling) and atomic saving."""
from __future__ import annotations

import argparse
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import network
from utils.checkpoint import (
    CheckpointFileError,
    CheckpointMismatchError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def trained_6cls():
    """A 6-class PFNet whose weights differ from a fresh model's (so a load is visible)."""
    torch.manual_seed(1)
    return network.get_model("pfnet_r50", 6, match_dim=16)


def original_snapshot(model: torch.nn.Module) -> dict:
    """What the original's utils/misc.py writes for a DDP-wrapped net."""
    return {
        "state_dict": {"module." + key: value for key, value in model.state_dict().items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0, 1]}]},
        "epoch": 15,
        "mean_iu": np.float64(0.6697),
        "command": "--dataset iSAID --arch network.pointflow_resnet_with_max_avg_pool.DeepR50_PF_maxavg_deeply",
    }


def rename_pickle_globals(path: Path, old: bytes, new: bytes) -> None:
    """Rewrite a torch zip checkpoint so its pickle names ``old`` as ``new`` (e.g. numpy 1.x module names)."""
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info.filename)) for info in source.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as target:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            target.writestr(info, data)
    path.write_bytes(buffer.getvalue())


def assert_same_weights(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    for (key, tensor), expected in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(tensor, expected), key


def test_original_snapshot_loads_safely(tmp_path, trained_6cls):
    path = tmp_path / "best_epoch_15_mean-iu_0.66970.pth"
    torch.save(original_snapshot(trained_6cls), path)
    model = network.get_model("pfnet_r50", 6, match_dim=16)
    extras = load_checkpoint(path, model)
    assert_same_weights(model, trained_6cls)
    assert extras["epoch"] == 15
    assert extras["mean_iu"] == pytest.approx(0.6697)
    assert extras["skipped"] == []
    assert "command" in extras and "optimizer" in extras


def test_snapshot_written_with_numpy1_names_loads(tmp_path, trained_6cls):
    path = tmp_path / "numpy1.pth"
    torch.save(original_snapshot(trained_6cls), path)
    rename_pickle_globals(path, b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
    extras = read_checkpoint(path)
    assert float(extras["mean_iu"]) == pytest.approx(0.6697)


def test_bare_state_dict_loads_into_wrapped_model(tmp_path, trained_6cls):
    path = tmp_path / "bare.pth"
    torch.save(trained_6cls.state_dict(), path)
    model = network.get_model("pfnet_r50", 6, match_dim=16)
    load_checkpoint(path, torch.nn.DataParallel(model))
    assert_same_weights(model, trained_6cls)


def test_class_count_mismatch_is_refused_with_shapes(tmp_path, trained_6cls):
    path = tmp_path / "potsdam.pth"
    torch.save(original_snapshot(trained_6cls), path)
    model = network.get_model("pfnet_r50", 16, match_dim=16)
    before = model.head.conv_last[1].weight.clone()
    with pytest.raises(CheckpointMismatchError) as error:
        load_checkpoint(path, model, classifier_key=network.model_entry("pfnet_r50").classifier_key)
    message = str(error.value)
    assert "head.conv_last.1.weight: model expects (16, 256, 1, 1), checkpoint has (6, 256, 1, 1)" in message
    assert "trained for 6 classes" in message
    assert torch.equal(model.head.conv_last[1].weight, before)


def test_architecture_mismatch_is_refused(tmp_path, trained_6cls):
    path = tmp_path / "r50.pth"
    torch.save(original_snapshot(trained_6cls), path)
    with pytest.raises(CheckpointMismatchError, match="missing in checkpoint: layer3.6.conv1.weight"):
        load_checkpoint(path, network.get_model("pfnet_r101", 6, match_dim=16))


def test_partial_load_skips_only_mismatched_tensors(tmp_path, trained_6cls):
    path = tmp_path / "potsdam.pth"
    torch.save(original_snapshot(trained_6cls), path)
    model = network.get_model("pfnet_r50", 16, match_dim=16)
    extras = load_checkpoint(path, model, strict_shapes=False)
    assert extras["skipped"] == ["head.conv_last.1.bias", "head.conv_last.1.weight"]
    assert torch.equal(model.layer4[2].conv3.weight, trained_6cls.layer4[2].conv3.weight)


def test_untrusted_objects_need_explicit_flag(tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "args": argparse.Namespace(lr=0.01)}, path)
    with pytest.raises(CheckpointFileError, match=r"\(such as argparse.Namespace\); if you trust this file, pass "
                                                  "--trusted-pickle"):
        read_checkpoint(path)
    assert read_checkpoint(path, trusted_pickle=True)["args"].lr == 0.01


def damaged_files(folder: Path) -> dict[str, Path]:
    """Broken checkpoint files by kind: empty, truncated (both formats), random bytes, a pickle, a PNG."""
    good = folder / "good.pth"
    torch.save({"state_dict": {"w": torch.zeros(500)}}, good)
    legacy = folder / "legacy.pth"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, legacy, _use_new_zipfile_serialization=False)
    contents = {
        "empty": b"",
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "truncated_legacy": legacy.read_bytes()[:-5],
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "plain_pickle": pickle.dumps({"state_dict": {}}),
        "png": b"\x89PNG\r\n\x1a\n" + bytes(64),
    }
    for kind, data in contents.items():
        (folder / f"{kind}.pth").write_bytes(data)
    return {kind: folder / f"{kind}.pth" for kind in contents}


@pytest.mark.parametrize("kind, expected", [
    ("empty", "empty file (0 bytes), not a PyTorch checkpoint"),
    ("truncated", "truncated or damaged PyTorch checkpoint (incomplete zip archive"),
    ("truncated_legacy", "truncated or not a PyTorch checkpoint (unexpected EOF"),
    ("random", "not a PyTorch checkpoint (neither torch.save's zip format nor its legacy format"),
    ("plain_pickle", "not a PyTorch checkpoint"),
    ("png", "not a PyTorch checkpoint"),
])
def test_broken_files_give_one_line_naming_the_file(tmp_path, kind, expected):
    path = damaged_files(tmp_path)[kind]
    for trusted in (False, True):
        with pytest.raises(CheckpointFileError) as caught:
            read_checkpoint(path, trusted_pickle=trusted)
        message = str(caught.value)
        assert message.startswith(str(path)) and expected in message
        assert "\n" not in message and "trusted" not in message  # never suggested for a broken file


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        read_checkpoint(tmp_path / "nothing.pth")
    path = tmp_path / "list.pth"
    torch.save([torch.ones(1)], path)
    with pytest.raises(CheckpointMismatchError, match="list"):
        read_checkpoint(path)


def test_save_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "run" / "last.pth"
    save_checkpoint(path, {"epoch": 1, "state_dict": {"w": torch.zeros(2)}})
    save_checkpoint(path, {"epoch": 2, "state_dict": {"w": torch.ones(2)}})
    assert read_checkpoint(path)["epoch"] == 2
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        save_checkpoint(path, {"epoch": 3, "unpicklable": lambda: None})
    assert read_checkpoint(path)["epoch"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pth"]
