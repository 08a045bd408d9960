"""Build a model and fill it from a checkpoint, for evaluation and prediction.

The arch and model options come from the flags, else from the configuration train.py saved in the
checkpoint, else from the registry (:mod:`network.options`); the class count from the checkpoint's
classifier, checked against the dataset's when one is named.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import network
from datasets.registry import DATASETS, class_counts_text
from evaluation.dataset_split import dataset_table
from network.options import ResolvedModel, resolve_model_options
from utils.checkpoint import CheckpointMismatchError, fill_model, read_checkpoint, read_class_table

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class RestoredModel:
    """A model ready for inference: ``model`` (eval mode, on its device), ``num_classes`` K, ``resolved``
    (arch, options and where each came from) and ``extras`` (the checkpoint's other entries: epoch,
    mean_iu, config, ...)."""

    model: nn.Module
    num_classes: int
    resolved: ResolvedModel
    extras: dict


def checkpoint_num_classes(checkpoint: dict, arch: str, source: str | os.PathLike) -> int:
    """Number of classes K a checkpoint (from ``read_checkpoint``) of model ``arch`` was trained for.

    Raises:
        CheckpointMismatchError: the checkpoint has no classifier weight of ``arch``.
    """
    key = network.model_entry(arch).classifier_key
    weight = checkpoint["state_dict"].get(key)
    if weight is None:
        raise CheckpointMismatchError(f"{source} has no {key}: not a {arch} checkpoint (is --arch right?)")
    return int(weight.shape[0])


def restore_model(
    args: argparse.Namespace,
    snapshot: str | os.PathLike,
    num_classes: int | None = None,
    *,
    device: torch.device | str = "cpu",
    trusted_pickle: bool = False,
    optimize: bool = True,
    precision: str = "fp32",
) -> RestoredModel:
    """The model of ``snapshot``, with the arch and options resolved from ``args`` and the checkpoint.

    No ImageNet weights are read (the checkpoint holds every tensor). Shapes must match exactly.
    With ``optimize`` the model goes through ``network.optimize_for_inference`` (float32: same results
    within the parity bound, faster); ``precision`` ``bf16`` / ``fp16`` runs it under autocast (lossy).

    Args:
        args: flags with the attributes of ``network.options.add_model_flags`` (None = not given).
        snapshot: the checkpoint file.
        num_classes: K expected by the dataset, or None to take the checkpoint's.

    Raises:
        CheckpointMismatchError: the checkpoint is for another class count or architecture; the
            message gives both class counts when they differ.
    """
    checkpoint = read_checkpoint(snapshot, trusted_pickle=trusted_pickle)
    resolved = resolve_model_options(args, checkpoint.get("config"), str(snapshot))
    found = checkpoint_num_classes(checkpoint, resolved.arch, snapshot)
    if num_classes is not None and found != num_classes:
        trained_on = (checkpoint.get("config") or {}).get("dataset")
        source = f"it was trained on {trained_on}" if trained_on else "it does not record its dataset"
        raise CheckpointMismatchError(
            f"class-count mismatch: {snapshot} was trained for {found} classes but {num_classes} are expected "
            f"here; {source}. Use the dataset the checkpoint was trained on ({class_counts_text()})."
        )
    model = network.get_model(resolved.arch, found, pretrained=None, **resolved.options)
    extras = fill_model(model, checkpoint, snapshot, strict_shapes=True,
                        classifier_key=network.model_entry(resolved.arch).classifier_key)
    model = model.to(device).eval()
    if optimize or precision != "fp32":
        model = network.optimize_for_inference(model, dtype=PRECISIONS[precision])
    return RestoredModel(model, found, resolved, extras)


def saved_class_table(extras: dict) -> tuple[list[str], np.ndarray] | None:
    """The classes a checkpoint was trained for, from its entries (``RestoredModel.extras``).

    Returns:
        (class names, (K, 3) uint8 RGB palette): those train.py saved in the checkpoint, else the table of
        the built-in dataset its saved configuration names; None when it says neither (an official
        snapshot, or a dataset described by a file whose classes were not saved).
    """
    saved = read_class_table(extras)
    if saved is not None:
        return saved
    name = (extras.get("config") or {}).get("dataset")
    cls = DATASETS.get(str(name).lower())
    if cls is None or hasattr(cls, "from_spec"):
        return None
    return dataset_table(name)


def add_speed_flags(parser: argparse.ArgumentParser) -> None:
    """``--no_optimize`` and ``--precision`` (see :func:`restore_model`)."""
    group = parser.add_argument_group("inference speed")
    group.add_argument("--no_optimize", action="store_true",
                       help="run the model as built, without network.optimize_for_inference (batch-norm folding, "
                            "channels_last, split head concatenation; float32 results agree within 1e-4 of max|logit|)")
    group.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                       help="fp32 (default, exact protocol), or bf16 / fp16 autocast: faster on CPUs with bf16 "
                            "support and on GPUs, argmax agrees with fp32 on >= 99.5%% of pixels")


def speed_options(args: argparse.Namespace) -> dict:
    """``optimize`` and ``precision`` keyword arguments of :func:`restore_model` from the parsed flags."""
    return {"optimize": not args.no_optimize, "precision": args.precision}
