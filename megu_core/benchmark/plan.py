"""The benchmark grid: scenarios x targets x seeds, each with one resolved configuration per method.

Planning touches no data: it validates names and settings so that a typo fails before any
model trains.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from megu_core.benchmark.scenarios import Scenario, resolve_scenarios
from megu_core.errors import ConfigError
from megu_core.methods import get_method, list_methods
from megu_core.pipeline.config import pipeline_config

# Rows every scenario gets without running a method: the gold retrain comes from the cached
# train stage, shared with `megu run --reference retrain`, and the original is the start point.
REFERENCE_ROWS = ("retrain", "original")
# Methods that never run through the unlearn stage in a benchmark.
TRAIN_STAGE_METHODS = ("retrain",)
# Methods defined only for forgotten classes: skipped in random scenarios.
CLASS_ONLY_METHODS = ("unsir",)


@dataclass(frozen=True)
class BenchmarkCell:
    """One (scenario, target, seed) of the grid with the configuration of each method to run."""

    scenario: Scenario
    target: str
    seed: int
    forget: str  # the forget request
    base: dict[str, Any]  # configuration of the shared stages: prepare, train, evaluate
    configs: dict[str, dict[str, Any]]  # method name -> its full pipeline configuration
    skipped: dict[str, str] = field(default_factory=dict)  # method name -> reason

    @property
    def label(self) -> str:
        return f"{self.scenario.id}/{self.target}/seed{self.seed}"


def expand_methods(methods: Sequence[str]) -> list[str]:
    """Expand "all" to every registered method and check each name against the registry."""
    names: list[str] = []
    for name in methods:
        for item in list_methods() if name == "all" else [name]:
            get_method(item)  # raises ConfigError listing the registered methods
            if item not in names:
                names.append(item)
    if not names:
        raise ConfigError(
            f"give at least one method; registered methods: {', '.join(list_methods())}"
        )
    return names


def split_overrides(
    overrides: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Separate pipeline settings (budget.epochs=1) from method hyperparameters (scrub.lr=0.01)."""
    pipeline: dict[str, Any] = {}
    per_method: dict[str, dict[str, Any]] = {}
    registered = set(list_methods())
    for key, value in (overrides or {}).items():
        head, _, rest = key.partition(".")
        if head in registered and rest:
            per_method.setdefault(head, {})[rest] = value
        else:
            pipeline[key] = value
    return pipeline, per_method


def targets_for(scenario: Scenario, targets: Sequence[str] | Mapping[str, Sequence[str]] | None):
    """Return the targets of one scenario: its defaults, a list for every scenario, or a per-scenario mapping."""
    if targets is None:
        return list(scenario.targets)
    if isinstance(targets, Mapping):
        return list(dict.fromkeys(targets.get(scenario.id, scenario.targets)))
    if isinstance(targets, str):
        return [targets]
    return list(dict.fromkeys(targets))


def plan_benchmark(
    scenarios: Sequence[str | Mapping],
    targets: Sequence[str] | Mapping[str, Sequence[str]] | None,
    methods: Sequence[str],
    seeds: Sequence[int],
    preset: str,
    overrides: Mapping[str, Any] | None = None,
) -> list[BenchmarkCell]:
    """Build every cell of the grid, resolving one configuration per method and cell."""
    if not seeds:
        raise ConfigError("give at least one seed, e.g. 0")
    names = expand_methods(methods)
    pipeline, per_method = split_overrides(overrides)
    unknown = sorted(set(per_method) - set(names))
    if unknown:
        raise ConfigError(
            f"settings for method(s) {', '.join(unknown)} were given, but they are not benchmarked; "
            f"methods: {', '.join(names)}"
        )

    cells = []
    for scenario in resolve_scenarios(scenarios):
        for target in targets_for(scenario, targets):
            for seed in dict.fromkeys(int(seed) for seed in seeds):
                cells.append(_cell(scenario, target, seed, names, preset, pipeline, per_method))
    _check_distinct(cells)
    return cells


def _check_distinct(cells: list[BenchmarkCell]) -> None:
    """Reject two cells with the same data, request and seed: their stages would share folders."""
    seen: dict[tuple, str] = {}
    for cell in cells:
        key = (json.dumps(cell.base["data"], sort_keys=True), cell.forget, cell.seed)
        if key in seen:
            raise ConfigError(
                f"cells {seen[key]} and {cell.label} forget the same samples of the same dataset "
                "with the same seed; remove one of the two scenarios or targets"
            )
        seen[key] = cell.label


def _cell(scenario, target, seed, names, preset, pipeline, per_method) -> BenchmarkCell:
    forget = scenario.forget_request(target)
    settings = {**pipeline, "forget": forget, "train.seed": seed, "budget.seed": seed}

    def config(method: str) -> dict[str, Any]:
        values = {**settings, "method": method, "method_params": per_method.get(method, {})}
        return pipeline_config(scenario.dataset, preset, values).to_dict()

    configs, skipped = {}, {}
    for name in names:
        if name in TRAIN_STAGE_METHODS:
            continue
        if name in CLASS_ONLY_METHODS and scenario.kind == "random":
            skipped[name] = f"{name} is not defined for random forgetting"
            continue
        configs[name] = config(name)
    base = configs.get("megu") or config("megu")
    return BenchmarkCell(scenario, target, seed, forget, base, configs, skipped)
