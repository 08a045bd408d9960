"""Models: one registry, ``get_model(arch, num_classes, **options)``."""
from network.registry import get_model, list_models

__all__ = ["get_model", "list_models"]
