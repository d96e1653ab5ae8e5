"""Typed configuration: dataset, model and training settings, presets, YAML loading.

Unknown keys and invalid values raise ConfigError naming the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from megu_core.errors import ConfigError
from megu_core.training import TrainConfig


@dataclass(frozen=True)
class DataConfig:
    """The dataset to load and the label column the model predicts."""

    source: str = "cifar10"  # catalog name, local folder or Hub id
    label_column: str | None = None  # None: the catalog's default for the source
    fine_label_column: str | None = None
    image_size: int = 32


@dataclass(frozen=True)
class ModelConfig:
    """The classifier architecture."""

    architecture: str = "resnet18"
    base_width: int = 64


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines how an original model is trained and evaluated."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    device: str = "auto"
    preset: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Reference schedule epochs per dataset (CIFAR-10 / 20 / 100).
REFERENCE_EPOCHS = {"cifar10": 20, "cifar20": 40, "cifar100": 200}


def preset(name: str, dataset: str = "cifar10") -> ExperimentConfig:
    """Return a named preset for `dataset`.

    `cpu`: base width 16 and a 15-epoch cosine schedule, about one minute per CIFAR-10 epoch on
    2 CPU cores. `reference`: base width 64 and the benchmark's schedule (SGD lr 0.1, batch 64,
    one warm-up epoch, step decay by 0.2).
    """
    data = DataConfig(source=dataset)
    if name == "cpu":
        return ExperimentConfig(
            data=data,
            model=ModelConfig(base_width=16),
            # Label smoothing 0.1: 85.1% test accuracy on CIFAR-10 against 84.4 to 84.9% without,
            # measured on 2 CPU cores with 15 epochs.
            train=TrainConfig(
                epochs=15,
                batch_size=128,
                lr=0.1,
                label_smoothing=0.1,
                schedule="cosine",
                warmup_epochs=1,
            ),
            preset="cpu",
        )
    if name == "reference":
        epochs = REFERENCE_EPOCHS.get(dataset, 20)
        return ExperimentConfig(
            data=data,
            model=ModelConfig(base_width=64),
            train=TrainConfig(
                epochs=epochs,
                batch_size=64,
                lr=0.1,
                schedule="step",
                warmup_epochs=1,
                nesterov=False,
                milestones=(0.3, 0.6, 0.8),
                gamma=0.2,
            ),
            preset="reference",
        )
    if name == "tiny":
        # For tests and smoke runs on a few hundred images.
        return ExperimentConfig(
            data=data,
            model=ModelConfig(base_width=4),
            train=TrainConfig(epochs=2, batch_size=32, lr=0.05, warmup_epochs=0),
            preset="tiny",
        )
    raise ConfigError(f"unknown preset {name!r}; available presets: cpu, reference, tiny")


def from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build a (nested) config dataclass from a dict, rejecting unknown keys by name."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; allowed keys: "
            f"{', '.join(prefix + n for n in sorted(names))}"
        )
    kwargs = {}
    for key, value in values.items():
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = from_dict(kind, value, f"{prefix}{key}.")
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            _check_scalar_type(f"{prefix}{key}", value, kind)
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"invalid values under {prefix or 'config'}: {exc}") from exc


_SCALARS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _check_scalar_type(name: str, value: Any, kind: Any) -> None:
    """Reject a value of the wrong scalar type, such as `train.epochs=abc`, naming the key."""
    if typing.get_origin(kind) not in (None, typing.Union, types.UnionType):
        return  # containers such as tuple[float, ...] are not checked here
    allowed = [t for t in typing.get_args(kind) or (kind,) if t in _SCALARS or t is type(None)]
    if not allowed or (value is None and type(None) in allowed):
        return
    numeric = float in allowed and isinstance(value, int) and not isinstance(value, bool)
    if numeric or any(type(value) is t for t in allowed):
        return
    expected = " or ".join(_SCALARS.get(t, "null") for t in allowed)
    raise ConfigError(f"{name} must be {expected}, got {value!r}")


def merge(config: Any, overrides: dict[str, Any]) -> Any:
    """Return `config` with dotted-key overrides applied (`{"train.lr": 0.05}`)."""
    document = dataclasses.asdict(config)
    for dotted, value in overrides.items():
        node = document
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown configuration key {dotted!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(
                f"unknown configuration key {dotted!r}; allowed here: {', '.join(sorted(node))}"
            )
        node[parts[-1]] = value
    return from_dict(type(config), document)


def load_yaml(path: Path, cls: type = ExperimentConfig) -> Any:
    """Load a config dataclass from a YAML file."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc
    return from_dict(cls, values)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `key=value` from the command line, reading the value as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.lr=0.05")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)
