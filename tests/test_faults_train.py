"""Fault injection for train.py: bad flags and configuration, broken or missing checkpoint files, bad
validation masks, a missing dataset; each case must fail before any training, without a traceback and
without leaving a run folder (see tests/faults.py). A usage error, a data fault met during the run and the
same under engine.launch run train.py as a subprocess; the other cases run train.main in this process. Also:
damaged images met by the training loader name the file with and without worker processes."""
import argparse

import cv2
import numpy as np
import pytest
import torch
import yaml
from faults import Case, assert_clean_failure, case_table, copy_tree, run_cases, run_in_process, truncate
from torch.utils.data import DataLoader
from train_data import tiny_run_flags

import datasets
import network
import train
from datasets.file_check import DataFileError
from datasets.loveda import LoveDADataset
from utils.checkpoint import checkpoint_class_table

# end-to-end runs of the entry points: `make test` runs them, `make test-fast` leaves them out
pytestmark = pytest.mark.workflow

RUN = "Posdam-pfnet_r50"


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_potsdam) -> dict:
    """A tiny prepared Potsdam, a copy with a bad validation mask, broken checkpoints, an existing run."""
    base = tmp_path_factory.mktemp("train_faults")
    root = tiny_potsdam
    bad_masks = copy_tree(root, base / "bad_masks")
    mask_path = sorted((bad_masks / "test" / "masks").iterdir())[0]
    ids = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    ids[:2, :2] = 6
    cv2.imwrite(str(mask_path), ids)
    files = base / "files"
    files.mkdir()
    small = files / "small.pth"
    torch.save({"state_dict": {"w": torch.zeros(2000)}}, small)
    (files / "truncated.pth").write_bytes(small.read_bytes()[:300])
    (files / "empty.pth").write_bytes(b"")
    (files / "random.pth").write_bytes(bytes(range(256)) * 8)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.01)}, files / "legacy.pth")
    (files / "malformed.yaml").write_text("lr: [0.01\nmax_epoch: 2\n")
    torch.save({"layer0.0.weight": torch.zeros(4)}, files / "bare.pth")  # weights only: no optimizer, epoch, ...
    classifier = network.model_entry("pfnet_r50").classifier_key  # of 16 rows: trained for iSAID's 16 classes
    torch.save({"state_dict": {classifier: torch.zeros(16, 1, 1, 1)}, "config": {"dataset": "iSAID"}},
               files / "isaid16.pth")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "config": {"dataset": "LoveDA"},
                **checkpoint_class_table(LoveDADataset)}, files / "loveda.pth")
    unlabelled = copy_tree(root, base / "unlabelled_val")
    for mask in (unlabelled / "test" / "masks").iterdir():
        cv2.imwrite(str(mask), np.full((64, 64), 255, np.uint8))
    unlabelled_train = copy_tree(root, base / "unlabelled_train")
    for mask in (unlabelled_train / "train" / "masks").iterdir():
        cv2.imwrite(str(mask), np.full((64, 64), 255, np.uint8))
    (files / "wrong_type.yaml").write_text("DATASET:\n  ISAID_DIR: [one, two]\n")
    existing = base / "existing"
    run_dir = existing / "ckpt" / "old" / RUN
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"lr": 0.01, "max_epoch": 3}))
    (run_dir / "last.pth").write_bytes(small.read_bytes())
    (run_dir / "train.log").write_text("epoch 0 ...\n")
    return {"base": base, "root": root, "bad_masks": bad_masks, "mask_path": mask_path, "files": files,
            "existing": existing, "existing_run": run_dir, "unlabelled": unlabelled,
            "unlabelled_train": unlabelled_train}


def train_case(d: dict, *flags: str, names: tuple[str, ...], root=None, out=None, forbidden=(),
               unchanged=()) -> Case:
    """train.py on the tiny dataset; the run folder (and its TensorBoard folder) must not be left behind."""
    out = out or d["base"] / "runs" / "-".join(flag.strip("-").replace("/", "_") for flag in flags[:2])
    argv = ["train.py", *tiny_run_flags(root or d["root"], out), "--bs_mult", "4", "--num_workers", "0",
            "--max_epoch", "1", *flags]
    absent = () if unchanged else (out / "ckpt" / "default" / RUN, out / "tb" / "default" / RUN)
    return Case(argv, 2, names, unchanged=(d["root"], *unchanged), absent=absent, forbidden=forbidden)


