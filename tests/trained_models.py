"""Reference models trained by ``train.py`` itself, for the deployment and inference tests.

Random weights cannot see content-dependent bugs: a trained point matcher gives certainties down to 1e-37,
which random weights never reach, and that is where an exported graph once chose other points than the
model. So the tests that compare backends, windows and batches run on these models, trained once per test
session (the fixtures in ``conftest.py``) through the entry point a user runs, on synthetic data in the
real on-disk formats: ISPRS Potsdam GeoTIFF tiles with colour labels, prepared by ``tools/prepare_dataset.py``.

- PFNet-R50 with small pools (4 / 4, 16 edge points) so that its three point-flow modules select few enough
  points to train in seconds, the first-hour recipe's model (docs/first_hour.md);
- UperNet-R18, a baseline of another family;
- PFNet-R50 on a custom dataset described by a YAML spec, with class names of its own.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from script_run import run_script

from datasets import normalize_image
from datasets.isprs import PotsdamDataset
from evaluation.restore import RestoredModel, restore_model
from network.options import add_model_flags
from tools.make_synthetic_data import make_synthetic
from tools.prepare_dataset import PrepareOptions, prepare
from utils.image_io import read_image

# The first-hour data (docs/first_hour.md): 4 raw tiles of 256 px from seed 0, 3 train and 1 test (the Potsdam
# split of the synthetic tile names), cut into 128 px patches.
TILE_SIZE = 256
PATCH = 128
PFNET_OPTIONS = ("--maxpool_size", "4", "--avgpool_size", "4", "--edge_points", "16", "--joint_edge_loss_pfnet",
                 "--edge_weight", "25")
# The first-hour recipe, two epochs: long enough for certainties far below onnxruntime's Sigmoid floor.
RECIPE = ("--crop_size", str(PATCH), "--bs_mult", "4", "--max_epoch", "2", "--lr", "0.02", "--poly_exp", "0.9",
          "--ohem", "--num_workers", "0", "--device", "cpu", "--deterministic")
# Window corners (row, column) in a 256 px tile: the origin, odd and even offsets, the last full window.
OFFSETS = ((0, 0), (16, 32), (37, 100), (64, 64), (90, 5), (128, 128))
WINDOWS = (128, 96)
# The custom dataset's own names for the Potsdam colours: a checkpoint must carry these, not Potsdam's.
CUSTOM_CLASS_NAMES = ("road", "roof", "grass", "tree", "vehicle", "background")


@dataclass(frozen=True)
class TrainedModel:
    """A checkpoint written by ``train.py`` and the imagery to run it on.

    Attributes:
        checkpoint: the run's ``last.pth``.
        arch: its registered architecture.
        tiles: the raw 256 x 256 RGB GeoTIFF tiles, the held-out test tile first.
        class_names: the class names the checkpoint must carry.
    """

    checkpoint: Path
    arch: str
    tiles: tuple[Path, ...]
    class_names: tuple[str, ...]


def make_reference_data(base: Path) -> tuple[Path, Path]:
    """Raw synthetic Potsdam tiles and their prepared patches under ``base``: (raw folder, prepared root)."""
    raw = make_synthetic("potsdam", base / "raw", seed=0, num_images=4, size=TILE_SIZE)
    prepare("potsdam", raw, base / "potsdam", PrepareOptions(patch_size=PATCH, stride=PATCH, workers=1, progress=False))
    return raw, base / "potsdam"


def raw_tiles(raw: Path) -> tuple[Path, ...]:
    """The raw RGB tiles, the held-out test tile (``2_13``, Potsdam's test split here) first."""
    tiles = sorted((raw / "2_Ortho_RGB").glob("*_RGB.tif"), key=lambda path: ("2_13" not in path.name, path.name))
    assert len(tiles) == 4 and "2_13" in tiles[0].name, tiles
    return tuple(tiles)


def train(out: Path, name: str, dataset_flags: list[str], model_flags: list[str]) -> Path:
    """Run ``train.py`` as a user does and return the run's ``last.pth`` (asserts a clean exit)."""
    result = run_script("train.py", *dataset_flags, *model_flags, *RECIPE, "--exp", name,
                        "--ckpt", str(out / "ckpt"), "--tb_path", str(out / "tb"), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = (out / "ckpt" / name).glob("*/last.pth")
    return checkpoint


def train_potsdam(base: Path, raw: Path, root: Path, arch: str, model_flags: tuple[str, ...] = ()) -> TrainedModel:
    """``arch`` trained on the prepared Potsdam patches at ``root``."""
    checkpoint = train(base, arch, ["--dataset", "Posdam", "--set", f"DATASET.POSDAM_DIR={root}"],
                       ["--arch", arch, *model_flags])
    return TrainedModel(checkpoint, arch, raw_tiles(raw), PotsdamDataset.class_names)


def write_custom_spec(path: Path, raw: Path) -> Path:
    """A custom-dataset YAML spec over the raw tiles: colour labels, the custom class names, a seeded split."""
    classes = [{"name": name, "color": list(colour)}
               for name, colour in zip(CUSTOM_CLASS_NAMES, PotsdamDataset.palette.tolist())]
    spec = {"name": "reference_custom", "images": str(raw / "2_Ortho_RGB"), "masks": str(raw / "5_Labels_all"),
            "image_suffix": "_RGB", "mask_suffix": "_label", "classes": classes, "patch_size": PATCH,
            "split_by": "fraction", "seed": 0, "splits": {"train": 0.75, "val": 0.25}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def train_custom(base: Path, raw: Path) -> TrainedModel:
    """PFNet-R50 trained on a custom dataset (the raw tiles under a YAML spec of its own class names)."""
    spec = write_custom_spec(base / "custom_spec.yaml", raw)
    root = base / "custom"
    prepare("custom", None, root, PrepareOptions(spec=spec, workers=1, progress=False))
    checkpoint = train(base, "custom", ["--dataset", "custom", "--dataset_spec", str(spec),
                                        "--set", f"DATASET.CUSTOM_DIR={root}"],
                       ["--arch", "pfnet_r50", *PFNET_OPTIONS])
    return TrainedModel(checkpoint, "pfnet_r50", raw_tiles(raw), CUSTOM_CLASS_NAMES)


def restore(checkpoint: Path) -> tuple[torch.nn.Module, RestoredModel]:
    """The eager model of ``checkpoint`` (no inference optimisation), every option from the checkpoint as
    eval.py and predict.py read it with no model flag, and its restore record."""
    parser = argparse.ArgumentParser()
    add_model_flags(parser)
    restored = restore_model(parser.parse_args([]), checkpoint, optimize=False)
    return restored.model, restored


def windows(tile: Path, size: int) -> list[torch.Tensor]:
    """(1, 3, size, size) normalised windows of ``tile`` (read by the project's reader) at :data:`OFFSETS`."""
    image = normalize_image(read_image(tile))
    return [image[None, :, top:top + size, left:left + size] for top, left in OFFSETS
            if top + size <= image.shape[1] and left + size <= image.shape[2]]


def agreement(expected: torch.Tensor, logits: torch.Tensor) -> tuple[float, float]:
    """(max |logits - expected| / max |expected|, share of pixels with the same argmax) of (N, K, H, W) logits."""
    relative = float((logits - expected).abs().max() / expected.abs().max())
    return relative, float((logits.argmax(1) == expected.argmax(1)).float().mean())


def read_raster(path: Path) -> np.ndarray:
    """Every band of a GeoTIFF written by predict.py: (bands, H, W)."""
    import rasterio

    with rasterio.open(path) as source:
        return source.read()
