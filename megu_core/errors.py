"""megu's domain errors.

Bad input from a user raises the built-in type that fits (`ValueError`, `FileNotFoundError`,
`KeyError` subclasses below); each message names the offending value and what to do next.
"""

from __future__ import annotations


class MeguError(Exception):
    """Base class of every error megu raises on purpose."""


class DatasetError(MeguError, ValueError):
    """A dataset source is missing, malformed or inconsistent (a file, row, column or split)."""


class ForgetRequestError(MeguError, ValueError):
    """A forget request cannot be parsed or resolves to an invalid forget set."""


class CheckpointError(MeguError, ValueError):
    """A checkpoint is missing, incomplete or does not match the requested model."""


class ConfigError(MeguError, ValueError):
    """A configuration key is unknown or its value is invalid."""


class ArtifactError(MeguError, ValueError):
    """A stored artifact is missing, corrupt or does not match its declared schema."""
