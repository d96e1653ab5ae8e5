"""Stage `evaluate`: every metric of one model against the forget request, with gaps to the retrain."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from megu_core.artifacts import read_frame, write_table
from megu_core.checkpoint import load_checkpoint
from megu_core.devices import resolve_device
from megu_core.metrics import Evaluation, evaluate
from megu_core.pipeline.common import StageOutput, load_prepared
from megu_core.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)


def evaluate_model(
    cfg: PipelineConfig,
    checkpoint: Path,
    role: str,
    ids_hash: str,
    out_dir: Path,
    reference_metrics: Path | None = None,
) -> StageOutput:
    """Write metrics.parquet and per_sample.parquet for the model at `checkpoint`."""
    device = resolve_device(cfg.device)
    dataset, request = load_prepared(cfg, ids_hash)
    model, _ = load_checkpoint(checkpoint, device)

    reference = None
    if reference_metrics is not None:
        reference = Evaluation(read_metrics(reference_metrics), pd.DataFrame())
    evaluation = evaluate(model, dataset, request, device, reference)
    # Metrics a request does not define (the forgotten class's test accuracy under random
    # forgetting) are NaN. They are left out: the metrics schema requires a value, and the
    # stage manifest's JSON rejects NaN.
    metrics = {name: value for name, value in evaluation.metrics.items() if not math.isnan(value)}

    files = {"metrics": out_dir / "metrics.parquet", "per_sample": out_dir / "per_sample.parquet"}
    write_table(
        pd.DataFrame(
            {
                "metric": list(metrics),
                "value": list(metrics.values()),
                "model": role,
                "split": None,
            }
        ),
        files["metrics"],
        "metrics",
    )
    write_table(evaluation.per_sample, files["per_sample"], "per_sample")
    return StageOutput(files, {"role": role, "metrics": metrics})


def read_metrics(path: Path) -> dict[str, float]:
    """metric name -> value from a metrics.parquet file."""
    frame = read_frame(path, "metrics")
    return dict(zip(frame["metric"], frame["value"].astype(float), strict=True))
