"""Fault injection for eval.py and predict.py: bad flags, broken checkpoints, damaged images and masks, a full
disk, a killed run's leftovers (see tests/faults.py). A few cases run the entry point as a subprocess (a usage
error, damaged data met by loader workers, a damaged input, a full disk); the others run its main in this process."""
import argparse
import json
import os
import pickle
import shutil
import socket

import cv2
import numpy as np
import pytest
import torch
from faults import (
    Case,
    assert_clean_failure,
    bomb_png,
    case_table,
    copy_tree,
    folder_digest,
    full_disk_available,
    run_cases,
    run_in_process,
    run_on_full_disk,
    truncate,
)

import eval as evaluation
import network
import predict
from datasets.isprs import PotsdamDataset
from datasets.registry import class_counts_text
from utils.atomic import PARTIAL_MARK
from utils.checkpoint import checkpoint_class_table, save_checkpoint
from utils.run_lock import LOCK_FILE, lock_folder

# end-to-end runs of the entry points: `make test` runs them, `make test-fast` leaves them out
pytestmark = pytest.mark.workflow

MODEL_FLAGS = ["--arch", "pfnet_r50", "--maxpool_size", "4", "--avgpool_size", "4", "--edge_points", "16"]
EVAL_FLAGS = ["--dataset", "Posdam", "--split", "test", "-im", "whole", "--single_scale", "--no_flip",
              "--device", "cpu", "--num_workers", "0", *MODEL_FLAGS]
TEST_IMAGE = "top_potsdam_2_13_RGB_0_64_0_64"


def broken_checkpoints(folder) -> dict:
    """Checkpoint files that are not readable checkpoints, by kind."""
    folder.mkdir()
    small = folder / "small.pth"
    torch.save({"state_dict": {"w": torch.zeros(2000)}}, small)
    files = {"empty": b"", "truncated": small.read_bytes()[: small.stat().st_size // 2],
             "random": np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes(),
             "yaml": b"lr: 0.01\nepochs: 3\n", "pickle": pickle.dumps({"state_dict": {}})}
    paths = {}
    for kind, content in files.items():
        paths[kind] = folder / f"{kind}.pth"
        paths[kind].write_bytes(content)
    paths["needs_trust"] = folder / "legacy.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.01)}, paths["needs_trust"])
    return paths


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_potsdam) -> dict:
    """A tiny prepared Potsdam, a real checkpoint, broken checkpoints, damaged copies of the dataset."""
    base = tmp_path_factory.mktemp("eval_faults")
    root = tiny_potsdam
    torch.manual_seed(0)
    checkpoint = base / "model.pth"
    save_checkpoint(checkpoint, {"state_dict": network.get_model("pfnet_r50", 6).state_dict(), "epoch": 1})
    bad_ids = copy_tree(root, base / "bad_ids")
    mask_path = bad_ids / "test" / "masks" / f"{TEST_IMAGE}_gray_mask.png"
    ids = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    ids[:3, :3] = 7
    cv2.imwrite(str(mask_path), ids)
    truncated_image = copy_tree(root, base / "truncated_image")
    truncate(truncated_image / "test" / "images" / f"{TEST_IMAGE}.png")
    images = base / "images"
    images.mkdir()
    shutil.copy(root / "test" / "images" / f"{TEST_IMAGE}.png", images / "scene.png")
    damaged_input = truncate(shutil.copy(images / "scene.png", base / "damaged.png"))
    finished = base / "finished"
    finished.mkdir()
    (finished / "metrics.json").write_text("{}")
    existing_masks = base / "existing_masks"
    existing_masks.mkdir()
    (existing_masks / "scene_pred.png").write_bytes(b"previous mask")
    (base / "bomb").mkdir()
    bomb = bomb_png(base / "bomb" / "scene.png", 40_000, 40_000)
    # as train.py saves a Potsdam run: its dataset and class table (the flags spell it Posdam)
    potsdam_checkpoint = base / "potsdam_run.pth"
    save_checkpoint(potsdam_checkpoint, {**torch.load(checkpoint, weights_only=True), "config": {"dataset": "Posdam"},
                                         **checkpoint_class_table(PotsdamDataset)})
    classifier = network.model_entry("pfnet_r50").classifier_key  # 16 rows: an iSAID run
    isaid_checkpoint = base / "isaid_run.pth"
    save_checkpoint(isaid_checkpoint, {"state_dict": {classifier: torch.zeros(16, 1, 1, 1)},
                                       "config": {"dataset": "iSAID"}})
    unlabelled = copy_tree(root, base / "unlabelled")
    for mask in (unlabelled / "test" / "masks").iterdir():
        cv2.imwrite(str(mask), np.full((64, 64), 255, np.uint8))
    return {"base": base, "root": root, "checkpoint": checkpoint, "broken": broken_checkpoints(base / "broken"),
            "bad_masks": bad_ids, "truncated_image": truncated_image, "images": images, "damaged_input": damaged_input,
            "finished": finished, "existing_masks": existing_masks, "potsdam_checkpoint": potsdam_checkpoint,
            "isaid_checkpoint": isaid_checkpoint, "unlabelled": unlabelled, "bomb": bomb}


