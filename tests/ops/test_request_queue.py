"""The forget-request queue: records, status transitions, claims across processes, audit fields."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from megu_core.artifacts import read_table
from megu_core.errors import ForgetRequestError
from megu_core.request_queue import Outcome, RequestQueue, RequestQueueError
from megu_core.verdict import VerdictThresholds, judge
from tests.ops.queue_worker import claim_all


@pytest.fixture
def queue(tmp_path: Path) -> RequestQueue:
    return RequestQueue(tmp_path / "requests")


def outcome(unlearned_version: int = 2) -> Outcome:
    metrics = {
        "original": {"forget_accuracy": 95.0, "retain_accuracy": 92.0, "mia_entropy": 0.4},
        "unlearned": {"forget_accuracy": 1.0, "retain_accuracy": 91.0, "mia_entropy": 0.2},
    }
    return Outcome(
        dataset="cifar10",
        method="megu",
        resolved_request="class:cat",
        forget_set_id="abc123def456",
        num_forget=5000,
        forget_ids_sha256="f" * 64,
        registered_model="megu-cifar10-resnet18-w16",
        source_version=1,
        unlearned_version=unlearned_version,
        mlflow_run_id="0123456789abcdef",
        metrics=metrics,
        verdict=judge(metrics, "class", VerdictThresholds()),
    )


def test_add_stores_pending_record(queue: RequestQueue):
    added = queue.add("class:cat", note="ticket 42", dataset="cifar10")

    stored = queue.get(added.request_id)
    assert stored == added
    assert stored.status == "pending"
    assert stored.note == "ticket 42"
    assert stored.method is None
    assert (queue.folder / f"{added.request_id}.parquet").is_file()


def test_add_rejects_malformed_request(queue: RequestQueue):
    with pytest.raises(ForgetRequestError, match="bogus"):
        queue.add("bogus")

    assert queue.list_requests() == []


def test_add_stores_ids_file_as_absolute_path(queue: RequestQueue, tmp_path: Path, monkeypatch):
    (tmp_path / "ids.txt").write_text("train/0\n")
    monkeypatch.chdir(tmp_path)

    added = queue.add("ids:ids.txt")

    assert added.forget == f"ids:{tmp_path / 'ids.txt'}"


def test_add_stores_local_dataset_as_absolute_path(queue: RequestQueue, tmp_path, monkeypatch):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "cifar10").mkdir()
    monkeypatch.chdir(tmp_path)

    assert queue.add("class:cat", dataset="tiny").dataset == str(tmp_path / "tiny")
    assert queue.add("class:cat", dataset="cifar10").dataset == "cifar10"


def test_add_missing_ids_file_raises(queue: RequestQueue, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        queue.add(f"ids:{tmp_path / 'absent.txt'}")


def test_get_unknown_id_raises(queue: RequestQueue):
    with pytest.raises(RequestQueueError, match="not found"):
        queue.get("20250101-120000-abcdef")


def test_get_rejects_path_like_id(queue: RequestQueue):
    with pytest.raises(RequestQueueError, match="invalid forget request id"):
        queue.get("../secrets")


def test_list_filters_by_status_oldest_first(queue: RequestQueue):
    first = queue.add("class:cat")
    second = queue.add("class:dog")
    queue.claim_next()

    assert [r.request_id for r in queue.list_requests()] == [first.request_id, second.request_id]
    assert [r.request_id for r in queue.list_requests("pending")] == [second.request_id]


def test_list_unknown_status_raises(queue: RequestQueue):
    with pytest.raises(ValueError, match="queued"):
        queue.list_requests("queued")


def test_claim_next_takes_oldest_then_none(queue: RequestQueue):
    first = queue.add("class:cat")
    second = queue.add("class:dog")

    claimed = [queue.claim_next("run-1"), queue.claim_next("run-1"), queue.claim_next("run-1")]

    assert [c.request_id for c in claimed[:2]] == [first.request_id, second.request_id]
    assert claimed[2] is None
    stored = queue.get(first.request_id)
    assert stored.status == "running"
    assert stored.flow_run_id == "run-1"
    assert stored.worker.endswith(f":{os.getpid()}")
    assert stored.claimed_at is not None


def test_claim_skips_request_claimed_elsewhere(queue: RequestQueue):
    first = queue.add("class:cat")
    second = queue.add("class:dog")
    # A worker on another machine whose lock this machine does not see created the claim file.
    (queue.claims / first.request_id).write_text("{}")

    claimed = queue.claim_next()

    assert claimed.request_id == second.request_id
    assert queue.get(first.request_id).status == "pending"


def test_concurrent_claims_take_each_request_once(queue: RequestQueue):
    ids = {queue.add(f"random:{count}").request_id for count in range(1, 25)}
    context = multiprocessing.get_context("spawn")

    with context.Manager() as manager, context.Pool(3) as pool:
        start = manager.Barrier(3)
        results = pool.starmap(claim_all, [(str(queue.folder), start, 0.02)] * 3)

    claimed = [request_id for result in results for request_id in result]
    assert sorted(claimed) == sorted(ids)
    assert len(set(claimed)) == len(claimed)
    assert {r.status for r in queue.list_requests()} == {"running"}
    assert len({queue.get(request_id).worker for request_id in claimed}) > 1


def test_complete_stores_audit_record(queue: RequestQueue):
    request = queue.add("class:cat", note="ticket 7")
    queue.claim_next("run-9")

    done = queue.complete(request.request_id, outcome())

    stored = queue.get(request.request_id)
    assert stored == done
    assert stored.status == "done"
    assert stored.finished_at >= stored.claimed_at >= stored.submitted_at
    assert stored.num_forget == 5000
    assert stored.forget_ids_sha256 == "f" * 64
    assert (stored.source_version, stored.unlearned_version) == (1, 2)
    assert stored.metrics["unlearned"]["forget_accuracy"] == 1.0
    assert stored.verdict == "passed"
    assert [check["name"] for check in stored.verdict_checks] == ["forget", "retain", "privacy"]
    assert stored.thresholds["max_retain_drop"] == 5.0


def test_audit_record_is_plain_parquet(queue: RequestQueue):
    request = queue.add("class:cat")
    queue.claim_next()
    queue.complete(request.request_id, outcome())

    row = read_table(queue.folder / f"{request.request_id}.parquet", "forget_request").to_pylist()[
        0
    ]

    assert row["status"] == "done"
    assert json.loads(row["metrics"])["original"]["retain_accuracy"] == 92.0


def test_complete_pending_request_raises(queue: RequestQueue):
    request = queue.add("class:cat")

    with pytest.raises(RequestQueueError, match="pending, not running"):
        queue.complete(request.request_id, outcome())


def test_fail_stores_error(queue: RequestQueue):
    request = queue.add("class:cat")
    queue.claim_next()

    queue.fail(request.request_id, "ForgetRequestError: unknown class 'cat'")

    stored = queue.get(request.request_id)
    assert stored.status == "failed"
    assert stored.error == "ForgetRequestError: unknown class 'cat'"
    assert stored.finished_at is not None


def test_requeue_failed_request_can_be_claimed_again(queue: RequestQueue):
    request = queue.add("class:cat")
    queue.claim_next()
    queue.fail(request.request_id, "boom")

    pending = queue.requeue(request.request_id)

    assert pending.status == "pending"
    assert pending.error is None
    assert queue.claim_next().request_id == request.request_id


def test_requeue_running_request_needs_force(queue: RequestQueue):
    request = queue.add("class:cat")
    queue.claim_next()

    with pytest.raises(RequestQueueError, match="pass force"):
        queue.requeue(request.request_id)
    assert queue.requeue(request.request_id, force=True).status == "pending"


def test_requeue_done_request_raises(queue: RequestQueue):
    request = queue.add("class:cat")
    queue.claim_next()
    queue.complete(request.request_id, outcome())

    with pytest.raises(RequestQueueError, match="is done"):
        queue.requeue(request.request_id, force=True)
