"""Start, wait for and stop the server and worker processes that the service tests run."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_process(
    command: list[str], env: dict[str, str], log: Path, cwd: Path
) -> subprocess.Popen:
    """Start a long-running command in its own process group, writing its output to `log`."""
    with open(log, "w") as handle:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so that stop_process also reaches its children
        )


def stop_process(process: subprocess.Popen, stop_signal: signal.Signals, repeats: int = 1) -> None:
    """Send `stop_signal` `repeats` times a second apart, then kill its process group if needed."""
    for _ in range(repeats):
        if process.poll() is not None:
            break
        process.send_signal(stop_signal)
        time.sleep(1.0)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the group this process leads, and leftovers in it
    process.wait(timeout=10)


def wait_for_health(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    """Poll `url` until it returns 200, failing the test if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args[0]} exited {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(1)
    pytest.fail(f"{url} not healthy after {timeout_s} s:\n{log.read_text()[-3000:]}")