def eval_case(d: dict, *flags: str, code: int = 2, names: tuple[str, ...], snapshot=None, root=None,
              forbidden: tuple[str, ...] = ()) -> Case:
    """eval.py on the tiny Potsdam test split (``root``) with ``snapshot``; outputs must not appear."""
    out = d["base"] / "eval_out" / str(len(flags)) / "-".join(flag.strip("-") for flag in flags[:2])
    argv = ["eval.py", *EVAL_FLAGS, "--dataset_dir", str(root or d["root"]), "--snapshot",
            str(snapshot or d["checkpoint"]), "--out_dir", str(out), *flags]
    return Case(argv, code, names, unchanged=(d["root"],), absent=(out,), forbidden=forbidden)


def predict_case(d: dict, *flags: str, code: int = 2, names: tuple[str, ...], snapshot=None, inputs=None,
                 out=None, forbidden: tuple[str, ...] = ()) -> Case:
    """predict.py on the folder of one image; the output folder must stay as it was."""
    out = out or d["base"] / "predict_out" / "-".join(flag.strip("-") for flag in flags[:2])
    argv = ["predict.py", str(inputs or d["images"]), "--snapshot", str(snapshot or d["checkpoint"]), "--out_dir",
            str(out), "--window", "64", "--device", "cpu", *MODEL_FLAGS, *flags]
    return Case(argv, code, names, unchanged=(d["images"], out), forbidden=forbidden)


def truncated_image_case(d: dict, workers: str, tag: str = "") -> Case:
    """eval.py over a split with a truncated image, read by ``workers`` loader processes; the output folder
    may hold only the log (see test_failed_evaluation_leaves_only_a_log_saying_so)."""
    out = d["base"] / "eval_out" / f"truncated-{workers}{tag}"
    argv = ["eval.py", *EVAL_FLAGS, "--dataset_dir", str(d["truncated_image"]), "--snapshot", str(d["checkpoint"]),
            "--out_dir", str(out), "--num_workers", workers]
    return Case(argv, 2, (f"{TEST_IMAGE}.png", "truncated"), unchanged=(d["truncated_image"],),
                forbidden=("DataLoader worker",))


CASES = {
    "eval_scales_zero_and_negative": lambda d: eval_case(d, "--scales", "0,-1", names=("--scales", "0,-1")),
    "eval_truncated_image_with_workers": lambda d: truncated_image_case(d, "2"),
    "predict_truncated_image": lambda d: predict_case(d, names=(str(d["damaged_input"]),), inputs=d["damaged_input"]),
}
"""Run as subprocesses: a usage error of eval.py, a damaged image met by eval.py's loader workers, a damaged
input of predict.py."""

