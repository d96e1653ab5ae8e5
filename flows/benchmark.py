"""The benchmark flow: scenarios x targets x methods x seeds, every stage cached, one report.

Per (scenario, target, seed) the flow prepares the data, trains (or reuses) the original and
the gold retrain, evaluates both, and runs MeGU's guidance stages when MeGU is benchmarked.
Then every method's unlearn and evaluate tasks are submitted to the task runner: sequential
by default, or a local Dask cluster with `runner="dask"`. Every stage is the cached task of
the unlearning pipeline, so a rerun recomputes only what changed and `megu run` reuses the
benchmark's originals and retrains (and the other way round).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from megu_core.benchmark.plan import BenchmarkCell, plan_benchmark
from megu_core.benchmark.report import result_row
from megu_core.errors import ConfigError
from megu_core.stage_cache import megu_home
from tasks.benchmark import log_benchmark, write_benchmark_report
from tasks.pipeline import (
    build_noise_pairs,
    dataset_input,
    evaluate_model,
    extract_features,
    finetune,
    prepare_data,
    query_concepts,
    train_model,
)
from tasks.stage import StageRef, compute_stage_key

RUNNERS = ("sequential", "dask")
DASK_CLUSTER = {"n_workers": 2, "threads_per_worker": 1, "processes": True}
MEGU_STAGE_METHODS = ("megu",)  # methods that need the features, concepts and noise stages


def make_task_runner(runner: str):
    """Build the task runner of the grid: one thread (sequential) or a local Dask cluster of 2 processes."""
    if runner == "sequential":
        # NOTE: in the test suite, an SSD step in this worker thread aborted the process when
        # torch used two OpenMP threads (torch 2.13 CPU); set OMP_NUM_THREADS=1 if that happens.
        return ThreadPoolTaskRunner(max_workers=1)
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        # Worker processes inherit this process's environment (MEGU_HOME, MLFLOW_TRACKING_URI,
        # the telemetry switches) when the cluster starts with the flow.
        return DaskTaskRunner(cluster_kwargs=dict(DASK_CLUSTER))
    raise ConfigError(f"unknown task runner {runner!r}; choose one of {', '.join(RUNNERS)}")


class TrainSubmitter:
    """Train-stage submissions, one per stage key, so cells that share an original train it once.

    Two concurrent runs of one stage key would write the same stage folder, so sharing is
    required, not only cheaper. Train inputs are plain references (never futures), which lets
    the key be computed here without waiting for any task.
    """

    def __init__(self) -> None:
        self.futures: dict[str, PrefectFuture] = {}

    def __call__(self, cfg: dict, inputs: dict, options: dict | None = None) -> PrefectFuture:
        key = compute_stage_key("train", cfg, inputs, options or {})
        if key not in self.futures:
            self.futures[key] = train_model.submit(cfg, inputs, options, False)
        return self.futures[key]


@flow(name="megu-benchmark-grid", task_runner=ThreadPoolTaskRunner(max_workers=1))
def benchmark_grid(
    scenarios: list[Any],
    targets: list[str] | dict[str, list[str]] | None,
    methods: list[str],
    seeds: list[int],
    preset: str,
    overrides: dict[str, Any] | None,
    runner: str,
) -> dict[str, Any]:
    """Run every cell of the grid on this flow's task runner, then write and log the report."""
    logger = get_run_logger()
    cells = plan_benchmark(scenarios, targets, methods, seeds, preset, overrides)
    logger.info("benchmark of %d cells on the %s runner", len(cells), runner)

    # Everything is submitted before any result is awaited, so the task runner receives the whole grid.
    train = TrainSubmitter()
    references = {cell.label: _references(train, cell) for cell in cells}
    runs = {cell.label: _method_runs(cell, references[cell.label]) for cell in cells}
    finished: list[StageRef] = []
    rows = [
        row
        for cell in cells
        for row in _rows(cell, references[cell.label], runs[cell.label], finished)
    ]

    spec = {
        "scenarios": [s if isinstance(s, str) else dict(s) for s in scenarios],
        "targets": targets,
        "methods": methods,
        "seeds": list(seeds),
        "preset": preset,
        "runner": runner,
        "overrides": overrides or {},
    }
    result = _publish(rows, cells, spec)
    result["stages"] = {
        "computed": sum(1 for ref in finished if ref["computed"]),
        "reused": sum(1 for ref in finished if not ref["computed"]),
    }
    logger.info("stages: %(computed)d computed, %(reused)d reused from the cache", result["stages"])
    return result


