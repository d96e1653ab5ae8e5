"""Validation and serialisation of MeGU's configuration dataclasses."""

import dataclasses

import pytest

from megu_core.errors import ConfigError
from megu_core.megu import (
    ORACLE_KINDS,
    MeguLossConfig,
    NoiseConfig,
    OracleConfig,
    TransitionConfig,
    list_oracle_kinds,
)


@pytest.mark.parametrize(
    "config_class", [OracleConfig, TransitionConfig, NoiseConfig, MeguLossConfig]
)
def test_defaults_round_trip_through_dict(config_class):
    config = config_class()

    rebuilt = config_class(**config.to_dict())

    assert rebuilt == config


def test_to_dict_lists_every_field():
    fields = {field.name for field in dataclasses.fields(NoiseConfig)}

    assert set(NoiseConfig().to_dict()) == fields


def test_oracle_kinds_match_factory():
    assert sorted(ORACLE_KINDS) == list_oracle_kinds()


def test_unknown_oracle_kind_names_choices():
    with pytest.raises(ConfigError) as error:
        OracleConfig(kind="clip")

    message = str(error.value)
    assert "oracle.kind" in message
    assert "'clip'" in message
    assert "'text'" in message
    assert "'uniform'" in message


def test_prompt_without_placeholder_rejected():
    with pytest.raises(ConfigError, match=r"oracle.prompt_template"):
        OracleConfig(prompt_template="a photo")


def test_prompt_with_other_placeholder_rejected():
    with pytest.raises(ConfigError, match=r"placeholder other than"):
        OracleConfig(prompt_template="a {style} photo of a {name}")


def test_empty_oracle_model_rejected():
    with pytest.raises(ConfigError, match=r"oracle.model"):
        OracleConfig(model="  ")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tau", 0.0),
        ("tau", -1.0),
        ("tau_q", 0),
        ("omega", -0.5),
        ("tau", float("nan")),
        ("tau", "0.1"),
    ],
)
def test_invalid_transition_value_names_field(field, value):
    with pytest.raises(ConfigError, match=rf"transition.{field}"):
        TransitionConfig(**{field: value})


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0, "auto"])
def test_random_beta_accepts_auto_or_fraction(beta):
    assert TransitionConfig(random_beta=beta).random_beta == beta


@pytest.mark.parametrize("beta", ["fixed", 1.5, -0.1, True])
def test_random_beta_rejects_other_values(beta):
    with pytest.raises(ConfigError, match=r"transition.random_beta"):
        TransitionConfig(random_beta=beta)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mode", "random"),
        ("use", "neither"),
        ("steps", 0),
        ("steps", 2.5),
        ("steps", True),
        ("lr", 0.0),
        ("rho", -1.0),
        ("clip", 0.0),
        ("random_scale", 1.5),
        ("n_rel", 0),
        ("rank", -2),
        ("alpha", -0.1),
        ("eta", -0.1),
    ],
)
def test_invalid_noise_value_names_field(field, value):
    with pytest.raises(ConfigError) as error:
        NoiseConfig(**{field: value})

    assert f"noise.{field}" in str(error.value)
    assert repr(value) in str(error.value)


def test_noise_use_selects_noises():
    negative_only = NoiseConfig(use="negative")

    assert negative_only.uses_negative
    assert not negative_only.uses_positive
    assert NoiseConfig(use="positive").uses_positive
    assert not NoiseConfig(use="positive").uses_negative


@pytest.mark.parametrize("field", ["lambda_f", "lambda_feat", "lambda_kd"])
def test_negative_loss_weight_rejected(field):
    with pytest.raises(ConfigError, match=rf"loss.{field}"):
        MeguLossConfig(**{field: -1.0})


def test_config_error_is_value_error():
    with pytest.raises(ValueError):
        MeguLossConfig(lambda_f=-1.0)