IN_PROCESS_CASES = {
    "eval_window_0": lambda d: eval_case(d, "--window", "0", names=("--window",)),
    "eval_num_workers_negative": lambda d: eval_case(d, "--num_workers", "-1", names=("--num_workers",)),
    "eval_missing_checkpoint": lambda d: eval_case(d, names=("nothing.pth",), snapshot=d["base"] / "nothing.pth"),
    "eval_empty_checkpoint": lambda d: eval_case(d, names=(str(d["broken"]["empty"]), "empty file"),
                                                 snapshot=d["broken"]["empty"], forbidden=("--trusted-pickle",)),
    "eval_checkpoint_needs_trust": lambda d: eval_case(d, names=(str(d["broken"]["needs_trust"]), "--trusted-pickle",
                                                                 "argparse.Namespace"),
                                                       snapshot=d["broken"]["needs_trust"]),
    "eval_truncated_image": lambda d: truncated_image_case(d, "0"),
    "eval_16_class_checkpoint_names_its_dataset": lambda d: eval_case(
        d, snapshot=d["isaid_checkpoint"],
        names=("trained for 16 classes but 6", "trained on iSAID", f"({class_counts_text()})", "LoveDA 7")),
    "eval_window_larger_than_every_image": lambda d: eval_case(d, "-im", "sliding", "--window", "128",
                                                               names=("--window 128", "64 x 64",
                                                                      "--inference_mode whole")),
    "eval_results_exist": lambda d: Case(["eval.py", *EVAL_FLAGS, "--dataset_dir", str(d["root"]), "--snapshot",
                                          str(d["checkpoint"]), "--out_dir", str(d["finished"])], 2,
                                         (str(d["finished"] / "metrics.json"), "--overwrite"),
                                         unchanged=(d["finished"],)),
    "predict_negative_scale": lambda d: predict_case(d, "--scales", "-1", names=("--scales",)),
    "predict_truncated_checkpoint": lambda d: predict_case(d, names=(str(d["broken"]["truncated"]), "truncated"),
                                                           snapshot=d["broken"]["truncated"],
                                                           forbidden=("--trusted-pickle",)),
    "predict_random_bytes_checkpoint": lambda d: predict_case(d, names=(str(d["broken"]["random"]),),
                                                              snapshot=d["broken"]["random"],
                                                              forbidden=("--trusted-pickle",)),
    "predict_plain_pickle_as_checkpoint": lambda d: predict_case(d, names=(str(d["broken"]["pickle"]),
                                                                           "not a PyTorch checkpoint"),
                                                                 snapshot=d["broken"]["pickle"],
                                                                 forbidden=("--trusted-pickle",)),
    "predict_png_header_too_large": lambda d: predict_case(d, names=(str(d["bomb"]), "40000 x 40000"),
                                                           inputs=d["bomb"]),
    "predict_mask_exists": lambda d: predict_case(d, names=("scene_pred.png", "--overwrite"),
                                                  out=d["existing_masks"]),
    "predict_lock_timeout_negative": lambda d: predict_case(d, "--lock_timeout", "-1", names=("--lock_timeout",)),
    "eval_resize_scale_negative": lambda d: eval_case(d, "--resize_scale", "-5", names=("--resize_scale", "-5")),
    "eval_truncated_checkpoint": lambda d: eval_case(d, names=(str(d["broken"]["truncated"]), "truncated"),
                                                     snapshot=d["broken"]["truncated"],
                                                     forbidden=("--trusted-pickle",)),
    "eval_random_bytes_checkpoint": lambda d: eval_case(d, names=(str(d["broken"]["random"]),
                                                                  "not a PyTorch checkpoint"),
                                                        snapshot=d["broken"]["random"],
                                                        forbidden=("--trusted-pickle",)),
    "eval_mask_ids_outside_classes": lambda d: eval_case(d, names=(f"{TEST_IMAGE}_gray_mask.png", "7 x 9"),
                                                         root=d["bad_masks"]),
    "eval_potsdam_checkpoint_on_vaihingen": lambda d: eval_case(
        d, "--dataset", "Vaihingen", snapshot=d["potsdam_checkpoint"],
        names=("trained on Posdam", "'impervious_surfaces'", "--dataset Vaihingen", "--allow_class_mismatch")),
    "eval_split_without_labelled_pixels": lambda d: eval_case(d, root=d["unlabelled"],
                                                              names=("split test", "none of its 4 masks",
                                                                     "labelled pixel")),
    "predict_stride_0": lambda d: predict_case(d, "--stride", "0", names=("--stride",)),
    "predict_yaml_as_checkpoint": lambda d: predict_case(d, names=(str(d["broken"]["yaml"]),
                                                                   "not a PyTorch checkpoint"),
                                                         snapshot=d["broken"]["yaml"]),
    "predict_checkpoint_needs_trust": lambda d: predict_case(d, names=("--trusted-pickle", "run code"),
                                                             snapshot=d["broken"]["needs_trust"]),
}
"""Variants of the faults above, run through eval.main / predict.main in this process."""


