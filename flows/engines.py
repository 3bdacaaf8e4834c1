"""The engines ragtune runs on when it outgrows one process, started as their own programs with ragtune's
offline switches: the MLflow tracking server (any SQLAlchemy backend, e.g. PostgreSQL, with served
artifacts). The Prefect server and worker commands are in flows.deployments."""

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
