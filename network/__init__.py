"""Models: one registry, ``get_model(arch, num_classes, **options)``; inference and training speed switches."""
from network.activation_checkpoint import enable_activation_checkpointing
from network.optimize import optimize_for_inference
from network.registry import ModelEntry, get_model, list_models, model_defaults, model_entry

__all__ = ["ModelEntry", "enable_activation_checkpointing", "get_model", "list_models", "model_defaults",
           "model_entry", "optimize_for_inference"]