@pytest.fixture(scope="module")
def outcomes(data):
    return run_cases(case_table(CASES, data))


@pytest.mark.parametrize("name", sorted(CASES))
def test_eval_predict_fault_is_reported_cleanly(outcomes, name):
    assert_clean_failure(outcomes[name])


@pytest.mark.parametrize("name", sorted(IN_PROCESS_CASES))
def test_eval_predict_fault_variant_is_reported_cleanly(data, capsys, one_thread, name):
    case = IN_PROCESS_CASES[name](data)
    main = evaluation.main if case.argv[0] == "eval.py" else predict.main
    assert_clean_failure(run_in_process(main, case, capsys))


def test_allow_class_mismatch_scores_a_potsdam_checkpoint_on_vaihingen_with_a_warning(data, capsys, one_thread):
    out = data["base"] / "mismatch_allowed"
    argv = [*EVAL_FLAGS, "--dataset", "Vaihingen", "--dataset_dir", str(data["root"]), "--snapshot",
            str(data["potsdam_checkpoint"]), "--out_dir", str(out), "--allow_class_mismatch"]
    assert evaluation.main(argv) == 0
    assert "trained on Posdam" in capsys.readouterr().out and (out / "metrics.json").is_file()


def test_potsdam_is_a_dataset_name_of_eval_and_its_help():
    parser = evaluation.build_parser()
    assert parser.parse_args(["--dataset", "Potsdam", "--snapshot", "x.pth"]).dataset == "Potsdam"
    assert "Posdam (or Potsdam, potsdam)" in " ".join(parser.format_help().split())


@pytest.mark.parametrize("workers", ["0", "2"])
def test_failed_evaluation_leaves_only_a_log_saying_so(outcomes, data, capsys, one_thread, workers):
    tag = "-log" if workers == "0" else ""  # workers 2: the folder of the subprocess case
    if workers == "0":
        run_in_process(evaluation.main, truncated_image_case(data, workers, tag), capsys)
    out = data["base"] / "eval_out" / f"truncated-{workers}{tag}"
    logs = list(out.iterdir())
    assert len(logs) == 1 and logs[0].name.startswith("eval_") and logs[0].suffix == ".log"
    assert f"evaluation failed: {data['truncated_image']}" in logs[0].read_text()


