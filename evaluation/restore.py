"""Build a model and fill it from a checkpoint, for evaluation and prediction."""
from __future__ import annotations

import argparse
import os

import torch
from torch import nn

import network
from utils.checkpoint import CheckpointMismatchError, apply_checkpoint, read_checkpoint

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def checkpoint_num_classes(path: str | os.PathLike, arch: str, trusted_pickle: bool = False) -> int:
    """Number of classes K a checkpoint of model ``arch`` was trained for (its classifier's outputs).

    Raises:
        CheckpointMismatchError: the file has no classifier weight of ``arch``.
    """
    key = network.model_entry(arch).classifier_key
    state = read_checkpoint(path, trusted_pickle=trusted_pickle)["state_dict"]
    if key not in state:
        raise CheckpointMismatchError(f"{path} has no {key}: not a {arch} checkpoint")
    return int(state[key].shape[0])


def restore_model(
    arch: str,
    snapshot: str | os.PathLike,
    num_classes: int,
    *,
    device: torch.device | str = "cpu",
    trusted_pickle: bool = False,
    optimize: bool = True,
    precision: str = "fp32",
    **model_options,
) -> tuple[nn.Module, dict]:
    """``network.get_model(arch, num_classes, **model_options)`` filled from ``snapshot``, in eval mode.

    No ImageNet weights are read (the checkpoint holds every tensor). Shapes must match exactly.
    With ``optimize`` the model goes through ``network.optimize_for_inference`` (float32: same results
    within the parity bound, faster); ``precision`` ``bf16`` / ``fp16`` runs it under autocast (lossy).

    Returns:
        (model on ``device`` in eval mode, the checkpoint's other entries: epoch, mean_iu, ...).

    Raises:
        CheckpointFileError: ``snapshot`` is not a readable checkpoint (checked before the model is built).
        CheckpointMismatchError: the checkpoint is for another class count or architecture; the
            message gives both class counts when they differ.
    """
    contents = read_checkpoint(snapshot, trusted_pickle=trusted_pickle)  # a broken file fails before the build
    model = network.get_model(arch, num_classes, pretrained=None, **model_options)
    try:
        extras = apply_checkpoint(contents, model, snapshot, strict_shapes=True)
    except CheckpointMismatchError as error:
        try:
            found = checkpoint_num_classes(snapshot, arch, trusted_pickle)
        except CheckpointMismatchError:
            raise error from None
        if found != num_classes:
            raise CheckpointMismatchError(
                f"class-count mismatch: {snapshot} was trained for {found} classes but {num_classes} are "
                f"expected here. Use the dataset the checkpoint was trained on (iSAID: 16 classes, "
                f"Potsdam/Vaihingen: 6)."
            ) from error
        raise
    model = model.to(device).eval()
    if optimize or precision != "fp32":
        model = network.optimize_for_inference(model, dtype=PRECISIONS[precision])
    return model, extras


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Point-flow options of ``network.get_model``; defaults are the values every official training
    script used (the original ``eval.py`` defaulted to ``--maxpool_size 9 --edge_points 32``)."""
    group = parser.add_argument_group("model options (defaults: the official training scripts' values)")
    group.add_argument("--maxpool_size", type=int, default=14,
                       help="salient-point max-pool grid (default 14; the original eval.py defaulted to 9)")
    group.add_argument("--avgpool_size", type=int, default=9, help="edge average-pool grid (default 9)")
    group.add_argument("--edge_points", type=int, default=128,
                       help="edge points per point-flow module (default 128; the original eval.py defaulted to 32)")
    group.add_argument("--match_dim", type=int, default=64, help="point-matcher embedding width (default 64)")
    group.add_argument("--no_optimize", action="store_true",
                       help="run the model as built, without network.optimize_for_inference (batch-norm folding, "
                            "channels_last, split head concatenation; float32 results agree within 1e-4 of max|logit|)")
    group.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                       help="fp32 (default, exact protocol), or bf16 / fp16 autocast: faster on CPUs with bf16 "
                            "support and on GPUs, argmax agrees with fp32 on >= 99.5%% of pixels")


def model_options(args: argparse.Namespace) -> dict:
    """The point-flow options added by :func:`add_model_options`, as keyword arguments for ``get_model``."""
    return {name: getattr(args, name) for name in ("maxpool_size", "avgpool_size", "edge_points", "match_dim")}


def inference_options(args: argparse.Namespace) -> dict:
    """``optimize`` and ``precision`` keyword arguments of :func:`restore_model` from the parsed flags."""
    return {"optimize": not args.no_optimize, "precision": args.precision}
