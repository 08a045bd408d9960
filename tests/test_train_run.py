"""train.py end to end in one process on real (tiny, synthetic) prepared data and the real PFNet-R50."""
import argparse
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from parity_weights import imagenet_file_state
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from train_data import RUN_CONTROL_KEYS, tiny_run_flags

import config
import datasets
import demo
import network
import train
from engine.distributed import DistContext
from engine.run_checkpoint import TrainingState, record_validation
from utils.atomic import PARTIAL_MARK
from utils.checkpoint import load_checkpoint

# end-to-end runs of the entry points: `make test` runs them, `make test-fast` leaves them out
pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]
MAX_EPOCH = 3
# 8 patches, batch 4: 2 iterations per epoch; a data-loading worker, so its seeding is resumed too; random
# scale and crop, so that the resumed augmentation streams are checked as well
RUN_FLAGS = ["--max_epoch", str(MAX_EPOCH), "--bs_mult", "4", "--val_freq", "2", "--num_workers", "1", "--with_aug",
             "--scale_min", "0.5", "--scale_max", "2.0"]
NOT_EXACT = "the resumed run will not be bit-identical"


@pytest.fixture(scope="module")
def potsdam_root(tiny_potsdam, tmp_path_factory):
    """A copy of the shared tiny dataset: class-uniform sampling caches its centroids in the dataset's folder."""
    return Path(shutil.copytree(tiny_potsdam, tmp_path_factory.mktemp("train_data") / "potsdam"))