def test_predict_removes_the_partial_file_of_a_killed_run(data, one_thread):
    out = data["base"] / "after_kill"
    out.mkdir()
    stale = out / f".scene_pred.png{PARTIAL_MARK}999999999-abc.png"  # no such process: it was killed
    stale.write_bytes(b"half a mask")
    assert predict.main([str(data["images"]), "--snapshot", str(data["checkpoint"]), "--out_dir", str(out),
                         "--window", "64", "--device", "cpu", *MODEL_FLAGS]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["predict_summary.json", "scene_pred.png", "scene_pred.qml"]


@pytest.mark.skipif(not full_disk_available(), reason="no private mount namespace with tmpfs here (unshare)")
def test_full_disk_keeps_the_previous_mask(outcomes, data):
    out = data["base"] / "full_disk"
    out.mkdir()
    previous = cv2.imread(str(data["images"] / "scene.png"))
    cv2.imwrite(str(out / "scene_pred.png"), previous[..., 0])
    before = folder_digest(out)
    keep = data["base"] / "full_disk_after"
    result = run_on_full_disk(out, ["predict.py", str(data["images"]), "--snapshot", str(data["checkpoint"]),
                                    "--out_dir", str(out), "--window", "64", "--device", "cpu", "--overwrite",
                                    *MODEL_FLAGS], keep)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert str(out / "scene_pred.png") in last_line and "No space left on device" in last_line
    assert folder_digest(keep) == before
    assert os.listdir(keep) == ["scene_pred.png"]


@pytest.mark.skipif(not full_disk_available(), reason="no private mount namespace with tmpfs here (unshare)")
def test_full_disk_geotiff_says_so_once_and_leaves_nothing(data):
    out = data["base"] / "full_disk_tif"
    keep = data["base"] / "full_disk_tif_after"
    result = run_on_full_disk(out, ["predict.py", str(data["images"]), "--snapshot", str(data["checkpoint"]),
                                    "--out_dir", str(out), "--window", "64", "--device", "cpu", "--format", "tif",
                                    "--probabilities", "--polygons", *MODEL_FLAGS], keep)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == f"error: {data['images'] / 'scene.png'}: could not write {out / 'scene_pred.tif'}: " \
                        "No space left on device"
    for gdal_text in ("not recognized", "_tiff", "TIFF", "ERROR 1"):  # GDAL's own lines are held back
        assert gdal_text not in result.stderr, result.stderr
    assert os.listdir(keep) == []  # no partial output, no 0-byte temporary file, no lock file


def predict_argv(d: dict, out, *flags: str) -> list[str]:
    """predict.py's arguments (no script name) for the folder of one image into ``out``."""
    return [str(d["images"]), "--snapshot", str(d["checkpoint"]), "--out_dir", str(out), "--window", "64",
            "--device", "cpu", *MODEL_FLAGS, *flags]


@pytest.mark.parametrize("wait", ["0", "1"])
def test_busy_out_dir_is_refused_naming_the_holder(data, capsys, one_thread, wait):
    out = data["base"] / f"busy-{wait}"
    out.mkdir()
    held = lock_folder(out, "predict.py", 0, hint="")
    try:
        outcome = run_in_process(predict.main, Case(["predict.py", *predict_argv(data, out, "--lock_timeout", wait)],
                                                    2, (str(out), f"pid {os.getpid()} on {socket.gethostname()}",
                                                        "started", "--lock_timeout"), unchanged=(out,)), capsys)
    finally:
        held.release()
    assert_clean_failure(outcome)  # the folder as it was: nothing written while another run holds it
    errors = outcome.result.stderr.strip().splitlines()
    assert errors[-1].startswith(f"error: {out} is in use by predict.py (pid {os.getpid()}")
    assert "usage:" not in outcome.result.stderr
    assert ("waiting up to 1 s" in outcome.result.stderr) == (wait == "1")


def test_lock_of_a_killed_run_is_taken_over(data, capsys, one_thread):
    out = data["base"] / "stale_lock"
    out.mkdir()
    dead = {"command": "predict.py", "pid": 999_999_999, "host": socket.gethostname(), "started": "yesterday"}
    (out / LOCK_FILE).write_text(json.dumps(dead))  # left by a run killed with kill -9 (its flock went with it)
    assert predict.main(predict_argv(data, out)) == 0
    assert "locked by predict.py (pid 999999999" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["predict_summary.json", "scene_pred.png", "scene_pred.qml"]