def _references(train: TrainSubmitter, cell: BenchmarkCell) -> dict[str, Any]:
    """Prepare the data, then submit the original, the gold retrain, their evaluations and MeGU's stages."""
    cfg = cell.base
    samples = prepare_data(cfg, {}, None, False)  # in the flow: a dataset is decoded only once

    original = train(cfg, {"dataset": dataset_input(samples)})
    retrain = train(cfg, {"samples": samples}, {"retrain": True})
    retrain_eval = evaluate_model.submit(
        cfg, {"samples": samples, "model": retrain}, {"role": "retrain"}, False
    )
    original_eval = evaluate_model.submit(
        cfg,
        {"samples": samples, "model": original, "reference": retrain_eval},
        {"role": "original"},
        False,
    )

    guidance = {"concepts": None, "noise": None}
    if any(name in cell.configs for name in MEGU_STAGE_METHODS):
        feats = extract_features.submit(
            cfg, {"samples": samples, "original": original}, None, False
        )
        concepts = query_concepts.submit(
            cfg, {"samples": samples, "original": original, "features": feats}, None, False
        )
        noise = build_noise_pairs.submit(
            cfg,
            {"samples": samples, "original": original, "features": feats, "concepts": concepts},
            None,
            False,
        )
        guidance = {"concepts": concepts, "noise": noise}

    return {
        "samples": samples,
        "original": original,
        "retrain": retrain,
        "retrain_eval": retrain_eval,
        "original_eval": original_eval,
        **guidance,
    }


def _method_runs(cell: BenchmarkCell, refs: dict[str, Any]) -> dict[str, tuple]:
    """Submit the unlearn and evaluate tasks of every method of one cell; returns both futures per method."""
    runs = {}
    for method, cfg in cell.configs.items():
        inputs = {"samples": refs["samples"], "original": refs["original"]}
        if method in MEGU_STAGE_METHODS:
            inputs.update(concepts=refs["concepts"], noise=refs["noise"])
        unlearned = finetune.submit(cfg, inputs, None, False)
        evaluation = evaluate_model.submit(
            cfg,
            {"samples": refs["samples"], "model": unlearned, "reference": refs["retrain_eval"]},
            {"role": method},
            False,
        )
        runs[method] = (unlearned, evaluation)
    return runs


def _outcome(future: PrefectFuture, finished: list[StageRef]) -> tuple[StageRef | None, str | None]:
    """Wait for a task; return its stage reference (also appended to `finished`), or None and the error."""
    future.wait()
    state = future.state
    if state.is_completed():
        ref = future.result()
        finished.append(ref)
        return ref, None
    if not state.is_final():  # NotReady: an upstream task failed, so this one never ran
        return None, f"not run: {state.message}"[:500]
    error = future.result(raise_on_failure=False)
    return None, f"{type(error).__name__}: {error}"[:500]


