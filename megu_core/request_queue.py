"""The queue of forget requests and their audit records, as Parquet files under MEGU_HOME.

Layout of `$MEGU_HOME/requests/`:

    <request_id>.parquet   one `forget_request` row: the request, its status and, once it is
                           processed, its audit record (artifact schema `forget_request`)
    claims/<request_id>    created by the one process that claims the request
    queue.lock             file lock held around every status change

A request moves pending -> running -> done or failed; `requeue` moves a failed request, or
with `force` a running one whose worker died, back to pending.

Two workers never process one request. A claim first creates the claim file with
O_CREAT | O_EXCL, which succeeds for exactly one process, also on NFS version 3 or later
(open(2) on Linux 2.6 and later), and only then writes the status running. The file lock
serialises status changes between processes on one machine. Each request is its own file,
written atomically, so workers that finish different requests never write the same file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import filelock
import pyarrow as pa

from megu_core.artifacts import SCHEMAS, read_table, write_table
from megu_core.data.catalog import CATALOG
from megu_core.errors import MeguError
from megu_core.forget import parse_forget_request
from megu_core.stage_cache import megu_home
from megu_core.verdict import Verdict

logger = logging.getLogger(__name__)

STATUSES = ("pending", "running", "done", "failed")
KIND = "forget_request"  # artifact schema of a request file

_REQUEST_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
_JSON_COLUMNS = ("metrics", "verdict_checks", "thresholds")


class RequestQueueError(MeguError):
    """A queued request is not found, or is not in the status an operation needs."""


@dataclass(frozen=True)
class Outcome:
    """The results of processing a request: the pipeline's outputs and the verdict on them."""

    dataset: str
    method: str
    resolved_request: str  # canonical form of the request
    forget_set_id: str  # the pipeline's id: a hash of the request and its sample ids
    num_forget: int
    forget_ids_sha256: str
    registered_model: str
    source_version: int
    unlearned_version: int
    mlflow_run_id: str
    metrics: dict[str, dict[str, float]]  # model role -> metric -> value
    verdict: Verdict


@dataclass(frozen=True)
class QueuedRequest:
    """One forget request in the queue and, once processed, its audit record."""

    request_id: str
    forget: str
    status: str
    submitted_at: str  # ISO 8601 in UTC
    note: str | None = None
    dataset: str | None = None  # None: the processing flow's default
    method: str | None = None  # None: the processing flow's default
    claimed_at: str | None = None
    finished_at: str | None = None
    worker: str | None = None
    flow_run_id: str | None = None
    error: str | None = None
    resolved_request: str | None = None
    forget_set_id: str | None = None
    num_forget: int | None = None
    forget_ids_sha256: str | None = None
    registered_model: str | None = None
    source_version: int | None = None
    unlearned_version: int | None = None
    mlflow_run_id: str | None = None
    metrics: dict[str, dict[str, float]] | None = None
    verdict: str | None = None  # passed or failed
    verdict_checks: list[dict[str, Any]] | None = None
    thresholds: dict[str, float] | None = None

    def to_row(self) -> dict[str, Any]:
        """Return the record as one row of the `forget_request` schema, JSON columns encoded."""
        row = dataclasses.asdict(self)
        for name in _JSON_COLUMNS:
            if row[name] is not None:
                row[name] = json.dumps(row[name], sort_keys=True, allow_nan=True)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> QueuedRequest:
        """Build a record from one row of the `forget_request` schema."""
        values = dict(row)
        for name in _JSON_COLUMNS:
            if values[name] is not None:
                values[name] = json.loads(values[name])
        return cls(**values)


