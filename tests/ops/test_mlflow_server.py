"""megu's registry and promotion through an MLflow tracking server with a SQLite backend on 127.0.0.1.

This is the scale-out setup in which every worker points MLFLOW_TRACKING_URI at one server.
The server is started with one worker process and job execution off, which keeps it at two
processes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from megu_core import promotion, tracking
from tests.ops.service_processes import free_port, start_process, stop_process, wait_for_health

MODEL = "megu-served-resnet18-w4"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start `mlflow server` on a free port and return its URL; stop it afterwards."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        {
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
    )
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        (folder / "artifacts").as_uri(),
        "-w",
        "1",
    ]
    log = folder / "server.log"
    server = start_process(command, env, log, folder)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(f"{url}/health", server, log)
        yield url
    finally:
        stop_process(server, signal.SIGTERM)


@pytest.fixture
def served(mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MEGU_HOME", str(tmp_path / "megu-home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return mlflow_server


def make_checkpoint(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True)
    weights = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed))
    save_file({"head.weight": weights}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18"}))
    return folder


def test_register_promote_and_download_through_server(served: str, tmp_path: Path):
    with tracking.start_run("served") as run_id:
        for seed, verdict in enumerate(("passed", "passed")):
            folder = make_checkpoint(tmp_path / f"checkpoint-{seed}", seed)
            tracking.register_checkpoint(
                run_id, folder, MODEL, {"megu.verdict": verdict}, f"checkpoints/{seed}"
            )

    promotion.promote(1, model=MODEL)
    promotion.promote(2, model=MODEL)
    restored = promotion.rollback(model=MODEL)
    downloaded = tracking.download_checkpoint(MODEL, "production", tmp_path / "download")

    assert restored.version == 1
    assert [v.aliases for v in promotion.list_versions(MODEL)] == [(), ("production",)]
    assert (downloaded / "model.safetensors").read_bytes() == (
        tmp_path / "checkpoint-0" / "model.safetensors"
    ).read_bytes()