def _rows(
    cell: BenchmarkCell, refs: dict[str, Any], runs: dict[str, tuple], finished: list[StageRef]
) -> list[dict]:
    """Collect one cell's results rows: gold retrain, original, every method and every skip."""

    def outcome(future: PrefectFuture) -> tuple[StageRef | None, str | None]:
        return _outcome(future, finished)

    finished.append(refs["samples"])
    num_forget = refs["samples"]["summary"]["num_forget"]
    retrain, error = outcome(refs["retrain"])
    retrain_eval, retrain_error = (None, error) if error else outcome(refs["retrain_eval"])
    retrain_seconds = None if retrain is None else retrain["summary"]["seconds"]
    for stage in ("original", "concepts", "noise"):
        if refs[stage] is not None:
            outcome(refs[stage])

    def row(method: str, evaluation, seconds, error=None, status=None, changed=None) -> dict:
        metrics = None if evaluation is None else evaluation["summary"]["metrics"]
        status = status or ("ok" if metrics is not None else "failed")
        return result_row(
            cell, method, metrics, seconds, retrain_seconds, num_forget, status, error, changed
        )

    rows = [row("retrain", retrain_eval, retrain_seconds, retrain_error)]
    original_eval, error = (
        (None, retrain_error) if retrain_error else outcome(refs["original_eval"])
    )
    rows.append(row("original", original_eval, None, error))

    for method, (unlearned_future, evaluation_future) in runs.items():
        unlearned, error = outcome(unlearned_future)
        if error is None and retrain_error is not None:
            error = f"the gold retrain failed: {retrain_error}"
        evaluation = None
        if error is None:
            evaluation, error = outcome(evaluation_future)
        seconds = None if unlearned is None else unlearned["summary"]["seconds"]
        # Unlearn stages cached before the field existed have no changed_fraction.
        changed = None if unlearned is None else unlearned["summary"].get("changed_fraction")
        rows.append(row(method, evaluation, seconds, error, changed=changed))

    for method, reason in cell.skipped.items():
        rows.append(row(method, None, None, reason, status="skipped"))
    return rows


def _publish(rows: list[dict], cells: list[BenchmarkCell], spec: dict[str, Any]) -> dict[str, Any]:
    """Write the outputs, log them to MLflow and publish the report as Prefect artifacts."""
    logger = get_run_logger()
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:8]
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = megu_home() / "benchmarks" / f"{stamp}-{digest}"
    configs = {cell.label: cell.configs for cell in cells}
    title = f"megu benchmark {stamp}"

    files = write_benchmark_report(rows, configs, str(out_dir), title)
    run_id = log_benchmark(spec, files, f"benchmark-{stamp}")

    with open(files["report"], encoding="utf-8") as handle:
        report = handle.read()
    create_markdown_artifact(key="megu-benchmark-report", markdown=report)
    create_table_artifact(
        key="megu-benchmark-results",
        table=[_table_row(row) for row in rows],
        description=f"Benchmark results, one row per scenario, target, method and seed ({out_dir})",
    )
    failed = [row for row in rows if row["status"] == "failed"]
    if failed:
        logger.warning("%d benchmark runs failed; see %s", len(failed), files["report"])
    return {
        "out_dir": str(out_dir),
        "files": files,
        "mlflow_run_id": run_id,
        "rows": rows,
        "report": report,
    }


def _table_row(row: dict) -> dict:
    keep = ("scenario", "target", "method", "seed", "status", "forget_accuracy", "retain_accuracy")
    keep += ("test_accuracy", "mia_entropy", "mia_confidence", "avg_gap", "time_ratio")
    return {key: (round(row[key], 4) if isinstance(row[key], float) else row[key]) for key in keep}


@flow(name="megu-benchmark")
def benchmark_flow(
    scenarios: Sequence[str | dict] = ("c10-class",),
    targets: Sequence[str] | dict[str, Sequence[str]] | None = None,
    methods: Sequence[str] = ("all",),
    seeds: Sequence[int] = (0,),
    preset: str = "cpu",
    runner: str = "sequential",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Benchmark unlearning methods against the gold retrain over scenarios, targets and seeds.

    `targets` is one list for every scenario or a mapping from scenario id to its targets
    (None: each scenario's defaults). `overrides` contains dotted pipeline settings
    (`budget.epochs`) and method hyperparameters (`scrub.lr`). `runner` is "sequential" or
    "dask" (a local cluster of 2 worker processes).
    """
    grid: Callable[..., dict[str, Any]] = benchmark_grid.with_options(
        task_runner=make_task_runner(runner)
    )
    return grid(
        scenarios=list(scenarios),
        targets=targets if targets is None or isinstance(targets, dict) else list(targets),
        methods=list(methods),
        seeds=[int(seed) for seed in seeds],
        preset=preset,
        overrides=dict(overrides or {}),
        runner=runner,
    )
