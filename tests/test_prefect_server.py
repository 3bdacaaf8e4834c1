"""Scheduled operation as the README sets it up: `ragtune server` (a real Prefect server on 127.0.0.1),
`ragtune deploy` (prefect.yaml, non-interactively), `ragtune worker` (a process worker). Then a manual
run completes, a short-interval schedule fires and completes, and the data-change trigger starts a
retraining after a document changes and not before. Both servers' processes are stopped at the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import ROOT
from tests.servers import (
    RAGTUNE,
    final_state,
    flow_logs,
    prefect_client,
    prefect_server,
    start,
    stop,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.server]
RUN_TIMEOUT_S = 420  # a cold CI-config retraining takes ~90 s alone; the machine may be busy


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """`ragtune server` on a free port with its own PREFECT_HOME; yields the environment that points at it."""
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as env:
        port = env["PREFECT_API_URL"].split(":")[-1].split("/")[0]
        ui = requests.get(f"http://127.0.0.1:{port}/ui-settings", timeout=10).json()
        assert ui["api_url"] == env["PREFECT_API_URL"]  # the UI calls this server, not the default port
        yield env


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A config like configs/ci.yaml whose data and stores all live in a temporary directory."""
    work = tmp_path_factory.mktemp("scheduled")
    shutil.copytree(ROOT / "data" / "demo", work / "data")
    raw = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    raw["data"]["path"] = str(work / "data")
    raw["model_cache"] = str(ROOT / ".cache" / "models")
    raw["cache_root"] = str(work / "cache")
    raw["index"]["root"] = str(work / "index")
    raw["finetune"]["output_root"] = str(work / "adapters")
    raw["mlflow"] = {**raw["mlflow"], "tracking_uri": f"sqlite:///{work}/mlflow.db",
                     "artifact_location": str(work / "artifacts")}
    (work / "config.yaml").write_text(yaml.safe_dump(raw))
    return work


@pytest.fixture(scope="module")
def deployed(server, project) -> Iterator[dict[str, str]]:
    """`ragtune deploy --config ...` then `ragtune worker`, as the README says."""
    done = subprocess.run([*RAGTUNE, "deploy", "--config", str(project / "config.yaml")], cwd=ROOT, env=server,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    worker = start([*RAGTUNE, "worker"], project / "worker.log", server)
    try:
        yield server
    finally:
        stop(worker)


@pytest.fixture(scope="module")
def client(server):
    with prefect_client(server) as c:
        yield c


def _runs(client, deployment_id, **where):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    return [r for r in runs if all(getattr(r, k) == v for k, v in where.items())]


def _final(client, run_id, project: Path):
    return final_state(client, run_id, RUN_TIMEOUT_S, project / "worker.log")


def _completed_since(client, deployment_id, since: float) -> list:
    return [r for r in _runs(client, deployment_id) if r.state is not None and r.state.is_completed()
            and r.start_time is not None and r.start_time.timestamp() > since]


def _only_schedule(client, deployment_id, seconds: int) -> None:
    from prefect.client.schemas.schedules import IntervalSchedule

    for schedule in client.read_deployment_schedules(deployment_id):
        client.delete_deployment_schedule(deployment_id, schedule.id)
    if seconds:
        client.create_deployment_schedules(deployment_id, [(IntervalSchedule(interval=timedelta(seconds=seconds)),
                                                            True)])


@pytest.mark.slow
def test_deployed_flows_run_on_demand_on_schedule_and_on_data_change(deployed, client, project):
    deployments = {d.name: d for d in client.read_deployments()}
    assert {"nightly-retrain", "data-change-trigger", "index-refresh", "on-demand-evaluation",
            "daily-ab-report"} <= set(deployments)
    retrain, trigger, refresh = (deployments[n] for n in ("nightly-retrain", "data-change-trigger", "index-refresh"))
    assert retrain.parameters["config"] == str(project / "config.yaml")
    assert retrain.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(ROOT)
    assert "config" in retrain.parameter_openapi_schema["properties"]  # a typed form in the UI

    # (a) a manual run completes
    manual = client.create_flow_run_from_deployment(retrain.id)
    _final(client, manual.id, project)
    assert "nothing changed" not in flow_logs(client, manual.id)  # a cold run: every stage computed

    # (b) a short-interval schedule fires and the run it scheduled completes
    _only_schedule(client, refresh.id, 10)
    scheduled = wait_for("a scheduled index-refresh run", lambda: _runs(client, refresh.id, auto_scheduled=True), 60)
    _final(client, scheduled[-1].id, project)
    _only_schedule(client, refresh.id, 0)

    # (c) the data-change trigger: checks that see unchanged data start nothing...
    _only_schedule(client, trigger.id, 10)
    started_after = time.time()
    checks = wait_for("two completed data checks", lambda: _completed_since(client, trigger.id, started_after)[1:], 180)
    assert all("data unchanged" in flow_logs(client, r.id) for r in checks), [flow_logs(client, r.id) for r in checks]
    assert len(_runs(client, retrain.id, auto_scheduled=False)) == 1  # the nightly cron's runs are days ahead

    # ...and after a document changes, one check starts the retraining, which completes
    docs = project / "data" / "documents.jsonl"
    rows = [json.loads(line) for line in docs.read_text().splitlines()]
    rows[5]["text"] += " This section was reviewed in November 2026."
    docs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    triggered = wait_for("the retraining the trigger starts", lambda: [
        r for r in _runs(client, retrain.id, auto_scheduled=False) if r.id != manual.id], 180)
    _only_schedule(client, trigger.id, 0)
    _final(client, triggered[0].id, project)
    assert len(_runs(client, retrain.id, auto_scheduled=False)) == 2
    assert any("data changed" in flow_logs(client, r.id) for r in _runs(client, trigger.id))


def test_deploy_to_a_container_pool_gives_the_image_its_variables_and_working_directory(server, client):
    """What can be checked without a container engine: the pool, and the deployments a container worker would run."""
    done = subprocess.run([*RAGTUNE, "deploy", "--config", "configs/ci.yaml", "--pool-type", "kubernetes", "--pool",
                           "ragtune-k8s", "--image", "registry.example/ragtune:1"], cwd=ROOT, env=server,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert client.read_work_pool("ragtune-k8s").type == "kubernetes"
    deployments = {d.name: d for d in client.read_deployments() if d.work_pool_name == "ragtune-k8s"}
    assert {"nightly-retrain", "data-change-trigger", "daily-ab-report"} <= set(deployments)
    retrain = deployments["nightly-retrain"]
    assert retrain.job_variables["image"] == "registry.example/ragtune:1"
    assert retrain.job_variables["namespace"] == "ragtune"
    assert retrain.job_variables["env"]["HF_HUB_OFFLINE"] == "1"
    assert retrain.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == "/app"
    assert retrain.parameters["config"] == "configs/ci.yaml"
