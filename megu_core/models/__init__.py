"""Classifier architectures that expose penultimate features and a linear head."""

from megu_core.models import resnet as _resnet  # noqa: F401  (registers the ResNets)
from megu_core.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
