"""The unlearning flow: prepare, train, features, concepts, noise, unlearn, evaluate, register."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from megu_core.checkpoint import read_checkpoint_config
from megu_core.metrics import METRIC_LABELS, format_metrics_table
from megu_core.pipeline.config import pipeline_config
from tasks.pipeline import (
    build_noise_pairs,
    checkpoint_input,
    dataset_input,
    evaluate_model,
    extract_features,
    finetune,
    prepare_data,
    query_concepts,
    train_model,
)
from tasks.stage import StageRef
from tasks.tracking import finish_tracking, register_models, start_tracking

STAGES = ("prepare", "train", "features", "concepts", "noise", "unlearn", "evaluate")
MEGU_STAGE_METHODS = ("megu",)  # methods that need the features, concepts and noise stages


def stages_to_refresh(refresh: list[str] | None) -> set[str]:
    """Return the stages to recompute: each named stage and every stage after it."""
    refresh = list(refresh or [])
    unknown = [stage for stage in refresh if stage not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    if not refresh:
        return set()
    first = min(STAGES.index(stage) for stage in refresh)
    return set(STAGES[first:])


def imported_model_settings(folder: Path) -> dict[str, Any]:
    """Architecture and training schedule of an existing checkpoint, as configuration overrides."""
    document = read_checkpoint_config(folder)
    settings = {
        "model.architecture": document["model"]["architecture"],
        "model.base_width": document["model"]["base_width"],
    }
    for key, value in document.get("config", {}).get("train", {}).items():
        settings[f"train.{key}"] = value
    return settings


class StageRunner:
    """Runs stage tasks, refreshing those named, and records whether each was computed or cached."""

    def __init__(self, cfg: dict, refresh: set[str], original: str | None = None) -> None:
        self.cfg = cfg
        self.refresh = refresh
        self.original = original
        self.statuses: list[dict[str, Any]] = []

    def __call__(
        self,
        task_fn,
        stage: str,
        inputs: dict,
        options: dict | None = None,
        label: str | None = None,
    ) -> StageRef:
        refresh = stage in self.refresh
        runnable = task_fn.with_options(refresh_cache=True) if refresh else task_fn
        started = time.perf_counter()
        state = runnable(self.cfg, inputs, options, refresh, return_state=True)
        ref = state.result()
        cached = state.name == "Cached" or not ref["computed"]
        self.statuses.append(
            {
                "stage": label or stage,
                "status": "cached" if cached else "computed",
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
        return ref


@flow(name="megu-unlearning")
def unlearning_flow(
    dataset: str = "cifar10",
    forget: str = "class:cat",
    preset: str = "cpu",
    method: str = "megu",
    reference: str = "none",
    overrides: dict[str, Any] | None = None,
    refresh: list[str] | None = None,
    original: str | None = None,
) -> dict[str, Any]:
    """Unlearn `forget` from the original model of `dataset` and evaluate it.

    `reference="retrain"` also trains the gold retrain and reports gaps to it; `refresh` names
    stages to recompute (each with every stage after it) while the earlier ones come from cache.
    `original` adopts an existing checkpoint folder as the original model instead of training
    one; its architecture and training schedule then also define the gold retrain.
    """
    logger = get_run_logger()
    settings = {"forget": forget, "method": method, "reference": reference}
    if original:
        settings.update(imported_model_settings(Path(original)))
    settings.update(overrides or {})
    cfg = pipeline_config(dataset, preset, settings).to_dict()
    run = StageRunner(cfg, stages_to_refresh(refresh), original)

    run_id = start_tracking(
        cfg, f"{method}-{forget}", {"megu.method": method, "megu.forget_request": forget}
    )
    try:
        result = _run_stages(run, cfg, run_id)
    except BaseException:
        finish_tracking(run_id, "FAILED")
        raise
    finish_tracking(run_id, "FINISHED")

    _publish(result, cfg)
    logger.info("stages: %s", ", ".join(f"{s['stage']} {s['status']}" for s in run.statuses))
    return result


def _run_stages(run: StageRunner, cfg: dict, run_id: str) -> dict[str, Any]:
    # Data and the original model; the original depends on the dataset alone.
    samples = run(prepare_data, "prepare", {})
    if run.original:
        imported = {"checkpoint": checkpoint_input(Path(run.original))}
        original = run(train_model, "train", imported, label="import original")
    else:
        original = run(
            train_model, "train", {"dataset": dataset_input(samples)}, label="train original"
        )
    retrain = None
    if cfg["reference"] == "retrain":
        retrain = run(
            train_model, "train", {"samples": samples}, {"retrain": True}, label="train retrain"
        )

    # MeGU's guidance: features of f0, oracle concepts and the noise pair.
    feats = concepts = noise = None
    if cfg["method"] in MEGU_STAGE_METHODS:
        feats = run(extract_features, "features", {"samples": samples, "original": original})
        concepts = run(
            query_concepts,
            "concepts",
            {"samples": samples, "original": original, "features": feats},
        )
        noise = run(
            build_noise_pairs,
            "noise",
            {"samples": samples, "original": original, "features": feats, "concepts": concepts},
        )

    # Unlearning.
    unlearned = run(
        finetune,
        "unlearn",
        {"samples": samples, "original": original, "concepts": concepts, "noise": noise},
    )

    # Evaluation of every model by the one evaluator, with gaps to the retrain when there is one.
    evaluations = {}
    reference_metrics = None
    if retrain is not None:
        evaluations["retrain"] = run(
            evaluate_model,
            "evaluate",
            {"samples": samples, "model": retrain},
            {"role": "retrain"},
            "evaluate retrain",
        )
        reference_metrics = evaluations["retrain"]
    for role, model in (("original", original), ("unlearned", unlearned)):
        inputs = {"samples": samples, "model": model, "reference": reference_metrics}
        evaluations[role] = run(
            evaluate_model, "evaluate", inputs, {"role": role}, f"evaluate {role}"
        )

    stages = {
        "samples": samples,
        "original": original,
        "retrain": retrain,
        "features": feats,
        "concepts": concepts,
        "noise": noise,
        "unlearned": unlearned,
    }
    versions = register_models(run_id, cfg, stages, evaluations)
    return {
        "mlflow_run_id": run_id,
        "request": samples["summary"]["request"],
        "request_id": samples["summary"]["request_id"],
        "num_forget": samples["summary"]["num_forget"],
        "metrics": {role: ref["summary"]["metrics"] for role, ref in evaluations.items()},
        "unlearn_seconds": unlearned["summary"]["seconds"],
        "retrain_seconds": None if retrain is None else retrain["summary"]["seconds"],
        "concepts": None if concepts is None else concepts["summary"]["concepts"],
        "stages": run.statuses,
        "registry": versions,
    }


def _publish(result: dict[str, Any], cfg: dict) -> None:
    """Publish a table artifact with the metrics and a markdown summary, so the Prefect UI shows results."""
    rows = []
    for role, metrics in result["metrics"].items():
        rows.append(
            {
                "model": role,
                **{
                    METRIC_LABELS.get(k, k): round(v, 4)
                    for k, v in metrics.items()
                    if k in METRIC_LABELS
                },
            }
        )
    create_table_artifact(
        key="megu-metrics", table=rows, description=f"Metrics for {result['request']}"
    )
    create_markdown_artifact(key="megu-summary", markdown=summary_markdown(result, cfg))


def summary_markdown(result: dict[str, Any], cfg: dict) -> str:
    """Write the human-readable Markdown summary of one run."""
    lines = [
        f"# {cfg['method']} on `{result['request']}`",
        "",
        f"Forget set: {result['num_forget']} samples (request id `{result['request_id']}`). "
        f"Unlearning took {result['unlearn_seconds']:.1f} s",
    ]
    if result["retrain_seconds"]:
        lines[-1] += (
            f", {result['unlearn_seconds'] / result['retrain_seconds']:.1%} of the gold retrain's {result['retrain_seconds']:.0f} s."
        )
    else:
        lines[-1] += "."
    lines += ["", format_metrics_table(result["metrics"]), ""]
    registry = result["registry"]
    lines.append(
        f"Registered model `{registry['registered_model']}`: original version {registry['original_version']}, "
        f"unlearned version {registry['unlearned_version']}; MLflow run `{result['mlflow_run_id']}`."
    )
    lines += ["", "| stage | status | seconds |", "| --- | --- | ---: |"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']} |" for s in result["stages"]]
    return "\n".join(lines)
