"""The scenario table, custom scenarios and the benchmark grid plan."""

from __future__ import annotations

import pytest

from megu_core.benchmark import SCENARIOS, plan_benchmark, resolve_scenarios
from megu_core.benchmark.plan import expand_methods, split_overrides
from megu_core.benchmark.scenarios import random_amount
from megu_core.errors import ConfigError
from megu_core.methods import list_methods


def test_table_matches_benchmark_scenarios():
    assert set(SCENARIOS) == {"c10-class", "c10-random", "c100-class", "c20-class", "c20-subclass"}
    assert SCENARIOS["c10-class"].targets == ("cat", "airplane")
    assert SCENARIOS["c10-random"].targets == ("83", "10%")
    assert SCENARIOS["c20-subclass"].dataset == "cifar20"


@pytest.mark.parametrize(
    ("scenario", "target", "request_text"),
    [
        ("c10-class", "cat", "class:cat"),
        ("c10-random", "10%", "random:0.1"),
        ("c10-random", "83", "random:83"),
        ("c20-subclass", "rocket", "subclass:rocket"),
        ("c20-class", "vehicles_2", "class:vehicles_2"),
    ],
)
def test_forget_request_per_target(scenario, target, request_text):
    assert SCENARIOS[scenario].forget_request(target) == request_text


@pytest.mark.parametrize("text", ["ten", "150%", "2.5"])
def test_invalid_random_target_is_rejected(text):
    with pytest.raises(ConfigError, match="random target"):
        random_amount(text)


def test_custom_scenario_from_mapping():
    (scenario,) = resolve_scenarios(
        [{"id": "mine-class", "dataset": "/data/mine", "kind": "class", "targets": "rose"}]
    )

    assert scenario.targets == ("rose",)
    assert scenario.forget_request("rose") == "class:rose"


def test_unknown_scenario_lists_known_ones():
    with pytest.raises(ConfigError, match="c10-class"):
        resolve_scenarios(["c10-clas"])


def test_all_expands_to_registry():
    assert expand_methods(["all"]) == list_methods()
    assert expand_methods(["ssd", "all"])[0] == "ssd"


def test_overrides_split_by_method_name():
    pipeline, per_method = split_overrides({"budget.epochs": 1, "scrub.lr": 0.01})

    assert pipeline == {"budget.epochs": 1}
    assert per_method == {"scrub": {"lr": 0.01}}


def test_plan_skips_unsir_for_random():
    (cell,) = plan_benchmark(["c10-random"], ["10%"], ["all"], [0], "cpu")

    assert "unsir" in cell.skipped
    assert "unsir" not in cell.configs


def test_plan_leaves_gold_retrain_to_train_stage():
    (cell,) = plan_benchmark(["c10-class"], ["cat"], ["retrain", "ssd"], [0], "cpu")

    assert list(cell.configs) == ["ssd"]


def test_plan_seeds_training_and_budget():
    cells = plan_benchmark(["c10-random"], ["10%"], ["ssd"], [0, 1], "cpu")

    assert [cell.seed for cell in cells] == [0, 1]
    assert cells[1].configs["ssd"]["train"]["seed"] == 1
    assert cells[1].configs["ssd"]["budget"]["seed"] == 1
    assert cells[1].configs["ssd"]["forget_seed"] == 0  # one forget set for every seed


def test_plan_puts_method_settings_into_method_params():
    (cell,) = plan_benchmark(
        ["c10-class"], ["cat"], ["scrub", "ssd"], [0], "cpu", {"scrub.lr": 0.01}
    )

    assert cell.configs["scrub"]["method_params"] == {"lr": 0.01}
    assert cell.configs["ssd"]["method_params"] == {}


def test_plan_rejects_unknown_method_setting():
    with pytest.raises(ConfigError, match="method.scrub.learning_rate"):
        plan_benchmark(["c10-class"], ["cat"], ["scrub"], [0], "cpu", {"scrub.learning_rate": 1})


def test_plan_rejects_settings_for_methods_not_benchmarked():
    with pytest.raises(ConfigError, match="not benchmarked"):
        plan_benchmark(["c10-class"], ["cat"], ["ssd"], [0], "cpu", {"scrub.lr": 0.01})


def test_plan_rejects_duplicate_cells():
    duplicate = {"id": "again", "dataset": "cifar10", "kind": "class", "targets": ["cat"]}

    with pytest.raises(ConfigError, match="same samples"):
        plan_benchmark(["c10-class", duplicate], None, ["ssd"], [0], "cpu")
