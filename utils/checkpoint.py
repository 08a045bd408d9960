"""Checkpoints: one format, the original PFSegNets snapshot dict plus our extras.

A checkpoint is a dict ``{"state_dict": ..., "optimizer": ..., "epoch": int, "mean_iu": float,
"command": str, ...}`` as the original's ``utils/misc.py`` writes it; keys of ``state_dict`` may
carry the ``module.`` prefix of DataParallel/DistributedDataParallel. A bare state_dict also loads.

Files are read with ``torch.load(weights_only=True)``. The official snapshots store ``mean_iu`` as a
numpy float64, so the numpy scalar and dtype globals needed to rebuild it are allow-listed (under
their numpy 1.x and 2.x module names); nothing else outside torch's safe set is unpickled unless the
caller passes ``trusted_pickle=True`` for a legacy file it trusts.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from utils.atomic import atomic_path

WRAPPER_PREFIX = "module."


ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy format starts with a protocol-2 pickle of its 10-byte magic number (opcode LONG1)
LEGACY_MAGIC = b"\x80\x02\x8a\x0a"
LEGACY_PICKLES = 4  # magic number, protocol version, system info, then the object


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's tensors do not fit the model (other class count, architecture or options)."""


class CheckpointFileError(ValueError):
    """A file that cannot be read as a checkpoint: empty, truncated, damaged, not torch.save's format, or
    holding objects that only ``trusted_pickle`` may unpickle. The message is one line naming the file."""


