"""`ragtune server | tracking-server | deploy | worker | serve`: the engines ragtune runs on (Prefect, MLflow)
and its deployments on them."""

from __future__ import annotations

import os
import subprocess
from typing import Annotated

import typer

from flows.cli_base import _need_prefect_server, _run, app, console, fail


@app.command()
def server(port: Annotated[int, typer.Option(help="Port.")] = 4200,
           host: Annotated[str, typer.Option(help="Interface to bind: loopback unless workers on other machines "
                                             "must reach it (then a private address).")] = "127.0.0.1") -> None:
    """Start a Prefect server with telemetry and promotional content off (UI at /). Its database is SQLite
    under PREFECT_HOME unless PREFECT_API_DATABASE_CONNECTION_URL names another (e.g. PostgreSQL)."""
    from flows.deployments import server_command

    console.print(f"Prefect UI at http://{host}:{port}; in other terminals: "
                  f"export PREFECT_API_URL=http://{host}:{port}/api")
    command, env = server_command(port, host)
    os.execve(command[0], command, env)  # the server is this process: a signal to it stops the server


@app.command("tracking-server")
def tracking_server(
        backend_store_uri: Annotated[str, typer.Option(help="Where runs, the registry and traces live, e.g. "
                                                        "postgresql://ragtune@127.0.0.1:5432/mlflow.")],
        artifacts_destination: Annotated[str, typer.Option(help="Where the server keeps artifacts: a path, "
                                                            "s3://bucket/prefix, ...")],
        port: Annotated[int, typer.Option(help="Port.")] = 5000,
        host: Annotated[str, typer.Option(help="Interface to bind: loopback unless other machines must reach it "
                                          "(then a private address).")] = "127.0.0.1",
        workers: Annotated[int, typer.Option(help="Server worker processes.")] = 2) -> None:
    """Start an MLflow tracking server that also serves the artifacts, with telemetry off. Point
    every machine at it: export MLFLOW_TRACKING_URI=http://<host>:<port> (or mlflow.tracking_uri in the config)."""
    from flows.engines import tracking_server_command

    console.print(f"MLflow at http://{host}:{port}; on every machine: export MLFLOW_TRACKING_URI=http://{host}:{port}")
    command, env = tracking_server_command(backend_store_uri, artifacts_destination, port, host, workers)
    os.execve(command[0], command, env)


@app.command()
def deploy(config: Annotated[str | None, typer.Option("--config", "-c", help="Config every deployment runs with "
                                                      "(default: each one's config in prefect.yaml).")] = None,
           pool_type: Annotated[str | None, typer.Option(help="docker or kubernetes: run the deployments in "
                                                         "containers of --image on a pool of that type.")] = None,
           pool: Annotated[str | None, typer.Option(help="Container work pool (default: ragtune-<type>).")] = None,
           image: Annotated[str | None, typer.Option(help="Image for a container pool (default: "
                                                     "deploy/job_variables.yaml's, ragtune:latest).")] = None) -> None:
    """Create prefect.yaml's deployments on the Prefect server for the process work pool (created if missing),
    non-interactively, with this directory as their working directory; then run `ragtune worker`. With
    --pool-type docker|kubernetes they run in containers of the project image instead (see the README)."""
    _need_prefect_server()
    from flows.container_pools import POOL_TYPES
    from flows.deployments import deploy as prefect_deploy
    from tasks.settings import load_config

    if pool_type is not None and pool_type not in POOL_TYPES:
        fail(f"--pool-type {pool_type}: use one of {', '.join(POOL_TYPES)}")
    if config is not None:
        _run(load_config, config)
    try:
        prefect_deploy(config, pool_type=pool_type, pool=pool, image=image)
    except subprocess.CalledProcessError as err:
        fail(f"`{' '.join(err.cmd[2:])}` failed (exit {err.returncode}); see above")


@app.command()
def worker(limit: Annotated[int | None, typer.Option(help="Flow runs this worker runs at once (default: no "
                                                      "limit). Start one worker per machine, each with its own "
                                                      "limit, to spread runs over machines.")] = None) -> None:
    """Start a process worker for prefect.yaml's work pool: it runs the deployed flows, offline."""
    _need_prefect_server()
    from flows.deployments import prefect_env, work_pool, worker_command

    command = worker_command(work_pool(), limit)
    os.execve(command[0], command, prefect_env())


@app.command()
def serve(config: Annotated[str | None, typer.Option("--config", "-c", help="Config every deployment runs with "
                                                     "(default: each one's config in prefect.yaml).")] = None) -> None:
    """Serve prefect.yaml's deployments in-process with their schedules, as `<name>-served` (needs a Prefect
    server; no work pool or worker)."""
    _need_prefect_server()
    from prefect import serve as prefect_serve

    from flows.deployments import runner_deployments
    from tasks.settings import load_config

    if config is not None:
        _run(load_config, config)
    prefect_serve(*runner_deployments(config))
