"""Real servers for the integration tests, on 127.0.0.1 and free ports, each stopped with what it started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import requests

from tests.conftest import ROOT

RAGTUNE = [sys.executable, "-m", "flows"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], object], timeout_s: float, every_s: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def start(command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.Popen:
    """Start a process in its own session (so `stop` reaches what it starts), output to `log`."""
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=cwd, env=env or dict(os.environ), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(process: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGTERM the process's session, SIGKILL what is left."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def responds(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, log: Path, port: int | None = None) -> Iterator[str]:
    """`ragtune tracking-server` (MLflow with served artifacts) on 127.0.0.1; yields its URL."""
    port = port or free_port()
    process = start([*RAGTUNE, "tracking-server", "--backend-store-uri", backend_uri, "--artifacts-destination",
                     str(artifacts), "--port", str(port)], log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("the MLflow server", lambda: process.poll() is not None or responds(f"{url}/health"), 180, 1)
        assert process.poll() is None, log.read_text()[-3000:]
        yield url
    finally:
        stop(process)


FAST_LOOPS = {  # the server schedules and the worker polls every few seconds instead of every minute
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    "PREFECT_WORKER_QUERY_SECONDS": "2",
    "PREFECT_WORKER_PREFETCH_SECONDS": "5",
}


@contextlib.contextmanager
def prefect_server(home: Path, database_url: str | None = None) -> Iterator[dict[str, str]]:
    """`ragtune server` on a free port with its own PREFECT_HOME (and database, e.g. PostgreSQL); yields the
    environment that points clients, deploys and workers at it."""
    port = free_port()
    env = {**os.environ, **FAST_LOOPS, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    log = home / "server.log"
    process = start([*RAGTUNE, "server", "--port", str(port)], log, env)
    try:
        health = f"{env['PREFECT_API_URL']}/health"
        wait_for("the Prefect server", lambda: process.poll() is not None or responds(health), 180)
        assert process.poll() is None, log.read_text()[-3000:]
        yield env
    finally:
        stop(process)


@contextlib.contextmanager
def prefect_client(env: dict[str, str]):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        yield client


def final_state(client, run_id, timeout_s: float, log: Path):
    """Wait for a flow run to finish; it must have completed (the worker's log says why not)."""
    def done():
        run = client.read_flow_run(run_id)
        return run if run.state is not None and run.state.is_final() else None

    run = wait_for(f"flow run {run_id} to finish", done, timeout_s, every_s=3)
    assert run.state.is_completed(), f"{run.name}: {run.state}\n{log.read_text()[-4000:]}"
    return run


def flow_logs(client, run_id) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return "\n".join(log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))))
