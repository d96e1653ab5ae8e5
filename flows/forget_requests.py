"""The request-processing flow: run the unlearning flow for each pending forget request.

The module is not named `requests.py` on purpose: Prefect loads a deployment's entrypoint by
file path with the file's folder first on `sys.path`, so a file of that name would shadow the
`requests` library that MLflow imports.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from flows.unlearning import unlearning_flow
from megu_core.request_queue import QueuedRequest
from megu_core.verdict import VerdictThresholds
from tasks.request_queue import claim_request, fail_request, record_outcome

ARTIFACT_KEY = "megu-processed-requests"
SHOWN_METRICS = ("forget_accuracy", "retain_accuracy", "test_accuracy", "mia_entropy")


@flow(name="megu-process-requests")
def process_requests(
    max_requests: int = 10,
    dataset: str = "cifar10",
    preset: str = "cpu",
    method: str = "megu",
    reference: str = "none",
    overrides: dict[str, Any] | None = None,
    thresholds: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Claim and process up to `max_requests` pending forget requests, oldest first.

    Each request runs the unlearning flow as a subflow on its own dataset and method, or on
    `dataset` and `method` when it names none. `preset`, `reference` and `overrides` apply to
    every request. The verdict compares the metrics with `thresholds` (field names of
    `megu_core.verdict.VerdictThresholds`; defaults for the rest). A request whose run raises
    is marked failed with the error, and the next one is processed.
    """
    logger = get_run_logger()
    if max_requests < 1:
        raise ValueError(f"max_requests must be at least 1, got {max_requests}")
    limits = VerdictThresholds.from_mapping(thresholds).to_dict()  # reject typos before claiming

    processed = []
    for _ in range(max_requests):
        request = claim_request(flow_run.id)
        if request is None:
            break

        processed.append(
            _process(
                request,
                dataset=request.dataset or dataset,
                method=request.method or method,
                preset=preset,
                reference=reference,
                overrides=overrides,
                limits=limits,
            )
        )

    logger.info("processed %d forget request(s)", len(processed))
    _publish(processed)
    return [_row(record) for record in processed]


def _process(
    request: QueuedRequest,
    *,
    dataset: str,
    method: str,
    preset: str,
    reference: str,
    overrides: dict[str, Any] | None,
    limits: dict[str, float],
) -> QueuedRequest:
    """Run one claimed request and record its outcome, or its error, in the queue."""
    try:
        result = unlearning_flow(
            dataset=dataset,
            forget=request.forget,
            preset=preset,
            method=method,
            reference=reference,
            overrides=overrides,
        )
        return record_outcome(request, result, dataset, method, limits)
    except Exception as exc:  # recorded in the queue, and the flow goes on to the next request
        return fail_request(request, f"{type(exc).__name__}: {exc}")


def _publish(processed: list[QueuedRequest]) -> None:
    """Publish a table of the processed requests, so the Prefect UI shows outcomes."""
    rows = [_row(record) for record in processed]
    create_table_artifact(
        key=ARTIFACT_KEY,
        table=rows,
        description=f"{len(rows)} forget request(s) processed by this run",
    )


def _row(record: QueuedRequest) -> dict[str, Any]:
    metrics = (record.metrics or {}).get("unlearned", {})
    return {
        "request_id": record.request_id,
        "forget": record.forget,
        "status": record.status,
        "verdict": record.verdict,
        "registered_model": record.registered_model,
        "unlearned_version": record.unlearned_version,
        **{name: _rounded(metrics.get(name)) for name in SHOWN_METRICS},
        "error": record.error,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
