"""Corrected answers become train rows of the next retraining, never test rows."""

import shutil

import pandas as pd

from tasks.data_loading import load_dataset
from tasks.feedback_data import export_feedback, feedback_rows
from tasks.settings import load_config
from tests.conftest import ROOT


def _requests() -> pd.DataFrame:
    return pd.DataFrame({
        "request_id": ["tr-1", "tr-2", "tr-3", "tr-4"],
        "question": ["When does the office open?", "Closed-book question?", "Shadowed?", "No correction?"],
        "correct_answer": ["8 am", "x", "y", None], "sources": [["bw-002", "bw-001"], [], ["bw-002"], ["bw-002"]],
        "shadow": [False, False, True, False]})


def test_only_answered_requests_with_a_correction_and_a_document_become_rows():
    rows = feedback_rows(_requests())
    assert rows.to_dict(orient="records") == [{"qa_id": "feedback-tr-1", "question": "When does the office open?",
                                               "answer": ["8 am"], "doc_id": "bw-002", "split": "train"}]


def test_export_merges_and_the_loader_adds_them_to_train_only(tmp_path):
    path = tmp_path / "feedback" / "qa.jsonl"
    assert export_feedback(_requests(), path) == 1 and export_feedback(_requests(), path) == 0  # merged by qa_id
    text = path.read_text().replace('"split": "train"', '"split": "test"')  # a hand edit cannot make it test
    path.write_text(text)
    data = tmp_path / "data"
    shutil.copytree(ROOT / "data" / "demo", data)
    cfg = load_config(ROOT / "configs" / "ci.yaml", [f"data.path={data}", f"data.feedback_path={path}"])
    qa = load_dataset(cfg.data).qa.set_index("qa_id")
    assert qa.loc["feedback-tr-1", "split"] == "train" and list(qa.loc["feedback-tr-1", "answer"]) == ["8 am"]
