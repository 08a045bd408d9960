"""Fixture case A (iSAID, 16 classes, 1x3x256x384): the model with parity weights, its input and reference."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from parity_weights import parity_state_dict

import network
from network.pfnet import PFNet

PARITY_DIR = Path(__file__).parent / "data" / "parity"


def load_case_a() -> tuple[PFNet, torch.Tensor, dict[str, np.ndarray]]:
    """(eval-mode PFNet-R50 with the parity weights, input images (1, 3, 256, 384), reference arrays).

    The input is regenerated from the fixture's seed and checked against the stored copy.
    """
    config = json.loads((PARITY_DIR / "case_a_isaid16.json").read_text())
    reference = dict(np.load(PARITY_DIR / "case_a_isaid16_compact.npz"))
    model = network.get_model("pfnet_r50", config["num_classes"], maxpool_size=config["maxpool_size"],
                              avgpool_size=config["avgpool_size"], edge_points=config["edge_points"],
                              match_dim=config["match_dim"]).eval()
    model.load_state_dict(parity_state_dict(model.state_dict()))
    images = torch.from_numpy(
        np.random.default_rng(config["input_seed"]).standard_normal(config["input_shape"]).astype(np.float32))
    assert np.array_equal(images.numpy(), reference["input"])
    return model, images, reference


def read_key_table(file_name: str) -> list[tuple[str, tuple[int, ...], str]]:
    """The original model's ``state_dict()`` layout stored in ``PARITY_DIR / file_name``: (key, shape, dtype) rows."""
    rows = []
    for line in (PARITY_DIR / file_name).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.split(",")) if shape else (), dtype))
    return rows


def parity_bound(reference: dict[str, np.ndarray]) -> float:
    """The parity tolerance: 1e-4 times the largest reference logit magnitude."""
    return 1e-4 * float(np.abs(reference["logits_every4"]).max())


# The baseline fixtures (../shared/parity/baselines): registry name and input seed of each case.
BASELINE_CASES = {"case_u_upernet_r50_isaid16": ("upernet_r50", 0), "case_p_pspnet_r50_isaid16": ("pspnet_r50", 5)}


def load_baseline_case(case: str) -> tuple[torch.nn.Module, torch.Tensor, dict[str, np.ndarray], dict]:
    """(eval-mode model with the parity weights, input images, reference arrays, the case's JSON recipe).

    The model is built by the registry name of ``BASELINE_CASES`` and checked to be the original's
    ``--arch`` of the recipe; the input is regenerated from the seed and checked against the stored copy.
    """
    arch, seed = BASELINE_CASES[case]
    config = json.loads((PARITY_DIR / f"{case}.json").read_text())
    reference = dict(np.load(PARITY_DIR / f"{case}_compact.npz"))
    assert network.model_entry(config["original_arch"]).name == arch
    model = network.get_model(arch, config["num_classes"]).eval()
    model.load_state_dict(parity_state_dict(model.state_dict()))
    images = torch.from_numpy(np.random.default_rng(seed).standard_normal(config["input_shape"]).astype(np.float32))
    assert np.array_equal(images.numpy(), reference["input"])
    return model, images, reference, config