@pytest.fixture(scope="module", autouse=True)
def isolated_globals():
    """train.main changes torch's determinism switch: put it back after this module.
    One intra-op thread: these tiny tensors gain nothing from two, and a busy data-loading worker or
    another process on the machine would stall them."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished_run(potsdam_root, tmp_path_factory):
    """One 3-epoch run validating at epochs 0 and 2 (--val_freq 2 plus the last epoch)."""
    out = tmp_path_factory.mktemp("run")
    result = train.main(tiny_run_flags(potsdam_root, out) + RUN_FLAGS + ["--exp", "single"])
    records = [json.loads(line) for line in (out / "ckpt" / "single" / "Posdam-pfnet_r50" / "log.jsonl").open()]
    return out, result, records


def test_run_folder_holds_checkpoints_config_and_logs(finished_run):
    out, result, _ = finished_run
    run_dir = out / "ckpt" / "single" / "Posdam-pfnet_r50"
    assert result["run_dir"] == str(run_dir)
    names = sorted(path.name for path in run_dir.iterdir())
    best = [name for name in names if name.startswith("best_epoch_")]
    assert len(best) == 1 and re.fullmatch(r"best_epoch_[02]_mean-iu_0\.\d{5}\.pth", best[0])
    assert {"last.pth", "config.yaml", "log.jsonl", "train.log"} <= set(names)
    assert not [name for name in names if PARTIAL_MARK in name]  # no temporary file of utils.atomic left
    assert list((out / "tb" / "single" / "Posdam-pfnet_r50").glob("events.out.tfevents.*"))


def test_validation_follows_val_freq_and_names_the_best(finished_run):
    out, result, records = finished_run
    val = {record["step"]: record for record in records if record["kind"] == "val"}
    assert sorted(val) == [0, 2]
    best_epoch = max(val, key=lambda epoch: val[epoch]["miou"])
    assert result["best"]["epoch"] == best_epoch
    assert result["best"]["file_name"] == f"best_epoch_{best_epoch}_mean-iu_{val[best_epoch]['miou']:.5f}.pth"
    assert set(val[2]["iou"]) == {"impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"}


def test_lr_per_epoch_follows_the_poly_formula(finished_run):
    _, _, records = finished_run
    lrs = [record["lr"] for record in records if record["kind"] == "epoch"]
    assert lrs == pytest.approx([0.01 * (1 - (epoch + 1) / MAX_EPOCH) ** 0.9 for epoch in range(MAX_EPOCH)])
    train_records = [record for record in records if record["kind"] == "train"]
    assert len(train_records) == MAX_EPOCH * 2  # 8 patches / batch 4, logged every iteration
    terms = {"loss", "seg_loss", "edge_loss_layer3", "edge_loss_layer2", "edge_loss_layer1"}
    for record in train_records:
        assert terms <= set(record) and record["images_per_s"] > 0
        assert record["loss"] == pytest.approx(sum(record[name] for name in terms - {"loss"}), rel=1e-5)


def test_checkpoint_has_the_original_format_plus_extras(finished_run):
    out, _, records = finished_run
    last = out / "ckpt" / "single" / "Posdam-pfnet_r50" / "last.pth"
    payload = torch.load(last, map_location="cpu", weights_only=True)
    assert {"state_dict", "optimizer", "epoch", "mean_iu", "command"} <= set(payload)
    assert {"scheduler", "scaler", "sampler", "rng_states", "best_record", "global_step", "config"} <= set(payload)
    assert all(key.startswith("module.") for key in payload["state_dict"])
    assert payload["epoch"] == MAX_EPOCH - 1 and payload["global_step"] == MAX_EPOCH * 2
    last_val = [record for record in records if record["kind"] == "val"][-1]
    assert math.isclose(payload["mean_iu"], last_val["miou"], rel_tol=1e-12)
    assert payload["config"]["lr"] == 0.01 and payload["config"]["DATASET"]["POSDAM_DIR"].endswith("potsdam")
    assert len(payload["rng_states"]) == 1
    model = network.get_model("pfnet_r50", 6, maxpool_size=2, avgpool_size=2, edge_points=8)
    extras = load_checkpoint(last, model)
    assert extras["skipped"] == []
    classifier = "head.conv_last.1.weight"
    assert torch.equal(model.state_dict()[classifier], payload["state_dict"]["module." + classifier])


def test_config_yaml_holds_no_run_control_flags_and_repeats_the_run(finished_run):
    out, _, _ = finished_run
    config_file = out / "ckpt" / "single" / "Posdam-pfnet_r50" / "config.yaml"
    saved = yaml.safe_load(config_file.read_text())
    assert not RUN_CONTROL_KEYS & set(saved)
    assert saved["max_epoch"] == MAX_EPOCH and saved["val_freq"] == 2 and saved["edge_weight"] == 25.0
    args, run_config, notes = train.parse_args(["--config", str(config_file)])
    assert notes == [] and args.resume is None and args.stop_after is None and args.overwrite is False
    assert args.max_epoch == MAX_EPOCH and args.val_freq == 2 and args.edge_weight == 25.0  # the run's own values
    assert args.arch == "pfnet_r50" and args.dataset == "Posdam"
    assert config.effective_config(train.flag_values(args), run_config) == saved


def test_refuses_to_start_over_an_existing_run(finished_run, potsdam_root, capsys):
    out, _, _ = finished_run
    with pytest.raises(SystemExit) as stop:
        train.main(tiny_run_flags(potsdam_root, out) + ["--max_epoch", "1", "--bs_mult", "4", "--exp", "single"])
    assert stop.value.code == 2 and "continue that run with --resume" in capsys.readouterr().err


def training_state_difference(first: dict, second: dict) -> float:
    """Largest absolute difference between two checkpoints' weights, BatchNorm buffers and optimizer state
    (momentum buffers and learning rates); the two must hold the same tensors."""
    assert first["state_dict"].keys() == second["state_dict"].keys()
    pairs = [(value, second["state_dict"][key]) for key, value in first["state_dict"].items()]
    assert first["optimizer"]["state"].keys() == second["optimizer"]["state"].keys()
    for state_id, state in first["optimizer"]["state"].items():
        pairs += [(value, second["optimizer"]["state"][state_id][name]) for name, value in state.items()]
    pairs += [(torch.tensor(group["lr"]), torch.tensor(other["lr"]))
              for group, other in zip(first["optimizer"]["param_groups"], second["optimizer"]["param_groups"])]
    return max((a.double() - b.double()).abs().max().item() for a, b in pairs if a.numel())


def test_resume_continues_bit_exactly(finished_run, potsdam_root):
    """N + M iterations straight equal N iterations, a stop, a resume and M more (CPU, deterministic), with
    random scale and crop and one data-loading worker; the resume names no difference of the environment."""
    out, _, _ = finished_run
    split_dir = out / "ckpt" / "split" / "Posdam-pfnet_r50"
    train.main(tiny_run_flags(potsdam_root, out) + RUN_FLAGS + ["--exp", "split", "--stop_after", "1"])
    first_part = torch.load(split_dir / "last.pth", weights_only=True)
    assert first_part["epoch"] == 0
    assert first_part["environment"]["threads"] == 1 and first_part["environment"]["num_workers"] == 1
    first_config = (split_dir / "config.yaml").read_bytes()
    train.main(tiny_run_flags(potsdam_root, out) + RUN_FLAGS
               + ["--exp", "split", "--resume", str(split_dir / "last.pth")])
    # the history of the run's flags: the first start's config.yaml is kept, the resume has its own file
    assert (split_dir / "config.yaml").read_bytes() == first_config
    assert sorted(path.name for path in split_dir.glob("config*.yaml")) == ["config.resume-1.yaml", "config.yaml"]
    straight = torch.load(out / "ckpt" / "single" / "Posdam-pfnet_r50" / "last.pth", weights_only=True)
    resumed = torch.load(split_dir / "last.pth", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == MAX_EPOCH - 1
    assert resumed["state_dict"].keys() == straight["state_dict"].keys()
    trained = [key for key, value in straight["state_dict"].items()
               if key.endswith("conv_last.1.weight") and not torch.equal(value, first_part["state_dict"][key])]
    assert trained  # the resumed epochs did change the weights
    assert training_state_difference(straight, resumed) == 0.0
    assert resumed["mean_iu"] == straight["mean_iu"]
    assert resumed["best_record"] == {**straight["best_record"]}
    assert NOT_EXACT not in (split_dir / "train.log").read_text()


def test_resume_is_exact_with_two_workers_and_class_uniform_sampling(potsdam_root, tmp_path):
    """The same check with two data-loading workers and class-uniform epochs (3 epochs; the resumed epoch 1
    trains at a non-zero LR)."""
    flags = (tiny_run_flags(potsdam_root, tmp_path) + RUN_FLAGS
             + ["--num_workers", "2", "--class_uniform_sampling", "--class_uniform_pct", "0.5"])
    train.main(flags + ["--exp", "straight"])
    train.main(flags + ["--exp", "split", "--stop_after", "1"])
    split_dir = tmp_path / "ckpt" / "split" / "Posdam-pfnet_r50"
    train.main(flags + ["--exp", "split", "--resume", str(split_dir / "last.pth")])
    straight = torch.load(tmp_path / "ckpt" / "straight" / "Posdam-pfnet_r50" / "last.pth", weights_only=True)
    resumed = torch.load(split_dir / "last.pth", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == MAX_EPOCH - 1
    assert training_state_difference(straight, resumed) == 0.0
    assert NOT_EXACT not in (split_dir / "train.log").read_text()


def test_resume_after_kill_9_mid_epoch_is_exact_and_another_thread_count_is_named(finished_run, potsdam_root,
                                                                                   tmp_path):
    """train.py killed with SIGKILL during epoch 1 and resumed from the epoch-0 last.pth equals the straight run;
    the same checkpoint resumed with 2 threads instead of 1 trains on, saying in one line that it will differ."""
    flags = tiny_run_flags(potsdam_root, tmp_path) + RUN_FLAGS + ["--exp", "killed"]
    run_dir = tmp_path / "ckpt" / "killed" / "Posdam-pfnet_r50"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "train.py", *flags], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    log = run_dir / "train.log"
    while process.poll() is None and time.monotonic() < deadline:
        if log.exists() and "[epoch 1] [iter 1 / 2]" in log.read_text():
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert torch.load(run_dir / "last.pth", weights_only=True)["epoch"] == 0  # killed mid-epoch 1
    other_threads = shutil.copytree(run_dir, tmp_path / "ckpt" / "threads" / "Posdam-pfnet_r50")

    train.main(flags + ["--resume", str(run_dir / "last.pth")])
    straight = torch.load(finished_run[0] / "ckpt" / "single" / "Posdam-pfnet_r50" / "last.pth", weights_only=True)
    resumed = torch.load(run_dir / "last.pth", weights_only=True)
    assert resumed["epoch"] == MAX_EPOCH - 1 and training_state_difference(straight, resumed) == 0.0
    assert NOT_EXACT not in log.read_text()

    result = subprocess.run([sys.executable, "train.py", *tiny_run_flags(potsdam_root, tmp_path), *RUN_FLAGS,
                             "--exp", "threads", "--resume", str(other_threads / "last.pth"), "--stop_after", "1"],
                            cwd=REPO, env={**env, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in (other_threads / "train.log").read_text().splitlines() if NOT_EXACT in line]
    assert len(warnings) == 1 and warnings[0].endswith(f"resume: threads 1 → 2: {NOT_EXACT}")
    assert torch.load(other_threads / "last.pth", weights_only=True)["epoch"] == 1  # the run went on


def test_bf16_autocast_with_activation_checkpointing_trains_and_validates(potsdam_root, tmp_path):
    result = train.main(tiny_run_flags(potsdam_root, tmp_path)
                        + ["--max_epoch", "1", "--bs_mult", "4", "--num_workers", "0", "--amp", "bf16",
                           "--activation_checkpointing", "--exp", "bf16"])
    records = [json.loads(line) for line in (tmp_path / "ckpt" / "bf16" / "Posdam-pfnet_r50" / "log.jsonl").open()]
    losses = [record["loss"] for record in records if record["kind"] == "train"]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert result["best"]["epoch"] == 0 and result["best"]["mean_iu"] > 0


def test_class_uniform_sampling_is_sharded_and_feeds_the_loader(potsdam_root, tmp_path):
    flags = tiny_run_flags(potsdam_root, tmp_path) + ["--bs_mult", "2", "--num_workers", "0",
                                                      "--class_uniform_sampling", "--class_uniform_pct", "1.0"]
    args, run_config, notes = train.parse_args(flags)
    assert notes == []
    train_set, val_set = train.build_datasets(args, run_config, with_edge=True)
    shards = []
    for rank in (0, 1):
        ctx = DistContext(rank=rank, local_rank=rank, world_size=2, device=torch.device("cpu"))
        train_loader, val_loader = train.build_loaders(args, ctx, train_set, val_set)
        train_loader.sampler.set_epoch(3)
        shards.append(list(train_loader.sampler))
        assert len(val_loader.dataset) == 2  # 4 test patches, 2 per process
    assert len(shards[0]) == len(shards[1]) == 4  # 8 patches over 2 processes
    # int(8 * 1.0 / 6) = 1 centroid per class present, the rest plain patches
    assert any(centroid is not None for _, centroid in shards[0] + shards[1])
    batch = next(iter(train_loader))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["edge"].shape == (2, 1, 64, 64)


def test_fp16_autocast_saves_and_resumes_the_gradient_scaler(potsdam_root, tmp_path):
    """--amp fp16 on the CPU: float16 autocast with a GradScaler whose state goes into last.pth and back.
    32 px crops (float16 convolutions are slow on CPUs), 2 epochs of 2 iterations, stopped after the first."""
    flags = tiny_run_flags(potsdam_root, tmp_path) + ["--crop_size", "32", "--max_epoch", "2", "--bs_mult", "4",
                                                      "--num_workers", "0", "--amp", "fp16", "--exp", "fp16"]
    run_dir = tmp_path / "ckpt" / "fp16" / "Posdam-pfnet_r50"
    train.main(flags + ["--stop_after", "1"])
    records = [json.loads(line) for line in (run_dir / "log.jsonl").open()]
    losses = [record["loss"] for record in records if record["kind"] == "train"]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    first_part = torch.load(run_dir / "last.pth", weights_only=True)
    # the scaler starts at 2 ** 16 and halves on each step whose gradients overflow
    assert first_part["scaler"]["scale"] in {2.0**16, 2.0**15, 2.0**14}
    assert first_part["config"]["amp"] == "fp16"
    first_part["scaler"]["scale"] = 1024.0  # a value the resumed run can only have from this file
    torch.save(first_part, run_dir / "last.pth")
    train.main(flags + ["--resume", str(run_dir / "last.pth")])
    resumed = torch.load(run_dir / "last.pth", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["global_step"] == 4
    assert resumed["scaler"]["scale"] in {1024.0, 512.0, 256.0}


def test_syncbn_for_several_gpu_processes_keeps_the_original_plain_batchnorms():
    """build_model as train.py calls it under torchrun with GPUs and --syncbn (no process group needed to build)."""
    args, _, _ = train.parse_args(["--syncbn", "--maxpool_size", "2", "--avgpool_size", "2", "--edge_points", "8"])
    train.resolve_model(args, None)
    log = logging.getLogger("test_syncbn")
    gpu_processes = DistContext(rank=0, local_rank=0, world_size=2, device=torch.device("cuda", 0))
    model = train.build_model(args, gpu_processes, 6, log)
    norms = {name: type(module) for name, module in model.named_modules() if isinstance(module, _BatchNorm)}
    plain = {name for name, kind in norms.items() if kind is nn.BatchNorm2d}
    # conv3x3_bn_relu blocks: Sequential(conv, norm, relu) inside fpn_out[i] and first in conv_last
    assert plain == {"head.fpn_out.0.0.1", "head.fpn_out.1.0.1", "head.fpn_out.2.0.1", "head.conv_last.0.1"}
    synchronised = {name for name, kind in norms.items() if kind is nn.SyncBatchNorm}
    assert synchronised == set(norms) - plain
    assert {"layer0.1", "layer1.0.bn1", "layer4.2.bn3", "head.ppm.bottleneck.1"} <= synchronised
    for context in (DistContext(rank=0, local_rank=0, world_size=2, device=torch.device("cpu")),
                    DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cuda", 0))):
        model = train.build_model(args, context, 6, log)
        assert not [module for module in model.modules() if isinstance(module, nn.SyncBatchNorm)]


def test_trusted_pickle_lets_snapshot_read_a_legacy_file(finished_run, potsdam_root, tmp_path, capsys):
    out, _, _ = finished_run
    weights = torch.load(out / "ckpt" / "single" / "Posdam-pfnet_r50" / "last.pth", weights_only=True)["state_dict"]
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": weights, "args": argparse.Namespace(lr=0.01)}, legacy)  # as the original's files
    flags = tiny_run_flags(potsdam_root, tmp_path) + ["--crop_size", "32", "--max_epoch", "1", "--bs_mult", "4",
                                                      "--num_workers", "0", "--snapshot", str(legacy)]
    with pytest.raises(SystemExit) as stop:
        train.main(flags + ["--exp", "untrusted"])
    assert stop.value.code == 2 and f"--snapshot: {legacy} holds Python objects" in capsys.readouterr().err
    assert not (tmp_path / "ckpt" / "untrusted").exists()  # checked before a run folder was made
    result = train.main(flags + ["--exp", "trusted", "--trusted-pickle"])
    assert result["best"]["epoch"] == 0
    log_text = (tmp_path / "ckpt" / "trusted" / "Posdam-pfnet_r50" / "train.log").read_text()
    assert f"weights from {legacy} (0 tensors skipped)" in log_text


def test_demo_baseline_is_the_majority_share_over_the_classes_present(potsdam_root):
    dataset = datasets.get_dataset("Posdam", "test", potsdam_root)
    counts = np.zeros(dataset.num_classes, np.int64)
    for index in range(len(dataset)):
        mask = dataset.read_pair(index)[1]
        counts += np.bincount(mask[mask < dataset.num_classes], minlength=dataset.num_classes)
    # IoU of the majority class: its pixels over all labelled pixels; the other classes present score 0
    expected = counts.max() / counts.sum() / np.count_nonzero(counts)
    assert demo.majority_class_miou(potsdam_root, "test") == pytest.approx(expected, rel=1e-12)


def test_extending_a_finished_run_follows_the_new_schedule(finished_run, potsdam_root, tmp_path):
    """"Train longer": a finished 3-epoch run resumed with --max_epoch 5 trains epochs 3 and 4 at the 5-epoch
    schedule's LRs (never negative), validates with a finite loss and ends at epoch 4."""
    out, _, _ = finished_run
    run_dir = tmp_path / "ckpt" / "longer" / "Posdam-pfnet_r50"
    shutil.copytree(out / "ckpt" / "single" / "Posdam-pfnet_r50", run_dir)
    flags = tiny_run_flags(potsdam_root, tmp_path) + ["--bs_mult", "4", "--num_workers", "0", "--exp", "longer"]
    result = train.main(flags + ["--max_epoch", "5", "--resume", str(run_dir / "last.pth")])
    records = [json.loads(line) for line in (run_dir / "log.jsonl").open()]
    epochs = [record for record in records if record["kind"] == "epoch"]
    assert [record["step"] for record in epochs] == [0, 1, 2, 3, 4]
    assert [record["lr"] for record in epochs[3:]] == pytest.approx([0.01 * (1 - 4 / 5) ** 0.9, 0.0])
    assert all(record["lr"] >= 0 for record in records if "lr" in record)
    last_val = [record for record in records if record["kind"] == "val"][-1]
    assert last_val["step"] == 4 and math.isfinite(last_val["val_loss"])
    assert torch.load(run_dir / "last.pth", weights_only=True)["epoch"] == 4
    val_miou = {record["step"]: record["miou"] for record in records if record["kind"] == "val"}
    assert result["best"]["epoch"] == max(val_miou, key=val_miou.get)
    log_text = (run_dir / "train.log").read_text()
    assert "epoch 4 (the last) trains at LR 0" in log_text and "--max_epoch 6" in log_text


