"""train.py end to end in one process on real (tiny, synthetic) prepared data and the real PFNet-R50."""
import argparse
import json
import logging
import math
import re
import shutil

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from train_data import RUN_CONTROL_KEYS, make_tiny_potsdam, tiny_run_flags

import config
import datasets
import demo
import network
import train
from engine.distributed import DistContext
from utils.atomic import PARTIAL_MARK
from utils.checkpoint import load_checkpoint

MAX_EPOCH = 3
# 8 patches, batch 4: 2 iterations per epoch; a data-loading worker, so its seeding is resumed too
RUN_FLAGS = ["--max_epoch", str(MAX_EPOCH), "--bs_mult", "4", "--val_freq", "2", "--num_workers", "1"]


@pytest.fixture(scope="module")
def potsdam_root(tmp_path_factory):
    return make_tiny_potsdam(tmp_path_factory.mktemp("train_data"))


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
    assert config.effective_config(train.flag_values(args), run_config) == saved


def test_refuses_to_start_over_an_existing_run(finished_run, potsdam_root, capsys):
    out, _, _ = finished_run
    with pytest.raises(SystemExit) as stop:
        train.main(tiny_run_flags(potsdam_root, out) + ["--max_epoch", "1", "--bs_mult", "4", "--exp", "single"])
    assert stop.value.code == 2 and "continue that run with --resume" in capsys.readouterr().err


def test_resume_continues_bit_exactly(finished_run, potsdam_root):
    """N + M iterations straight equal N iterations, a stop, a resume and M more (CPU, deterministic)."""
    out, _, _ = finished_run
    split_dir = out / "ckpt" / "split" / "Posdam-pfnet_r50"
    train.main(tiny_run_flags(potsdam_root, out) + RUN_FLAGS + ["--exp", "split", "--stop_after", "1"])
    first_part = torch.load(split_dir / "last.pth", weights_only=True)
    assert first_part["epoch"] == 0
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
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    for state_id, state in straight["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], resumed["optimizer"]["state"][state_id]["momentum_buffer"])
    assert resumed["mean_iu"] == straight["mean_iu"]
    assert resumed["best_record"] == {**straight["best_record"]}


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