def _numpy_safe_globals() -> list:
    numpy_core = getattr(np, "_core", None) or np.core
    scalar = numpy_core.multiarray.scalar
    dtype_classes = {type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32")}
    return [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        *dtype_classes,
    ]


def _first_sentence(error: BaseException) -> str:
    """The first sentence of an error's first line (torch's errors run over many lines)."""
    lines = str(error).strip().splitlines()
    text = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return text or type(error).__name__


def _zip_archive_problem(path: Path) -> str | None:
    try:
        _check_zip_archive(str(path))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        return f"truncated or damaged PyTorch checkpoint (incomplete zip archive: {_first_sentence(error)}); " \
               "save or download it again"
    return None


def _format_problem(path: Path) -> str | None:
    """What makes ``path`` unreadable as a torch.save file, judged from its bytes without unpickling; None if
    it looks like one (the zip format of torch >= 1.6 with a complete archive, or the legacy format)."""
    with open(path, "rb") as handle:
        head = handle.read(len(LEGACY_MAGIC))
    if not head:
        return "empty file (0 bytes), not a PyTorch checkpoint; was it saved or copied completely?"
    if head == ZIP_MAGIC:
        return _zip_archive_problem(path)
    if head == LEGACY_MAGIC:
        return None
    return ("not a PyTorch checkpoint (neither torch.save's zip format nor its legacy format; "
            f"the file starts with {head!r})")


def _pickle_is_well_formed(path: Path) -> bool:
    """Whether the pickles torch.save wrote parse (``data.pkl`` of the zip format, or the legacy format's
    leading pickles), checked with pickletools: nothing is imported or run."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if name.rsplit("/", 1)[-1] == "data.pkl"]
            if not names:
                return False
            stream, count = io.BytesIO(archive.read(names[0])), 1
    else:
        stream, count = io.BytesIO(path.read_bytes()), LEGACY_PICKLES
    try:
        for _ in range(count):
            for _operation in pickletools.genops(stream):
                pass
    except Exception:  # any parse failure of the opcode stream means the bytes are not a pickle
        return False
    return True


def _unsafe_global(error: BaseException) -> str:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    return f" (such as {found.group(1)})" if found else ""


def _load(path: Path, map_location: str | torch.device, trusted_pickle: bool) -> Any:
    """``torch.load`` of a file that passed :func:`check_checkpoint_file`, with every failure turned into one
    :class:`CheckpointFileError` line naming ``path``."""
    try:
        if trusted_pickle:
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if not trusted_pickle and _pickle_is_well_formed(path):
            raise CheckpointFileError(
                f"{path} holds Python objects outside the safe set of tensors and numbers{_unsafe_global(error)}; "
                "if you trust this file, pass --trusted-pickle (trusted_pickle=True), which lets it run code"
            ) from None
        raise CheckpointFileError(f"{path}: damaged PyTorch checkpoint (its pickled data does not parse); "
                                  "save or download it again") from None
    except Exception as error:  # torch reports damage as RuntimeError, EOFError, KeyError, ...
        raise CheckpointFileError(f"{path}: truncated or not a PyTorch checkpoint ({_first_sentence(error)})") from None


def check_checkpoint_file(path: str | Path) -> None:
    """Check, without unpickling anything, that ``path`` exists and looks like a torch.save file (for files
    read later, e.g. the ImageNet weights of --pretrained, so that a broken one fails before any work).

    Raises:
        FileNotFoundError: no such file.
        CheckpointFileError: empty, truncated or not in torch.save's format; one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    problem = _format_problem(path)
    if problem is not None:
        raise CheckpointFileError(f"{path}: {problem}")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    trusted_pickle: bool = False) -> dict[str, Any]:
    """Read a checkpoint file into a dict with a ``state_dict`` entry (wrapper prefixes removed).

    Args:
        path: the ``.pth`` file.
        map_location: where tensors are loaded.
        trusted_pickle: unpickle arbitrary objects (``weights_only=False``). This can run code stored in the
            file: only for files you trust.

    Raises:
        FileNotFoundError: no such file.
        CheckpointFileError: the file is empty, truncated, damaged, not in torch.save's format, or holds
            objects that need ``trusted_pickle`` (suggested only for a well-formed pickle); one line.
        CheckpointMismatchError: the file holds no tensors that could be model weights.
    """
    path = Path(path)
    check_checkpoint_file(path)
    raw = _load(path, map_location, trusted_pickle)
    if not isinstance(raw, dict):
        raise CheckpointMismatchError(f"{path} holds a {type(raw).__name__}, not a checkpoint dict or state_dict")
    contents = dict(raw) if "state_dict" in raw else {"state_dict": raw}
    state = contents["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"{path}: 'state_dict' is not a mapping of names to tensors")
    contents["state_dict"] = {_strip_wrapper(key): value for key, value in state.items()}
    return contents


def _strip_wrapper(key: str) -> str:
    while key.startswith(WRAPPER_PREFIX):
        key = key[len(WRAPPER_PREFIX):]
    return key


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside a DataParallel / DistributedDataParallel wrapper (or the model itself)."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def compare_state_dicts(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between a model's state_dict and a checkpoint's (empty if they fit)."""
    problems = []
    for key, tensor in expected.items():
        if key not in found:
            problems.append(f"missing in checkpoint: {key} {tuple(tensor.shape)}")
        elif found[key].shape != tensor.shape:
            problems.append(f"{key}: model expects {tuple(tensor.shape)}, checkpoint has {tuple(found[key].shape)}")
    problems.extend(f"not in model: {key} {tuple(found[key].shape)}" for key in found if key not in expected)
    return problems


def _mismatch_hint(model_state: dict[str, torch.Tensor], found: dict[str, torch.Tensor],
                   classifier_key: str | None) -> str:
    expected, stored = model_state.get(classifier_key or ""), found.get(classifier_key or "")
    if expected is not None and stored is not None and expected.shape != stored.shape:
        return (f" The checkpoint was trained for {stored.shape[0]} classes, the model has "
                f"{expected.shape[0]}: pick the matching dataset, or load only the tensors that fit to "
                f"fine-tune (train.py --snapshot_partial; Python: strict_shapes=False).")
    return " Is the checkpoint for this architecture (--arch)?"


def fill_model(model: nn.Module, contents: dict[str, Any], source: str | Path, *, strict_shapes: bool = True,
               classifier_key: str | None = None) -> dict[str, Any]:
    """Copy the ``state_dict`` of ``contents`` (from :func:`read_checkpoint`) into ``model``.

    Args:
        model: the model to fill (a wrapped model is unwrapped first).
        contents: the checkpoint dict; its ``state_dict`` entry is removed.
        source: the file's path, for messages.
        strict_shapes: refuse any missing, unexpected or differently shaped tensor. With False, load
            the tensors that fit and leave the others as they are (the original's "forgiving" restore,
            made explicit); the skipped names are returned under ``"skipped"``.
        classifier_key: the model's classifier weight (``network.model_entry(arch).classifier_key``), so a
            mismatch there is reported as a class-count mismatch.

    Returns:
        The checkpoint's other entries (``epoch``, ``mean_iu``, ``optimizer``, ``command``, ``config``, ...),
        plus ``"skipped"`` (list of keys not loaded).

    Raises:
        CheckpointMismatchError: with ``strict_shapes``, naming each expected and found shape.
    """
    found = contents.pop("state_dict")
    model = unwrap_model(model)
    model_state = model.state_dict()
    problems = compare_state_dicts(model_state, found)
    if problems and strict_shapes:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise CheckpointMismatchError(
            f"{source} does not fit the model ({len(problems)} differences):\n  {shown}{more}\n"
            + _mismatch_hint(model_state, found, classifier_key).strip()
        )
    fitting = {k: v for k, v in found.items() if k in model_state and model_state[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    contents["skipped"] = sorted(set(model_state) - set(fitting))
    return contents


def load_checkpoint(path: str | Path, model: nn.Module, *, strict_shapes: bool = True,
                    map_location: str | torch.device = "cpu", trusted_pickle: bool = False,
                    classifier_key: str | None = None) -> dict[str, Any]:
    """Read checkpoint ``path`` (:func:`read_checkpoint`) and fill ``model`` from it (:func:`fill_model`).

    ``path`` may hold the original snapshot dict or a bare state_dict, ``module.`` prefixes allowed.

    Returns:
        The file's other entries (``epoch``, ``mean_iu``, ``optimizer``, ``command``, ...), plus
        ``"skipped"`` (list of keys not loaded).

    Raises:
        CheckpointMismatchError: with ``strict_shapes``, naming each expected and found shape.
    """
    contents = read_checkpoint(path, map_location, trusted_pickle)
    return fill_model(model, contents, path, strict_shapes=strict_shapes, classifier_key=classifier_key)


class _ErrorKeepingFile:
    """A binary file wrapper that keeps the ``OSError`` of a failed write: torch.save reports a full disk
    only as "enforce fail at inline_container.cc", so the OS reason is taken from here."""

    def __init__(self, handle: BinaryIO):
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def _check_zip_archive(path: str) -> None:
    with zipfile.ZipFile(path) as archive:
        archive.infolist()


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` with ``torch.save`` atomically and verified (see :func:`utils.atomic.atomic_path`).

    An interrupted or failed save never leaves a truncated file at ``path``; parent folders are created.

    Raises:
        utils.atomic.WriteError: the file could not be written (one line: the path and the OS reason,
            e.g. "No space left on device"); the previous file at ``path`` is unchanged.
    """
    with atomic_path(path, verify=_check_zip_archive) as temp_name, open(temp_name, "wb") as handle:
        recorder = _ErrorKeepingFile(handle)
        try:
            torch.save(payload, recorder)
        except RuntimeError as error:
            if recorder.error is None:
                raise
            raise recorder.error from error


def checkpoint_class_table(dataset: Any) -> dict[str, list]:
    """The checkpoint entries naming the classes a model was trained for, from a dataset (class):
    ``{"class_names": [K names], "palette": [K [r, g, b] lists]}`` (plain lists: safe to unpickle)."""
    return {"class_names": list(dataset.class_names), "palette": np.asarray(dataset.palette, np.uint8).tolist()}


def read_class_table(checkpoint: dict[str, Any]) -> tuple[list[str], np.ndarray] | None:
    """(class names, (K, 3) uint8 RGB palette) saved by train.py in a checkpoint dict; None for files without
    them (the official snapshots, older runs)."""
    if "class_names" not in checkpoint or "palette" not in checkpoint:
        return None
    return list(checkpoint["class_names"]), np.asarray(checkpoint["palette"], np.uint8).reshape(-1, 3)
