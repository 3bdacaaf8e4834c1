"""The deployments, defined once in prefect.yaml: `prefect deploy --all` reads them for a work pool,
and `ragtune serve` serves the same ones in-process from this reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.flows import load_flow_from_entrypoint

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"


def deployment_specs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The `deployments` entries of prefect.yaml."""
    return yaml.safe_load(Path(path).read_text())["deployments"]


def runner_deployments(config: str | None = None, path: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """prefect.yaml's deployments as in-process deployments; `config` replaces each one's config parameter."""
    root = Path(path).resolve().parent
    deployments = []
    for spec in deployment_specs(path):
        flow_file, _, function = spec["entrypoint"].partition(":")
        parameters = dict(spec.get("parameters") or {})
        if config is not None:
            parameters["config"] = config
        flow = load_flow_from_entrypoint(f"{root / flow_file}:{function}")
        deployments.append(flow.to_deployment(
            name=spec["name"], description=spec.get("description"), parameters=parameters,
            schedules=[CronSchedule(cron=s["cron"], timezone=s.get("timezone", "UTC"))
                       for s in spec.get("schedules") or []]))
    return deployments
