"""The configuration of one unlearning pipeline run: one typed object, loadable from YAML."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from megu_core.config import DataConfig, ModelConfig, from_dict, merge, preset
from megu_core.errors import ConfigError
from megu_core.forget import parse_forget_request
from megu_core.megu.config import NoiseConfig, OracleConfig, TransitionConfig
from megu_core.methods import UnlearnBudget, get_method
from megu_core.training import TrainConfig

REFERENCES = ("none", "retrain")


@dataclass(frozen=True)
class FeatureConfig:
    """Settings of the retain reference set that the features stage extracts besides the forget set."""

    retain_per_class: int = 500  # m: retain reference samples per class for the prototypes
    seed: int = 0

    def __post_init__(self) -> None:
        if self.retain_per_class < 1:
            raise ConfigError(
                f"features.retain_per_class must be at least 1, got {self.retain_per_class}"
            )


@dataclass(frozen=True)
class PipelineConfig:
    """Dataset, model, forget request, oracle, method and its hyperparameters, seed and device."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(base_width=16))
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "cpu"
    device: str = "auto"
    forget: str = "class:cat"
    forget_seed: int = 0  # seed of random forget requests that do not carry their own
    features: FeatureConfig = field(default_factory=FeatureConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    transition: TransitionConfig = field(default_factory=TransitionConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    method: str = "megu"
    method_params: dict[str, Any] = field(default_factory=dict)
    budget: UnlearnBudget = field(default_factory=UnlearnBudget)
    reference: str = "none"  # "retrain": also train the gold retrain and report gaps to it

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ConfigError(
                f"reference must be one of {', '.join(REFERENCES)}; got {self.reference!r}"
            )
        parse_forget_request(self.forget, self.forget_seed)  # raises on a malformed request
        get_method(self.method).from_config(self.method_params)  # raises on unknown keys

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def method_instance(self):
        """The configured unlearning method with its hyperparameters."""
        return get_method(self.method).from_config(self.method_params)


def pipeline_config(
    dataset: str = "cifar10",
    preset_name: str = "cpu",
    overrides: dict[str, Any] | None = None,
    config_file: Path | None = None,
) -> PipelineConfig:
    """Build a pipeline configuration: preset, then a YAML file, then dotted-key overrides."""
    base = preset(preset_name, dataset)
    config = PipelineConfig(data=base.data, model=base.model, train=base.train, preset=base.preset)
    if config_file is not None:
        try:
            values = yaml.safe_load(Path(config_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read configuration file {config_file}: {exc}") from exc
        document = config.to_dict()
        _deep_update(document, values, "")
        config = from_dict(PipelineConfig, document)
    if overrides:
        config = merge(config, overrides)
    return config


def _deep_update(document: dict, values: dict, prefix: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'configuration file'} must be a mapping")
    for key, value in values.items():
        if key not in document:
            raise ConfigError(
                f"unknown key {prefix}{key}; allowed keys: {', '.join(prefix + k for k in sorted(document))}"
            )
        if isinstance(document[key], dict) and isinstance(value, dict) and key != "method_params":
            _deep_update(document[key], value, f"{prefix}{key}.")
        else:
            document[key] = value
