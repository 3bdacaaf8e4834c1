"""The data-change trigger starts a retraining for a content change, once, and never for none."""

import json
import shutil

import mlflow
import pytest

from tasks import data_watch
from tasks.settings import load_config
from tasks.tracking import FLOW_TAG, setup_tracking
from tests.conftest import ROOT


@pytest.fixture
def cfg(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ROOT / "data" / "demo", data)
    cfg = load_config(ROOT / "configs" / "ci.yaml", [f"data.path={data}", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db",
                                                    f"mlflow.artifact_location={tmp_path}/artifacts"])
    setup_tracking(cfg.mlflow)
    return cfg


def test_verdict_compares_with_the_last_retraining_and_the_last_check():
    assert data_watch.change_verdict("b", "a", "a") == (True, "data changed: fingerprint b, last retrained on a")
    assert data_watch.change_verdict("a", "a", None)[0] is False
    assert data_watch.change_verdict("b", "a", "b") == (False, "data unchanged since the last check (fingerprint b)")
    assert data_watch.change_verdict("b", None, "a")[0] is True  # changed after the baseline, never retrained
    first = data_watch.change_verdict("a", None, None)
    assert first[0] is False and first[1].startswith("first check, nothing retrained yet")


def test_fingerprint_follows_content_not_file_times(cfg):
    docs = cfg.data.path / "documents.jsonl"
    before = data_watch.current_fingerprint(cfg)
    docs.write_text(docs.read_text())  # touched, same content
    assert data_watch.current_fingerprint(cfg) == before
    rows = [json.loads(line) for line in docs.read_text().splitlines()]
    rows[3]["text"] += " Reviewed in 2026."
    docs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert data_watch.current_fingerprint(cfg) != before


def test_last_retrained_fingerprint_is_the_latest_retrain_runs(cfg):
    assert data_watch.last_retrained_fingerprint(cfg) is None
    for flow, fingerprint in (("retrain", "fp-old"), ("retrain", "fp-new"), ("evaluate", "fp-other")):
        with mlflow.start_run(tags={FLOW_TAG: flow, "data_fingerprint": fingerprint}):
            pass
    assert data_watch.last_retrained_fingerprint(cfg) == "fp-new"  # an evaluate run is not a retraining
