"""Kills and concurrency on one machine, as users cause them: real `ragtune run` processes on one project.

1. Two runs of one config started together (both need new adapters and a new index) both complete; each
   adapter is trained and the index built once (the other run waits and reuses), one model version is
   registered.
2. After an edit that every stage reads, a run is killed with SIGKILL in each stage in turn (validate, index,
   finetune, evaluate, promote); each time the temporary Prefect server it started dies with it.
3. The next run completes and leaves no RUNNING run, no version without its lineage tags, and every process
   the killed runs had started is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tasks import registry
from tests.conftest import ROOT
from tests.servers import RAGTUNE, start, stop, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "ragtune-kills"
LINEAGE_TAGS = {*registry.LINEAGE_TAGS, "data_fingerprint", "test_set"}  # what the pipeline writes
RUN_TIMEOUT_S = 900


def _project(tmp: Path) -> tuple[Path, str]:
    cfg = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    shutil.copytree(ROOT / "data" / "demo", tmp / "data")
    cfg["data"]["path"] = str(tmp / "data")
    cfg["model_cache"] = str(ROOT / ".cache" / "models")
    cfg["cache_root"], cfg["index"]["root"] = str(tmp / "cache"), str(tmp / "index")
    cfg["finetune"]["output_root"] = str(tmp / "adapters")
    uri = f"sqlite:///{tmp}/mlflow.db"
    cfg["mlflow"] = {"tracking_uri": uri, "artifact_location": str(tmp / "mlartifacts"), "experiment": "kills"}
    cfg["champion"]["model_name"] = MODEL
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, uri


def _run(config: Path, log: Path, home: Path) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(home), "COLUMNS": "200"}
    for inherited in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # set by earlier tests
        env.pop(inherited, None)
    return start([*RAGTUNE, "run", "--config", str(config)], log, env)


def _descendants(process: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _kill_when(config: Path, tmp: Path, stage: str, reached, client: MlflowClient) -> str:
    """Start a run, SIGKILL it (the run's process alone, as the OOM killer would) once `reached(log)` holds."""
    log = tmp / f"killed-at-{stage}.log"
    process = _run(config, log, tmp / "prefect")
    try:
        wait_for(f"the run to reach {stage}", lambda: process.poll() is not None or reached(log.read_text(), client),
                 RUN_TIMEOUT_S, every_s=0.2)
        assert process.poll() is None, f"the run ended before {stage}:\n{log.read_text()[-3000:]}"
        children = _descendants(process)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        wait_for("what the killed run started to die with it", lambda: not _alive(children), 30, every_s=0.5)
    finally:
        stop(process)
    return log.read_text()


def _running_child(name_prefix: str):
    def check(_text: str, client: MlflowClient) -> bool:
        experiment = client.get_experiment_by_name("kills")
        runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
        return any(r.info.run_name.startswith(name_prefix) for r in runs)
    return check


def _logged(marker: str):
    return lambda text, _client: marker in text


KILL_POINTS = [  # stage -> when it is under way
    ("validate", _logged("Task run 'answer-type' - Finished")),
    ("index", _logged("Task run 'validate' - Finished in state Completed")),
    ("finetune", _running_child("finetune-")),
    ("evaluate", _running_child("candidate-")),
    ("promote", _running_child("promote")),
]


def _edit_everything(data: Path) -> None:
    """One document and one train question changed: validation, the index, both adapters and the evaluations
    of every candidate must be recomputed."""
    docs = [json.loads(line) for line in (data / "documents.jsonl").read_text().splitlines()]
    docs[0]["text"] += " The office also keeps a spare key at the front desk."
    (data / "documents.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    qa = [json.loads(line) for line in (data / "qa.jsonl").read_text().splitlines()]
    train = next(q for q in qa if q["split"] == "train")
    train["question"] = train["question"].rstrip("?") + ", according to the handbook?"
    (data / "qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa))


def test_concurrent_runs_then_a_kill_in_every_stage_leave_a_clean_registry_and_no_stray_process(tmp_path):
    config, uri = _project(tmp_path)
    client = MlflowClient(uri, uri)

    logs = [tmp_path / f"concurrent-{i}.log" for i in range(2)]
    runs = [_run(config, log, tmp_path / f"prefect-{i}") for i, log in enumerate(logs)]
    try:
        for run, log in zip(runs, logs, strict=True):
            assert run.wait(timeout=RUN_TIMEOUT_S) == 0, log.read_text()[-5000:]
    finally:
        for run in runs:
            stop(run)
    joined = "\n".join(log.read_text() for log in logs)
    assert joined.count("(built") == 1, joined[-5000:]
    for mode in ("closed_book", "raft"):
        assert joined.count(f"finetune[{mode}] trained") == 1, joined[-5000:]
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1

    _edit_everything(tmp_path / "data")
    for stage, reached in KILL_POINTS:
        _kill_when(config, tmp_path, stage, reached, client)

    final = tmp_path / "final.log"
    process = _run(config, final, tmp_path / "prefect")
    try:
        assert process.wait(timeout=RUN_TIMEOUT_S) == 0, final.read_text()[-5000:]
    finally:
        stop(process)
    experiment = client.get_experiment_by_name("kills")
    assert client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") == []
    killed = client.search_runs([experiment.experiment_id], "attributes.status = 'KILLED'")
    assert len({r.data.tags.get("mlflow.parentRunId", r.info.run_id) for r in killed}) == len(KILL_POINTS)
    for version in client.search_model_versions(f"name = '{MODEL}'"):
        assert set(version.tags) >= LINEAGE_TAGS, (version.version, version.tags)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert set(champion.tags) >= LINEAGE_TAGS
    strays = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])
              and p.pid != os.getpid()]
    assert not _alive(strays), [p.info["cmdline"] for p in strays]
