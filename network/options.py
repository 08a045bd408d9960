"""The model flags shared by train.py, eval.py and predict.py, and where each value comes from.

``--arch`` and the options of a model (PFNet: ``--maxpool_size``, ``--avgpool_size``, ``--edge_points``,
``--match_dim``) are defined once, here, with no default of their own. :func:`resolve_model_options`
fills them in this order:

1. a flag given on the command line (or in ``--config`` / ``--set``);
2. the configuration saved in the checkpoint (train.py writes its flags there: ``--resume`` in train.py,
   ``--snapshot`` in eval.py and predict.py);
3. the registry's recommended values for the arch (``network.model_defaults``: for PFNet the official
   scripts' 14 / 9 / 128 / 64).

A flag that contradicts the checkpoint's saved value wins, with a warning naming both.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from network.registry import list_models, model_defaults, model_entry

DEFAULT_ARCH = "pfnet_r50"
MODEL_OPTION_FLAGS = ("maxpool_size", "avgpool_size", "edge_points", "match_dim")
# Where a resolved value came from, as :func:`resolve_model_options` reports it.
FROM_FLAG, FROM_CHECKPOINT, FROM_REGISTRY = "flag", "checkpoint", "registry default"


def add_model_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add ``--arch`` and the model options (all default None: resolved by :func:`resolve_model_options`)."""
    group = parser.add_argument_group(
        "model (a flag wins; else the checkpoint's saved value; else the arch's recommended value)")
    group.add_argument("--arch", default=None,
                       help=f"registered model ({', '.join(list_models())}) or the original's dotted name, "
                            f"e.g. network.pointflow_resnet_with_max_avg_pool.DeepR50_PF_maxavg_deeply "
                            f"(default: the checkpoint's, else {DEFAULT_ARCH})")
    group.add_argument("--maxpool_size", type=int, default=None,
                       help="PFNet: salient-point max-pool grid of the point-flow modules (recommended 14, the "
                            "official scripts' value; the original train.py defaulted to 9)")
    group.add_argument("--avgpool_size", type=int, default=None,
                       help="PFNet: edge average-pool grid of the point-flow modules (recommended 9)")
    group.add_argument("--edge_points", type=int, default=None,
                       help="PFNet: edge points per point-flow module (recommended 128; the original train.py "
                            "and eval.py defaulted to 32)")
    group.add_argument("--match_dim", type=int, default=None,
                       help="PFNet: embedding channels of the point matcher (recommended 64)")
    return group


def same_model(first: str, second: str) -> bool:
    """Whether two arch names (registered names or the original's aliases) name one model."""
    try:
        return model_entry(first).name == model_entry(second).name
    except KeyError:
        return False


@dataclass(frozen=True)
class ResolvedModel:
    """The model to build: ``arch``, its ``options`` for ``network.get_model``, the ``sources`` of each value
    (``{"arch": "flag", "maxpool_size": "checkpoint", ...}``) and ``warnings`` about contradicted values."""

    arch: str
    options: dict
    sources: dict
    warnings: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line: ``arch pfnet_r50 (checkpoint), maxpool_size 14 (flag), ...``."""
        values = {"arch": self.arch, **self.options}
        return ", ".join(f"{name} {value} ({self.sources[name]})" for name, value in values.items())


def resolve_model_options(args: argparse.Namespace, saved_config: dict | None,
                          checkpoint_name: str = "the checkpoint") -> ResolvedModel:
    """The arch and model options from the flags, ``saved_config`` (a checkpoint's ``config``) and the registry.

    Args:
        args: parsed flags with the attributes of :func:`add_model_flags` (None = not given).
        saved_config: the flag values a checkpoint was trained with (its ``config`` entry), or None (an
            official PFSegNets snapshot, or a fresh training run).
        checkpoint_name: how warnings name the checkpoint (its path).

    A model option given for an arch that has no such option is ignored, with a warning.

    Raises:
        KeyError: unknown arch (the message lists the known names).
    """
    saved = saved_config or {}
    warnings = []

    def pick(name: str, fallback):
        given, stored = getattr(args, name, None), saved.get(name)
        if given is not None:
            same = stored == given or (name == "arch" and stored is not None and same_model(stored, given))
            if stored is not None and not same:
                warnings.append(f"--{name} {given} contradicts the value {stored} saved in {checkpoint_name}; "
                                f"using {given}")
            return given, FROM_FLAG
        if stored is not None:
            return stored, FROM_CHECKPOINT
        return fallback, FROM_REGISTRY

    arch, arch_source = pick("arch", DEFAULT_ARCH)
    defaults = model_defaults(arch)
    not_applicable = [name for name in MODEL_OPTION_FLAGS if name not in defaults and getattr(args, name, None)]
    if not_applicable:
        warnings.append(f"--arch {arch} has no option {', '.join('--' + name for name in not_applicable)}: ignored "
                        f"(its options: {', '.join(sorted(defaults)) or 'none'})")
    options, sources = {}, {"arch": arch_source}
    for name, recommended in defaults.items():
        options[name], sources[name] = pick(name, recommended)
    return ResolvedModel(arch, options, sources, tuple(warnings))
