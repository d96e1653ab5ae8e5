"""A name-to-constructor registry for classifier architectures."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

ModelFactory = Callable[..., nn.Module]

_MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a model constructor under `name`; a duplicate name is an error."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} is already registered")
        _MODELS[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Return the registered architecture names, sorted."""
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, base_width: int = 64) -> nn.Module:
    """Build a registered architecture with a fresh initialisation."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if base_width < 1:
        raise ValueError(f"base_width must be a positive integer, got {base_width}")
    return _MODELS[name](num_classes=num_classes, base_width=base_width)