@dataclass
class RequestQueue:
    """Forget requests stored under `folder`, by default `$MEGU_HOME/requests`."""

    folder: Path = field(default_factory=lambda: megu_home() / "requests")
    lock_timeout_s: float = 60.0  # a status change takes milliseconds; 60 s means a stuck lock

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.claims.mkdir(parents=True, exist_ok=True)

    @property
    def claims(self) -> Path:
        return self.folder / "claims"

    def add(
        self,
        forget: str,
        note: str | None = None,
        dataset: str | None = None,
        method: str | None = None,
    ) -> QueuedRequest:
        """Queue a forget request as pending and return its record.

        The request text is parsed now, so a malformed one is rejected at submission. The file
        of an `ids:` request, and a dataset that is a local folder, are stored as absolute paths,
        because the worker that processes the request runs in another folder.
        """
        forget = _checked_request_text(forget)
        dataset = _absolute_if_local(dataset)
        record = QueuedRequest(
            request_id=self._unused_request_id(),
            forget=forget,
            status="pending",
            submitted_at=utc_now(),
            note=note,
            dataset=dataset,
            method=method,
        )
        with self._locked():
            self._write(record)
        logger.info("queued forget request %s: %s", record.request_id, forget)
        return record

    def get(self, request_id: str) -> QueuedRequest:
        """Return the record of one request, or raise RequestQueueError if it is not queued."""
        path = self._path(request_id)
        if not path.is_file():
            raise RequestQueueError(
                f"forget request {request_id!r} not found in {self.folder}; "
                "list the queued requests with `megu request list`"
            )
        return QueuedRequest.from_row(read_table(path, KIND).to_pylist()[0])

    def list_requests(self, status: str | None = None) -> list[QueuedRequest]:
        """Return the queued requests, oldest first, optionally only those with `status`."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"invalid status {status!r}; use one of {', '.join(STATUSES)}")
        records = [
            QueuedRequest.from_row(read_table(path, KIND).to_pylist()[0])
            for path in self.folder.glob("*.parquet")
        ]
        records.sort(key=lambda record: (record.submitted_at, record.request_id))
        return [record for record in records if status is None or record.status == status]

    def claim_next(self, flow_run_id: str | None = None) -> QueuedRequest | None:
        """Claim the oldest pending request for this process and return it, or None if none is."""
        worker = f"{socket.gethostname()}:{os.getpid()}"
        with self._locked():
            for record in self.list_requests("pending"):
                if not self._create_claim(record.request_id, worker):
                    continue  # claimed by a process that does not share this machine's lock
                claimed = dataclasses.replace(
                    record,
                    status="running",
                    claimed_at=utc_now(),
                    worker=worker,
                    flow_run_id=flow_run_id,
                )
                self._write(claimed)
                logger.info("%s claimed forget request %s", worker, record.request_id)
                return claimed
        return None

    def complete(self, request_id: str, outcome: Outcome) -> QueuedRequest:
        """Mark a running request done and store its audit record."""
        with self._locked():
            record = self._running(request_id)
            done = dataclasses.replace(
                record,
                status="done",
                finished_at=utc_now(),
                dataset=outcome.dataset,
                method=outcome.method,
                resolved_request=outcome.resolved_request,
                forget_set_id=outcome.forget_set_id,
                num_forget=outcome.num_forget,
                forget_ids_sha256=outcome.forget_ids_sha256,
                registered_model=outcome.registered_model,
                source_version=outcome.source_version,
                unlearned_version=outcome.unlearned_version,
                mlflow_run_id=outcome.mlflow_run_id,
                metrics=outcome.metrics,
                verdict=outcome.verdict.label,
                verdict_checks=outcome.verdict.checks_as_dicts(),
                thresholds=outcome.verdict.thresholds.to_dict(),
            )
            self._write(done)
        return done

    def fail(self, request_id: str, error: str) -> QueuedRequest:
        """Mark a running request failed with the error that stopped it."""
        with self._locked():
            failed = dataclasses.replace(
                self._running(request_id), status="failed", finished_at=utc_now(), error=error
            )
            self._write(failed)
        return failed

    def requeue(self, request_id: str, force: bool = False) -> QueuedRequest:
        """Move a failed request back to pending; with `force`, also a running one.

        Force a running request only when the worker that claimed it is gone, because a live
        worker would otherwise process it a second time.
        """
        with self._locked():
            record = self.get(request_id)
            allowed = ("failed", "running") if force else ("failed",)
            if record.status not in allowed:
                hint = " (pass force to requeue a running request whose worker died)"
                raise RequestQueueError(
                    f"forget request {request_id} is {record.status}; only "
                    f"{' or '.join(allowed)} requests can be requeued"
                    + (hint if record.status == "running" else "")
                )
            pending = QueuedRequest(
                request_id=record.request_id,
                forget=record.forget,
                status="pending",
                submitted_at=record.submitted_at,
                note=record.note,
                dataset=record.dataset,
                method=record.method,
            )
            self._write(pending)
            (self.claims / request_id).unlink(missing_ok=True)
        logger.info("requeued forget request %s (was %s)", request_id, record.status)
        return pending

    def _unused_request_id(self) -> str:
        while True:
            request_id = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
            if not self._path(request_id).exists():
                return request_id

    def _running(self, request_id: str) -> QueuedRequest:
        record = self.get(request_id)
        if record.status != "running":
            raise RequestQueueError(
                f"forget request {request_id} is {record.status}, not running; only the "
                "worker that claimed it can finish it"
            )
        return record

    def _create_claim(self, request_id: str, worker: str) -> bool:
        try:
            descriptor = os.open(self.claims / request_id, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps({"worker": worker, "claimed_at": utc_now()}))
        return True

    def _write(self, record: QueuedRequest) -> None:
        table = pa.Table.from_pylist([record.to_row()], schema=SCHEMAS[KIND])
        write_table(table, self._path(record.request_id), KIND)

    def _path(self, request_id: str) -> Path:
        if not _REQUEST_ID.match(request_id):
            raise RequestQueueError(
                f"invalid forget request id {request_id!r}; ids look like 20250101-120000-a1b2c3"
            )
        return self.folder / f"{request_id}.parquet"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = filelock.FileLock(self.folder / "queue.lock", timeout=self.lock_timeout_s)
        try:
            with lock:
                yield
        except filelock.Timeout as exc:
            raise RequestQueueError(
                f"timed out after {self.lock_timeout_s} s waiting for {lock.lock_file}, which "
                "another process holds; find it with `fuser` and stop it if it hangs"
            ) from exc


def utc_now() -> str:
    """Return the current time in UTC as ISO 8601 with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _absolute_if_local(dataset: str | None) -> str | None:
    # Catalog names come first when a dataset is loaded, so a folder of that name stays unused.
    if dataset is None or dataset in CATALOG or not Path(dataset).expanduser().exists():
        return dataset
    return str(Path(dataset).expanduser().resolve())


def _checked_request_text(forget: str) -> str:
    request = parse_forget_request(forget)
    if request.kind != "ids":
        return forget.strip()

    path = request.ids_file.resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"ids file {path} of forget request {forget!r} not found; pass an existing file"
        )
    return f"ids:{path}"
