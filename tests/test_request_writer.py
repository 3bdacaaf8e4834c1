"""The gateway's record writer against a real MLflow server: while the store is down nothing is lost, a
killed gateway's outbox is written by the next gateway exactly once, and an outbox has one owner."""

from __future__ import annotations

import time
from collections import Counter

import mlflow
import pytest

from tasks import request_log
from tasks.request_log import RequestRecord, load_requests
from tasks.request_writer import OutboxInUse, RequestWriter
from tests.servers import free_port, mlflow_server

pytestmark = [pytest.mark.integration, pytest.mark.server]


def _record(experiment_id: str, i: int) -> RequestRecord:
    now = time.time_ns()
    rid = request_log.new_request_id()
    return RequestRecord(rid, experiment_id, "ask[champion]", now - 5_000_000, now, {"question": f"q{i}?"},
                         {"answer": f"a{i}", "sources": []},
                         {request_log.REQUEST_ID: rid, "variant": "champion", "model_version": "1", "shadow": "false"},
                         {"latency_ms": 5.0})


def test_records_survive_a_store_outage_and_a_killed_gateway_exactly_once(tmp_path, monkeypatch):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast while the server is down
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "true")  # restored after; the writer turns it off
    backend = f"sqlite:///{tmp_path}/mlflow.db"
    with mlflow_server(backend, tmp_path / "artifacts", tmp_path / "server-1.log", port):
        mlflow.set_tracking_uri(url)
        experiment_id = mlflow.create_experiment("gateway-records")

    outbox = tmp_path / "outbox"
    first = RequestWriter(outbox, max_waiting=100)  # the store is down from here on
    records = [_record(experiment_id, i) for i in range(4)]
    for record in records:
        first.submit(record)
    time.sleep(3)
    assert len(list(outbox.glob("*.json"))) == 4  # retried, not dropped
    with pytest.raises(OutboxInUse, match="gateway.outbox_dir"):
        RequestWriter(outbox, max_waiting=100)
    assert first.close(timeout=1) == 4  # a gateway that stops while the store is down leaves them in the outbox

    with mlflow_server(backend, tmp_path / "artifacts", tmp_path / "server-2.log", port):
        early = records[0]  # as if written just before a kill
        assert request_log.is_complete(request_log.write_record(early), early.request_id)
        second = RequestWriter(outbox, max_waiting=100)
        assert second.replayed == 4
        later = _record(experiment_id, 9)
        second.submit(later)
        assert all(second.wait_written(r.request_id, 60) for r in [*records, later])
        assert second.close(timeout=30) == 0
        stored = mlflow.search_traces(locations=[experiment_id], return_type="list")  # as stored, not deduplicated
        recorded = load_requests(experiment_id)
    assert not list(outbox.glob("*.json"))
    counts = Counter(t.info.tags[request_log.REQUEST_ID] for t in stored)
    assert [counts[r.request_id] for r in [*records, later]] == [1] * 5 and len(stored) == 5
    assert sorted(recorded["question"]) == sorted(r.inputs["question"] for r in [*records, later])
