"""Two CPU processes under torchrun (gloo): DDP training, identical models on both processes, sharded
validation, checkpoint and exact resume."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_data import tiny_run_flags

# end-to-end runs of the entry points: `make test` runs them, `make test-fast` leaves them out
pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]
# 8 patches over 2 processes x 2 patches: 2 iterations per epoch. The schedule has 3 epochs, so both
# runs below stop after epoch 1, which still trains at a non-zero LR (the last epoch's is 0).
RUN_FLAGS = ["--max_epoch", "3", "--bs_mult", "2", "--num_workers", "0", "--syncbn"]


# train.py in each process, which also saves its own model state (weights and BatchNorm buffers) as
# rank{RANK}.pth in the run folder after each epoch's checkpoint, so that the processes can be compared.
RANK_STATE_SCRIPT = """
import os
import sys

import torch

import train
from utils.checkpoint import unwrap_model

save_epoch = train.save_epoch


def save_epoch_and_rank_state(run, parts, *args, **kwargs):
    save_epoch(run, parts, *args, **kwargs)
    torch.save(unwrap_model(parts.model).state_dict(), run.run_dir / f"rank{os.environ['RANK']}.pth")


train.save_epoch = save_epoch_and_rank_state
train.main(sys.argv[1:])
"""


def torchrun(flags: list[str], script: str = "train.py") -> str:
    """Run ``script`` (train.py) in 2 processes on this machine; returns the combined output (fails the test
    on error)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, tiny_potsdam):
    base = tmp_path_factory.mktemp("ddp")
    flags = tiny_run_flags(tiny_potsdam, base) + RUN_FLAGS
    script = base / "train_saving_rank_states.py"
    script.write_text(RANK_STATE_SCRIPT)
    straight_log = torchrun(flags + ["--exp", "straight", "--stop_after", "2"], script=str(script))
    split_dir = base / "ckpt" / "split" / "Posdam-pfnet_r50"
    torchrun(flags + ["--exp", "split", "--stop_after", "1"])
    resume_log = torchrun(flags + ["--exp", "split", "--resume", str(split_dir / "last.pth"), "--stop_after", "1"])
    return base, straight_log, resume_log


def test_two_processes_resume_bit_exactly(ddp_runs):
    base, _, resume_log = ddp_runs
    straight = torch.load(base / "ckpt" / "straight" / "Posdam-pfnet_r50" / "last.pth", weights_only=True)
    resumed = torch.load(base / "ckpt" / "split" / "Posdam-pfnet_r50" / "last.pth", weights_only=True)
    assert "resuming" in resume_log and "at epoch 1" in resume_log
    assert straight["epoch"] == resumed["epoch"] == 1
    assert straight["global_step"] == resumed["global_step"] == 4
    assert len(resumed["rng_states"]) == 2  # one per process
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    for state_id, state in straight["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], resumed["optimizer"]["state"][state_id]["momentum_buffer"])


def test_processes_hold_the_same_model_and_validation_covers_every_image(ddp_runs):
    base, straight_log, _ = ddp_runs
    run_dir = base / "ckpt" / "straight" / "Posdam-pfnet_r50"
    assert "2 process(es) on cpu" in straight_log
    assert "--syncbn: plain BatchNorm" in straight_log
    saved = torch.load(run_dir / "last.pth", weights_only=True)["state_dict"]  # written by rank 0
    for rank in (0, 1):
        state = torch.load(run_dir / f"rank{rank}.pth", weights_only=True)
        assert state.keys() == {key.removeprefix("module.") for key in saved}
        differing = [key for key, value in state.items() if not torch.equal(value, saved["module." + key])]
        assert differing == [], f"rank {rank}"
    records = [json.loads(line) for line in (run_dir / "log.jsonl").open()]
    validations = [record for record in records if record["kind"] == "val"]
    assert [record["step"] for record in validations] == [0, 1]
    # 4 test patches of 64 x 64, two per process, summed over both processes by the all-reduce
    assert all(record["pixels"] == 4 * 64 * 64 for record in validations)
    assert len([record for record in records if record["kind"] == "train"]) == 4  # rank 0 logs only


def test_two_processes_extend_a_finished_run(tmp_path, tiny_potsdam):
    """Under torchrun the old "train longer" resume ended in a complex-LR error; now the new epoch trains at the
    2-epoch schedule's LR (0 here: the last epoch) with a finite validation loss, and the run ends at epoch 1."""
    flags = tiny_run_flags(tiny_potsdam, tmp_path) + RUN_FLAGS + ["--exp", "extend"]
    run_dir = tmp_path / "ckpt" / "extend" / "Posdam-pfnet_r50"
    first_log = torchrun(flags + ["--max_epoch", "1"])
    assert "every epoch of this run (0) trains at LR 0" in first_log
    torchrun(flags + ["--max_epoch", "2", "--resume", str(run_dir / "last.pth")])
    records = [json.loads(line) for line in (run_dir / "log.jsonl").open()]
    assert [record["step"] for record in records if record["kind"] == "epoch"] == [0, 1]
    assert all(record["lr"] >= 0 for record in records if "lr" in record)
    validations = [record for record in records if record["kind"] == "val"]
    assert validations[-1]["step"] == 1 and all(math.isfinite(record["val_loss"]) for record in validations)
    assert torch.load(run_dir / "last.pth", weights_only=True)["epoch"] == 1
