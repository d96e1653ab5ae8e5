"""The `megu benchmark` command line: arguments and custom-dataset scenarios."""

from __future__ import annotations

import pytest

from flows.benchmark_cli import benchmark_scenarios, grid_defaults
from flows.cli import build_parser, main
from megu_core.errors import ConfigError


def _args(*argv: str):
    return build_parser().parse_args(["benchmark", *argv])


def test_defaults_run_all_methods_sequentially():
    args = _args()

    assert args.methods == ["all"]
    assert args.runner == "sequential"
    assert benchmark_scenarios(args, ["c10-class"]) == ["c10-class"]


def test_grid_defaults_cpu_and_gpu():
    assert grid_defaults(gpu=False) == (["c10-class"], [0])
    scenarios, seeds = grid_defaults(gpu=True)
    assert scenarios == ["c10-class", "c10-random", "c100-class", "c20-class", "c20-subclass"]
    assert seeds == [0, 1, 2]


def test_lists_and_runner_are_parsed():
    args = _args("--scenario", "c10-class", "c10-random", "--seeds", "0", "1", "--runner", "dask")

    assert args.scenario == ["c10-class", "c10-random"]
    assert args.seeds == [0, 1]
    assert args.runner == "dask"
    assert benchmark_scenarios(args) == ["c10-class", "c10-random"]


def test_dataset_folder_becomes_custom_scenario(tmp_path):
    folder = tmp_path / "My_Photos.v2"
    args = _args("--dataset", str(folder), "--kind", "random", "--targets", "5%")

    (scenario,) = benchmark_scenarios(args)

    assert scenario == {
        "id": "my-photos-v2-random",
        "dataset": str(folder),
        "kind": "random",
        "targets": ["5%"],
    }


def test_dataset_without_kind_is_rejected(tmp_path):
    args = _args("--dataset", str(tmp_path), "--targets", "cat")

    with pytest.raises(ConfigError, match="--kind"):
        benchmark_scenarios(args)


def test_unknown_runner_is_rejected():
    with pytest.raises(SystemExit):
        _args("--runner", "ray")


def test_bad_method_setting_fails_before_the_flow(monkeypatch):
    import flows.benchmark
    import flows.cli

    def no_flow(**_):
        raise AssertionError("the flow must not start on a bad setting")

    errors = []
    monkeypatch.setattr(flows.benchmark, "benchmark_flow", no_flow)
    monkeypatch.setattr(flows.cli.log, "error", lambda text, *args: errors.append(text % args))

    code = main(["benchmark", "--methods", "ssd", "--set", "ssd.selection=0", "--device", "cpu"])

    assert code == 2
    assert len(errors) == 1
    assert "method.ssd.dampening and selection must be positive" in errors[0]
