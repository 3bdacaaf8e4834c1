"""Validation stage: a clean toy dataset passes; each broken case fails with its rule and names the record."""

import json

import numpy as np
import pandas as pd
import pytest

from tasks.settings import ValidationConfig
from tasks.validation import (
    DataValidationError,
    ExpectationFailure,
    ValidationReport,
    ensure_valid,
    validate_dataset,
)
from tasks.validation_columns import qa_with_columns

CFG = ValidationConfig()  # defaults: train 0.5-0.9, validation 0-0.3, test 0.05-0.4, near-duplicate 0.92


def _docs() -> pd.DataFrame:
    return pd.DataFrame({
        "doc_id": ["d1", "d2"],
        "title": ["Buoy", "Office"],
        "text": ["The TideWatch T4 buoy weighs 212 kg and floats in Kellsport harbour.",
                 "The Kellsport office opens at 8 am on weekdays and closes at 5 pm."],
        "source": [None, "handbook.md"],
        "updated_at": [None, None],
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


def _validate(docs=None, qa=None, cfg=CFG, source="data/toy") -> ValidationReport:
    return validate_dataset(_docs() if docs is None else docs, _qa() if qa is None else qa, cfg, source)


def _failure(report: ValidationReport, rule_fragment: str) -> ExpectationFailure:
    matches = [f for f in report.failures if rule_fragment in f.rule]
    assert len(matches) == 1, [f.rule for f in report.failures]
    assert not report.success
    return matches[0]


def _failed_rules(report: ValidationReport) -> set[str]:
    return {f.rule for f in report.failures}


def test_clean_dataset_passes():
    report = _validate()
    assert report.success, report.to_markdown()
    assert report.failures == []
    ensure_valid(report)
    assert report.statistics["documents"] == 2 and report.statistics["qa"] == 5
    assert report.statistics["qa_per_split"] == {"train": 3, "validation": 1, "test": 1}
    assert report.statistics["expectations_failed"] == 0
    assert report.statistics["expectations_evaluated"] >= 30
    assert set(report.results) == {"documents", "qa", "splits"}
    assert all(r["success"] for r in report.results.values())
    json.dumps(report.results, allow_nan=False)  # strict JSON, ready for mlflow.log_dict
    markdown = report.to_markdown()
    assert "PASSED" in markdown and "data/toy" in markdown


def test_duplicate_doc_id():
    docs = pd.concat([_docs(), _docs().iloc[[0]]], ignore_index=True)
    f = _failure(_validate(docs), "doc_id is unique")
    assert (f.table, f.expectation, f.column) == ("documents", "expect_column_values_to_be_unique", "doc_id")
    assert f.unexpected_count == 2
    assert f.examples == ["doc_id=d1: duplicated (row 0)", "doc_id=d1: duplicated (row 2)"]
    assert len(_validate(docs).failures) == 1


def test_empty_text():
    docs = _docs()
    docs.loc[1, "text"] = "  "
    report = _validate(docs)
    empty = _failure(report, "document text is not empty")
    assert empty.expectation == "expect_column_values_to_not_match_regex" and empty.unexpected_count == 1
    assert empty.examples == ["doc_id=d2: text is empty ('  ')"]
    length = _failure(report, "document text length")
    assert length.examples == ["doc_id=d2: text has 2 characters"]


def test_null_text_is_reported_as_missing():
    docs = _docs()
    docs.loc[0, "text"] = None
    f = _failure(_validate(docs), "text is present")
    assert f.expectation == "expect_column_values_to_not_be_null" and f.examples[0].startswith("doc_id=d1")
    report = _validate(docs)
    json.dumps(report.results, allow_nan=False)  # the null shows up as None, not NaN


def test_qa_doc_id_missing_from_documents():
    qa = _qa()
    qa.loc[2, "doc_id"] = "d9"
    report = _validate(qa=qa)
    f = _failure(report, "every QA doc_id exists in documents")
    assert (f.table, f.expectation, f.column) == ("qa", "expect_column_values_to_be_in_set", "doc_id")
    assert f.examples == ["qa_id=q3: doc_id 'd9' not in documents"]
    assert len(report.failures) == 1  # not also blamed on the answer check


def test_answer_not_in_gold_document():
    qa = _qa()
    qa.at[0, "answer"] = ["300 kg"]
    report = _validate(qa=qa)
    f = _failure(report, "gold answer occurs in its gold document")
    assert f.unexpected_count == 1 and f.column == "answer_in_gold_doc"
    assert f.examples == ["qa_id=q1: answer '300 kg' not in doc d1"]
    assert len(report.failures) == 1


def test_answer_in_a_different_document_still_fails():
    qa = _qa()
    qa.loc[3, "doc_id"] = "d1"  # "5 pm" is only in d2
    f = _failure(_validate(qa=qa), "gold answer occurs")
    assert f.examples == ["qa_id=q4: answer '5 pm' not in doc d1"]


def test_answer_match_uses_squad_normalisation_and_any_accepted_answer():
    qa = _qa()
    qa.at[0, "answer"] = ["The 212 KG!"]
    qa.at[1, "answer"] = ["Port Ardlow", "kellsport  harbour."]
    assert _validate(qa=qa).success
    qa.at[1, "answer"] = ["Port Ardlow", "Ardlow pier"]
    f = _failure(_validate(qa=qa), "gold answer occurs")
    assert f.examples == ["qa_id=q2: answers 'Port Ardlow', 'Ardlow pier' not in doc d1"]


def test_empty_answer_list_fails():
    qa = _qa()
    qa.at[3, "answer"] = []
    report = _validate(qa=qa)
    f = _failure(report, "answer list is not empty")
    assert f.examples == ["qa_id=q4: no accepted answer ([])"]
    assert "the gold answer occurs in its gold document (normalised)" not in _failed_rules(report)


def test_same_question_in_train_and_test():
    qa = _qa()
    qa.loc[4, "question"] = "how heavy is the T4 buoy"  # differs only by case and punctuation
    report = _validate(qa=qa)
    f = _failure(report, "also appears in train")
    assert f.expectation == "expect_column_values_to_not_be_in_set" and f.unexpected_count == 1
    assert f.examples == ["qa_id=q5: test question 'how heavy is the T4 buoy' is also train qa_id=q1"]
    assert not any("near-duplicates" in rule for rule in _failed_rules(report))


def test_near_duplicate_question_in_train_and_test():
    qa = _qa()
    qa.loc[4, "question"] = "How heavy is the T5 buoy?"  # one changed character
    report = _validate(qa=qa)
    f = _failure(report, "near-duplicates a train question")
    assert f.expectation == "expect_column_values_to_be_between" and f.column == "train_similarity"
    assert f.examples[0].startswith("qa_id=q5: test question 'How heavy is the T5 buoy?' ~ train qa_id=q1")
    assert "(similarity 0.95)" in f.examples[0]
    assert not any("also appears in train" in rule for rule in _failed_rules(report))
    at_threshold = ValidationConfig(near_duplicate_ratio=0.95)  # ratio >= threshold counts as a duplicate
    assert "near-duplicates" in " ".join(_failed_rules(_validate(qa=qa, cfg=at_threshold)))
    loose = ValidationConfig(near_duplicate_ratio=0.99)
    assert _validate(qa=qa, cfg=loose).success


def test_duplicate_between_train_and_validation_is_allowed():
    qa = _qa()
    qa.loc[3, "question"] = "How heavy is the T4 buoy?"
    qa.at[3, "answer"] = ["212 kg"]
    qa.loc[3, "doc_id"] = "d1"
    assert _validate(qa=qa).success


def test_split_proportions_out_of_bounds():
    qa = _qa()
    qa["split"] = "train"
    report = _validate(qa=qa)
    train = _failure(report, "train share")
    assert (train.table, train.column) == ("splits", "train_share")
    assert train.examples == ["train share is 1.000 (5 of 5 QA pairs), allowed [0.5, 0.9]"]
    test = _failure(report, "test share")
    assert test.examples == ["test share is 0.000 (0 of 5 QA pairs), allowed [0.05, 0.4]"]
    assert {f.table for f in report.failures} == {"splits"}


def test_unknown_split_value():
    qa = _qa()
    qa.loc[3, "split"] = "dev"
    f = _failure(_validate(qa=qa), "split is one of")
    assert f.examples == ["qa_id=q4: split 'dev'"]


def test_question_too_long_uses_config_bounds():
    cfg = ValidationConfig(question_chars=(5, 26))
    f = _failure(_validate(cfg=cfg), "question length within [5, 26]")
    assert f.unexpected_count == 2
    assert f.examples == ["qa_id=q4: question 'When does the office close?' has 27 characters",
                          "qa_id=q5: question 'Which days is the office open?' has 30 characters"]


def test_missing_column_is_reported_not_raised():
    report = _validate(qa=_qa().drop(columns=["answer"]))
    f = _failure(report, "column 'answer' exists")
    assert f.expectation == "expect_column_to_exist" and "missing" in f.examples[0]


def test_examples_are_capped_by_max_examples():
    qa = _qa()
    qa["doc_id"] = "nope"
    f = _failure(_validate(qa=qa, cfg=ValidationConfig(max_examples=2)), "doc_id exists")
    assert f.unexpected_count == 5 and len(f.examples) == 2


def test_error_message_names_source_rule_and_record():
    qa = _qa()
    qa.at[1, "answer"] = ["Port Ardlow"]
    report = _validate(qa=qa, source="data/broken-v2")
    with pytest.raises(DataValidationError) as info:
        ensure_valid(report)
    message = str(info.value)
    assert "data/broken-v2" in message
    assert "the gold answer occurs in its gold document" in message
    assert "qa_id=q2: answer 'Port Ardlow' not in doc d2" not in message  # q2's gold doc is d1
    assert "qa_id=q2: answer 'Port Ardlow' not in doc d1" in message
    assert info.value.report is report
    markdown = report.to_markdown()
    assert "FAILED" in markdown and "expect_column_values_to_be_in_set" in markdown and "qa_id=q2" in markdown


def test_near_duplicate_similarity_covers_every_test_question():
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"])
    questions = [" ".join(rng.choice(words, 8)) + f" {i}?" for i in range(2000)]
    qa = pd.DataFrame({"qa_id": [f"q{i}" for i in range(2000)], "question": questions,
                       "answer": [["x"]] * 2000, "doc_id": "d1", "split": ["train", "test"] * 1000})
    frame = qa_with_columns(_docs(), qa)
    similarity = frame.loc[frame["split"] == "test", "train_similarity"]
    assert similarity.notna().all() and similarity.between(0, 1).all()
    assert frame.loc[frame["split"] == "train", "train_similarity"].isna().all()