def test_resume_without_a_longer_schedule_is_refused(finished_run, potsdam_root, tmp_path, capsys):
    out, _, _ = finished_run
    last = out / "ckpt" / "single" / "Posdam-pfnet_r50" / "last.pth"
    before = last.read_bytes()
    with pytest.raises(SystemExit) as stop:
        train.main(tiny_run_flags(potsdam_root, tmp_path) + ["--bs_mult", "4", "--exp", "single", "--ckpt",
                                                             str(out / "ckpt"), "--max_epoch", "3", "--resume",
                                                             str(last)])
    message = capsys.readouterr().err
    assert stop.value.code == 2
    assert "has finished 3 epochs and --max_epoch is 3" in message and "--max_epoch 4" in message
    assert last.read_bytes() == before


def test_one_epoch_run_is_announced_as_training_at_lr_zero(potsdam_root, tmp_path):
    flags = tiny_run_flags(potsdam_root, tmp_path) + ["--crop_size", "32", "--max_epoch", "1", "--bs_mult", "4",
                                                      "--num_workers", "0", "--exp", "one"]
    train.main(flags)
    log_text = (tmp_path / "ckpt" / "one" / "Posdam-pfnet_r50" / "train.log").read_text()
    warning = "every epoch of this run (0) trains at LR 0"
    assert warning in log_text and "pass --max_epoch 2 or more" in log_text
    assert log_text.index(warning) < log_text.index("epoch 0 of 1: lr 0")


