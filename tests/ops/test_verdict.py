"""The verdict: which checks apply per request kind, with and without a retrain, and their limits."""

from __future__ import annotations

import math

import pytest

from megu_core.errors import ConfigError
from megu_core.verdict import FAILED, PASSED, VerdictThresholds, judge

DEFAULTS = VerdictThresholds()


def metrics(**unlearned: float) -> dict[str, dict[str, float]]:
    """Metrics of a good class unlearning run, with `unlearned` values replaced."""
    row = {
        "forget_accuracy": 0.0,
        "retain_accuracy": 90.0,
        "test_accuracy": 80.0,
        "test_forgotten_accuracy": 0.0,
        "mia_entropy": 0.2,
    }
    row.update(unlearned)
    original = {"forget_accuracy": 95.0, "retain_accuracy": 92.0, "mia_entropy": 0.4}
    return {"original": original, "unlearned": row}


def checks_by_name(verdict) -> dict:
    return {check.name: check for check in verdict.checks}


def test_class_request_within_limits_passes():
    verdict = judge(metrics(), "class", DEFAULTS)

    assert verdict.passed
    assert verdict.label == PASSED
    assert set(checks_by_name(verdict)) == {"forget", "retain", "privacy"}


def test_class_request_still_recognised_fails():
    verdict = judge(metrics(forget_accuracy=40.0), "class", DEFAULTS)

    assert verdict.label == FAILED
    assert not checks_by_name(verdict)["forget"].passed
    assert "forget check failed, forget_accuracy 40.000 > 5" in verdict.summary()


def test_retain_drop_over_limit_fails():
    verdict = judge(metrics(retain_accuracy=80.0), "class", DEFAULTS)

    retain = checks_by_name(verdict)["retain"]
    assert retain.value == pytest.approx(12.0)
    assert not retain.passed
    assert not verdict.passed


def test_mia_entropy_over_chance_fails():
    verdict = judge(metrics(mia_entropy=0.7), "class", DEFAULTS)

    assert not checks_by_name(verdict)["privacy"].passed


def test_random_request_compares_with_test_accuracy():
    close = judge(metrics(forget_accuracy=83.0, test_accuracy=80.0), "random", DEFAULTS)
    memorised = judge(metrics(forget_accuracy=99.0, test_accuracy=80.0), "random", DEFAULTS)

    assert checks_by_name(close)["forget"].passed
    assert checks_by_name(close)["forget"].value == pytest.approx(3.0)
    assert not checks_by_name(memorised)["forget"].passed


def test_subclass_request_compares_with_forgotten_test_accuracy():
    verdict = judge(
        metrics(forget_accuracy=30.0, test_forgotten_accuracy=28.0, test_accuracy=80.0),
        "subclass",
        DEFAULTS,
    )

    forget = checks_by_name(verdict)["forget"]
    assert forget.metric == "forget_accuracy - test_forgotten_accuracy"
    assert forget.value == pytest.approx(2.0)
    assert forget.passed


def test_retrain_switches_to_gaps():
    values = metrics(forget_accuracy=3.0, mia_entropy=0.25)
    values["retrain"] = {"forget_accuracy": 0.0, "mia_entropy": 0.21, "retain_accuracy": 93.0}

    verdict = judge(values, "class", VerdictThresholds(max_forget_gap=2.0))

    checks = checks_by_name(verdict)
    assert checks["forget"].value == pytest.approx(3.0)
    assert not checks["forget"].passed
    assert checks["privacy"].value == pytest.approx(0.04)
    assert checks["privacy"].passed


def test_missing_metric_fails_its_check():
    verdict = judge(metrics(mia_entropy=math.nan), "class", DEFAULTS)

    privacy = checks_by_name(verdict)["privacy"]
    assert privacy.value is None
    assert not privacy.passed
    assert "mia_entropy is missing" in verdict.summary()


def test_missing_role_raises():
    with pytest.raises(ValueError, match="original"):
        judge({"unlearned": metrics()["unlearned"]}, "class", DEFAULTS)


def test_thresholds_from_mapping_keeps_defaults():
    limits = VerdictThresholds.from_mapping({"max_retain_drop": 2})

    assert limits.max_retain_drop == 2
    assert limits.max_forget_accuracy == DEFAULTS.max_forget_accuracy


def test_thresholds_unknown_name_raises():
    with pytest.raises(ConfigError, match="max_retain_dorp"):
        VerdictThresholds.from_mapping({"max_retain_dorp": 2})


def test_thresholds_negative_value_raises():
    with pytest.raises(ConfigError, match="max_mia_entropy"):
        VerdictThresholds(max_mia_entropy=-0.1)
