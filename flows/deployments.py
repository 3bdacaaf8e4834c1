"""The deployments, defined once in prefect.yaml: `ragtune deploy` (`prefect deploy --all --no-prompt`) creates
them for a work pool, and `ragtune serve` serves the same ones in-process from this reader.

Served deployments are named `<name>-served`: a served process and a worker never own the same
deployment, so neither takes over (or, on exit, pauses) the other's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.flows import load_flow_from_entrypoint

from flows.container_pools import prefect_yaml_for_pool
from tasks.offline import OFFLINE_ENV

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = ROOT / "prefect.yaml"
SERVED_SUFFIX = "-served"


def deployment_specs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The `deployments` entries of prefect.yaml."""
    return yaml.safe_load(Path(path).read_text())["deployments"]


def work_pool(path: Path = PREFECT_YAML) -> str:
    """The work pool prefect.yaml's deployments run on (one for all of them)."""
    pools = {spec["work_pool"]["name"] for spec in deployment_specs(path)}
    if len(pools) != 1:
        raise ValueError(f"{path}: expected one work pool for all deployments, found {sorted(pools)}")
    return pools.pop()


def _schedule(spec: dict[str, Any]) -> CronSchedule | IntervalSchedule:
    if "interval" in spec:
        return IntervalSchedule(interval=timedelta(seconds=spec["interval"]))
    return CronSchedule(cron=spec["cron"], timezone=spec.get("timezone", "UTC"))


def _parameters(spec: dict[str, Any], config: str | None, served: bool) -> dict[str, Any]:
    parameters = dict(spec.get("parameters") or {})
    if config is not None:
        parameters["config"] = config
    if served and "deployment" in parameters:  # a served trigger starts the served retraining
        parameters["deployment"] += SERVED_SUFFIX
    return parameters


def runner_deployments(config: str | None = None, path: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """prefect.yaml's deployments as in-process ones named `<name>-served`; `config` replaces each one's config."""
    root = Path(path).resolve().parent
    deployments = []
    for spec in deployment_specs(path):
        flow_file, _, function = spec["entrypoint"].partition(":")
        flow = load_flow_from_entrypoint(f"{root / flow_file}:{function}")
        deployments.append(flow.to_deployment(
            name=spec["name"] + SERVED_SUFFIX, description=spec.get("description"),
            parameters=_parameters(spec, config, served=True),
            schedules=[_schedule(s) for s in spec.get("schedules") or []]))
    return deployments


# The Prefect server fetches its collection registry (the work-pool types' metadata) from GitHub, with no
# setting to stop it, and falls back to the copy it ships. A proxy that refuses every connection gives it that
# copy without any attempt to reach the internet; loopback (its database, its clients) is exempt.
NO_OUTBOUND_HTTP = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
                    "NO_PROXY": "127.0.0.1,localhost,::1"}


def prefect_env() -> dict[str, str]:
    """The environment for the Prefect server, deploy and worker processes: this one plus the offline switches."""
    return {**os.environ, **OFFLINE_ENV}


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def ensure_work_pool(pool: str, pool_type: str = "process") -> None:
    """Create the work pool if the server does not have it."""
    inspect = subprocess.run(_prefect("work-pool", "inspect", pool), env=prefect_env(), capture_output=True,
                             text=True, check=False)
    if inspect.returncode != 0:
        subprocess.run(_prefect("work-pool", "create", pool, "--type", pool_type), env=prefect_env(), check=True)


def deploy(config: str | None = None, path: Path = PREFECT_YAML, pool_type: str | None = None,
           pool: str | None = None, image: str | None = None) -> None:
    """`prefect deploy --all --no-prompt` from the project root (recorded as the flows' working directory),
    on a copy of prefect.yaml whose deployments all run `config` when one is given. With `pool_type` docker or
    kubernetes, the deployments run on that container pool (`pool`, default ragtune-<type>) from `image`, with
    deploy/job_variables.yaml's variables and the image's working directory (flows.container_pools)."""
    raw = yaml.safe_load(Path(path).read_text())
    for spec in raw["deployments"]:
        spec["parameters"] = _parameters(spec, config, served=False)
    if pool_type is not None:
        pool = pool or f"ragtune-{pool_type}"
        raw = prefect_yaml_for_pool(raw, pool_type, pool, image)
        ensure_work_pool(pool, pool_type)
    else:
        ensure_work_pool(work_pool(path))
    with tempfile.TemporaryDirectory() as tmp:
        prefect_file = Path(tmp) / "prefect.yaml"
        prefect_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        subprocess.run(_prefect("deploy", "--all", "--no-prompt", "--prefect-file", str(prefect_file)),
                       cwd=Path(path).resolve().parent, env=prefect_env(), check=True)


def server_command(port: int, host: str = "127.0.0.1") -> tuple[list[str], dict[str, str]]:
    """`prefect server start` on `host`:`port`, and its environment: the offline switches, and the API
    address the UI calls (Prefect's UI keeps calling port 4200 unless told otherwise)."""
    env = {**prefect_env(), "PREFECT_SERVER_API_HOST": host, "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_SERVER_UI_API_URL": f"http://{host}:{port}/api", **NO_OUTBOUND_HTTP}
    return _prefect("server", "start", "--host", host, "--port", str(port)), env


def worker_command(pool: str, limit: int | None = None) -> list[str]:
    limit_args = ("--limit", str(limit)) if limit else ()
    return _prefect("worker", "start", "--pool", pool, "--type", "process", *limit_args)
