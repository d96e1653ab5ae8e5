"""Prefect tasks of the benchmark flow: write its outputs, and record them in one MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task

from megu_core import tracking
from megu_core.artifacts import atomic_write_json, read_frame
from megu_core.benchmark.report import headline_metrics, write_outputs

BENCHMARK_EXPERIMENT = "benchmark"  # MLflow experiment "megu-benchmark"


@task(name="write-benchmark-report")
def write_benchmark_report(
    rows: list[dict[str, Any]], configs: dict[str, Any], out_dir: str, title: str
) -> dict[str, str]:
    """Write results, summary, report and plots, and the configuration of every run, to `out_dir`."""
    paths = write_outputs(rows, Path(out_dir), title)
    paths["configs"] = Path(out_dir) / "configs.json"
    atomic_write_json(paths["configs"], configs)
    get_run_logger().info("benchmark report: %s", paths["report"])
    return {name: str(path) for name, path in paths.items()}


@task(name="log-benchmark-to-mlflow")
def log_benchmark(spec: dict[str, Any], files: dict[str, str], run_name: str) -> str:
    """Create one MLflow run with the benchmark's settings, mean metrics and every output file."""
    tags = {"megu.kind": "benchmark", "megu.scenarios": ",".join(map(str, spec["scenarios"]))}
    with tracking.start_run(BENCHMARK_EXPERIMENT, run_name=run_name, tags=tags) as run_id:
        tracking.log_config(run_id, spec)
        summary: pd.DataFrame = read_frame(files["summary"], "benchmark_summary")
        tracking.log_metrics(run_id, headline_metrics(summary))
        for path in files.values():
            tracking.log_artifact_file(run_id, path, "benchmark")
    get_run_logger().info("MLflow run %s (tracking URI %s)", run_id, tracking.tracking_uri())
    return run_id
