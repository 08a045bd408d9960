"""Configuration: the defaults of the settings that are not flags, YAML experiment files and dotted overrides.

``get_cfg()`` hands out a fresh copy of the defaults (the dataset roots); nothing here is mutated. Every
key has its default here, with a comment saying what it means.

An experiment file (``--config exp.yaml`` of train.py, eval.py and predict.py) is one YAML mapping.
Lower-case top-level keys are the script's flags (their ``dest`` names, e.g. ``lr: 0.007``); upper-case
keys are sections of the configuration
(e.g. ``DATASET: {ISAID_DIR: /data/iSAID}``). Dotted overrides (``--set DATASET.ISAID_DIR=/data/iSAID
lr=0.01``) use the same names. Precedence, lowest first: flag defaults, experiment file, flags given on
the command line, ``--set``. train.py writes the effective configuration, in the experiment-file format,
as ``config.yaml`` beside each run, so ``--config that/config.yaml`` repeats the run.
"""
from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any

import yaml
from easydict import EasyDict

from datasets.registry import DATASET_CLASSES, DATASETS, names_text
from utils.atomic import atomic_path

_DEFAULTS = EasyDict()

_DEFAULTS.DATASET = EasyDict()
# Root of each dataset's prepared patches ({root}/{split}/images, {root}/{split}/masks), one key per dataset,
# declared on its class in datasets/ (root_key, default_root): ISAID_DIR, POSDAM_DIR (the original's spelling
# "posdam"), VAIHINGEN_DIR, LOVEDA_DIR, CUSTOM_DIR.
_DEFAULTS.DATASET.update({dataset.root_key: dataset.default_root for dataset in DATASET_CLASSES})

# Flags an experiment file or --set cannot give: they name the configuration itself.
NOT_SETTABLE = {"help", "config", "overrides"}


def get_cfg() -> EasyDict:
    """A fresh copy of the defaults; each entry point merges its experiment file and ``--set`` into its own."""
    return copy.deepcopy(_DEFAULTS)


def dataset_root(config: EasyDict, name: str) -> str:
    """The root folder of dataset ``name`` (any ``--dataset`` name, e.g. ``iSAID`` or ``potsdam``) in ``config``.

    Raises:
        KeyError: unknown dataset name.
    """
    if name.lower() not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {names_text()}")
    return config.DATASET[DATASETS[name.lower()].root_key]


class ConfigError(ValueError):
    """An experiment file or override names an unknown key or holds a malformed value."""


def parse_override(text: str) -> tuple[str, str]:
    """Split ``KEY=VALUE`` into the key and the value text (``"lr=0.01"`` -> ``("lr", "0.01")``)."""
    key, sep, raw_value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. DATASET.ISAID_DIR=/data/iSAID or lr=0.01)")
    return key.strip(), raw_value


