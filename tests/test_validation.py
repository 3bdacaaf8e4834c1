import pandas as pd
import pytest

from tasks.settings import ValidationConfig
from tasks.validation import DataValidationError, ensure_valid, validate_dataset

CFG = ValidationConfig(split_bounds={"train": (0.4, 0.9), "validation": (0.0, 0.4), "test": (0.1, 0.5)})


def _docs() -> pd.DataFrame:
    return pd.DataFrame({
        "doc_id": ["d1", "d2"], "title": ["Buoy", "Office"], "source": [None, None], "updated_at": [None, None],
        "text": ["The TideWatch T4 buoy weighs 212 kg and floats in Kellsport harbour.",
                 "The Kellsport office opens at 8 am on weekdays and closes at 5 pm."],
    })


def _qa() -> pd.DataFrame:
    return pd.DataFrame({
        "qa_id": ["q1", "q2", "q3", "q4", "q5"],
        "question": ["How heavy is the T4 buoy?", "Where does the T4 float?", "When does the office open?",
                     "When does the office close?", "Which days is the office open?"],
        "answer": [["212 kg"], ["Kellsport harbour"], ["8 am", "8"], ["5 pm"], ["weekdays"]],
        "doc_id": ["d1", "d1", "d2", "d2", "d2"],
        "split": ["train", "train", "train", "validation", "test"],
    })


def _failure(report, rule_fragment):
    matches = [f for f in report.failures if rule_fragment in f.rule]
    assert matches, [f.rule for f in report.failures]
    return matches[0]


def test_clean_dataset_passes():
    report = validate_dataset(_docs(), _qa(), CFG, "data/x")
    assert report.success, report.to_markdown()
    ensure_valid(report)
    assert report.statistics["qa_train"] == 3
    assert set(report.results) == {"documents", "qa", "splits"}


def test_duplicate_doc_id():
    docs = _docs()
    docs.loc[1, "doc_id"] = "d1"
    f = _failure(validate_dataset(docs, _qa(), CFG, "x"), "doc_id is unique")
    assert f.unexpected_count == 2 and "doc_id='d1'" in f.examples[0]


def test_empty_text():
    docs = _docs()
    docs.loc[1, "text"] = ""
    f = _failure(validate_dataset(docs, _qa(), CFG, "x"), "document text length")
    assert "doc_id='d2'" in f.examples[0]


def test_unknown_gold_document():
    qa = _qa()
    qa.loc[2, "doc_id"] = "d9"
    f = _failure(validate_dataset(_docs(), qa, CFG, "x"), "doc_id exists in documents")
    assert f.examples == ["qa_id=q3: doc_id 'd9' unknown"]


def test_answer_not_in_gold_document():
    qa = _qa()
    qa.at[0, "answer"] = ["300 kg"]
    f = _failure(validate_dataset(_docs(), qa, CFG, "x"), "gold answer occurs")
    assert "qa_id=q1" in f.examples[0] and "300 kg" in f.examples[0]


def test_answer_match_is_normalised():
    qa = _qa()
    qa.at[0, "answer"] = ["the 212 KG"]
    assert validate_dataset(_docs(), qa, CFG, "x").success


@pytest.mark.parametrize("question", ["How heavy is the T4 buoy?", "How heavy is the T5 buoy?"])
def test_test_question_duplicating_train(question):
    qa = _qa()
    qa.loc[4, "question"] = question
    f = _failure(validate_dataset(_docs(), qa, CFG, "x"), "no test question duplicates")
    assert "qa_id=q5" in f.examples[0]


def test_split_proportions_out_of_bounds():
    qa = _qa()
    qa["split"] = "train"
    report = validate_dataset(_docs(), qa, CFG, "x")
    assert _failure(report, "train share").examples == ["train share is 1.000"]
    _failure(report, "test share")


def test_error_message_names_source_rule_and_record():
    qa = _qa()
    qa.at[1, "answer"] = ["Port Ardlow"]
    with pytest.raises(DataValidationError) as info:
        ensure_valid(validate_dataset(_docs(), qa, CFG, "data/broken"))
    message = str(info.value)
    assert "data/broken" in message and "qa_id=q2" in message and "gold answer occurs" in message
    assert "FAILED" in info.value.report.to_markdown()
