"""The unlearning-method registry: each method is one file, registered under the name users type."""

from __future__ import annotations

from collections.abc import Callable

from megu_core.errors import ConfigError

_METHODS: dict[str, type] = {}


def register_method(name: str) -> Callable[[type], type]:
    """Register an UnlearningMethod subclass under `name`; a duplicate name is an error."""

    def decorator(cls: type) -> type:
        if name in _METHODS:
            raise ValueError(
                f"unlearning method {name!r} is already registered by {_METHODS[name].__name__}"
            )
        cls.name = name
        _METHODS[name] = cls
        return cls

    return decorator


def list_methods() -> list[str]:
    """Return the registered method names, sorted."""
    return sorted(_METHODS)


def get_method(name: str) -> type:
    """Return the class registered under `name`, or raise listing the registered ones."""
    if name not in _METHODS:
        raise ConfigError(
            f"unknown unlearning method {name!r}; registered methods: {', '.join(list_methods())}"
        )
    return _METHODS[name]
