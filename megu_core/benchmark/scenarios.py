"""Benchmark scenarios as data: the dataset, the kind of forgetting and the default targets.

The table follows the public protocols that MeGU and its baselines report on. A target is a
class name (class scenarios), a fine class name (sub-class scenarios) or an amount (random
scenarios: a count such as 83, or a percentage such as 10%).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from megu_core.errors import ConfigError

KINDS = ("class", "subclass", "random")
_SCENARIO_ID = re.compile(r"[a-z0-9][a-z0-9-]*")  # also valid in Prefect artifact keys


@dataclass(frozen=True)
class Scenario:
    """One row of the scenario table: where the data comes from and what is forgotten."""

    id: str
    dataset: str  # a catalog name (cifar10, cifar20, cifar100) or a local dataset folder
    kind: str  # class, subclass or random
    targets: tuple[str, ...]  # the default targets
    comparable_with: str = ""  # the public results these numbers sit beside

    def __post_init__(self) -> None:
        if not _SCENARIO_ID.fullmatch(self.id):
            raise ConfigError(
                f"scenario id {self.id!r} must use lowercase letters, digits and dashes"
            )
        if self.kind not in KINDS:
            raise ConfigError(
                f"scenario {self.id}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}"
            )
        if not self.targets:
            raise ConfigError(f"scenario {self.id}: give at least one target")

    def forget_request(self, target: str) -> str:
        """Return the forget request of one target, e.g. class:cat, subclass:rocket or random:0.1."""
        if self.kind in ("class", "subclass"):
            return f"{self.kind}:{target}"
        return f"random:{random_amount(target)}"

    def to_dict(self) -> dict:
        return asdict(self)


def random_amount(target: str) -> str:
    """Turn a random-forgetting target into the amount of a random request: "10%" -> "0.1"."""
    text = target.strip()
    try:
        if text.endswith("%"):
            fraction = float(text[:-1]) / 100
            if not 0 < fraction < 1:
                raise ValueError(text)
            return f"{fraction:g}"
        number = float(text)
    except ValueError as exc:
        raise ConfigError(
            f"random target {target!r} must be a count (83), a fraction (0.1) or a percentage (10%)"
        ) from exc
    if number >= 1 and number != int(number):
        raise ConfigError(f"random target {target!r}: a count must be a whole number")
    return f"{int(number)}" if number >= 1 else f"{number:g}"


SCENARIOS: dict[str, Scenario] = {
    scenario.id: scenario
    for scenario in (
        Scenario("c10-class", "cifar10", "class", ("cat", "airplane"), "MeGU class-wise CIFAR-10"),
        # 83 images is the SSD split of 0.00165 of the 50,000 training images.
        Scenario("c10-random", "cifar10", "random", ("83", "10%"), "SSD random; SalUn 10%"),
        Scenario(
            "c100-class",
            "cifar100",
            "class",
            ("rocket", "mushroom", "baby", "lamp", "sea"),
            "SSD / MeGU full-class CIFAR-100",
        ),
        # The superclasses of those five fine classes, by their CIFAR-100 coarse label names.
        Scenario(
            "c20-class",
            "cifar20",
            "class",
            (
                "vehicles_2",
                "fruit_and_vegetables",
                "people",
                "household_electrical_devices",
                "large_natural_outdoor_scenes",
            ),
            "SSD full-class CIFAR-20",
        ),
        Scenario(
            "c20-subclass",
            "cifar20",
            "subclass",
            ("rocket", "mushroom", "baby", "lamp", "sea"),
            "SSD / MeGU sub-class",
        ),
    )
}


def resolve_scenarios(entries: Sequence[str | Mapping]) -> list[Scenario]:
    """Resolve scenarios from table ids, or from mappings with the fields of Scenario (custom data)."""
    if not entries:
        raise ConfigError(f"give at least one scenario; known scenarios: {', '.join(SCENARIOS)}")
    scenarios = []
    for entry in entries:
        if isinstance(entry, Mapping):
            scenarios.append(_custom_scenario(entry))
        elif entry in SCENARIOS:
            scenarios.append(SCENARIOS[entry])
        else:
            raise ConfigError(
                f"unknown scenario {entry!r}; known scenarios: {', '.join(SCENARIOS)}, "
                "or pass a mapping with id, dataset, kind and targets"
            )
    ids = [scenario.id for scenario in scenarios]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"scenario ids must be unique, got {ids}")
    return scenarios


def _custom_scenario(entry: Mapping) -> Scenario:
    allowed = {"id", "dataset", "kind", "targets", "comparable_with"}
    unknown = sorted(set(entry) - allowed)
    missing = sorted({"id", "dataset", "kind", "targets"} - set(entry))
    if unknown or missing:
        raise ConfigError(
            f"custom scenario {dict(entry)!r}: unknown keys {unknown or 'none'}, missing keys "
            f"{missing or 'none'}; allowed keys: {', '.join(sorted(allowed))}"
        )
    values = dict(entry)
    targets = values["targets"]
    values["targets"] = (targets,) if isinstance(targets, str) else tuple(targets)
    return Scenario(**values)