def launched_case(d: dict) -> Case:
    """train.py in 2 gloo processes under engine.launch, with a validation mask holding an id outside the classes.
    A process stopped by the launcher may leave the run folder (it is not watched here)."""
    out = d["base"] / "runs" / "launched"
    argv = ["-m", "engine.launch", "--standalone", "--nproc_per_node=2", "train.py",
            *tiny_run_flags(d["bad_masks"], out), "--bs_mult", "2", "--num_workers", "0", "--max_epoch", "1"]
    return Case(argv, 2, (d["mask_path"].name, "validation split test", "launch: train.py stopped in process"),
                unchanged=(d["bad_masks"],))


def resume_case(d: dict, checkpoint: str, *names: str) -> Case:
    """--resume into the existing run folder, whose files must stay exactly as they are."""
    return train_case(d, "--resume", checkpoint, "--exp", "old", names=("--resume", *names), out=d["existing"],
                      unchanged=(d["existing"],))


CASES = {
    "val_freq_0": lambda d: train_case(d, "--val_freq", "0", names=("--val_freq", "at least 1")),
    "validation_mask_ids_outside_classes": lambda d: train_case(d, names=(d["mask_path"].name, "6 x 4",
                                                                          "validation split test"),
                                                                root=d["bad_masks"]),
    "validation_mask_ids_outside_classes_in_two_processes": launched_case,
}
"""Run as subprocesses: a usage error, a data fault met during the run, and the same under engine.launch."""

