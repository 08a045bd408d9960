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


# What "exact" means across CPUs (docs/model.md): float32 results move with the CPU's kernels (AVX2, AVX-512, AMX)
# and the thread count, never from run to run. Measured on every case here with 1 and 2 threads on torch's
# AVX-512 and AVX2 kernels, on oneDNN and MKL limited to AVX2, and to AVX without FMA (bench/parity_variation.py):
# logits within 6.4e-6 x max|logit| of the stored ones, every other tensor the tests compare within 3.8e-5 x its
# largest value. The bound, 1e-4 x the largest value of the tensor compared, is 2.6x or more those figures.
RELATIVE_BOUND = 1e-4


def scaled_bound(reference: np.ndarray) -> float:
    """The tolerance of a comparison with ``reference``: :data:`RELATIVE_BOUND` times its largest magnitude."""
    return RELATIVE_BOUND * float(np.abs(reference).max())


def parity_bound(reference: dict[str, np.ndarray]) -> float:
    """The parity tolerance of a case's logits: :func:`scaled_bound` of the stored (sub-sampled) reference logits."""
    return scaled_bound(reference["logits_every4"])


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


def near_tie_tolerance(scores: np.ndarray) -> float:
    """How close two of ``scores`` must be for rounding on another CPU to swap their order: each may move by
    :func:`scaled_bound`, so twice that."""
    return 2 * scaled_bound(scores)


def assert_same_top_k(ours: np.ndarray, reference: np.ndarray, scores: np.ndarray) -> None:
    """Assert two top-k selections of flat indices into ``scores`` (the reference's values, flattened) are the
    same set but for near-ties: a point in one set only must score within :func:`near_tie_tolerance` of the
    reference's k-th largest score, where its neighbour across the cut can take its place on another CPU."""
    assert ours.shape == reference.shape
    kth_largest = np.sort(scores)[::-1][reference.size - 1]
    swapped = np.setxor1d(ours, reference)
    assert np.all(np.abs(scores[swapped] - kth_largest) <= near_tie_tolerance(scores)), (
        f"points {swapped.tolist()} differ from the reference's top {reference.size} and are no near-tie")


def assert_same_window_maxima(ours: np.ndarray, reference: np.ndarray, scores: np.ndarray) -> None:
    """Assert each max-pool window chose the reference's point (flat indices into ``scores``, the reference's
    values, flattened), or one scoring within :func:`near_tie_tolerance` of it (a near-tie)."""
    assert ours.shape == reference.shape
    moved = ours != reference
    assert np.all(np.abs(scores[ours[moved]] - scores[reference[moved]]) <= near_tie_tolerance(scores)), (
        f"{int(moved.sum())} windows chose another point, and not at a near-tie")

