"""The decision history reads the retrain runs' own records, oldest first, and draws and prints them."""

import math

import mlflow
import pytest
from rich.console import Console

from tasks.history import decision_history, history_figure, history_record
from tasks.report import print_history
from tasks.settings import load_config
from tasks.tracking import FLOW_TAG, setup_tracking
from tests.conftest import ROOT


def _retrain(fingerprint: str, decision: str, champion: str, version: str, score: float | None, changed: str):
    with mlflow.start_run(tags={FLOW_TAG: "retrain", "data_fingerprint": fingerprint, "champion_decision": decision,
                                "challenger": champion, "champion": champion, "champion_version": version,
                                "what_changed": changed}):
        if score is not None:
            mlflow.log_metrics({"champion_after_objective": score, "champion_after_objective_ci_low": score - 0.1,
                                "champion_after_objective_ci_high": score + 0.1})


def test_history_lists_champions_with_intervals_and_reasons(tmp_path):
    cfg = load_config(ROOT / "configs" / "ci.yaml", [f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db",
                                                     f"mlflow.artifact_location={tmp_path}/artifacts"])
    setup_tracking(cfg.mlflow)
    assert decision_history(cfg).empty
    _retrain("fp1", "promoted", "rag", "1", 0.30, "recomputed validate, index; registered version 1")
    with mlflow.start_run(tags={FLOW_TAG: "evaluate", "data_fingerprint": "fp1"}):
        pass  # not a retraining: not in the history
    _retrain("fp1", "kept", "rag", "1", 0.30, "nothing changed: every stage reused its earlier result")
    _retrain("fp2", "promoted", "hybrid", "2", 0.42, "recomputed finetune[raft]; registered version 2")
    _retrain("fp3", "kept", "hybrid", "2", None, "recomputed validate")

    history = decision_history(cfg)
    assert list(history["champion"]) == ["rag", "rag", "hybrid", "hybrid"]
    assert list(history["decision"]) == ["promoted", "kept", "promoted", "kept"]
    assert history.loc[2, "ci_low"] == pytest.approx(0.32) and math.isnan(history.loc[3, "objective"])
    assert history.loc[1, "what_changed"].startswith("nothing changed")

    assert history_figure(history, "1.0×f1").axes[0].get_ylabel() == "champion objective (1.0×f1)"
    record = history_record(cfg)
    assert record.tables["decision_history.csv"].equals(history) and "plots/decision_history.png" in record.figures

    console = Console(width=200, record=True)
    print_history(history, console, "1.0×f1")
    text = console.export_text()
    assert "finetune[raft]" in text and "promoted hybrid" in text and "0.420 [0.32, 0.52]" in text and "n/a" in text
