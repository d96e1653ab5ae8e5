"""The `megu request` commands: add, list, show and retry against a queue under MEGU_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main
from megu_core.request_queue import Outcome, RequestQueue
from megu_core.verdict import VerdictThresholds, judge


def added_id(output: str) -> str:
    return output.split("forget request ", 1)[1].split(":", 1)[0]


def test_request_add_then_list(megu_home: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["request", "add", "--forget", "class:cat", "--note", "ticket 9"]) == 0
    request_id = added_id(capsys.readouterr().out)

    assert main(["request", "list", "--status", "pending"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["id", "status", "submitted", "forget"]
    assert lines[1].split()[0] == request_id
    assert lines[1].split()[1] == "pending"
    assert lines[1].endswith("ticket 9")


def test_request_add_malformed_exits_2(megu_home: Path):
    assert main(["request", "add", "--forget", "klass:cat"]) == 2


def test_request_list_empty(megu_home: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["request", "list", "--status", "failed"]) == 0

    assert capsys.readouterr().out.strip() == "no forget requests with status failed"


def test_request_show_prints_checks(megu_home: Path, capsys: pytest.CaptureFixture[str]):
    queue = RequestQueue()
    request = queue.add("class:cat")
    queue.claim_next()
    metrics = {
        "original": {"forget_accuracy": 95.0, "retain_accuracy": 92.0, "mia_entropy": 0.4},
        "unlearned": {"forget_accuracy": 1.0, "retain_accuracy": 80.0, "mia_entropy": 0.2},
    }
    outcome = Outcome(
        dataset="cifar10",
        method="megu",
        resolved_request="class:cat",
        forget_set_id="abc123def456",
        num_forget=5000,
        forget_ids_sha256="e" * 64,
        registered_model="megu-cifar10-resnet18-w16",
        source_version=1,
        unlearned_version=4,
        mlflow_run_id="0123456789abcdef",
        metrics=metrics,
        verdict=judge(metrics, "class", VerdictThresholds()),
    )
    queue.complete(request.request_id, outcome)

    assert main(["request", "show", request.request_id]) == 0

    out = capsys.readouterr().out
    assert "verdict            failed" in out
    assert "unlearned_version  4" in out
    assert "retain check failed, retain_accuracy drop from the original 12.000 > 5" in out
    assert "| unlearned |" in out


def test_request_retry_pending_exits_2(megu_home: Path):
    request = RequestQueue().add("class:cat")

    assert main(["request", "retry", request.request_id]) == 2


def test_request_retry_failed_requeues(megu_home: Path):
    queue = RequestQueue()
    request = queue.add("class:cat")
    queue.claim_next()
    queue.fail(request.request_id, "boom")

    assert main(["request", "retry", request.request_id]) == 0
    assert queue.get(request.request_id).status == "pending"