IN_PROCESS_CASES = {
    "crop_size_0": lambda d: train_case(d, "--crop_size", "0", names=("--crop_size",)),
    "crop_size_negative": lambda d: train_case(d, "--crop_size", "-64", names=("--crop_size", "-64")),
    "print_freq_0": lambda d: train_case(d, "--print_freq", "0", names=("--print_freq",)),
    "max_epoch_0": lambda d: train_case(d, "--max_epoch", "0", names=("--max_epoch",)),
    "num_workers_negative": lambda d: train_case(d, "--num_workers", "-1", names=("--num_workers",)),
    "cfg_value_of_wrong_type": lambda d: train_case(d, "--config", str(d["files"] / "wrong_type.yaml"),
                                                    names=("wrong_type.yaml", "DATASET.ISAID_DIR", "not text")),
    "cfg_root_given_as_a_number": lambda d: train_case(d, "--set", "DATASET.VAIHINGEN_DIR=5",
                                                       names=("DATASET.VAIHINGEN_DIR", "not text")),
    "resume_truncated_keeps_the_run": lambda d: resume_case(d, str(d["files"] / "truncated.pth"), "truncated.pth",
                                                            "truncated or damaged"),
    "snapshot_needs_trust": lambda d: train_case(d, "--snapshot", str(d["files"] / "legacy.pth"),
                                                 names=("legacy.pth", "--trusted-pickle", "run code")),
    "pretrained_missing": lambda d: train_case(d, "--pretrained", str(d["files"] / "resnet50-deep.pth"),
                                               names=("--pretrained", "resnet50-deep.pth")),
    "dataset_missing": lambda d: train_case(d, "--set", f"DATASET.POSDAM_DIR={d['base'] / 'nothing'}",
                                            names=(str(d["base"] / "nothing"),)),
    "existing_run_without_resume": lambda d: train_case(d, "--exp", "old", names=("--resume", "--overwrite"),
                                                        out=d["existing"], unchanged=(d["existing"],)),
    "arch_unknown": lambda d: train_case(d, "--arch", "pfnet_resnet50", names=("--arch", "'pfnet_resnet50'",
                                                                              "pfnet_r50")),
    "snapshot_16_classes_hint_names_the_flag": lambda d: train_case(
        d, "--snapshot", str(d["files"] / "isaid16.pth"), names=("trained for 16 classes", "--snapshot_partial"),
        forbidden=("partial=True",)),
    "set_unclosed_list": lambda d: train_case(d, "--set", "lr=[0.1", names=("--set lr=[0.1", "not a plain YAML")),
    "pretrained_needs_trust": lambda d: train_case(d, "--pretrained", str(d["files"] / "legacy.pth"),
                                                   names=("--pretrained", "legacy.pth", "--trusted-pickle")),
    "snapshot_of_other_classes": lambda d: train_case(d, "--snapshot", str(d["files"] / "loveda.pth"),
                                                      names=("trained on LoveDA", "'background'", "--snapshot_partial",
                                                             "--allow_class_mismatch")),
    "training_split_without_labelled_pixels": lambda d: train_case(d, names=("training split train",
                                                                             "none of its 8 masks"),
                                                                   root=d["unlabelled_train"]),
    "crop_larger_than_every_image": lambda d: train_case(d, "--crop_size", "128",
                                                         names=("--crop_size 128", "64 x 64", "at most 64")),
    "lr_negative": lambda d: train_case(d, "--lr", "-1", names=("--lr", "positive")),
    "malformed_yaml": lambda d: train_case(d, "--config", str(d["files"] / "malformed.yaml"),
                                           names=("malformed.yaml", "not valid YAML")),
    "resume_typo_keeps_the_run": lambda d: resume_case(d, str(d["existing_run"] / "lats.pth"), "lats.pth",
                                                       "not found"),
    "snapshot_random_bytes": lambda d: train_case(d, "--snapshot", str(d["files"] / "random.pth"),
                                                  names=("--snapshot", "random.pth", "not a PyTorch checkpoint"),
                                                  forbidden=("--trusted-pickle",)),
    "pretrained_empty": lambda d: train_case(d, "--pretrained", str(d["files"] / "empty.pth"),
                                             names=("--pretrained", "empty.pth", "empty file")),
    "resume_bare_state_dict": lambda d: train_case(d, "--resume", str(d["files"] / "bare.pth"),
                                                   names=("--resume", "bare.pth", "pass it as --snapshot")),
    "set_python_yaml_tag_runs_nothing": lambda d: train_case(
        d, "--set", f"lr=!!python/object/apply:os.system [\"touch {d['base'] / 'ran'}\"]",
        names=("--set lr=", "not a plain YAML value")),
    "pretrained_trusted_pickle_is_honoured": lambda d: train_case(
        d, "--pretrained", str(d["files"] / "legacy.pth"), "--trusted-pickle",
        names=("--pretrained", "legacy.pth", "does not match the deep-stem ResNet trunk"),
        forbidden=("--trusted-pickle",)),
    "validation_without_labelled_pixels": lambda d: train_case(d, names=("validation split test",
                                                                         "none of its 4 masks has a labelled pixel"),
                                                               root=d["unlabelled"]),
}
"""Variants of the faults above, run through train.main in this process."""


@pytest.fixture(scope="module", autouse=True)
def torch_switches():
    """train.main turns on deterministic algorithms (--deterministic): put the switch back after this module."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="module")
def outcomes(data):
    return run_cases(case_table(CASES, data))


@pytest.mark.parametrize("name", sorted(CASES))
def test_train_fault_is_reported_cleanly(outcomes, name):
    assert_clean_failure(outcomes[name])


def test_python_yaml_tag_in_set_ran_nothing(data, capsys, one_thread):
    outcome = run_in_process(train.main, IN_PROCESS_CASES["set_python_yaml_tag_runs_nothing"](data), capsys)
    assert outcome.result.returncode == 2
    assert not (data["base"] / "ran").exists()


@pytest.mark.parametrize("name", sorted(IN_PROCESS_CASES))
def test_train_fault_variant_is_reported_cleanly(data, capsys, one_thread, name):
    assert_clean_failure(run_in_process(train.main, IN_PROCESS_CASES[name](data), capsys))


@pytest.mark.parametrize("workers", [0, 2])
def test_damaged_training_image_names_the_file_with_and_without_workers(data, tmp_path, workers):
    root = copy_tree(data["root"], tmp_path / "root")
    damaged = truncate(sorted((root / "train" / "images").iterdir())[0], keep=0.3)
    loader = DataLoader(datasets.get_dataset("Posdam", "train", root), batch_size=2, num_workers=workers)
    with pytest.raises(DataFileError) as caught:
        for _ in loader:
            pass
    assert str(caught.value) == f"{damaged}: cannot be decoded (truncated, corrupt or not an image)"
