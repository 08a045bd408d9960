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


def parity_bound(reference: dict[str, np.ndarray]) -> float:
    """The parity tolerance: 1e-4 times the largest reference logit magnitude."""
    return 1e-4 * float(np.abs(reference["logits_every4"]).max())
