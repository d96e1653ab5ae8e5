"""Prefect tasks of the forget-request queue: claim a request, record its outcome or its failure.

Every task here changes shared state, so none is cached. Prefect's default cache key covers the
inputs, the task's source and the flow run id, so once results are persisted a second claim in
the same flow run would return the first claim's cached result.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from megu_core import tracking
from megu_core.forget import parse_forget_request
from megu_core.promotion import (
    TAG_QUEUE_REQUEST,
    TAG_REQUEST_NOTE,
    TAG_VERDICT,
    TAG_VERDICT_SUMMARY,
)
from megu_core.request_queue import Outcome, QueuedRequest, RequestQueue
from megu_core.verdict import VerdictThresholds, judge

TAG_THRESHOLDS = "megu.verdict_thresholds"  # JSON: the limits the verdict applied
TAG_FORGET_IDS = "megu.forget_ids_sha256"  # written by tasks.tracking on unlearned versions


@task(name="claim-forget-request", cache_policy=NO_CACHE)
def claim_request(flow_run_id: str | None) -> QueuedRequest | None:
    """Claim the oldest pending forget request, or return None when the queue has none."""
    request = RequestQueue().claim_next(flow_run_id)
    if request is not None:
        get_run_logger().info("claimed forget request %s: %s", request.request_id, request.forget)
    return request


@task(name="record-request-outcome", cache_policy=NO_CACHE)
def record_outcome(
    request: QueuedRequest,
    result: dict[str, Any],
    dataset: str,
    method: str,
    thresholds: dict[str, float],
) -> QueuedRequest:
    """Judge the unlearned model, tag its MLflow version and run, and mark the request done."""
    logger = get_run_logger()
    registry = result["registry"]
    name, version = registry["registered_model"], registry["unlearned_version"]
    kind = parse_forget_request(request.forget).kind
    verdict = judge(result["metrics"], kind, VerdictThresholds.from_mapping(thresholds))

    tags = {
        TAG_VERDICT: verdict.label,
        TAG_VERDICT_SUMMARY: verdict.summary(),
        TAG_QUEUE_REQUEST: request.request_id,
        TAG_THRESHOLDS: json.dumps(verdict.thresholds.to_dict(), sort_keys=True),
    }
    if request.note:
        tags[TAG_REQUEST_NOTE] = request.note
    tracking.set_version_tags(name, version, tags)
    tracking.set_run_tags(result["mlflow_run_id"], tags)

    outcome = Outcome(
        dataset=dataset,
        method=method,
        resolved_request=result["request"],
        forget_set_id=result["request_id"],
        num_forget=result["num_forget"],
        forget_ids_sha256=tracking.get_version(name, version).tags[TAG_FORGET_IDS],
        registered_model=name,
        source_version=registry["original_version"],
        unlearned_version=version,
        mlflow_run_id=result["mlflow_run_id"],
        metrics=result["metrics"],
        verdict=verdict,
    )
    done = RequestQueue().complete(request.request_id, outcome)
    logger.info(
        "forget request %s done: %s version %s, verdict %s",
        request.request_id,
        name,
        version,
        verdict.summary(),
    )
    return done


@task(name="fail-forget-request", cache_policy=NO_CACHE)
def fail_request(request: QueuedRequest, error: str) -> QueuedRequest:
    """Mark a claimed request failed with the error that stopped it."""
    get_run_logger().error("forget request %s failed: %s", request.request_id, error)
    return RequestQueue().fail(request.request_id, error)
