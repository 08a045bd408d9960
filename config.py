"""Global configuration ``cfg`` plus YAML experiment files and dotted overrides.

``cfg`` holds the settings that are not command-line flags (the dataset roots).
Every key has its default here, with a comment saying what it means.

An experiment file (``train.py --config exp.yaml``) is one YAML mapping. Lower-case top-level keys are
train.py flags (their ``dest`` names, e.g. ``lr: 0.007``); upper-case keys are sections of ``cfg``
(e.g. ``DATASET: {ISAID_DIR: /data/iSAID}``). Dotted overrides (``--set DATASET.ISAID_DIR=/data/iSAID
lr=0.01``) use the same names. Precedence, lowest first: flag defaults, experiment file, flags given on
the command line, ``--set``. train.py writes the effective configuration, in the experiment-file format,
as ``config.yaml`` beside each run, so ``--config that/config.yaml`` repeats the run.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from easydict import EasyDict

from datasets.registry import DATASET_CLASSES, DATASETS, names_text
from utils.atomic import atomic_path

cfg = EasyDict()

cfg.DATASET = EasyDict()
# Root of each dataset's prepared patches ({root}/{split}/images, {root}/{split}/masks), one key per dataset,
# declared on its class in datasets/ (root_key, default_root): ISAID_DIR, POSDAM_DIR (the original's spelling
# "posdam"), VAIHINGEN_DIR, LOVEDA_DIR, CUSTOM_DIR.
cfg.DATASET.update({dataset.root_key: dataset.default_root for dataset in DATASET_CLASSES})
# Number of cross-validation splits; --cv must be smaller (the aerial datasets have a single split).
cfg.DATASET.CV_SPLITS = 3


def dataset_root(name: str) -> str:
    """The configured root folder of dataset ``name`` (any ``--dataset`` name, e.g. ``iSAID`` or ``potsdam``).

    Raises:
        KeyError: unknown dataset name.
    """
    if name.lower() not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {names_text()}")
    return cfg.DATASET[DATASETS[name.lower()].root_key]

class ConfigError(ValueError):
    """An experiment file or override names an unknown key or holds a malformed value."""


def parse_override(text: str) -> tuple[str, str]:
    """Split ``KEY=VALUE`` into the key and the value text (``"lr=0.01"`` -> ``("lr", "0.01")``)."""
    key, sep, raw_value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. DATASET.ISAID_DIR=/data/iSAID or lr=0.01)")
    return key.strip(), raw_value


def yaml_value(text: str) -> Any:
    """A value written on the command line, read as YAML (``"[a, b]"`` -> list, ``"true"`` -> True)."""
    return yaml.safe_load(text)


def set_dotted(config: EasyDict, dotted_key: str, value: Any, source: str) -> None:
    """Set ``config[A][B] = value`` for ``dotted_key`` ``"A.B"``; the key must already exist.

    Raises:
        ConfigError: naming ``source`` (file or option) and the valid keys at the failing level.
    """
    parts = dotted_key.split(".")
    node = config
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "(not a section)"
            prefix = ".".join(parts[:depth]) or "cfg"
            raise ConfigError(f"{source}: unknown config key {dotted_key!r}; keys under {prefix}: {known}")
        if depth == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]


def merge_sections(config: EasyDict, sections: dict, source: str) -> None:
    """Merge nested upper-case ``sections`` (``{"DATASET": {"ISAID_DIR": ...}}``) into ``config``."""
    for dotted_key, value in _flatten(sections):
        set_dotted(config, dotted_key, value, source)


def _flatten(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """``{"A": {"B": 1}}`` -> ``[("A.B", 1)]``; lists and scalars are leaves."""
    leaves = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            leaves.extend(_flatten(value, dotted + "."))
        else:
            leaves.append((dotted, value))
    return leaves


def read_experiment_file(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read an experiment YAML file.

    Returns:
        ``(flag_values, cfg_sections)``: lower-case top-level keys (train.py flag names) and upper-case
        top-level keys (sections of ``cfg``).

    Raises:
        ConfigError: the file is missing, is not a YAML mapping, or has a key that is neither.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {path} does not exist; pass --config with a YAML file")
    with path.open() as handle:
        content = yaml.safe_load(handle) or {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of flag names and cfg sections, "
                          f"got {type(content).__name__}")
    flag_values = {key: value for key, value in content.items() if key.islower()}
    cfg_sections = {key: value for key, value in content.items() if key.isupper()}
    mixed = sorted(set(content) - set(flag_values) - set(cfg_sections))
    if mixed:
        raise ConfigError(f"{path}: keys {mixed} are neither flag names (lower case) nor cfg sections (upper case)")
    return flag_values, cfg_sections


def effective_config(flag_values: dict, config: EasyDict) -> dict:
    """One plain dict in the experiment-file format: flag values first, then the ``cfg`` sections."""
    merged = {key: copy.deepcopy(value) for key, value in flag_values.items()}
    merged.update(_to_plain(config))
    return merged


def _to_plain(value: Any) -> Any:
    """EasyDict / tuple trees -> plain dicts and lists (YAML- and torch.load-safe)."""
    if isinstance(value, dict):
        return {key: _to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(item) for item in value]
    return value


def save_config(path: str | os.PathLike, config: dict) -> None:
    """Write ``config`` as YAML atomically."""
    with atomic_path(path) as temp_path, open(temp_path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
