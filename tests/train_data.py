"""Shared by the training tests: a tiny prepared Potsdam dataset made by the project's own tools."""
from pathlib import Path

from tools.make_synthetic_data import make_synthetic
from tools.prepare_dataset import PrepareOptions, prepare

# Flags that control a run rather than define it; config.yaml must not hold them (written out here, not
# taken from train.py, so that a test catches one dropped from its list).
RUN_CONTROL_KEYS = {"resume", "stop_after", "overwrite", "num_workers", "device", "trusted_pickle", "config",
                    "overrides", "local_rank"}

# 3 synthetic 128 px tiles (2 train, 1 test) cut into 64 px patches: 8 training and 4 test patches.
PATCH = 64


def make_tiny_potsdam(base: Path) -> Path:
    """Prepared Potsdam root under ``base`` (``train`` and ``test`` splits of 64 x 64 patches)."""
    raw = make_synthetic("potsdam", base / "raw", seed=5, num_images=3, size=2 * PATCH)
    prepare("potsdam", raw, base / "potsdam", PrepareOptions(patch_size=PATCH, stride=PATCH, workers=1, progress=False))
    return base / "potsdam"


def tiny_run_flags(root: Path, out: Path) -> list[str]:
    """train.py flags for a fast CPU run on :func:`make_tiny_potsdam` data, outputs under ``out``."""
    return [
        "--dataset", "Posdam", "--set", f"DATASET.POSDAM_DIR={root}",
        "--crop_size", str(PATCH), "--arch", "pfnet_r50",
        "--maxpool_size", "2", "--avgpool_size", "2", "--edge_points", "8",
        "--joint_edge_loss_pfnet", "--ohem", "--edge_weight", "25",
        "--lr", "0.01", "--poly_exp", "0.9", "--device", "cpu", "--deterministic",
        "--ckpt", str(out / "ckpt"), "--tb_path", str(out / "tb"), "--print_freq", "1",
    ]
