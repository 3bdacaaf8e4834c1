"""`ragtune ui`: one light server process for the project's store, on 127.0.0.1."""

import os

import psutil
import pytest
import requests
import yaml

from tests.conftest import ROOT
from tests.servers import RAGTUNE, free_port, responds, start, stop, wait_for


@pytest.mark.server
def test_ui_serves_the_store_from_one_light_process(tmp_path):
    raw = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    raw["mlflow"] = {**raw["mlflow"], "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                     "artifact_location": str(tmp_path / "artifacts"), "experiment": "ui-check"}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}  # set by earlier tests
    port = free_port()
    process = start([*RAGTUNE, "ui", "--config", str(config), "--port", str(port)], tmp_path / "ui.log", env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("ragtune ui", lambda: responds(f"{base}/"), timeout_s=90, every_s=0.5)
        found = requests.post(f"{base}/ajax-api/2.0/mlflow/experiments/search", json={"max_results": 10},
                              timeout=10).json()
        assert "ui-check" in [e["name"] for e in found["experiments"]]
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        commands = [" ".join(p.cmdline()) for p in tree]
        assert len(tree) <= 2, commands  # the server (in the CLI's place) and its one web worker: no job runner
        assert not any("huey" in c or "job" in c for c in commands), commands
    finally:
        stop(process)
        log = (tmp_path / "ui.log").read_text()
    assert f"127.0.0.1:{port}" in log
