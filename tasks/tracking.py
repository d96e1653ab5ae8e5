"""Prefect tasks that record a pipeline run in MLflow: the run itself, metrics, artifacts and registry versions."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from megu_core import tracking
from megu_core.plots import metrics_comparison
from tasks.stage import StageRef, file_path

# Files a person reads, copied into the MLflow run: (stage input name, file name).
LOGGED_FILES = (
    ("concepts", "concept_scores"),
    ("concepts", "transition_matrix"),
    ("concepts", "perturbing_labels"),
    ("concepts", "transition_heatmap"),
    ("noise", "noise_pairs"),
    ("noise", "noise_per_sample"),
)

CHECKPOINT_DIGEST_TAG = "megu.checkpoint_sha256"


@task(name="start-mlflow-run")
def start_tracking(cfg: dict, run_name: str, tags: dict[str, str]) -> str:
    """Create the MLflow run of this pipeline run and log the full resolved configuration as parameters."""
    dataset = Path(cfg["data"]["source"]).name
    run_id = tracking.create_run(dataset, run_name=run_name, tags=tags)
    tracking.log_config(run_id, cfg)
    get_run_logger().info("MLflow run %s (tracking URI %s)", run_id, tracking.tracking_uri())
    return run_id


@task(name="finish-mlflow-run")
def finish_tracking(run_id: str, status: str) -> None:
    """Mark the MLflow run FINISHED or FAILED."""
    tracking.end_run(run_id, status)


@task(name="register-models")
def register_models(
    run_id: str,
    cfg: dict,
    stages: dict[str, StageRef | None],
    evaluations: dict[str, StageRef],
) -> dict[str, Any]:
    """Log metrics, artifacts and plots to the MLflow run; register the original and unlearned models.

    A checkpoint already registered (same weights digest) is reused instead of registered twice.
    """
    logger = get_run_logger()
    samples = stages["samples"]["summary"]

    metrics = {}
    for role, ref in evaluations.items():
        for name, value in ref["summary"]["metrics"].items():
            metrics[f"{role}/{name}"] = value
        tracking.log_artifact_file(run_id, file_path(ref, "metrics"), f"metrics/{role}")
    metrics["unlearn/seconds"] = stages["unlearned"]["summary"]["seconds"]
    metrics["train/original_seconds"] = stages["original"]["summary"]["seconds"]
    if stages.get("retrain"):
        metrics["train/retrain_seconds"] = stages["retrain"]["summary"]["seconds"]
        metrics["unlearn/time_ratio_to_retrain"] = (
            metrics["unlearn/seconds"] / metrics["train/retrain_seconds"]
        )
    tracking.log_metrics(run_id, {k: v for k, v in metrics.items() if v == v})  # drop NaN
    tracking.log_artifact_file(
        run_id, file_path(evaluations["unlearned"], "per_sample"), "metrics/unlearned"
    )

    for stage, name in LOGGED_FILES:
        if stages.get(stage) and name in stages[stage]["files"]:
            tracking.log_artifact_file(run_id, file_path(stages[stage], name), stage)
    with tempfile.TemporaryDirectory() as folder:
        plot = metrics_comparison(
            {role: ref["summary"]["metrics"] for role, ref in evaluations.items()},
            Path(folder) / "metrics_comparison.png",
            title=f"{cfg['method']} on {samples['request']}",
        )
        tracking.log_artifact_file(run_id, plot, "plots")

    name = tracking.registered_model_name(
        Path(cfg["data"]["source"]).name,
        f"{cfg['model']['architecture']}-w{cfg['model']['base_width']}",
    )
    original_version = _register_once(run_id, name, stages["original"], {"megu.role": "original"})
    tracking.set_alias(name, "original", original_version)
    unlearned_tags = {
        "megu.role": "unlearned",
        "megu.method": cfg["method"],
        tracking.TAG_SOURCE_VERSION: str(original_version),
        tracking.TAG_FORGET_REQUEST: samples["request"],
        "megu.request_id": samples["request_id"],
        "megu.forget_ids_sha256": samples["ids_hash"],
        "megu.mlflow_run_id": run_id,
    }
    unlearned_version = _register_once(run_id, name, stages["unlearned"], unlearned_tags)
    tracking.set_alias(name, "unlearned", unlearned_version)
    logger.info(
        "registered model %s: original version %s, unlearned version %s",
        name,
        original_version,
        unlearned_version,
    )
    return {
        "registered_model": name,
        "original_version": original_version,
        "unlearned_version": unlearned_version,
    }


def _register_once(run_id: str, name: str, ref: StageRef, tags: dict[str, str]) -> int:
    digest = ref["files"]["weights"]["sha256"]
    existing = tracking.find_versions_by_tag(name, CHECKPOINT_DIGEST_TAG, digest)
    if existing:
        return existing[0].version
    folder = Path(file_path(ref, "weights")).parent
    artifact_path = f"checkpoints/{tags['megu.role']}-{digest[:12]}"
    return tracking.register_checkpoint(
        run_id, folder, name, {**tags, CHECKPOINT_DIGEST_TAG: digest}, artifact_path
    )