def test_two_calls_in_one_process_use_their_own_dataset_roots(potsdam_root, tmp_path, capsys):
    """A second train.main in the same process (demo, notebook, sweep) does not inherit the first's roots."""
    flags = ["--crop_size", "32", "--max_epoch", "2", "--bs_mult", "4", "--num_workers", "0", "--stop_after", "1"]
    first = tiny_run_flags(potsdam_root, tmp_path / "a") + flags + ["--exp", "first"]
    train.main(first)
    second = [flag for flag in tiny_run_flags(potsdam_root, tmp_path / "b") if flag != "--set"
              and not flag.startswith("DATASET.")] + flags + ["--exp", "second"]
    with pytest.raises(SystemExit) as stop:
        train.main(second)
    assert stop.value.code == 2 and "data/posdam896" in capsys.readouterr().err
    assert config.get_cfg().DATASET.POSDAM_DIR == "./data/posdam896"


def test_a_validation_that_scored_no_pixel_never_becomes_the_best():
    """validate's mIoU is None when no labelled pixel was scored: recorded as 0.0, never a best snapshot."""
    state = TrainingState()
    assert record_validation(state, 0, None) == (False, "")
    assert state.best.file_name == "" and (state.last_mean_iu, state.last_mean_iu_epoch) == (0.0, 0)
    assert record_validation(state, 1, 0.0) == (True, "")  # a scored 0.0 is a result
    assert state.best.file_name == "best_epoch_1_mean-iu_0.00000.pth"


