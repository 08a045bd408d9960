"""Deterministic weights for parity tests, re-implementing the fixtures' documented rule.

Every tensor's values depend only on its state_dict key and shape, drawn in float64 from
``numpy.random.default_rng(zlib.crc32(key))`` and cast to the tensor's dtype:

- integer tensors (``num_batches_tracked``): zeros;
- ``running_mean``: 0.1 * N(0, 1); ``running_var``: U(0.5, 1.5);
- batch-norm ``weight`` / ``bias`` (a sibling ``running_var`` exists): 1 + 0.1 * N(0, 1) / 0.1 * N(0, 1);
- other tensors of at most one dimension: 0.01 * N(0, 1);
- tensors of two or more dimensions: N(0, 1) * sqrt(1 / fan_in), fan_in = prod(shape[1:]).

Also: :func:`imagenet_file_state`, a model's trunk under the key names of the original's ImageNet files.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch


def _draw(key: str, shape: tuple[int, ...], norm_prefixes: set[str]) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    prefix, _, leaf = key.rpartition(".")
    is_norm = prefix in norm_prefixes
    if leaf == "running_mean":
        return 0.1 * rng.standard_normal(shape)
    if leaf == "running_var":
        return rng.uniform(0.5, 1.5, size=shape)
    if is_norm and leaf == "weight":
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if is_norm and leaf == "bias":
        return 0.1 * rng.standard_normal(shape)
    if len(shape) <= 1:
        return 0.01 * rng.standard_normal(shape)
    fan_in = int(np.prod(shape[1:]))
    return rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)


def parity_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Same keys, shapes and dtypes as ``state_dict``, values by the rule above."""
    norm_prefixes = {key.rpartition(".")[0] for key in state_dict if key.endswith(".running_var")}
    filled = {}
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point():
            filled[key] = torch.zeros_like(tensor)
        else:
            values = np.asarray(_draw(key, tuple(tensor.shape), norm_prefixes), dtype=np.float64)
            filled[key] = torch.from_numpy(values).to(tensor.dtype)
    return filled


def imagenet_file_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trunk of ``model`` under the key names of the original's ImageNet files (with an fc)."""
    state = {}
    for key, tensor in model.state_dict().items():
        if key.startswith("layer0.0."):
            state["conv1." + key[len("layer0.0."):]] = tensor.clone()
        elif key.startswith("layer0.1."):
            state["bn1." + key[len("layer0.1."):]] = tensor.clone()
        elif key.startswith("layer"):
            state[key] = tensor.clone()
    state["fc.weight"] = torch.zeros(1000, model.trunk_channels[-1])
    state["fc.bias"] = torch.zeros(1000)
    return state
