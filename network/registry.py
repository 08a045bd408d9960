"""Model registry: builder functions by name, plus the original PFSegNets ``--arch`` names as aliases."""
from __future__ import annotations

from typing import Callable

from torch import nn

from network.pfnet import PFNet

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_ALIASES: dict[str, str] = {}


def register_model(name: str, *aliases: str) -> Callable:
    """Decorator: register ``builder(num_classes, **options)`` under ``name`` and ``aliases``."""
    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[name] = builder
        for alias in aliases:
            _ALIASES[alias] = name
        return builder
    return decorate


def list_models() -> list[str]:
    """Registered model names (aliases not included)."""
    return sorted(_BUILDERS)


def get_model(arch: str, num_classes: int, **options) -> nn.Module:
    """Build a registered model.

    Args:
        arch: a registered name (``pfnet_r50``, ``pfnet_r101``) or an original dotted name
            (``network.pointflow_resnet_with_max_avg_pool.DeepR50_PF_maxavg_deeply``).
        num_classes: K, the number of output classes.
        **options: forwarded to the builder: ``match_dim`` (64), ``maxpool_size`` (14),
            ``avgpool_size`` (9), ``edge_points`` (128), ``norm_layer``, ``pretrained`` (path or None).

    Raises:
        KeyError: unknown ``arch``; the message lists the known names.
    """
    name = _ALIASES.get(arch, arch)
    if name not in _BUILDERS:
        known = sorted(_BUILDERS) + sorted(_ALIASES)
        raise KeyError(f"unknown model {arch!r}; known: {', '.join(known)}")
    return _BUILDERS[name](num_classes, **options)


_ORIGINAL_MODULE = "network.pointflow_resnet_with_max_avg_pool"


@register_model("pfnet_r50", f"{_ORIGINAL_MODULE}.DeepR50_PF_maxavg_deeply", "DeepR50_PF_maxavg_deeply")
def pfnet_r50(num_classes: int, **options) -> PFNet:
    """PFNet with a deep-stem ResNet-50 trunk (33.0 M parameters for 16 classes)."""
    return PFNet(num_classes, depth=50, **options)


@register_model("pfnet_r101", f"{_ORIGINAL_MODULE}.DeepR101_PF_maxavg_deeply", "DeepR101_PF_maxavg_deeply")
def pfnet_r101(num_classes: int, **options) -> PFNet:
    """PFNet with a deep-stem ResNet-101 trunk (52.0 M parameters for 16 classes)."""
    return PFNet(num_classes, depth=101, **options)
