"""The engines ragtune runs on when it outgrows one process, started as their own programs with ragtune's
offline switches: the MLflow tracking server (any SQLAlchemy backend, e.g. PostgreSQL, with served
artifacts) and the light UI server of `ragtune ui`. The Prefect server and worker commands are in
flows.deployments."""

from __future__ import annotations

import os
import sys

from tasks.offline import OFFLINE_ENV


def tracking_server_command(backend_store_uri: str, artifacts_destination: str, port: int,
                            host: str = "127.0.0.1", workers: int = 2) -> tuple[list[str], dict[str, str]]:
    """`mlflow server` with this backend store that also serves the artifacts (clients then need only its URL:
    runs, registry, traces, index versions and adapters all go through it), and its environment."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
               "--serve-artifacts", "--artifacts-destination", artifacts_destination,
               "--host", host, "--port", str(port), "--workers", str(workers)]
    return command, {**os.environ, **OFFLINE_ENV}


def ui_command(backend_store_uri: str, port: int, host: str = "127.0.0.1") -> tuple[list[str], dict[str, str]]:
    """`mlflow server` for one person browsing a local store: one web worker and no job runner.

    MLflow's defaults (4 workers and a job-execution consumer with its own workers, for GenAI judges and
    trace roll-ups that ragtune does not use) start ~8 processes of ~280 MB each and take half a minute."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
               "--host", host, "--port", str(port), "--workers", "1"]
    return command, {**os.environ, **OFFLINE_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
