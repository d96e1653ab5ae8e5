"""The pass/fail verdict of an unlearned model against configurable thresholds.

A verdict compares the evaluation metrics of one pipeline run (`{role: {metric: value}}` with
the roles `original`, `unlearned` and, when a gold retrain was trained, `retrain`) with limits
on three questions:

- Forgetting. With a retrain, the unlearned model's forget accuracy must be within
  `max_forget_gap` points of the retrain's. Without one, a `class:` request must leave at most
  `max_forget_accuracy` percent of the forget set recognised, because a model that never saw
  the class scores 0. Other requests (sub-class, random, ids) must not recognise the forget set
  better than comparable unseen data: forget accuracy at most `max_forget_excess` points above
  the test accuracy on the forgotten concept (sub-class) or on the whole test set (random, ids).
- Utility. Retain accuracy may drop at most `max_retain_drop` points below the original's.
- Privacy. With a retrain, MIA (entropy) must be within `max_mia_entropy_gap` of the
  retrain's. Without one, it must be at most `max_mia_entropy`.

A metric that is missing or NaN fails its check, so a verdict never passes on absent evidence.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from megu_core.errors import ConfigError

PASSED = "passed"
FAILED = "failed"

Metrics = Mapping[str, Mapping[str, float]]  # model role -> metric name -> value


@dataclass(frozen=True)
class VerdictThresholds:
    """Limits an unlearned model must meet for its verdict to pass; accuracies in percent."""

    # A class never seen scores 0%; 5 points leave room for a few look-alike samples.
    max_forget_accuracy: float = 5.0
    # A retrain recognises randomly chosen training samples about as well as test samples.
    max_forget_excess: float = 5.0
    # Distance to the retrain's forget accuracy, when a retrain exists.
    max_forget_gap: float = 5.0
    # Finetuning methods lost at most 1.8 points of retain accuracy in a prototype run
    # (CPU preset, CIFAR-10, class:cat), so a drop of over 5 points is a damaged model.
    max_retain_drop: float = 5.0
    # The attack is class-balanced, so 0.5 is chance level. Above it, the forget set still
    # looks more like members than like unseen data.
    # NOTE: for random and ids requests this bound is not calibrated against a retrain.
    max_mia_entropy: float = 0.5
    # Distance to the retrain's MIA (entropy); in the same prototype run, methods were
    # 0.003 to 0.19 away.
    max_mia_entropy_gap: float = 0.1

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(
                    f"threshold {field.name} must be a non-negative number, got {value!r}"
                )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> VerdictThresholds:
        """Build thresholds from a mapping of field names to numbers, defaults for the rest."""
        values = dict(values or {})
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown threshold(s) {unknown}; known thresholds: {known}")
        return cls(**values)

    def to_dict(self) -> dict[str, float]:
        """Return the thresholds as a plain mapping, as stored in the audit record."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Check:
    """One comparison of a metric with its limit."""

    name: str  # forget, retain or privacy
    metric: str  # what was compared, e.g. "|forget_accuracy - retrain's|"
    value: float | None  # None when the metric was missing or NaN
    limit: float
    passed: bool

    def describe(self) -> str:
        """Return one line such as `privacy check failed, mia_entropy 0.700 > 0.5`."""
        if self.value is None:
            return f"{self.name} check failed because {self.metric} is missing"
        outcome, relation = ("passed", "<=") if self.passed else ("failed", ">")
        return (
            f"{self.name} check {outcome}, {self.metric} {self.value:.3f} {relation} {self.limit:g}"
        )


@dataclass(frozen=True)
class Verdict:
    """The outcome of every check; it passes only when all of them pass."""

    checks: tuple[Check, ...]
    thresholds: VerdictThresholds

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def label(self) -> str:
        """Return `passed` or `failed`, the value stored in audit records and registry tags."""
        return PASSED if self.passed else FAILED

    def summary(self) -> str:
        """Return the failed checks, or every check when all passed, in one line."""
        listed = [check for check in self.checks if not check.passed] or list(self.checks)
        return "; ".join(check.describe() for check in listed)

    def checks_as_dicts(self) -> list[dict[str, Any]]:
        """Return the checks as plain mappings, as stored in the audit record."""
        return [dataclasses.asdict(check) for check in self.checks]


def judge(metrics: Metrics, request_kind: str, thresholds: VerdictThresholds) -> Verdict:
    """Compare the unlearned model's metrics with the thresholds and return the verdict.

    `request_kind` is the forget request's kind (class, subclass, random or ids).
    """
    for role in ("original", "unlearned"):
        if role not in metrics:
            raise ValueError(
                f"metrics for the verdict need the role {role!r}; got roles {sorted(metrics)}"
            )
    checks = (
        _forget_check(metrics, request_kind, thresholds),
        _retain_check(metrics, thresholds),
        _privacy_check(metrics, thresholds),
    )
    return Verdict(checks=checks, thresholds=thresholds)


def _forget_check(metrics: Metrics, request_kind: str, limits: VerdictThresholds) -> Check:
    unlearned = metrics["unlearned"]
    forget = _value(unlearned, "forget_accuracy")

    if "retrain" in metrics:
        retrain = _value(metrics["retrain"], "forget_accuracy")
        gap = _abs_difference(forget, retrain)
        return _check("forget", "|forget_accuracy - retrain's|", gap, limits.max_forget_gap)

    if request_kind == "class":
        return _check("forget", "forget_accuracy", forget, limits.max_forget_accuracy)

    unseen_metric = "test_forgotten_accuracy" if request_kind == "subclass" else "test_accuracy"
    excess = _difference(forget, _value(unlearned, unseen_metric))
    return _check("forget", f"forget_accuracy - {unseen_metric}", excess, limits.max_forget_excess)


def _retain_check(metrics: Metrics, limits: VerdictThresholds) -> Check:
    drop = _difference(
        _value(metrics["original"], "retain_accuracy"),
        _value(metrics["unlearned"], "retain_accuracy"),
    )
    return _check("retain", "retain_accuracy drop from the original", drop, limits.max_retain_drop)


def _privacy_check(metrics: Metrics, limits: VerdictThresholds) -> Check:
    mia = _value(metrics["unlearned"], "mia_entropy")
    if "retrain" in metrics:
        gap = _abs_difference(mia, _value(metrics["retrain"], "mia_entropy"))
        return _check("privacy", "|mia_entropy - retrain's|", gap, limits.max_mia_entropy_gap)
    return _check("privacy", "mia_entropy", mia, limits.max_mia_entropy)


def _check(name: str, metric: str, value: float | None, limit: float) -> Check:
    passed = value is not None and value <= limit
    return Check(name=name, metric=metric, value=value, limit=limit, passed=passed)


def _value(row: Mapping[str, float], metric: str) -> float | None:
    value = row.get(metric)
    if value is None or math.isnan(float(value)):
        return None
    return float(value)


def _difference(minuend: float | None, subtrahend: float | None) -> float | None:
    if minuend is None or subtrahend is None:
        return None
    return minuend - subtrahend


def _abs_difference(first: float | None, second: float | None) -> float | None:
    difference = _difference(first, second)
    return None if difference is None else abs(difference)
