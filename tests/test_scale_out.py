"""Scale-out on real engines, all on 127.0.0.1 and stopped at the end: PostgreSQL; an MLflow tracking server on
it with served artifacts (`ragtune tracking-server`); a Prefect server on it (`ragtune server`) with two
process workers (`ragtune worker --limit 1`).

1. Two retraining runs of one deployment at once, one per worker: both complete, the index is built once
   and each adapter trained once (the other run waited and reused), and one model version is registered.
2. A second working directory that shares nothing with the first but the servers runs the pipeline with
   the Dask fan-out: it fetches the index and the adapters from the tracking server's artifact store
   instead of rebuilding them, its candidate table equals the sequential one, and it answers with the
   champion registered through the tracking server.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from tasks.artifact_store import SERVED_STORE, ArtifactStore
from tests.conftest import ROOT
from tests.postgres import postgres_server
from tests.servers import (
    RAGTUNE,
    final_state,
    flow_logs,
    mlflow_server,
    prefect_client,
    prefect_server,
    start,
    stop,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.server, pytest.mark.slow]
RUN_TIMEOUT_S = 600  # two cold CI-config retrainings share 2 cores
MODEL = "ragtune-scale"
RUNTIME_METRICS = ("latency", "seconds", "cost", "per_second")  # timing, not results: differ between any two runs


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """PostgreSQL with a database each for MLflow and Prefect, and both servers on it."""
    base = tmp_path_factory.mktemp("engines")
    with postgres_server(base) as postgres:
        postgres.create_database("mlflow")
        postgres.create_database("prefect")
        with mlflow_server(postgres.url("mlflow"), base / "artifacts", base / "mlflow.log") as tracking, \
                prefect_server(base, postgres.async_url("prefect")) as env:
            yield {**env, "MLFLOW_TRACKING_URI": tracking}


def _project(work: Path, tracking_uri: str, **sections) -> Path:
    """A CI-sized config whose data copy and local stores (index, adapters, caches, models) live under `work`."""
    shutil.copytree(ROOT / "data" / "demo", work / "data")
    raw = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    raw["data"]["path"] = str(work / "data")
    raw["model_cache"] = str(work / "models")
    raw["cache_root"] = str(work / "cache")
    raw["index"]["root"] = str(work / "index")
    raw["finetune"]["output_root"] = str(work / "adapters")
    raw["champion"]["model_name"] = MODEL
    raw["mlflow"] = {"tracking_uri": tracking_uri, "experiment": "ragtune-scale"}
    raw.update(sections)
    (work / "config.yaml").write_text(yaml.safe_dump(raw))
    return work / "config.yaml"


def _parent_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("ragtune-scale")
    return client.search_runs([experiment.experiment_id], "tags.`ragtune.flow` = 'retrain'",
                              order_by=["attributes.start_time ASC"])


def _children(client: MlflowClient, parent) -> dict[str, object]:
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return {r.info.run_name: r for r in runs}


def _candidate_table(run) -> dict[str, float]:
    return {k: v for k, v in run.data.metrics.items()
            if "." in k and not any(part in k for part in RUNTIME_METRICS)}


def test_two_workers_one_registry_and_a_second_machine_that_fetches(engines, tmp_path_factory):
    first = _project(tmp_path_factory.mktemp("machine-a"), engines["MLFLOW_TRACKING_URI"])
    deploy = subprocess.run([*RAGTUNE, "deploy", "--config", str(first)], cwd=ROOT, env=engines,
                            capture_output=True, text=True, timeout=300, check=False)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    logs = [first.parent / f"worker-{i}.log" for i in (1, 2)]
    workers = [start([*RAGTUNE, "worker", "--limit", "1"], log, engines) for log in logs]
    try:
        with prefect_client(engines) as prefect:
            retrain = next(d for d in prefect.read_deployments() if d.name == "nightly-retrain")
            runs = [prefect.create_flow_run_from_deployment(retrain.id) for _ in range(2)]
            wait_for("both runs to start", lambda: all(prefect.read_flow_run(r.id).state.is_running()
                                                       or prefect.read_flow_run(r.id).state.is_final()
                                                       for r in runs), 180)
            done = [final_state(prefect, r.id, RUN_TIMEOUT_S, logs[0]) for r in runs]
            assert len({r.infrastructure_pid for r in done}) == 2  # one run per worker, at the same time
            texts = [flow_logs(prefect, r.id) for r in done]
    finally:
        for worker in workers:
            stop(worker)
    joined = "\n".join(texts)
    assert joined.count("(built") == 1, joined  # the index: built by one run, reused by the other
    for mode in ("closed_book", "raft"):
        assert joined.count(f"finetune[{mode}] trained") == 1, joined

    mlflow.set_tracking_uri(engines["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(engines["MLFLOW_TRACKING_URI"])  # an earlier test in this process may have set another
    client = MlflowClient(engines["MLFLOW_TRACKING_URI"], engines["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == 1, [(v.version, v.run_id) for v in versions]  # nothing registered twice
    assert client.get_model_version_by_alias(MODEL, "champion").version == versions[0].version
    parents = _parent_runs(client)
    assert len(parents) == 2 and _candidate_table(parents[0]) == _candidate_table(parents[1])
    sequential = _candidate_table(parents[0])
    assert {k.split(".")[0] for k in sequential} >= {"base", "finetuned", "rag", "hybrid"}

    second = _project(tmp_path_factory.mktemp("machine-b"), engines["MLFLOW_TRACKING_URI"],
                      scale={"dask": {"enabled": True, "workers": 2}})
    run = subprocess.run([*RAGTUNE, "run", "--config", str(second)], cwd=ROOT, env=engines,
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    fetched = _parent_runs(client)[-1]
    children = _children(client, fetched)
    assert children["index"].data.tags["fetched"] == "True"
    for mode in ("closed_book", "raft"):
        assert children[f"finetune-{mode}"].data.tags["fetched"] == "True"
    trained_here = {p.name for p in (second.parent / "adapters").iterdir() if not p.name.startswith(".")}
    trained_there = {p.name for p in (first.parent / "adapters").iterdir() if not p.name.startswith(".")}
    assert trained_here == trained_there  # the same content keys on both machines
    assert _candidate_table(fetched) == sequential  # the Dask fan-out scores exactly as the sequential path
    store = ArtifactStore(SERVED_STORE)
    assert store.has("index", children["index"].data.tags["index_version"])
    assert all(store.has("adapters", key) for key in trained_there)

    answer = subprocess.run([*RAGTUNE, "ask", "When does the Kellsport office open?", "--config", str(second)],
                            cwd=ROOT, env=engines, capture_output=True, text=True, timeout=300, check=False)
    assert answer.returncode == 0 and "sources:" in answer.stdout, answer.stdout[-2000:] + answer.stderr[-2000:]
