"""Model registry: builder functions by name, each with its recommended options, plus the original
PFSegNets ``--arch`` names as aliases.

Every fact about a registered model lives in its :class:`ModelEntry`: the builder, the option defaults
(the values the official training and test scripts pass), the state_dict key of its classifier (from
which a checkpoint's class count is read) and whether its training forward returns edge maps (and so
takes the joint edge loss).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Attributes:
        name: the registry name (``pfnet_r50``).
        builder: ``builder(num_classes, **options) -> nn.Module``.
        defaults: recommended values of the model's options, as the official scripts pass them.
        classifier_key: state_dict key of the final classifier weight, shape (K, C, 1, 1).
        edge_outputs: the training forward returns ``(seg_logits, edge_logits)``.
        aliases: the original's names for the same model.
    """

    name: str
    builder: Callable[..., nn.Module]
    defaults: dict = field(default_factory=dict)
    classifier_key: str = ""
    edge_outputs: bool = False
    aliases: tuple[str, ...] = ()


_ENTRIES: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}


def register_model(name: str, *aliases: str, defaults: dict | None = None, classifier_key: str,
                   edge_outputs: bool = False) -> Callable:
    """Decorator: register ``builder(num_classes, **options)`` under ``name`` and ``aliases``."""
    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _ENTRIES[name] = ModelEntry(name, builder, dict(defaults or {}), classifier_key, edge_outputs, aliases)
        for alias in aliases:
            _ALIASES[alias] = name
        return builder
    return decorate


def list_models() -> list[str]:
    """Registered model names (aliases not included)."""
    return sorted(_ENTRIES)


def model_entry(arch: str) -> ModelEntry:
    """The :class:`ModelEntry` of a registered name or alias.

    Raises:
        KeyError: unknown ``arch``; the message lists the known names.
    """
    name = _ALIASES.get(arch, arch)
    if name not in _ENTRIES:
        known = sorted(_ENTRIES) + sorted(_ALIASES)
        raise KeyError(f"unknown model {arch!r}; known: {', '.join(known)}")
    return _ENTRIES[name]


def model_defaults(arch: str) -> dict:
    """A copy of the recommended option values of ``arch`` (``{"maxpool_size": 14, ...}`` for PFNet)."""
    return dict(model_entry(arch).defaults)


def get_model(arch: str, num_classes: int | None = None, *, weights: str | None = None, **options) -> nn.Module:
    """Build a registered model, optionally with named weights of the zoo (``network.zoo``).

    Args:
        arch: a registered name (``pfnet_r50``, ``pfnet_r101``) or an original dotted name
            (``network.pointflow_resnet_with_max_avg_pool.DeepR50_PF_maxavg_deeply``).
        num_classes: K, the number of output classes.
        **options: forwarded to the builder; options not given take the entry's ``defaults``. PFNet:
            ``match_dim`` (64), ``maxpool_size`` (14), ``avgpool_size`` (9), ``edge_points`` (128), and
            for every model ``norm_layer`` and ``pretrained`` (path or None).
        weights: a zoo name (``python -m network.zoo list``), downloaded and verified on first use: a checkpoint
            of ``arch`` (``num_classes`` may be left out; its options are the entry's unless given) or an
            ImageNet trunk (as ``pretrained``).

    Raises:
        KeyError: unknown ``arch``; the message lists the known names.
        network.zoo.WeightsError: see ``network.zoo.model_with_weights``.
    """
    entry = model_entry(arch)
    if weights is not None:
        from network.zoo import model_with_weights  # the zoo builds on this registry

        return model_with_weights(entry, num_classes, weights, options)
    if num_classes is None:
        raise TypeError(f"get_model({arch!r}) needs num_classes (or weights=NAME of a checkpoint)")
    return entry.builder(num_classes, **{**entry.defaults, **options})

