"""Models: one registry, ``get_model(arch, num_classes, **options)``; inference and training speed switches."""
from network.activation_checkpoint import enable_activation_checkpointing
from network.optimize import optimize_for_inference
from network.registry import get_model, list_models

__all__ = ["enable_activation_checkpointing", "get_model", "list_models", "optimize_for_inference"]