def test_pretrained_trunk_in_a_legacy_file_is_read_with_trusted_pickle(potsdam_root, tmp_path):
    """--pretrained honours --trusted-pickle: a trunk file that also holds a Python object initialises the trunk
    (a one-epoch run trains at LR 0, so the saved trunk weights are the file's)."""
    source = network.get_model("pfnet_r50", 6, maxpool_size=2, avgpool_size=2, edge_points=8)
    trunk_file = tmp_path / "resnet50-deep.pth"
    torch.save({"state_dict": imagenet_file_state(source), "args": argparse.Namespace(arch="resnet50")}, trunk_file)
    train.main(tiny_run_flags(potsdam_root, tmp_path) + ["--crop_size", "32", "--max_epoch", "1", "--bs_mult", "4",
                                                         "--num_workers", "0", "--exp", "pretrained", "--pretrained",
                                                         str(trunk_file), "--trusted-pickle"])
    saved = torch.load(tmp_path / "ckpt" / "pretrained" / "Posdam-pfnet_r50" / "last.pth",
                       weights_only=True)["state_dict"]
    trunk = [key for key in source.state_dict() if key.startswith("layer") and key.endswith("conv1.weight")]
    assert trunk and all(torch.equal(saved["module." + key], source.state_dict()[key]) for key in trunk)
