"""Reading the request record while the gateway writes it: MLflow stores a trace's spans a moment before
its tags, and a trace in that state is neither a complete record nor a request of an unknown variant."""

from __future__ import annotations

import time

import mlflow
import pytest

from tasks import request_log
from tasks.request_log import RequestRecord, load_requests
from tasks.request_writer import use_synchronous_export


@pytest.fixture
def experiment_id(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    use_synchronous_export()
    return mlflow.create_experiment("requests")


def _record(experiment_id: str, question: str) -> RequestRecord:
    now, rid = time.time_ns(), request_log.new_request_id()
    return RequestRecord(rid, experiment_id, "ask[champion]", now - 5_000_000, now, {"question": question},
                         {"answer": "a", "sources": []},
                         {request_log.REQUEST_ID: rid, "variant": "champion", "model_version": "1", "shadow": "false"},
                         {"latency_ms": 5.0})


def _spans_without_tags(record: RequestRecord) -> str:
    """The store's state between MLflow's two writes of a trace: the spans are there, the tags are not."""
    untagged = RequestRecord(**{**record.to_json(), "tags": {}})
    return request_log.write_record(untagged)


def test_a_trace_whose_tags_are_not_written_yet_is_not_read_as_a_request(experiment_id):
    whole = _record(experiment_id, "whole?")
    request_log.write_record(whole)
    _spans_without_tags(_record(experiment_id, "half written?"))

    requests = load_requests(experiment_id)

    assert list(requests["question"]) == ["whole?"]
    assert list(requests["variant"]) == ["champion"]


def test_a_write_counts_as_complete_only_with_its_tags(experiment_id):
    record = _record(experiment_id, "q?")
    assert not request_log.is_complete(_spans_without_tags(record), record.request_id)
    assert request_log.is_complete(request_log.write_record(record), record.request_id)