def yaml_value(text: str, source: str) -> Any:
    """A value written on the command line, read as YAML (``"[a, b]"`` -> list, ``"true"`` -> True).

    Raises:
        ConfigError: the text is not plain YAML (e.g. a ``!!python/...`` tag, which is never constructed, or an
            unclosed bracket); the message names ``source``.
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{source}: {text!r} is not a plain YAML value ({problem.strip()}); write a number, "
                          "text, true/false or a [list]") from None


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
            node[part] = typed_like(node[part], value, f"{source}: {dotted_key}")
        else:
            node = node[part]


def typed_like(default: Any, value: Any, source: str) -> Any:
    """``value`` for a config key whose default is ``default``: of the same kind (text, whole number, number,
    on/off); an integer is accepted for a float key. Keys whose default is None or a section take any value.

    Raises:
        ConfigError: naming ``source``, the value and the kind expected.
    """
    kinds = ((bool, "true or false"), (int, "a whole number"), (float, "a number"), (str, "text"))
    for kind, described in kinds:
        if not isinstance(default, kind):
            continue
        fits = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not fits:
            hint = ' (quote it in YAML, e.g. "5")' if kind is str else ""
            raise ConfigError(f"{source}: {value!r} is not {described}{hint}")
        return value
    return value


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
    try:
        with path.open() as handle:
            content = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{path}: not valid YAML{line} ({problem})") from None
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


def add_config_flags(parser: argparse.ArgumentParser, script: str) -> None:
    """``--config FILE`` and ``--set KEY=VALUE ...``, read by :func:`parse_with_config`."""
    group = parser.add_argument_group("configuration")
    group.add_argument("--config", default=None,
                       help=f"YAML experiment file: {script} flag names (lower case) and configuration sections "
                            "(upper case, e.g. DATASET: {ISAID_DIR: /data/iSAID}; see config.py); flags given on "
                            "the command line win")
    group.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                       help="overrides applied last: flag names (lr=0.01) or configuration keys "
                            "(DATASET.ISAID_DIR=/data/iSAID)")


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, EasyDict]:
    """Parse ``argv`` with ``parser`` after its ``--config`` file; apply ``--set`` last.

    Precedence, lowest first: flag defaults, experiment file, flags on the command line, ``--set``.
    Values from the file and ``--set`` pass the same type and ``choices`` checks as the command line
    (:func:`flag_value`). The parser must have the flags of :func:`add_config_flags`.

    Returns:
        ``(args, config)``: the flags, and a fresh configuration (:func:`get_cfg`) with the file's sections
        and the ``--set`` keys merged in.

    Raises:
        SystemExit: (argparse, exit status 2) on bad flags, naming the file or override at fault.
    """
    config = get_cfg()
    pre_parser = argparse.ArgumentParser(add_help=False)
    pre_parser.add_argument("--config", default=None)
    config_path = pre_parser.parse_known_args(argv)[0].config
    settable = {action.dest: action for action in parser._actions if action.dest not in NOT_SETTABLE}
    # flags whose own default is None (e.g. --pretrained): --set KEY=null clears a value the file gave
    nullable = {dest for dest, action in settable.items() if action.default is None}
    try:
        if config_path:
            file_flags, cfg_sections = read_experiment_file(config_path)
            unknown = sorted(set(file_flags) - set(settable))
            if unknown:
                raise ConfigError(f"{config_path}: unknown flags {unknown}; see {parser.prog} --help for the names")
            parser.set_defaults(**{key: flag_value(settable[key], value, f"{config_path}: {key}")
                                   for key, value in file_flags.items()})
            for key in file_flags:  # a required flag (eval.py's --dataset) is given by the file
                settable[key].required = False
            merge_sections(config, cfg_sections, source=config_path)
        args = parser.parse_args(argv)
        for override in args.overrides:
            key, text = parse_override(override)
            value = yaml_value(text, f"--set {override}")
            if key in settable:
                setattr(args, key, flag_value(settable[key], value, f"--set {override}", key in nullable))
            else:
                set_dotted(config, key, value, source=f"--set {override}")
    except ConfigError as error:
        parser.error(str(error))
    return args, config


def flag_value(action: argparse.Action, value: Any, source: str, nullable: bool | None = None) -> Any:
    """A flag's value from an experiment file or ``--set``, checked as argparse checks the command line.

    Args:
        action: the flag's argparse action.
        value: the file's YAML value, or the ``--set`` text read as YAML; text given to a numeric flag is
            converted with its type (``"1e-3"``, a string in YAML, -> 0.001).
        source: where the value came from, for errors (``exp.yaml: amp`` or ``--set amp=fp8``).
        nullable: whether None (YAML ``null``) is accepted; default: when the action's default is None.

    Returns:
        The value typed as the flag: bool for on/off flags, int or float for numeric flags, str otherwise
        (None where the flag's default is None).

    Raises:
        ConfigError: naming ``source``, the value and what the flag accepts.
    """
    if action.nargs == 0:  # on/off flags (store_true, --x/--no-x)
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {value!r} is not an on/off value; use true or false")
        return value
    if value is None and (action.default is None if nullable is None else nullable):
        return None
    if action.type in (int, float):
        value = number_value(action.type, value, source)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # as the command line passes it
    elif not isinstance(value, str):
        raise ConfigError(f"{source}: {value!r} is not a text value")
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{source}: {value!r} is not allowed; choose from {sorted(action.choices)}")
    return value


def number_value(kind: type, value: Any, source: str) -> int | float:
    """``value`` as ``kind`` (int or float): text is parsed, a float is refused for an int flag."""
    name = "an integer" if kind is int else "a number"
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            raise ConfigError(f"{source}: {value!r} is not {name}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and isinstance(value, float)):
        raise ConfigError(f"{source}: {value!r} is not {name}")
    return kind(value)


def save_config(path: str | os.PathLike, config: dict) -> None:
    """Write ``config`` as YAML atomically."""
    with atomic_path(path) as temp_path, open(temp_path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
