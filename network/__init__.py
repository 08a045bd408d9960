"""Models: one registry, ``get_model(arch, num_classes, **options)``; inference and training speed switches.

Each model family registers its names in its own module (imported here): PFNet (:mod:`network.pfnet`),
UperNet (:mod:`network.upernet`), PSPNet (:mod:`network.pspnet`) and DeepLabV3+ (:mod:`network.deeplabv3plus`).
"""
from network import deeplabv3plus, pfnet, pspnet, upernet  # noqa: F401  (registration)
from network.activation_checkpoint import enable_activation_checkpointing
from network.optimize import optimize_for_inference
from network.registry import ModelEntry, get_model, list_models, model_defaults, model_entry

__all__ = ["ModelEntry", "enable_activation_checkpointing", "get_model", "list_models", "model_defaults",
           "model_entry", "optimize_for_inference"]
